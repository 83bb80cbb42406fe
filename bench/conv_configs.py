"""Every block configuration of the Triton conv kernels, timed one by one on a few layers.

Why: the sweep (python -m bench) times each Triton conv at the configuration its autotuner
picks, against cuDNN. When a layer is slow that does not say whether one configuration is
good and was not picked, none is good (the kernel), or the layer is simply memory-bound.
This times each configuration of the forward, input-gradient and weight-gradient kernels
alone (pydl.kernels.conv.pin_config, the launch helpers called directly: no autograd, no
op layer), beside the autotuner's own pick and torch's kernels for the same pass
(F.conv2d and aten.convolution_backward, cuDNN with cudnn.benchmark=True) and pydl's CUDA C++
kernels for the same pass; for a 1x1 stride-1 layer also torch.matmul on the same GEMM
([N*H*W, C] x [C, OC]), the ceiling a 1x1 convolution can reach. Each row also gives the kernel's ideal memory time (bytes it
must move / the copy bandwidth measured in the run), so a memory-bound layer shows as one.

    python bench/conv_configs.py [--layers l1.1x1a,l1.3x3] [--dtype bf16] [--budget-s 60]
                                 [--json FILE] [--device cuda|cpu]

Layers are ResNet-50's (bench/shapes.py RESNET50_CONV, batch 256), channels_last.
--device cpu runs the kernels under the Triton interpreter on the tiny layers of
bench_conv.TINY_CONV (what the CI test does: the script works, no timing meaning).
Prints a markdown table, one row per (layer, pass, configuration).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

if "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1] == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.nn.functional as TF  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.harness import Timer, measure_ceilings  # noqa: E402
from bench.shapes import RESNET50_BATCH, RESNET50_CONV  # noqa: E402
from bench.bench_conv import TINY_CONV  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PASSES = ("fwd", "dgrad", "wgrad")


def _layers(names, device):
    if device == "cpu":
        return [(l[0], 2) + l[1:] for l in TINY_CONV]
    table = {l[0]: l for l in RESNET50_CONV}
    missing = [n for n in names if n not in table]
    if missing:
        raise SystemExit(f"unknown layer(s) {missing}; known: {sorted(table)}")
    return [(n, RESNET50_BATCH) + table[n][1:] for n in names]


def _launchers(kc, x, w, gy, stride, pad):
    """pass -> (a call of the Triton launch helper, the tensor it writes, torch's call for
    the same pass, its result)."""
    s, p, d = [stride, stride], [pad, pad, pad, pad], [1, 1]
    y, dx, dw = torch.empty_like(gy), torch.empty_like(x), torch.empty_like(w)
    # what the op layer passes (TF32 for float32 on the GPU when torch's conv may use it;
    # never for 16-bit types): the same kernel specializations as the sweep's, compiled once
    from pydl.ops.conv import _tf32
    tf32 = _tf32(x)

    def torch_bwd(mask, i):
        return lambda: torch.ops.aten.convolution_backward(
            gy, x, w, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], 1, mask)[i]
    return {
        "fwd": (lambda: kc.conv2d_fwd(x, w, None, y, s, p, d, 1, False, tf32), y,
                lambda: TF.conv2d(x, w, None, stride, pad)),
        "dgrad": (lambda: kc.conv2d_bwd_input(gy, w, dx, s, p, d, 1, tf32), dx,
                  torch_bwd([True, False, False], 0)),
        "wgrad": (lambda: kc.conv2d_bwd_weight(gy, x, dw, s, p, d, 1, tf32), dw,
                  torch_bwd([False, True, False], 1)),
    }


def _cuda_calls(x, w, gy, stride, pad):
    """pass -> pydl's CUDA C++ kernels for it (torch.ops.pydl, the op the cuda backend calls),
    or {} where this build has no CUDA kernels for the device."""
    import pydl
    if "cuda" not in pydl.backends() or x.device.type not in pydl.backends()["cuda"].devices:
        return {}
    ops = torch.ops.pydl
    g = ([stride] * 2, [pad] * 4, [1, 1], 1)
    return {"fwd": lambda: ops.conv2d_fwd(x, w, None, *g, "none", True),
            "dgrad": lambda: ops.conv2d_bwd_input(gy, w, list(x.shape), *g, True),
            "wgrad": lambda: ops.conv2d_bwd_weight(gy, x, list(w.shape), *g, True)}


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|: a configuration that computes something else shows."""
    return float((ours.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30))


def _kernel(kc, which):
    return {"fwd": kc.conv2d_fwd_kernel, "dgrad": kc.conv2d_bwd_input_kernel,
            "wgrad": kc.conv2d_bwd_weight_kernel}[which]


def _cfg_name(cfg) -> str:
    k = cfg.kwargs
    return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']} w{cfg.num_warps} s{cfg.num_stages}"


def run(args) -> list:
    from pydl.kernels import conv as kc
    device, dtype = args.device, DTYPES[args.dtype]
    torch.backends.cudnn.benchmark = True
    timer = Timer(device, warmup=3, repeats=args.repeats)
    copy_gbs = measure_ceilings(device)["copy_GBps"] if device == "cuda" else None
    deadline = time.monotonic() + args.budget_s
    rows = []
    for name, n, c, h, wd, oc, r, stride, pad in _layers(args.layers.split(","), device):
        g = torch.Generator(device=device).manual_seed(0)
        cl = torch.channels_last
        oh, ow = (h + 2 * pad - r) // stride + 1, (wd + 2 * pad - r) // stride + 1
        x = torch.randn((n, c, h, wd), device=device, dtype=dtype, generator=g).contiguous(memory_format=cl)
        w = torch.randn((oc, c, r, r), device=device, dtype=dtype, generator=g).contiguous(memory_format=cl)
        gy = torch.randn((n, oc, oh, ow), device=device, dtype=dtype, generator=g).contiguous(memory_format=cl)
        flops = 2 * n * oh * ow * oc * c * r * r
        # bytes each pass must move at the least: its two operands read, its result written
        nbytes = {"fwd": x.nbytes + w.nbytes + gy.nbytes, "dgrad": gy.nbytes + w.nbytes + x.nbytes,
                  "wgrad": gy.nbytes + x.nbytes + w.nbytes}
        calls = _launchers(kc, x, w, gy, stride, pad)
        cuda_calls = _cuda_calls(x, w, gy, stride, pad)
        gemm = None
        if r == 1 and stride == 1 and pad == 0:   # a 1x1 convolution is this GEMM
            xa, wb = x.permute(0, 2, 3, 1).reshape(n * h * wd, c), w.reshape(oc, c).t()
            gemm = lambda: torch.matmul(xa, wb)  # noqa: E731
        for which in PASSES:
            if time.monotonic() > deadline:
                rows.append(dict(layer=name, which=which, config="(budget spent)"))
                continue
            ours, result, theirs = calls[which]
            ref = theirs()
            base = dict(layer=name, which=which, dtype=args.dtype, flops=flops, bytes=nbytes[which],
                        ideal_mem_ms=nbytes[which] / copy_gbs / 1e6 if copy_gbs else None)
            t = timer(theirs)
            rows.append(dict(base, config="torch", ms=t.median_ms, host_ms=t.host_ms))
            if gemm is not None and which == "fwd":
                t = timer(gemm)
                rows.append(dict(base, config="torch.matmul, same GEMM", ms=t.median_ms, host_ms=t.host_ms))
            if which in cuda_calls:   # the CUDA C++ backend's kernels, for comparison
                out = cuda_calls[which]()
                t = timer(cuda_calls[which])
                rows.append(dict(base, config="pydl cuda (C++)", ms=t.median_ms, host_ms=t.host_ms,
                                 rel_err=_rel_err(out, ref)))
            kern = _kernel(kc, which)
            configs = kc._ALL_CONFIGS[id(kern)]
            for i, cfg in enumerate(configs):
                if time.monotonic() > deadline:
                    rows.append(dict(base, config="(budget spent)"))
                    break
                kc.pin_config(i)
                if kern.configs[0] is not cfg:   # clamped: this kernel has fewer configs
                    continue
                t0 = time.monotonic()
                try:
                    ours()                       # compiles this configuration
                except Exception as e:           # e.g. out of shared memory: a row, not an end
                    rows.append(dict(base, config=f"{_cfg_name(cfg)}: {type(e).__name__}: {str(e)[:80]}"))
                    continue
                compile_s = time.monotonic() - t0
                t = timer(ours)
                rows.append(dict(base, config=_cfg_name(cfg), ms=t.median_ms, host_ms=t.host_ms,
                                 compile_s=compile_s, rel_err=_rel_err(result, ref)))
            kc.pin_config(None)
            if time.monotonic() < deadline:
                try:
                    ours()                       # the autotuner times every config, keeps one
                except Exception as e:           # a row, not the end of the run
                    rows.append(dict(base, config=f"autotuned: {type(e).__name__}: {str(e)[:80]}"))
                    continue
                best = kern.best_config if getattr(kern, "best_config", None) else kern.configs[0]
                t = timer(ours)
                rows.append(dict(base, config=f"autotuned: {_cfg_name(best)}", ms=t.median_ms,
                                 host_ms=t.host_ms, rel_err=_rel_err(result, ref)))
    kc.pin_config(None)
    return rows


def table(rows) -> str:
    out = ["| layer | pass | configuration | ms | host ms | TFLOP/s | ideal mem ms | x torch | rel err |",
           "|---|---|---|---|---|---|---|---|---|"]
    ref = {}
    for r in rows:
        if "ms" not in r:
            out.append(f"| {r['layer']} | {r['which']} | {r['config']} | - | - | - | - | - | - |")
            continue
        key = (r["layer"], r["which"])
        if r["config"] == "torch":
            ref[key] = r["ms"]
        tflops = r["flops"] / r["ms"] / 1e9 if r["ms"] else 0.0
        ideal = f"{r['ideal_mem_ms']:.3f}" if r.get("ideal_mem_ms") else "-"
        ratio = f"{ref[key] / r['ms']:.2f}" if key in ref and r["ms"] else "-"
        err = f"{r['rel_err']:.1e}" if "rel_err" in r else "-"
        out.append(f"| {r['layer']} | {r['which']} | {r['config']} | {r['ms']:.3f} | "
                   f"{r['host_ms']:.3f} | {tflops:.1f} | {ideal} | {ratio} | {err} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", default="l1.1x1a,l1.3x3,l3.1x1a")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--budget-s", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("conv_configs: no GPU visible (use --device cpu for the interpreter smoke run)")
        return 1
    from pydl import _dispatch
    if args.device == "cpu" and not _dispatch.triton_interpreted():
        # (set by this script's command line, or before pydl was first imported)
        print("conv_configs: --device cpu runs the Triton kernels under the interpreter, which "
              "must be on before pydl is imported (TRITON_INTERPRET=1)")
        return 1
    rows = run(args)
    print(table(rows))
    if args.json:
        from bench.harness import environment
        with open(args.json, "w") as f:
            json.dump({"env": environment(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

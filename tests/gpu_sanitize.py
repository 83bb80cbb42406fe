"""Every pydl GPU kernel once, forward and backward, for compute-sanitizer.

    compute-sanitizer --tool memcheck  python tests/gpu_sanitize.py [--backend cuda,triton]
    compute-sanitizer --tool racecheck python tests/gpu_sanitize.py --backend cuda
    compute-sanitizer --tool synccheck python tests/gpu_sanitize.py --backend cuda

(bench/gpu_validate.sh sanitize runs the three and keeps their reports.) Not a pytest file:
the sanitizer slows every kernel by 10-100x, so this runs each kernel family on small,
odd shapes that still reach every code path a size selects (tails of vector loads,
partial tiles, several blocks per channel, both layouts, 16- and 32-bit dtypes), and
checks each result against torch so a kernel that is wrong without a memory error fails
too (by the tests' rule: error against torch in float64 at most 2x torch's own + atol).
`--device cpu` runs the same calls on the CPU (a dry run of this script)."""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as TF

import pydl
import pydl.functional as F
import pydl.optim
from pydl.testing import assert_close, to_ref


def _fwd_bwd(name, fn, ref, inputs):
    """fn (pydl) against the float64 oracle by the project's rule (pydl.testing): forward
    and the gradients of every floating input for one random grad_output."""
    a = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    s = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    r = [to_ref(t) for t in s]
    ya, ys, yr = fn(*a), ref(*s), ref(*r)
    assert_close(ya, yr, ys, f"{name} forward")
    g = torch.randn(yr.shape, dtype=torch.float64)
    grads = [torch.autograd.grad(y, [t for t in ins if t.requires_grad], g.to(y))
             for y, ins in ((ya, a), (ys, s), (yr, r))]
    for i, (x, y, z) in enumerate(zip(*grads)):
        assert_close(x, z, y, f"{name} grad {i}")


def run(backend: str, device: str, quick: bool = False) -> int:
    n = 0
    for dtype in (torch.float32, torch.bfloat16):
        # quick (racecheck, synccheck): bfloat16 for the convolutions only -- their tensor-core
        # (WMMA) GEMMs, which float32 reaches only with TF32, off here
        conv_only = quick and dtype == torch.bfloat16
        for cl in (False, True):
            mf = torch.channels_last if cl else torch.contiguous_format
            x = torch.randn(3, 37, 9, 13, device=device, dtype=dtype).contiguous(memory_format=mf)
            tag = f"{backend} {str(dtype)[6:]} {'NHWC' if cl else 'NCHW'}"
            if not conv_only:
                # activations
                for kind in ("relu", "leaky_relu", "elu", "sigmoid", "tanh"):
                    _fwd_bwd(f"{kind} {tag}", lambda t, k=kind: getattr(F, k)(t, backend=backend),
                             lambda t, k=kind: getattr(TF, k)(t) if k != "tanh" else torch.tanh(t), [x])
                    n += 1
                # pooling
                _fwd_bwd(f"max_pool2d {tag}", lambda t: F.max_pool2d(t, 3, 2, 1, ceil_mode=True, backend=backend),
                         lambda t: TF.max_pool2d(t, 3, 2, 1, ceil_mode=True), [x])
                _fwd_bwd(f"avg_pool2d {tag}", lambda t: F.avg_pool2d(t, (3, 2), 2, 1, backend=backend),
                         lambda t: TF.avg_pool2d(t, (3, 2), 2, 1), [x])
                _fwd_bwd(f"adaptive_avg_pool2d {tag}", lambda t: F.adaptive_avg_pool2d(t, (4, 5), backend=backend),
                         lambda t: TF.adaptive_avg_pool2d(t, (4, 5)), [x])
                _fwd_bwd(f"adaptive_max_pool2d {tag}", lambda t: F.adaptive_max_pool2d(t, (4, 5), backend=backend),
                         lambda t: TF.adaptive_max_pool2d(t, (4, 5)), [x])
                n += 4
                # batch norm (training, statistics split across blocks) and the fused tail
                w = torch.rand(37, device=device) + 0.5
                b = torch.randn(37, device=device)
                _fwd_bwd(f"batch_norm {tag}",
                         lambda t, w_, b_: F.batch_norm(t, None, None, w_, b_, True, backend=backend),
                         lambda t, w_, b_: TF.batch_norm(t, None, None, w_, b_, True), [x, w, b])
                r = torch.randn_like(x)
                _fwd_bwd(f"batch_norm_act {tag}",
                         lambda t, r_: F.batch_norm_act(t, None, None, None, None, True, residual=r_,
                                                        act="relu", backend=backend),
                         lambda t, r_: TF.relu(TF.batch_norm(t, None, None, None, None, True) + r_), [x, r])
                n += 2
            # convolution: dense 3x3 (partial tiles), strided 1x1, depthwise, grouped+dilated
            for (k, c_out, stride, pad, dil, groups) in ((3, 21, 1, 1, 1, 1), (1, 64, 2, 0, 1, 1),
                                                         (3, 37, 1, 1, 1, 37), (3, 8, 2, 2, 2, 1)):
                wt = (torch.randn(c_out if groups == 1 else 37, 37 // groups, k, k, device=device, dtype=dtype)
                      / (37 * k * k / groups) ** 0.5).contiguous(memory_format=mf)
                bias = torch.randn(wt.shape[0], device=device, dtype=dtype)
                _fwd_bwd(f"conv2d k{k} s{stride} g{groups} {tag}",
                         lambda t, w_, b_, s=stride, p=pad, d=dil, g=groups: F.conv2d(t, w_, b_, s, p, d, g, backend=backend),
                         lambda t, w_, b_, s=stride, p=pad, d=dil, g=groups: TF.conv2d(t, w_, b_, s, p, d, g),
                         [x, wt, bias])
                n += 1
            if dtype == torch.bfloat16 and cl:
                # channels a multiple of 8 (the rows above have 37): the CUDA forward's 16-byte
                # loads and its 16-byte stores of 8 output channels
                x8 = torch.randn(3, 40, 9, 13, device=device, dtype=dtype).contiguous(memory_format=mf)
                w8 = (torch.randn(24, 40, 3, 3, device=device, dtype=dtype) / 60).contiguous(memory_format=mf)
                _fwd_bwd(f"conv2d k3 c40 {tag}", lambda t, w_: F.conv2d(t, w_, None, 1, 1, backend=backend),
                         lambda t, w_: TF.conv2d(t, w_, None, 1, 1), [x8, w8])
                n += 1
    # optimizers: several tensors of odd sizes (vector tails, several chunks), two steps
    for name, kw in (("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)), ("Adam", dict(lr=1e-2, amsgrad=True)),
                     ("AdamW", dict(lr=1e-2)), ("RMSprop", dict(lr=1e-2, centered=True, momentum=0.5)),
                     ("Adagrad", dict(lr=0.1))):
        for dtype in (torch.float32,) + (() if quick else (torch.bfloat16,)):
            # pydl in `dtype`, torch.optim in `dtype` and in float64 from the same start, on the
            # same gradients; pydl vs float64 by the project's rule (2x torch's own error + atol)
            start = [torch.randn(sz, device=device, dtype=dtype) for sz in ((7, 13), (1000003,), (3, 5, 7), (1,))]
            sets = {"pydl": [torch.nn.Parameter(p.clone()) for p in start],
                    "same": [torch.nn.Parameter(p.clone()) for p in start],
                    "ref": [torch.nn.Parameter(to_ref(p)) for p in start]}
            opts = [getattr(pydl.optim, name)(sets["pydl"], backend=backend, **kw),
                    getattr(torch.optim, name)(sets["same"], foreach=False, **kw),
                    getattr(torch.optim, name)(sets["ref"], foreach=False, **kw)]
            for _ in range(2):
                for i in range(len(start)):
                    gr = torch.randn(start[i].shape, device=device).to(dtype)
                    for ps in sets.values():
                        ps[i].grad = gr.to(ps[i])
                for o in opts:
                    o.step()
            for i, (u, v, r) in enumerate(zip(sets["pydl"], sets["same"], sets["ref"])):
                assert_close(u.detach(), r.detach(), v.detach(), f"{name} {backend} {str(dtype)[6:]} param {i}")
            n += 1
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="cuda,triton")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true",
                    help="float32, and bfloat16 for the convolutions only (for the slower tools)")
    ap.add_argument("--triton-config", type=int, default=0,
                    help="block configuration the Triton conv kernels use (-1: autotune, which under "
                         "the sanitizer times every configuration at 10-100x slowdown)")
    args = ap.parse_args(argv)
    # full float32, as the test suite (tests/conftest.py): pydl's and torch's TF32 roundings
    # differ by more than the float32 tolerances
    torch.backends.cudnn.allow_tf32 = False
    if "triton" in args.backend.split(",") and args.triton_config >= 0 and pydl._dispatch._kernels is not None:
        from pydl.kernels import conv as triton_conv
        triton_conv.pin_config(args.triton_config)
    total = 0
    for b in args.backend.split(","):
        st = pydl.backends()[b]
        if args.device not in st.devices:
            print(f"{b}: cannot run on {args.device} here ({st.detail})", file=sys.stderr)
            return 2
        total += run(b, args.device, args.quick)
        if args.device == "cuda":
            torch.cuda.synchronize()
        print(f"{b}: ok")
    print(f"gpu_sanitize: {total} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

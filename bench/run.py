"""python -m bench -- time pydl's kernels against PyTorch on real network layers.

    python -m bench --op relu,elu --backend cuda,triton --dtype bf16,f32 --shapes resnet50 --mode fwd,bwd
    python -m bench --device cpu --shapes tiny          # CPU mode (what CI runs)

Every row is checked before it is timed (a wrong kernel is reported as WRONG and not
timed) and lands, with every repeat, in bench/results/<date>_<gpu>_<commit>/results.json,
plus table.md and plots/ (report.py).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import torch

import pydl
from pydl.testing import ATOL

from . import report
from .cases import MODES, Case, outputs_of, runner
from .harness import Timer, environment, host_time_us, measure_ceilings, peak_memory_mb, save_json

FAMILIES = ["activation", "pool", "batchnorm", "conv", "optim", "train"]  # bench/bench_<family>.py, each with cases(shapes, dtypes, layouts, modes, ops)
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def load_cases(args) -> list[Case]:
    ops = set(args.op.split(",")) if args.op else None
    out = []
    for fam in FAMILIES:
        try:
            mod = importlib.import_module(f"bench.bench_{fam}")
        except ImportError as e:  # an op family pydl does not have yet
            print(f"bench: skipping {fam}: {e}", file=sys.stderr)
            continue
        if not mod.available():
            print(f"bench: skipping {fam}: not in this pydl build", file=sys.stderr)
            continue
        fam_ops = None if not ops or fam in ops else ops
        if ops and fam not in ops and not (ops & set(getattr(mod, "OPS", {}))):
            continue
        for shapes in args.shapes.split(","):
            out += mod.cases(shapes, [DTYPES[d] for d in args.dtype.split(",")],
                             args.layout.split(","), args.mode.split(","), fam_ops)
    return out


def sweep_cases(args, gpu: bool) -> list[Case]:
    """The sweep's cases in the order it runs them: --shapes and --dtype defaulted for the
    device (set on `args`), --first first. Shared with bench/warm_triton.py."""
    args.shapes = args.shapes or ("resnet50,vgg16" if gpu else "tiny")
    args.dtype = args.dtype or ("f32,bf16" if gpu else "f32")
    cases = load_cases(args)
    return first_order(cases, args.first) if args.first else cases


def check(case: Case, fn, inputs, device) -> str:
    """'' if fn's outputs pass the float64 rule against torch (pydl error <= 2x torch's
    same-dtype error + ATOL), else what is wrong. The oracle runs in float64 on `device`."""
    ref_in = [t.detach().double().requires_grad_(t.requires_grad) for t in inputs]
    same_in = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    got = outputs_of(fn, inputs, case.mode)
    ref = outputs_of(case.torch_fn, ref_in, case.mode)
    same = outputs_of(case.torch_fn, same_in, case.mode)
    for i, (a, r, s) in enumerate(zip(got, ref, same)):
        if a.shape != r.shape:
            return f"output {i}: shape {tuple(a.shape)} != {tuple(r.shape)}"
        a, s = a.double(), s.double()
        if not torch.equal(torch.isnan(a), torch.isnan(r)):
            return f"output {i}: NaN positions differ"
        fin = torch.isfinite(r)
        err = (a - r)[fin].abs().max().item() if fin.any() else 0.0
        err_t = (s - r)[fin].abs().max().item() if fin.any() else 0.0
        scale = max(1.0, r[fin].abs().max().item()) if fin.any() else 1.0
        bound = 2 * err_t + ATOL[case.dtype] * scale
        if not err <= bound:
            return f"output {i}: max err {err:.3e} > 2 x torch {err_t:.3e} + atol"
    return ""


def first_order(cases: list, first: str) -> list:
    """The cases named by `first` ("op" or "family", or "op:mode" for one mode, comma-
    separated) before the rest, in the order named; a stable sort, so each group keeps its
    usual order (conv2d:fwd,conv2d: every conv forward row, then the conv backward rows)."""
    items = [(op, mode) for op, _, mode in (i.partition(":") for i in first.split(",") if i)]

    def rank(c):
        for i, (op, mode) in enumerate(items):
            if op in (c.op, c.family) and mode in ("", c.mode):
                return i
        return len(items)
    return sorted(cases, key=rank)


def run_case(case: Case, backends, device, timer, with_compile) -> list[dict]:
    inputs = case.make_inputs(device)
    impls = [(f"pydl-{b}", case.pydl_fn(b)) for b in backends]
    impls.append(("torch", case.torch_fn))
    impls += list((case.baselines or {}).items())
    if with_compile and case.compile:
        impls.append(("torch.compile", torch.compile(case.torch_fn, dynamic=False)))
    rows = []
    for name, fn in impls:
        row = {"op": case.op, "family": case.family, "layer": case.layer, "shape": list(case.shape),
               "dtype": str(case.dtype).replace("torch.", ""), "layout": case.layout, "mode": case.mode,
               "impl": name, "bytes": case.bytes, "flops": case.flops}
        try:
            if not name.startswith("pydl"):
                wrong = ""
            elif case.check is not None:
                wrong = case.check(name[5:], device)
            else:
                wrong = check(case, fn, inputs, device)
            if wrong:
                row["status"] = "WRONG: " + wrong
            else:
                call = runner(fn, inputs, case.mode)
                own = case.repeats and not timer.explicit  # a case's own count, unless --repeats was given
                t = (timer.with_repeats(case.repeats) if own else timer)(call)
                row.update(status="ok", median_ms=t.median_ms, p10_ms=t.p10_ms, p90_ms=t.p90_ms,
                           repeats_ms=t.repeats_ms, host_ms=t.host_ms)
                if case.family == "optim":  # host-side cost of a step (launch overhead)
                    row["host_us"] = host_time_us(call, repeats=50)
                if case.memory:
                    row["peak_MB"] = peak_memory_mb(call, device)
        except Exception as e:  # a failing impl is a result too, not the end of the sweep
            row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        rows.append(row)
    del inputs
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def score(rows: list[dict], ceilings: dict) -> None:
    """Add GB/s, TFLOP/s, fractions of the ceilings and the speedup over every baseline
    (every non-pydl impl of the same case)."""
    def key(r):
        return (r["op"], r["layer"], r["dtype"], r["layout"], r["mode"])
    base = {}
    for r in rows:
        if not r["impl"].startswith("pydl") and r["status"] == "ok":
            base.setdefault(key(r), {})[r["impl"]] = r["median_ms"]
    for r in rows:
        if r["status"] != "ok":
            continue
        s = r["median_ms"] / 1e3
        if r["bytes"]:
            r["GBps"] = r["bytes"] / s / 1e9
            r["pct_copy"] = 100 * r["GBps"] / ceilings["copy_GBps"] if ceilings.get("copy_GBps") else None
        if r["flops"]:
            r["TFLOPs"] = r["flops"] / s / 1e12
            mm = ceilings.get("matmul_bf16_TFLOPs")
            r["pct_matmul"] = 100 * r["TFLOPs"] / mm if mm else None
        if r["impl"].startswith("pydl"):
            for b, ms in base.get(key(r), {}).items():
                r[f"speedup_vs_{b}"] = ms / r["median_ms"]


def progress(i, n, text):
    width = 30
    done = int(width * i / max(n, 1))
    sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {i}/{n} {text[:60]:<60}")
    sys.stderr.flush()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--op", default="", help="ops or families, comma-separated (default: all)")
    ap.add_argument("--backend", default="", help="pydl backends (default: all usable on the device)")
    ap.add_argument("--dtype", default="", help="f32,bf16,f16 (default: f32,bf16 on GPU, f32 on CPU)")
    ap.add_argument("--layout", default="contiguous,channels_last")
    ap.add_argument("--mode", default="fwd,bwd", help="fwd,bwd,fwdbwd")
    ap.add_argument("--shapes", default="", help="resnet50,vgg16,tiny (default: resnet50,vgg16 on GPU, tiny on CPU)")
    ap.add_argument("--device", default="", help="cuda | cpu (default: cuda when available)")
    ap.add_argument("--repeats", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=0,
                    help="stop starting new cases after this many seconds (0: no limit); the rows "
                         "not run are listed in results.json as 'not run: budget'")
    ap.add_argument("--first", default="",
                    help="run the cases of these ops/families first, in this order (comma-separated; "
                         "op:mode for one mode), e.g. conv2d:fwd,conv2d when the budget may not reach "
                         "the end")
    ap.add_argument("--max-row-s", type=float, default=-1,
                    help="time a row for at most about this long: fewer repeats (>= 5) for a slow call "
                         "(default 1.5 s on the GPU, no cap on the CPU; 0: no cap)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    ap.add_argument("--out", default="", help="results folder (default: bench/results/<date>_<gpu>_<commit>)")
    ap.add_argument("--tag", default="", help="appended to the default folder name")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNGs (python -m bench.report --plots DIR makes them later)")
    args = ap.parse_args(argv)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device == "cuda"
    for m in args.mode.split(","):
        if m not in MODES:
            ap.error(f"--mode: {m!r} is not one of {MODES}")
    usable = [b for b, st in pydl.backends().items() if b != "torch" and device in st.devices]
    backends = args.backend.split(",") if args.backend else usable
    for b in backends:
        if b not in usable:
            ap.error(f"--backend {b}: not usable on {device} here ({pydl.backends()[b].detail})")
    if gpu:
        torch.backends.cudnn.benchmark = True

    env = environment()
    name = args.out or os.path.join(
        os.path.dirname(__file__), "results",
        f"{time.strftime('%Y-%m-%d')}_{(env.get('gpu') if gpu else 'cpu').replace(' ', '-')}_{env['commit'] or 'nocommit'}"
        + (f"_{args.tag}" if args.tag else ""))
    os.makedirs(name, exist_ok=True)
    print(f"device {device}; measuring ceilings...", file=sys.stderr)
    ceilings = measure_ceilings(device)
    max_row_s = args.max_row_s if args.max_row_s >= 0 else (1.5 if gpu else 0.0)
    timer = Timer(device, warmup=3 if gpu else 1, repeats=args.repeats or (30 if gpu else 5),
                  explicit=bool(args.repeats), max_time_s=max_row_s)
    cases = sweep_cases(args, gpu)
    rows, skipped = [], []
    t0 = time.time()
    i = 0
    try:
        for i, case in enumerate(cases):
            if args.budget_s and time.time() - t0 > args.budget_s:
                skipped = [c.key for c in cases[i:]]
                break
            progress(i, len(cases), case.key)
            rows += run_case(case, backends, device, timer, with_compile=not args.no_compile and gpu)
    except KeyboardInterrupt:
        # a wall-clock cap (bench/gpu_validate.sh stops the sweep with SIGINT): the case it
        # was in is lost, every finished row is saved below
        skipped = [c.key for c in cases[i:]]
    progress(len(cases) - len(skipped), len(cases), f"done in {time.time() - t0:.0f} s"
             + (f", {len(skipped)} cases not run (budget)" if skipped else ""))
    sys.stderr.write("\n")
    score(rows, ceilings)
    result = {"env": env, "ceilings": ceilings, "args": vars(args), "device": device, "rows": rows,
              "not_run_budget": skipped}
    save_json(os.path.join(name, "results.json"), result)
    save_json(os.path.join(name, "env.json"), env)
    table = report.markdown(result)
    with open(os.path.join(name, "table.md"), "w") as f:
        f.write(table)
    if not args.no_plots:
        report.plots(result, os.path.join(name, "plots"))
    print(table)
    print(f"results: {name}")
    bad = [r for r in rows if r["status"] != "ok" and r["impl"].startswith("pydl")]
    return 1 if bad else 0

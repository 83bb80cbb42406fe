"""Compile the Triton kernels a bench sweep will need, in parallel processes, ahead of it.

    python -m bench.warm_triton [--jobs 8] [--budget-s 100] [the sweep's case arguments:
                                 --op --dtype --layout --mode --shapes --first --device]

Why: the first call of a Triton kernel with a new specialization JIT-compiles it (LLVM and
ptxas, ~1-5 s for a conv GEMM on the CPU), and the conv kernels are autotuned: every block
configuration is compiled before it is timed. The sweep does this one case at a time in
one process: the first GPU run spent ~20 s a conv case, and its 75 s budget got through 4
of the 15 ResNet-50 forward layers the conv target is stated on. Compiled kernels land in
Triton's on-disk cache (~/.triton/cache), keyed by the kernel source, its constexprs and
the argument specializations (dtypes, int == 1, divisibility by 16) -- not by the process,
nor by the sizes themselves. So worker processes can compile them first, all cores at
once, and the sweep's autotuner then finds every binary cached and only times the
configurations (bench/gpu_validate.sh runs this beside the sanitizer, whose one process
leaves the other cores idle).

How: first the calls of bench/host_overhead.py (which gpu_validate.sh runs just before the
sweep, on tiny tensors: kernels specialized apart from the sweep's, under a shorter cap),
then each sweep case (in the sweep's order, --first included), are run once on the Triton
backend, each case in its mode, in a pool of `--jobs` spawned
processes (CUDA needs spawn), until the cases or --budget-s run out; then the pool is
terminated. Nothing is timed or checked here (the timings an autotuner takes with other
processes compiling beside it are thrown away with the process); a case that raises is
reported and the rest go on. Exit status 0 unless the tool itself fails.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

_CASES: dict = {}  # in a worker: key -> Case, the sweep's cases
HOST_OVERHEAD = "host_overhead.py calls"  # the task that runs bench/host_overhead.py's calls


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=0, help="worker processes (default: half the cores, at most 8)")
    ap.add_argument("--budget-s", type=float, default=100.0)
    ap.add_argument("--device", default="", help="cuda | cpu (default: cuda when available)")
    for name, default in (("op", ""), ("dtype", ""), ("layout", "contiguous,channels_last"),
                          ("mode", "fwd,bwd"), ("shapes", ""), ("first", "")):
        ap.add_argument(f"--{name}", default=default)
    # the sweep's other arguments (bench/gpu_validate.sh passes the same BENCH_ARGS) are ignored
    args, _ = ap.parse_known_args(argv)
    return args


def _init(args) -> None:
    import torch

    from .run import sweep_cases
    torch.set_num_threads(1)  # the pool's processes share the cores (tests/conftest.py)
    for c in sweep_cases(args, args.device == "cuda"):
        _CASES[c.key] = c


def _warm(key: str, device: str):
    """Run one case's pydl call on the Triton backend once: (key, seconds, error or '')."""
    import torch
    t0 = time.time()
    try:
        _run_once(key, device)
        err = ""
    except Exception as e:  # reported; the other cases go on
        err = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    if device == "cuda":  # eight of these share the GPU with the sanitizer: hold no cache
        torch.cuda.empty_cache()
    return key, time.time() - t0, err


def _run_once(key: str, device: str) -> None:
    """(its tensors are gone when it returns)"""
    import torch

    from .cases import runner
    if key == HOST_OVERHEAD:
        _host_overhead_calls(device)
    else:
        case = _CASES[key]
        runner(case.pydl_fn("triton"), case.make_inputs(device), case.mode)()
    if device == "cuda":
        torch.cuda.synchronize()


def _host_overhead_calls(device: str) -> None:
    """Each pydl call bench/host_overhead.py times, once, with the conv configuration it pins
    on the GPU (restored after: the sweep's cases autotune)."""
    from pydl.kernels import conv as triton_conv

    from . import host_overhead
    if device == "cuda":
        triton_conv.pin_config(0)
    try:
        for _, _, _, pydl_call in host_overhead.cases(device, "triton"):
            pydl_call()
    finally:
        triton_conv.pin_config(None)


def main(argv=None) -> int:
    args = _args(sys.argv[1:] if argv is None else argv)
    import torch

    import pydl

    from .run import sweep_cases
    device = args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in pydl.backends()["triton"].devices:
        print(f"warm_triton: the triton backend cannot run on {device} here "
              f"({pydl.backends()['triton'].detail}); nothing to compile")
        return 0
    keys = [HOST_OVERHEAD] + [c.key for c in sweep_cases(args, device == "cuda")]
    jobs = args.jobs or max(1, min(8, (os.cpu_count() or 2) // 2))
    t0 = time.time()
    deadline = t0 + args.budget_s
    pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_init, initargs=(args,))
    done = 0
    try:
        pending = [pool.apply_async(_warm, (k, device)) for k in keys]  # FIFO: the sweep's order
        while pending and time.time() < deadline:
            for r in [r for r in pending if r.ready()]:  # reported as they finish
                pending.remove(r)
                key, secs, err = r.get()
                done += 1
                print(f"{key}: {secs:.1f} s" + (f" ({err})" if err else ""), flush=True)
            time.sleep(0.1)
    finally:
        pool.terminate()  # at the budget: the cases still compiling are dropped
        pool.join()
    print(f"warmed {done} of {len(keys)} cases in {time.time() - t0:.0f} s with {jobs} processes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

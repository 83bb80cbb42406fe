"""Timing, device ceilings and environment capture for the bench.

GPU timing: CUDA events around each call, after warm-up, with the L2 cache flushed
before every repeat (a write to a buffer larger than L2) so each run reads its inputs
from DRAM as a real layer would; the median and the 10th/90th percentiles are kept.
The host (CPU) time of the same calls is kept too (host_ms): the events time the GPU from
the first to the last kernel *and any wait between launches*, so a call whose Python and
launch overhead exceeds its kernels' work is timed at its host speed -- when host_ms is
close to median_ms the row measures overhead, not kernels (the report marks it).
CPU timing: wall clock (perf_counter), median of repeats.

Peak memory (training-step rows): on the GPU, the caching allocator's exact peak of
allocated bytes during one call, minus what was allocated before it; on the CPU (where
torch keeps no allocator statistics) a TorchDispatchMode that adds up the storage of every
tensor an op creates and subtracts it when the storage is freed -- every tensor that crosses
an op boundary, pydl's and torch's alike, but not a kernel's private scratch memory.

Ceilings are measured at the start of the same run: device-to-device copy bandwidth
(a large tensor copy: bytes read + bytes written over time) and a large bf16 matmul rate.
Every memory-bound row is reported as a fraction of the copy bandwidth, every conv row
as a fraction of the matmul rate.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats_ms: list = field(default_factory=list)
    host_ms: Optional[float] = None  # median CPU time of the call itself (GPU: enqueueing it)


class Timer:
    """Times a zero-argument callable on `device` ("cuda" or "cpu")."""

    def __init__(self, device: str, warmup: int = 5, repeats: int = 30, min_time_s: float = 0.0,
                 explicit: bool = False, max_time_s: float = 0.0):
        self.device = device
        self.warmup, self.repeats = warmup, repeats
        self.explicit = explicit  # repeats chosen by the user: a case's own count does not apply
        # max_time_s > 0 (and repeats not chosen by the user): fewer repeats, never below
        # MIN_REPEATS, for a call so slow that `repeats` of them would take longer -- a
        # 0.5 s backward timed 30 times is 15 s of a sweep's budget for one row
        self.max_time_s = max_time_s
        self._flush = None
        if device == "cuda":
            l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 * 2**20)
            self._flush = torch.empty(max(2 * l2, 64 * 2**20), dtype=torch.uint8, device="cuda")

    def with_repeats(self, repeats: int) -> "Timer":
        """The same timer (and its L2-flush buffer) with another repeat count."""
        t = Timer.__new__(Timer)
        t.__dict__.update(self.__dict__, repeats=repeats)
        return t

    MIN_REPEATS = 5

    def _repeats_for(self, fn: Callable[[], object]) -> int:
        """self.repeats, or fewer when max_time_s caps the row: the count that fits it by
        one more (timed, synchronized) call, at least MIN_REPEATS."""
        if self.max_time_s <= 0 or self.explicit or self.repeats <= self.MIN_REPEATS:
            return self.repeats
        sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        per_call = time.perf_counter() - t0
        return max(self.MIN_REPEATS, min(self.repeats, int(self.max_time_s / max(per_call, 1e-9))))

    def __call__(self, fn: Callable[[], object]) -> Timing:
        for _ in range(self.warmup):
            fn()
        repeats = self._repeats_for(fn)
        times, host = [], []
        if self.device == "cuda":
            torch.cuda.synchronize()
            for _ in range(repeats):
                self._flush.zero_()  # evict the inputs from L2
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                t0 = time.perf_counter()
                fn()
                host.append((time.perf_counter() - t0) * 1e3)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        else:
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            host = times
        q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
        return Timing(statistics.median(times), q[0], q[-1], times, statistics.median(host))


def host_time_us(fn: Callable[[], object], repeats: int = 200, warmup: int = 0) -> float:
    """Median CPU-side time of one call, after `warmup` untimed calls (launch overhead; the
    GPU work is not waited for except every 20 calls, to keep the queue from filling, and
    once at the end, so the next measurement starts on an idle GPU). On the CPU, the wall
    time of the call, its kernels included."""
    for _ in range(warmup):
        fn()
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
        if i % 20 == 19 and torch.cuda.is_available():
            torch.cuda.synchronize()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return statistics.median(times)


class _StoragePeak(TorchDispatchMode):
    """Peak of the bytes held by tensor storages created while the mode is active: each op's
    outputs are counted once per storage (views and in-place results, which share an
    input's storage, add nothing), and a
    weak-reference callback subtracts a storage when it is freed (torch keeps one Python
    object per live storage, so the callback fires when the memory goes)."""

    def __init__(self):
        super().__init__()
        self.live, self.current, self.peak = {}, 0, 0

    def _freed(self, key):
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # an output sharing an input's storage (an in-place op, a view) allocated nothing
        seen = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key, n = id(st), st.nbytes()
                if n == 0 or key in self.live or key in seen:
                    continue
                self.live[key] = n
                self.current += n
                weakref.finalize(st, self._freed, key)
                self.peak = max(self.peak, self.current)
        return out


def peak_memory_mb(fn: Callable[[], object], device: str) -> float:
    """The most memory (MiB) one call of fn holds at once beyond what existed before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with _StoragePeak() as tracker:
        fn()
    return tracker.peak / 2**20


def measure_ceilings(device: str) -> dict:
    """The device limits every row is compared to, measured now."""
    if device != "cuda":
        n = 64 * 2**20 // 4
        a = torch.randn(n)
        b = torch.empty_like(a)
        t = Timer("cpu", warmup=2, repeats=10)(lambda: b.copy_(a)).median_ms
        return {"copy_GBps": 2 * a.numel() * 4 / t / 1e6, "matmul_bf16_TFLOPs": None}
    n = 1 << 28  # 1 GiB of float32
    a = torch.empty(n, dtype=torch.float32, device="cuda").uniform_()
    b = torch.empty_like(a)
    t = Timer("cuda", warmup=3, repeats=20)(lambda: b.copy_(a)).median_ms
    copy = 2 * n * 4 / t / 1e6
    del a, b
    m = 8192
    x = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
    y = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
    t = Timer("cuda", warmup=3, repeats=20)(lambda: x @ y).median_ms
    return {"copy_GBps": copy, "matmul_bf16_TFLOPs": 2 * m**3 / t / 1e9}


def environment() -> dict:
    import pydl
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(), "python": platform.python_version(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "pydl": pydl.__version__, "pydl_build": dict(pydl.BUILD_INFO),
        "backends": {k: v._asdict() for k, v in pydl.backends().items()},
    }
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    # PYDL_COMMIT, when set, names the commit: a copy of the working tree on a lent GPU
    # machine may carry stale git metadata (seen on the first GPU run)
    env["commit"] = os.environ.get("PYDL_COMMIT", "")
    if not env["commit"]:
        try:
            env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                           capture_output=True, text=True,
                                           cwd=os.path.dirname(__file__)).stdout.strip()
        except OSError:
            env["commit"] = ""
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["gpu"] = p.name
        env["gpu_sms"] = p.multi_processor_count
        env["gpu_memory_GiB"] = round(p.total_memory / 2**30, 1)
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True).stdout.strip()
        except OSError:
            env["driver"] = None
    else:
        env["gpu"] = None
        env["cpu"] = platform.processor() or platform.machine()
        env["cpu_threads"] = torch.get_num_threads()
    return env


def save_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, default=lambda o: o.__dict__ if hasattr(o, "__dict__") else str(o))

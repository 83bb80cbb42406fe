"""Test set-up shared by every test file.

Without a GPU the Triton kernels run under the Triton interpreter on CPU tensors; the
interpreter is chosen when the kernels are *defined*, so TRITON_INTERPRET must be set
before pydl (and so pydl.kernels) is imported -- here, first thing.
"""
import os
import sys
import subprocess

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import pydl  # noqa: E402

GPU = torch.cuda.is_available()


def threads_per_worker(cpus: int, workers: int) -> int:
    """torch's intra-op threads for one of `workers` pytest-xdist processes on `cpus` cores:
    an equal share, at least one. Left at torch's default, every worker starts one OpenMP
    thread per core (bench/gpu_validate.sh: 12 workers x 16 threads on 16 cores), and each
    parallel region's threads spin at its barrier waiting for siblings the scheduler has
    parked -- the first GPU run's test step spent ~11 s on tests that take 0.01-1.2 s alone,
    CPU-only ones included (bench/NOTES.md, eighth session without a GPU)."""
    return max(1, cpus // max(1, workers))


_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
if _XDIST_WORKERS > 1:
    torch.set_num_threads(threads_per_worker(os.cpu_count() or 1, _XDIST_WORKERS))


@pytest.fixture(autouse=True)
def _ieee_float32():
    """Every test compares float32 convolutions in full float32 (on the GPU, torch's default
    lets cuDNN -- and so pydl, which follows it -- round operands to TF32, whose error is
    ~1e-3 and differs between the two): torch.backends.cudnn.allow_tf32 = False, restored
    after. tests/test_conv.py test_tf32_mode checks the TF32 mode itself."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


def _interpreter_rounds_bf16_to_nearest() -> None:
    """Make the Triton interpreter convert float32 -> bfloat16 as the GPU does.

    A kernel's `x.to(tl.bfloat16)` (and a float32 value stored through a bfloat16 pointer)
    compiles to cvt.rn.bf16.f32 on the GPU: round to nearest, ties to even. The interpreter
    (Triton 3.6 and 3.8) converts by dropping the low 16 bits instead -- rounding toward
    zero, up to a whole bfloat16 ulp off. Tested against that, a kernel is checked against
    something the hardware never does: bf16 tanh near +-1 rounded down to 0.99609375
    where the GPU (and torch) gives 1.0, and its gradient g * (1 - y*y) was then 8e-3 off
    (the CI failure of test_forward_backward[tanh-*-bf16-triton-cpu]). Other conversions
    and an explicit rounding="rtz" keep the interpreter's code."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    if getattr(interpreter, "_pydl_bf16_rne", False):
        return
    original = interpreter._convert_float
    rtne = interpreter._ir.ROUNDING_MODE.RTNE

    def convert_float(input, input_dtype, output_dtype, rounding_mode):
        if not (input_dtype == tl.float32 and output_dtype == tl.bfloat16
                and rounding_mode in (None, rtne)):
            return original(input, input_dtype, output_dtype, rounding_mode)
        bits = np.frombuffer(np.ascontiguousarray(input).tobytes(), dtype=np.uint32).astype(np.uint64)
        # add half an ulp, less one unless the kept last bit is odd (ties to even), and cut;
        # a carry out of the mantissa steps the exponent, up to infinity, as it should
        out = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        nan = (bits & 0x7FFFFFFF) > 0x7F800000
        out[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)  # NaN stays a (quiet) NaN
        return out.reshape(np.shape(input))

    interpreter._convert_float = convert_float
    interpreter._pydl_bf16_rne = True


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_rounds_bf16_to_nearest()
STATUS = pydl.backends()

# On a GPU the Triton conv kernels would autotune every new shape (compile and time each
# block configuration): minutes over the whole suite. The suite runs them with their first
# configuration (test_conv.py::test_triton_every_config runs each of the others);
# PYDL_TEST_AUTOTUNE=1 keeps the tuning.
TRITON_TEST_CONFIG = 0 if GPU and os.environ.get("PYDL_TEST_AUTOTUNE") != "1" else None  # None: tune
if pydl._dispatch._kernels is not None and TRITON_TEST_CONFIG is not None:
    from pydl.kernels import conv as _triton_conv
    _triton_conv.pin_config(TRITON_TEST_CONFIG)

def gpu_run_rank(nodeid: str, params: dict, skip_reasons) -> int:
    """Where a test goes in a time-capped GPU run (PYDL_TEST_TRITON_LAST=1):
    0 -- the CUDA C++ backend on CUDA tensors, and the unparametrized tests whose skip
         condition names the GPU (those run only with one; those skipped with one cost
         nothing);
    1 -- the Triton backend on CUDA tensors (on a GPU their first run JIT-compiles every
         kernel specialization, seconds each; the first, capped GPU run spent its whole
         budget in its first test file, every backend's tests at ~11 s each -- most of it
         OpenMP threads contending across the workers: threads_per_worker above);
    2 -- the rest: CPU tensors, host emulations, tools -- what CI runs on every commit, so
         on a GPU machine only if time is left."""
    device, backend = params.get("device"), params.get("backend")
    if device == "cpu":
        return 2
    if device == "cuda" or backend in ("cuda", "triton"):
        return 1 if backend == "triton" or "triton" in nodeid else 0
    return 0 if any("GPU" in r for r in skip_reasons) else 2


def pytest_collection_modifyitems(config, items):
    """With PYDL_TEST_TRITON_LAST=1 (bench/gpu_validate.sh sets it) the tests run in the
    order of gpu_run_rank: CUDA C++ first, then Triton on CUDA, then the CPU tests. The order
    within each part is kept."""
    if os.environ.get("PYDL_TEST_TRITON_LAST") == "1":
        def rank(item):
            cs = getattr(item, "callspec", None)
            reasons = [m.kwargs.get("reason", "") for m in item.iter_markers("skipif")]
            return gpu_run_rank(item.nodeid, cs.params if cs else {}, reasons)
        items.sort(key=rank)


# (backend, device) pairs: each pydl kernel family on the device it runs on.
PAIRS = [("cpu", "cpu"), ("cuda", "cuda"), ("triton", "cuda" if GPU else "cpu")]


def _skip_reason(backend: str, device: str):
    st = STATUS[backend]
    if device in st.devices:
        return None
    return f"{backend} backend cannot run on {device} here: {st.detail}"


def backend_params():
    """pytest params (backend, device), each skipped with the reason where it cannot run."""
    out = []
    for b, d in PAIRS:
        why = _skip_reason(b, d)
        marks = [pytest.mark.skip(reason=why)] if why else []
        out.append(pytest.param(b, d, id=f"{b}-{d}", marks=marks))
    return out


def interpreted(backend: str, device: str) -> bool:
    """Triton under the CPU interpreter: keep shapes tiny."""
    return backend == "triton" and device == "cpu"


# Every op supports these on every backend; float64 is also the gradcheck dtype.
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
DTYPE_IDS = ["f32", "f16", "bf16", "f64"]


# ------------------------------------------- CUDA kernels, emulated on the host (no GPU)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_gxx = pytest.mark.skipif(__import__("shutil").which("g++") is None,
                               reason="needs g++ (C++20) to build the emulation")


def run_cuda_emulation(name: str, tmp_path, timeout: int = 300) -> None:
    """Compile tests/<name>_cuda_emulation.cpp (a family's CUDA device code run on the host,
    tests/cuda_emulation.h) with g++ and run it: it must build and report 0 failures."""
    exe = tmp_path / f"{name}_emu"
    src = os.path.join(ROOT, "tests", f"{name}_cuda_emulation.cpp")
    build = subprocess.run(["g++", "-std=c++20", "-O1", "-pthread", "-I", os.path.join(ROOT, "csrc"),
                            "-I", os.path.join(ROOT, "csrc", "cuda"), src, "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0 and "0 failure(s)" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]


def run_with_cpu_simd(isa: str, argv, timeout: int = 600) -> None:
    """Run `python argv...` with PYDL_CPU_SIMD=isa ("native": no cap), which must exit 0
    having printed "ok" (a script) or " passed" (pytest). The CPU kernels' innermost loops
    are compiled for AVX-512, AVX2 and the baseline and the widest the CPU has is chosen at
    run time (csrc/cpu/simd.h): a capped process runs the copies this machine would not pick."""
    import pydl
    if not pydl.backends()["cpu"].usable:
        pytest.skip("the C++ extension is not built")
    env = dict(os.environ, PYDL_CPU_SIMD="" if isa == "native" else isa)
    run = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env,
                         timeout=timeout, cwd=os.path.join(ROOT, "tests"))
    assert run.returncode == 0 and ("ok" in run.stdout or " passed" in run.stdout), \
        run.stdout[-3000:] + run.stderr[-2000:]

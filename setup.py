"""Build pydl: the Python package plus one extension, ``pydl._C``.

``pydl._C`` holds the C++ CPU kernels (``csrc/cpu/*.cpp``, always built) and, when the
CUDA toolkit is found, the CUDA kernels (``csrc/cuda/*.cu``) with their glue
(``csrc/cuda/*.cpp``). The Triton kernels (``kernels/``) are plain Python, installed
as ``pydl.kernels``.

Environment knobs:
  PYDL_BUILD_CUDA=auto|0|1   auto (default): build CUDA when torch has CUDA and nvcc is
                             found -- a visible GPU is *not* needed, so a GPU-less
                             machine with nvcc still compiles (and so checks) the CUDA code.
  TORCH_CUDA_ARCH_LIST       respected; default when no GPU is visible: 9.0.
  CUDA_HOME                  toolkit root; found from nvcc when unset (nvcc may be a
                             wrapper script, so its own --dryrun output is asked).
  MAX_JOBS                   parallel compile jobs (ninja), as for any torch extension.
  DEBUG=1                    -O0 -g (and -lineinfo for nvcc), asserts on.
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_home_from_nvcc():
    """The toolkit root nvcc itself uses (its --dryrun prints ``TOP=<root>``)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--dryrun", "-v", "x.cu"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.M)
    return os.path.realpath(m.group(1).strip()) if m else None


# torch.utils.cpp_extension reads CUDA_HOME when it is imported: settle it first.
if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
    _home = _cuda_home_from_nvcc()
    if _home:
        os.environ["CUDA_HOME"] = _home

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda():
    mode = os.environ.get("PYDL_BUILD_CUDA", "auto").lower()
    found = torch.version.cuda is not None and CUDA_HOME is not None and \
        os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    if mode in ("0", "false", "off", "no"):
        return False
    if mode in ("1", "true", "on", "yes"):
        if not found:
            sys.exit("PYDL_BUILD_CUDA=1 but no CUDA toolkit was found "
                     f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME})")
        return True
    if mode != "auto":
        sys.exit(f"PYDL_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    return found


def _extension():
    debug = os.environ.get("DEBUG", "0") == "1"
    with_cuda = _want_cuda()
    srcs = ["csrc/pydl.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    macros = [("TORCH_VERSION_BUILT", f'"{torch.__version__}"')]
    cxx = ["-O0", "-g"] if debug else ["-O3", "-DNDEBUG"]
    cxx += ["-fvisibility=hidden"]  # the C++ standard is torch's choice (C++20 for torch >= 2.13)
    # sqrt & co. need not set errno (nothing reads it): a sqrt that must stays a scalar
    # call, which keeps the CPU optimizer loops from vectorizing (csrc/cpu/optim_loops.h)
    cxx += ["-fno-math-errno"]
    # at::parallel_for (the CPU kernels' threading) is inline: it runs its tasks on
    # torch's OpenMP threads only where _OPENMP is defined, i.e. when compiled with
    # -fopenmp -- without it every loop runs on one thread. Linking -fopenmp resolves to
    # the libgomp torch already loaded (same soname): one OpenMP runtime in the process.
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    cxx += openmp
    nvcc = ["-O0", "-g", "-lineinfo"] if debug else ["-O3", "-DNDEBUG", "-lineinfo"]
    nvcc += ["--expt-relaxed-constexpr"]
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
        if not arch:  # torch will target the visible GPU(s); record what that is
            caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
            arch = ";".join(f"{a}.{b}" for a, b in sorted(caps))
        srcs += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
        macros += [("PYDL_WITH_CUDA", "1"), ("PYDL_CUDA_ARCH_LIST", f'"{arch}"'),
                   ("PYDL_CUDA_VERSION", f'"{torch.version.cuda}"')]
        return CUDAExtension("pydl._C", srcs, define_macros=macros,
                             include_dirs=[os.path.join(ROOT, "csrc")],
                             extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=openmp)
    return CppExtension("pydl._C", srcs, define_macros=macros,
                        include_dirs=[os.path.join(ROOT, "csrc")],
                        extra_compile_args={"cxx": cxx}, extra_link_args=openmp)


setup(
    name="pydl",
    version="0.1.0",
    description="Hand-written CUDA C++, Triton and C++ kernels for CNN training, as PyTorch ops",
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "numpy"],
    packages=["pydl", "pydl.ops", "pydl.nn", "pydl.optim", "pydl.models", "pydl.kernels"],
    package_dir={"pydl": "pydl", "pydl.kernels": "kernels"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)

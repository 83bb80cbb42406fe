"""Every Triton kernel pydl launches, compiled for an H100 without a GPU (tests/triton_aot.py).

The interpreter that runs the Triton kernels in this suite on CPU never invokes Triton's
compiler, so compile-only failures (tl.dot type rules, constexpr branches that do not
type-check), shared memory over the per-block limit and register spilling would first
show on a GPU. The script records the launches the real launch helpers make -- GPU block
sizes, the JIT's argument specialization -- for every op family, dtype, layout and flag
set, and compiles a covering subset of them to sm_90 cubins with ptxas.
"""
import os
import subprocess
import sys

import pytest

from conftest import GPU, ROOT


@pytest.mark.skipif(GPU, reason="with a GPU the suite compiles and runs every kernel itself")
def test_triton_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "triton_aot.py")],
                         capture_output=True, text=True, env=env, timeout=1500)
    out = run.stdout + run.stderr
    bad = [line for line in out.splitlines() if "] ok:" not in line]
    assert run.returncode == 0 and out.rstrip().endswith("compiled"), "\n".join(bad)[-6000:]

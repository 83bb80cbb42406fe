"""The package and its build: pydl._C contents, `python -m pydl info`, imports from
outside the repository, tolerance of a missing extension, a non-editable install."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import pydl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_py(code, cwd, env=None, timeout=600):
    e = dict(os.environ)
    e.pop("PYTHONPATH", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=e, capture_output=True,
                          text=True, timeout=timeout)


def cuda_toolkit_present():
    return shutil.which("nvcc") is not None and torch.version.cuda is not None


def test_extension_contents():
    info = pydl.BUILD_INFO
    assert "cpu" in info["compiled_backends"]
    if cuda_toolkit_present() and os.environ.get("PYDL_BUILD_CUDA", "auto") != "0":
        # auto = torch has CUDA and nvcc is found; a visible GPU is not needed
        assert "cuda" in info["compiled_backends"]
        assert info["cuda_arch_list"]
        if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            assert info["cuda_arch_list"] == "9.0"
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert hasattr(torch.ops.pydl, "act_fwd")


def _cuobjdump():
    """The CUDA binary dumper: the toolkit's, else the copy Triton bundles."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        from triton.backends.nvidia import compiler as nv
        path = os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump")
        return path if os.path.exists(path) else None
    except Exception:  # noqa: BLE001 -- no Triton: no bundled tool
        return None


def test_cuda_kernels_do_not_spill():
    """ptxas's verdict on every CUDA kernel in pydl._C: no stack frame and no local memory
    (the kernels make no calls and index no local arrays dynamically, so either would be
    register spilling -- slow loads and stores in the inner loops), and registers that let
    each kernel's largest block fit on an SM: 512 threads for the optimizers'
    multi-tensor kernels, at most 256 for every other launcher (the GEMM engines also
    declare theirs in __launch_bounds__)."""
    if "cuda" not in pydl.BUILD_INFO["compiled_backends"]:
        pytest.skip("pydl._C was built without CUDA")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (CUDA toolkit or Triton's bundled copy)")
    out = subprocess.run([tool, "--dump-resource-usage", pydl._C.__file__], capture_output=True,
                         text=True, timeout=300).stdout
    kernels, name = {}, None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Function "):
            name = line[len("Function "):].rstrip(":")
        elif line.startswith("REG:") and name:
            kernels[name] = dict(tok.split(":", 1) for tok in line.split())
    assert len(kernels) > 50, out[-2000:]
    def threads(name):
        return 512 if "optim_detail" in name else 256

    bad = [f"{k}: {v}" for k, v in kernels.items()
           if v["STACK"] != "0" or v["LOCAL"] != "0" or int(v["REG"]) * threads(k) > 65536]
    assert not bad, "\n".join(bad)


def test_info_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pydl", "info"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = {l.split()[0]: l for l in r.stdout.splitlines() if l.startswith("  ")}
    assert lines.keys() >= {"cpu", "cuda", "triton", "torch"}
    assert "usable on cpu" in lines["cpu"]
    if "cuda" in pydl.BUILD_INFO["compiled_backends"]:
        assert "compiled" in lines["cuda"] or "usable" in lines["cuda"]
    assert "compiled backends: cpu" in r.stdout


def test_import_from_outside_the_repo(tmp_path):
    r = run_py("import torch, pydl, pydl.kernels.activation\n"
               "x = torch.randn(4, 5)\n"
               "assert torch.equal(pydl.functional.relu(x), torch.relu(x))\n"
               "print(pydl.__file__)", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_missing_extension_leaves_triton_and_torch(tmp_path):
    code = r"""
import sys, warnings
sys.modules["pydl._C"] = None          # as if the extension were not built
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import torch, pydl
assert any("could not be loaded" in str(m.message) for m in w), [str(m.message) for m in w]
st = pydl.backends()
assert not st["cpu"].compiled and not st["cuda"].compiled
assert st["triton"].usable and st["torch"].usable
x = torch.randn(6, 7)
assert torch.allclose(pydl.functional.tanh(x, backend="triton"), torch.tanh(x), atol=1e-6)
assert torch.equal(pydl.functional.relu(x, backend="torch"), torch.relu(x))
for b in ("cpu", None):
    try:
        pydl.functional.relu(x, backend=b)
    except pydl.BackendUnavailable as e:
        assert "not available" in str(e), e
    else:
        raise AssertionError("no error for backend %r" % b)
print("ok")
"""
    r = run_py(code, cwd=tmp_path, env={"TRITON_INTERPRET": "1"})
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_triton_on_cpu_needs_the_interpreter(tmp_path):
    code = r"""
import torch, pydl
try:
    pydl.functional.relu(torch.randn(3), backend="triton")
except pydl.BackendUnavailable as e:
    assert "TRITON_INTERPRET=1" in str(e), e
    print("ok")
"""
    if torch.cuda.is_available():
        pytest.skip("with a GPU, triton runs on CUDA tensors")
    r = run_py(code, cwd=tmp_path, env={"TRITON_INTERPRET": "0"})
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


@pytest.mark.slow
def test_non_editable_install(tmp_path):
    """`pip install --no-build-isolation .` (a wheel) carries _C and pydl.kernels. Built from
    a copy of the tracked sources so the editable build's objects are not disturbed; CPU
    only, to keep it short (the CUDA sources are compiled by the main build)."""
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if os.path.isfile(os.path.join(ROOT, f)):
            os.makedirs(src / os.path.dirname(f), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, f), src / f)
    env = dict(os.environ, PYDL_BUILD_CUDA="0", MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                        "--target", str(tmp_path / "site"), str(src)], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = run_py("import torch, pydl, pydl.kernels.activation\n"
               "assert pydl.__file__.startswith(%r), pydl.__file__\n"
               "assert pydl.BUILD_INFO['compiled_backends'] == ['cpu']\n"
               "x = torch.randn(9)\n"
               "assert torch.equal(pydl.functional.relu(x, backend='cpu'), torch.relu(x))\n"
               % str(tmp_path / "site"), cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")})
    assert r.returncode == 0, r.stderr

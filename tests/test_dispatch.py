"""Backend selection: explicit backend= > with pydl.backend(...) / PYDL_BACKEND > auto;
a backend that cannot run raises, nothing falls back silently."""
import pytest
import torch

import pydl
from pydl import _dispatch
from pydl._dispatch import BackendStatus, BackendUnavailable

CPU = torch.device("cpu")


def test_precedence(monkeypatch):
    monkeypatch.setattr(_dispatch, "_ENV", None)
    assert _dispatch.requested() == "auto"
    monkeypatch.setattr(_dispatch, "_ENV", "torch")  # PYDL_BACKEND=torch at import
    assert _dispatch.requested() == "torch"
    with pydl.backend("cpu"):          # the context beats the environment
        assert _dispatch.requested() == "cpu"
        with pydl.backend("triton"):   # the innermost context wins
            assert _dispatch.requested() == "triton"
            assert _dispatch.requested("torch") == "torch"  # explicit beats everything
        assert _dispatch.requested() == "cpu"
    assert _dispatch.requested() == "torch"


def test_context_restored_after_exception():
    with pytest.raises(KeyError):
        with pydl.backend("torch"):
            raise KeyError
    assert not _dispatch._STACK


def test_bad_names(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        pydl.functional.relu(torch.randn(3), backend="cudnn")
    with pytest.raises(ValueError, match=r"pydl.backend\(name\) must be one of"):
        with pydl.backend("gpu"):
            pass
    monkeypatch.setattr(_dispatch, "_ENV", "fast")
    with pytest.raises(ValueError, match="PYDL_BACKEND must be one of"):
        pydl.functional.relu(torch.randn(3))


def test_environment_variable(tmp_path):
    import subprocess
    import sys
    code = ("import torch, pydl; from pydl import _dispatch\n"
            "assert _dispatch.requested() == 'torch'\n"
            "with pydl.backend('cpu'): assert _dispatch.requested() == 'cpu'\n")
    env = dict(__import__("os").environ, PYDL_BACKEND="torch")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_auto_on_cpu_is_cpp():
    assert _dispatch.resolve("relu", CPU) == "cpu"


def test_torch_backend_runs_torch():
    x = torch.randn(5)
    assert torch.equal(pydl.functional.elu(x, 0.3, backend="torch"), torch.nn.functional.elu(x, 0.3))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_unavailable_backend_raises_not_falls_back():
    with pytest.raises(BackendUnavailable, match="cuda backend cannot run on cpu tensors"):
        pydl.functional.relu(torch.randn(3), backend="cuda")
    with pydl.backend("cuda"):
        with pytest.raises(BackendUnavailable):
            pydl.nn.ReLU()(torch.randn(3))


def test_auto_on_cuda_prefers_measured_then_what_is_usable(monkeypatch):
    """With a (simulated) GPU: auto takes AUTO_CUDA's choice, the other kernel family when
    the preferred one cannot run, and raises when neither can."""
    gpu = BackendStatus(True, True, ("cuda",), "")
    none = BackendStatus(True, False, (), "no GPU")
    dev = torch.device("cuda")
    status = dict(_dispatch._STATUS)
    monkeypatch.setattr(_dispatch, "_RESOLVED", {})  # the cache assumes a fixed _STATUS
    monkeypatch.setattr(_dispatch, "_STATUS", {**status, "cuda": gpu, "triton": gpu})
    monkeypatch.setattr(_dispatch, "AUTO_CUDA", {"relu": "triton"})
    assert _dispatch.resolve("relu", dev) == "triton"
    assert _dispatch.resolve("elu", dev) == "cuda"
    monkeypatch.setattr(_dispatch, "_RESOLVED", {})
    monkeypatch.setattr(_dispatch, "_STATUS", {**status, "cuda": gpu, "triton": none})
    assert _dispatch.resolve("relu", dev) == "cuda"
    monkeypatch.setattr(_dispatch, "_RESOLVED", {})
    monkeypatch.setattr(_dispatch, "_STATUS", {**status, "cuda": none, "triton": none})
    with pytest.raises(BackendUnavailable):
        _dispatch.resolve("relu", dev)
    with pytest.raises(BackendUnavailable, match="cuda backend"):
        _dispatch.resolve("relu", dev, "cuda")   # asked for: never replaced

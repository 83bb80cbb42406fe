"""Data-parallel training with pydl layers and optimizers: two gloo processes, each with
part of the batch (unequal parts), end where one process training on the whole batch
ends -- under DistributedDataParallel, and with pydl's SyncBatchNorm (parameters and
running statistics equal to BatchNorm on the whole batch)."""
import pytest
import os
import socket
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from ddp_model import build, data, optimizer, train_steps  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["ddp", "syncbn"])
def test_two_processes_match_single_process(tmp_path, kind):
    out = tmp_path / "ddp.pt"
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2",
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "ddp_worker.py"), kind, str(out)],
                              env=dict(env, RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for r in range(2)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("DDP workers hung")
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)

    model = build("plain" if kind == "ddp" else "bn")
    opt = optimizer(model.parameters())
    x, y = data()
    train_steps(model, opt, x, y)
    got = torch.load(out)
    ref = model.state_dict()
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.allclose(got[k].float(), ref[k].float(), atol=1e-5, rtol=1e-4), k

"""One rank of the data-parallel tests (tests/test_ddp.py). Trains on its shard of a fixed
batch and saves the final state_dict. Run with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT.

    ddp_worker.py ddp OUT      a pydl model under DistributedDataParallel (gloo)
    ddp_worker.py syncbn OUT   a pydl model with pydl SyncBatchNorm; gradients averaged
                               with an explicit all_reduce -- what DDP does, which torch's
                               DDP refuses for SyncBatchNorm on CPU modules
"""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ddp_model import build, data, optimizer, train_steps  # noqa: E402


def average_grads(model):
    world = dist.get_world_size()
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def main(kind, out):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build("plain" if kind == "ddp" else "syncbn")
    x, y = data()
    cut = 5  # unequal shards: rank 0 takes 5 samples, rank 1 the other 7
    xs, ys = (x[:cut], y[:cut]) if rank == 0 else (x[cut:], y[cut:])
    # gradients are averaged over ranks: scale each rank's mean loss by its share of the
    # batch so the average equals the gradient of the mean loss over the whole batch
    scale = world * len(xs) / len(x)
    if kind == "ddp":
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        train_steps(ddp, optimizer(ddp.parameters()), xs, ys, scale=scale)
    else:
        train_steps(model, optimizer(model.parameters()), xs, ys, scale=scale, allreduce=average_grads)
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    # Leave without the interpreter's teardown: the work is done (the result saved, the
    # process group destroyed). Now and then a rank aborted printing only "terminate called
    # without an active exception" -- no Python traceback, so in C++: a thread object
    # destroyed while still joinable, most likely gloo/c10d objects torn down at exit. The
    # CI run of 5bd57bd failed on it once; one run in ~300 here (never under a debugger).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

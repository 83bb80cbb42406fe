"""One rank of the data-parallel test (tests/test_ddp.py): trains a pydl model under
DistributedDataParallel (gloo) on its shard of a fixed batch and saves the final
parameters and buffers. Run with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set."""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ddp_model import build, data, optimizer, train_steps  # noqa: E402


def main(out):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = build(sync_bn=True)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = optimizer(ddp.parameters())
    x, y = data()
    # unequal shards: rank 0 takes the first 5 samples, rank 1 the other 7
    cut = 5
    xs, ys = (x[:cut], y[:cut]) if rank == 0 else (x[cut:], y[cut:])
    # DDP averages gradients over ranks; scale each rank's mean loss by its share of the
    # batch so the sum over ranks equals the mean over the whole batch
    train_steps(ddp, opt, xs, ys, scale=world * len(xs) / len(x))
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

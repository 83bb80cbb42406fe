"""64-bit indexing on the GPU: tensors of more than 2^31 elements (elementwise, and the
other families as they land). Needs a GPU with ~20 GB free; skipped elsewhere."""
import pytest
import torch

import pydl.functional as F
from conftest import GPU, STATUS

BIG = 2**31 + 1000  # past the int32 range, not a multiple of any vector width

pytestmark = [pytest.mark.gpu, pytest.mark.xdist_group("big"),
              pytest.mark.skipif(not GPU, reason="needs a CUDA GPU"),
              pytest.mark.skipif(GPU and torch.cuda.mem_get_info()[0] < 20 * 2**30,
                                 reason="needs 20 GB of free GPU memory")]


@pytest.mark.parametrize("backend", [b for b in ("cuda", "triton") if "cuda" in STATUS[b].devices])
def test_relu_past_int32(backend):
    x = torch.empty(BIG, dtype=torch.bfloat16, device="cuda")
    x[::2] = -1.5
    x[1::2] = 2.5
    y = F.relu(x, backend=backend)
    # the last elements sit past 2^31: a 32-bit index would wrap and miss them
    tail = y[-4096:].float()
    exp = torch.where(x[-4096:].float() > 0, x[-4096:].float(), torch.zeros(()).cuda())
    assert torch.equal(tail, exp)
    assert y[2**31 - 1].item() == max(x[2**31 - 1].item(), 0) and y[BIG - 1].item() == max(x[BIG - 1].item(), 0)
    del y
    g = torch.ones_like(x)
    x.requires_grad_()
    (dx,) = torch.autograd.grad(F.relu(x, backend=backend), x, g)
    assert dx[-1].item() == (1.0 if x[-1].item() > 0 else 0.0) and dx[-2].item() == (1.0 if x[-2].item() > 0 else 0.0)

"""What a benchmark row measures: a Case is one op on one layer shape, dtype, layout and
mode (fwd, bwd, fwdbwd; "step" for a whole training step), with the pydl call, the torch baseline and the bytes / flops the
row is scored by. Op families add their cases in bench/bench_<op>.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

MODES = ("fwd", "bwd", "fwdbwd")


@dataclass
class Case:
    op: str                      # "relu"
    family: str                  # "activation": the op family (bench_<family>.py)
    layer: str                   # "resnet50.stem"
    shape: tuple
    dtype: torch.dtype
    layout: str                  # "contiguous" | "channels_last"
    mode: str                    # fwd | bwd | fwdbwd
    make_inputs: Callable[[str], Sequence[torch.Tensor]]  # device -> inputs (diff. ones require grad in bwd modes)
    pydl_fn: Callable[..., Callable]   # backend -> f(*inputs) -> output
    torch_fn: Callable                 # f(*inputs) -> output (eager baseline)
    bytes: Optional[int] = None        # memory-bound rows: each input read once, each output written once
    flops: Optional[int] = None        # compute-bound rows
    compile: bool = True               # also time torch.compile(torch_fn)
    # A case whose call is not "inputs -> output" (an optimizer step) supplies its own
    # correctness check: check(backend, device) -> '' when right, else what is wrong.
    check: Optional[Callable[[str, str], str]] = None
    baselines: Optional[dict] = None   # extra baselines: name -> f(*inputs)
    memory: bool = False               # also record each impl's peak memory (peak_MB)
    repeats: int = 0                   # timed repeats for this case (0: the run's default)

    @property
    def key(self) -> str:
        return f"{self.op}|{self.layer}|{str(self.dtype)[6:]}|{self.layout}|{self.mode}"


def on_device(device: str) -> list:
    """make_inputs of a case whose callables build their own state (an optimizer, a model):
    one empty tensor on the bench's device, from which they learn where to build it (the
    sweep's --device, which on a machine with a GPU may still be the CPU)."""
    return [torch.empty(0, device=device)]


def runner(fn: Callable, inputs: Sequence[torch.Tensor], mode: str, grad_out: Optional[torch.Tensor] = None):
    """A zero-argument callable doing `mode` of fn on inputs. bwd: the forward is run once
    here and the backward is timed alone (retain_graph). step: fn is the whole step."""
    diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if mode in ("fwd", "step"):
        return lambda: fn(*inputs)
    if mode == "bwd":
        y = fn(*inputs)
        g = grad_out if grad_out is not None else torch.randn_like(y)
        return lambda: torch.autograd.grad(y, diff, g, retain_graph=True)

    def both():
        y = fn(*inputs)
        return torch.autograd.grad(y, diff, grad_out if grad_out is not None else torch.ones_like(y))
    return both


def outputs_of(fn: Callable, inputs: Sequence[torch.Tensor], mode: str, seed: int = 0):
    """What a mode produces, for the correctness check: the output (fwd) and/or the input
    gradients for a fixed random grad_output."""
    y = fn(*inputs)
    if mode == "fwd":
        return [y]
    diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).to(y)
    grads = list(torch.autograd.grad(y, diff, g))
    return grads if mode == "bwd" else [y] + grads

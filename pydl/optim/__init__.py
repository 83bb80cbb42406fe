"""pydl.optim: fused multi-tensor drop-ins for torch.optim (see pydl/optim/fused.py)."""
from .fused import SGD, Adagrad, Adam, AdamW, RMSprop  # noqa: F401

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]

"""torch.fx: pydl's modules are leaves of a symbolically traced graph, as torch.nn's are.

torch.fx.symbolic_trace (and what builds on it: torchvision's create_feature_extractor,
FX quantization and graph rewriting) records a torch.nn layer as one `call_module` node and
does not trace into its forward (torch.fx.Tracer.is_leaf_module: modules from torch.nn).
It does not know pydl's layers, so it would trace into their forwards: their argument
checks then meet Proxy objects instead of tensors, and a batch norm's training flag would
be baked into the graph. So each pydl layer's forward, given a Proxy, records the
`call_module` node itself; the graph then calls the layer with real tensors when it runs,
the same graph torch's layer gives. The functions of pydl.functional are wrapped with
torch.fx.wrap (one `call_function` node each) for models that call them directly."""
from __future__ import annotations

import functools

from torch.fx import Proxy


class FxLeaf:
    """Mixin: the forward of each pydl layer class (one defined in pydl) records a
    call_module node when called with a torch.fx.Proxy, and runs as written otherwise."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        forward = cls.__dict__.get("forward")
        if forward is None or not cls.__module__.startswith("pydl."):
            return  # (a user's subclass with its own forward is traced into, as torch's)

        @functools.wraps(forward)
        def leaf_forward(self, input, *args, **kwargs):
            if isinstance(input, Proxy):
                tracer = input.tracer
                return tracer.create_proxy("call_module", tracer.path_of_module(self),
                                           (input, *args), kwargs)
            if args or kwargs:
                return forward(self, input, *args, **kwargs)
            return forward(self, input)  # (the common call without packing: ~0.1 us)

        cls.forward = leaf_forward

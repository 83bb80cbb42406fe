"""pydl.convert / pydl.revert and the model zoo: converted models compute what the
originals do (train and eval: outputs, gradients, running stats), checkpoints load both
ways, torchvision's state_dicts load into pydl.models."""

import pytest
import torch
from torch import nn

import pydl
import pydl.models as M

torchvision = pytest.importorskip("torchvision")


def pydl_layer_count(model):
    pyd = {getattr(pydl.nn, n) for n in pydl.nn.__all__}
    return sum(type(m) in pyd for m in model.modules())


class Custom(nn.Module):
    """nested containers, a shared module, a custom forward, a torch subclass"""

    class MyReLU(nn.ReLU):
        def forward(self, x):  # its own code: must not be converted
            return super().forward(x) * 2

    def __init__(self):
        super().__init__()
        self.shared = nn.Tanh()
        self.body = nn.ModuleDict({"a": nn.Sequential(nn.Linear(7, 9), nn.ReLU(), self.shared),
                                   "b": nn.ModuleList([nn.Linear(9, 9), nn.LeakyReLU(0.2), self.shared])})
        self.odd = self.MyReLU()
        self.head = nn.Sequential(nn.Linear(9, 5), nn.ELU(0.3), nn.Sigmoid())

    def forward(self, x):
        x = self.body["a"](x)
        for m in self.body["b"]:
            x = m(x)
        return self.head(self.odd(x))


def test_custom_model_round_trip():
    torch.manual_seed(0)
    model = Custom()
    conv, rep = pydl.convert(model, report=True)
    assert conv is not model and type(model.body["a"][1]) is nn.ReLU  # a copy by default
    assert type(conv.body["a"][1]) is pydl.nn.ReLU and type(conv.head[1]) is pydl.nn.ELU
    assert conv.head[1].alpha == 0.3 and conv.body["b"][1].negative_slope == 0.2
    assert conv.body["a"][2] is conv.body["b"][2] is conv.shared  # still shared, converted once
    assert type(conv.shared) is pydl.nn.Tanh
    assert type(conv.odd) is Custom.MyReLU
    assert any(n == "odd" and "own code" in why for n, c, why in rep.left)
    assert len(rep.converted) == 5 and "5 layer(s) converted" in str(rep)
    assert conv.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(4, 7)
    assert torch.allclose(conv(x), model(x), atol=1e-6)
    back = pydl.revert(conv)
    assert pydl_layer_count(back) == 0 and type(back.head[1]) is nn.ELU and back.head[1].alpha == 0.3
    assert torch.allclose(back(x), model(x), atol=1e-6)


def test_inplace_and_backend():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    same = pydl.convert(model, inplace=True, backend="torch")
    assert same is model and type(model[1]) is pydl.nn.ReLU and model[1].backend == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        pydl.convert(model, backend="fast")
    with pytest.raises(TypeError, match="must be an nn.Module"):
        pydl.convert(lambda x: x)


def test_root_module_and_parameter_sharing():
    relu = pydl.convert(nn.ReLU(inplace=True))
    assert type(relu) is pydl.nn.ReLU and relu.inplace
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.ReLU())
    conv = pydl.convert(model, inplace=True)
    assert conv[0] is lin  # untouched layers are the same objects


def _train_step(model, x, seed):
    torch.manual_seed(seed)
    out = model(x)
    out.float().square().mean().backward()
    return out


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_torchvision_models_convert_and_match(name):
    """float32 through a deep network: the two differ by summation order only, compared by
    relative norm error (1e-3: float32 over ~20 layers with batch statistics)."""
    torch.manual_seed(0)
    ref = getattr(torchvision.models, name)(weights=None, num_classes=10)
    conv = pydl.convert(ref)
    assert pydl_layer_count(conv) > 0
    x = torch.randn(4, 3, 64, 64) if name == "resnet18" else torch.randn(2, 3, 32, 32)
    if name == "vgg11":  # dropout: same mask needs the same RNG stream
        ref.eval(), conv.eval()
    for mode in ("train", "eval"):
        getattr(ref, mode)(), getattr(conv, mode)()
        y_ref, y = _train_step(ref, x, 1), _train_step(conv, x, 1)
        assert rel_err(y, y_ref) < 1e-3, mode
        for (n, p), q in zip(ref.named_parameters(), conv.parameters()):
            assert rel_err(q.grad, p.grad) < 1e-3, (mode, n, rel_err(q.grad, p.grad))
            p.grad = q.grad = None
        for (n, b), c in zip(ref.named_buffers(), conv.buffers()):
            assert torch.equal(b, c) or rel_err(c, b) < 1e-4, (mode, n)
    # checkpoints both ways
    conv.load_state_dict(ref.state_dict())
    ref.load_state_dict(pydl.revert(conv).state_dict())


@pytest.mark.parametrize("name", ["alexnet", "vgg11", "vgg16", "resnet18", "resnet34", "resnet50"])
def test_zoo_loads_torchvision_checkpoints(name):
    tv = getattr(torchvision.models, name)(weights=None)
    twin = getattr(M, name)(layers=nn)
    assert list(twin.state_dict().keys()) == list(tv.state_dict().keys())
    twin.load_state_dict(tv.state_dict(), strict=True)
    if all(hasattr(pydl.nn, n) for n in M._NEEDED):
        ours = getattr(M, name)()
        ours.load_state_dict(tv.state_dict(), strict=True)


def test_zoo_twin_outputs_match_torchvision():
    tv = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    twin = M.resnet18(num_classes=7, layers=nn).eval()
    twin.load_state_dict(tv.state_dict())
    x = torch.randn(1, 3, 40, 40)
    assert torch.allclose(twin(x), tv(x), atol=1e-5)


def test_lenet5_shapes():
    model = M.lenet5(layers=nn)
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 10)


# ---------------------------------------------------------------------------- torch.fx
def test_fx_traces_pydl_layers_as_leaves():
    """torch.fx.symbolic_trace of a converted model gives torch's graph: each pydl layer one
    call_module node (pydl.nn._fx), so the graph runs the layer itself -- its train/eval
    mode is the module's at run time, not baked in at trace time; torchvision's
    create_feature_extractor returns the same features as for the torch model."""
    from torchvision.models.feature_extraction import create_feature_extractor
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None, num_classes=10)
    conv = pydl.convert(ref)
    g_ref, g = torch.fx.symbolic_trace(ref), torch.fx.symbolic_trace(conv)
    nodes = [(n.op, str(n.target)) for n in g.graph.nodes]
    assert nodes == [(n.op, str(n.target)) for n in g_ref.graph.nodes]
    assert sum(op == "call_module" for op, _ in nodes) == 60  # convs, BNs, ReLUs, pools, fc
    x = torch.randn(2, 3, 48, 40)
    g.eval()   # traced in training mode; the layers follow the graph module's mode
    before = [b.clone() for b in conv.buffers()]
    y = g(x)
    assert all(torch.equal(a, b) for a, b in zip(before, conv.buffers()))
    assert torch.equal(y, conv.eval()(x))
    ref.eval()
    outs = {"layer2": "f2", "avgpool": "pooled", "fc": "logits"}
    fe, fe_ref = create_feature_extractor(conv, outs), create_feature_extractor(ref, outs)
    got, want = fe(x), fe_ref(x)
    assert got.keys() == want.keys()
    for k in want:
        assert rel_err(got[k], want[k]) < 1e-5, k


def test_fx_traces_functional_calls_as_nodes():
    """A forward that calls pydl.functional directly traces to one call_function node per
    call (torch.fx.wrap), as torch.nn.functional's calls do, and the graph computes the
    same result."""
    F = pydl.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 3, 3, 3))
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = F.conv2d(x, self.w, padding=1)
            y = F.batch_norm(y, self.bn.running_mean, self.bn.running_var, self.bn.weight,
                             self.bn.bias, True, 0.1, 1e-5)
            y = F.max_pool2d(F.relu(y), 2)
            return F.adaptive_avg_pool2d(y, 1).flatten(1)

    torch.manual_seed(0)
    net = Net()
    g = torch.fx.symbolic_trace(net)
    targets = [n.target for n in g.graph.nodes if n.op == "call_function"]
    assert targets == [F.conv2d, F.batch_norm, F.relu, F.max_pool2d, F.adaptive_avg_pool2d]
    x = torch.randn(2, 3, 9, 8)
    torch.manual_seed(1)
    net2 = Net()
    net2.load_state_dict(net.state_dict())
    assert torch.equal(g(x), net2(x))
    assert torch.equal(net.bn.running_mean, net2.bn.running_mean)


# ------------------------------------------------------- parametrizations, pruning, hooks
def test_parametrized_layers_convert_and_revert():
    """A layer re-typed by torch.nn.utils.parametrize (weight_norm, spectral_norm: class
    Parametrized<Name>) is converted with its parametrizations: pydl's kernels, the same
    outputs and gradients of the original tensors, the same state_dict keys;
    remove_parametrizations leaves the pydl class, revert the torch one."""
    from torch.nn.utils import parametrizations, parametrize
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 4, 1))
    parametrizations.weight_norm(ref[0])
    parametrizations.spectral_norm(ref[3])
    conv, rep = pydl.convert(ref, report=True)
    assert not rep.left and [c for _, c in rep.converted].count("ParametrizedConv2d") == 2
    for i in (0, 3):
        assert isinstance(conv[i], pydl.nn.Conv2d) and parametrize.is_parametrized(conv[i])
    assert conv.state_dict().keys() == ref.state_dict().keys()
    ref.eval(), conv.eval()
    x = torch.randn(2, 3, 9, 7)
    assert rel_err(conv(x), ref(x)) < 1e-5
    conv(x).square().sum().backward()
    ref(x).square().sum().backward()
    for (n, p), q in zip(ref.named_parameters(), conv.parameters()):
        assert rel_err(q.grad, p.grad) < 1e-5, n
    parametrize.remove_parametrizations(conv[0], "weight")
    assert type(conv[0]) is pydl.nn.Conv2d
    back = pydl.revert(conv)
    assert type(back[0]) is nn.Conv2d and type(back[3]).__bases__ == (nn.Conv2d,)
    assert parametrize.is_parametrized(back[3])


def test_pruned_model_converts_in_place():
    """Pruning (and the old hook-based weight_norm) keeps computed tensors as attributes,
    which torch cannot deep-copy: convert says to pass inplace=True, which works (the
    pruning's forward pre-hook stays on the converted layer)."""
    import torch.nn.utils.prune as prune
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 2, 1))
    prune.l1_unstructured(ref[0], "weight", amount=0.5)
    x = torch.randn(2, 3, 7, 7)
    want = ref(x)
    with pytest.raises(RuntimeError, match="inplace=True"):
        pydl.convert(ref)
    conv = pydl.convert(ref, inplace=True)
    assert type(conv[0]) is pydl.nn.Conv2d
    assert rel_err(conv(x), want) < 1e-5
    assert int((conv[0].weight == 0).sum()) == 81  # half of 6*3*3*3

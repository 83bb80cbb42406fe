"""Zero-size inputs, pydl against torch: every op on inputs with one or more empty
dimensions (batch, channels, H, W, unbatched), both layouts, forward and backward.

Run as `python tests/zero_size.py BACKEND DEVICE` (tests/test_reliability.py runs it in a
subprocess, so a crash -- an integer division by an empty plane's size was one -- fails the
test instead of killing the run). Each case prints `SAME name` or `DIFF name: ...`; a case
agrees with torch when both raise, or both return outputs (and, where one exists, the
backward's gradients) of the same shapes and values. The last line is `DONE n`.

Where pydl deliberately differs, DELIBERATE below says so and why; those print `KNOWN`."""
import itertools
import sys

import torch
import torch.nn.functional as TF

import pydl.functional as F

# (op prefix, predicate on the input shape / output size, what torch does, what pydl does,
# why): where pydl deliberately differs. A case there must show exactly that pair of
# outcomes ("ok" or "raise"), else it is a DIFF too.
DELIBERATE = [
    # torch's empty-input batch norm scales by weight[0] and raises IndexError when there
    # are no channels; pydl returns the (empty) normalized input and leaves the (empty)
    # running statistics alone
    ("batch_norm", lambda shp, arg: shp[1] == 0, "raise", "ok",
     "torch raises IndexError from weight[0] for zero channels; pydl returns the empty result"),
    # torch computes a 1x1 adaptive average as x.mean((-2, -1)), which accepts empty planes
    # (NaN for each (n, c)); every other output size raises for the same input, as pydl does
    ("adaptive_avg", lambda shp, arg: arg == 1 and (shp[-1] == 0 or shp[-2] == 0), "ok", "raise",
     "torch's 1x1 shortcut (a mean) accepts empty planes; other output sizes raise, as pydl"),
    # torch's adaptive average pooling accepts zero channels forward but its backward
    # refuses the (empty) gradient; pydl's backward returns the empty input gradient
    ("adaptive_avg", lambda shp, arg: arg != 1 and len(shp) == 4 and shp[1] == 0, "raise", "ok",
     "torch's backward raises for zero channels (its forward accepts them); pydl's does not"),
]


def outcome(fn, args):
    try:
        ys = fn(*args)
        ys = ys if isinstance(ys, tuple) else (ys,)
        grads = None
        if ys[0].dtype.is_floating_point and ys[0].requires_grad:
            ys[0].sum().backward()
            grads = [None if a.grad is None else a.grad.detach().clone()
                     for a in args if torch.is_tensor(a) and a.requires_grad]
        return ("ok", [y.detach().clone() for y in ys], grads)
    except Exception as e:  # noqa: BLE001 -- the exception type is compared, not handled
        return ("raise", type(e).__name__, str(e).split("\n")[0][:120])


def _eq(u, v):
    if u is None or v is None:
        return u is v
    return u.shape == v.shape and u.dtype == v.dtype and \
        torch.allclose(u.double(), v.double(), equal_nan=True, atol=1e-5)


def same(a, b) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "raise":
        return True
    if len(a[1]) != len(b[1]) or not all(_eq(u, v) for u, v in zip(a[1], b[1])):
        return False
    if (a[2] is None) != (b[2] is None):
        return False
    return a[2] is None or (len(a[2]) == len(b[2]) and all(_eq(u, v) for u, v in zip(a[2], b[2])))


def show(o):
    return o if o[0] == "raise" else ("ok", [tuple(t.shape) for t in o[1]])


def main(backend: str, device: str) -> int:
    n = 0

    def case(name, shp, arg, tfn, pfn, make):
        nonlocal n
        n += 1
        torch.manual_seed(n)
        args = make()
        t = outcome(tfn, args)
        torch.manual_seed(n)
        p = outcome(pfn, make())
        if same(t, p):
            print("SAME", name, flush=True)
            return
        for prefix, applies, torch_does, pydl_does, why in DELIBERATE:
            if name.startswith(prefix) and applies(shp, arg) and \
                    (t[0], p[0]) == (torch_does, pydl_does):
                print("KNOWN", name, "--", why, flush=True)
                return
        print("DIFF", name, ": torch", show(t), "pydl", show(p), flush=True)

    def inp(shp, cl):
        x = torch.randn(*shp, device=device)
        if cl and len(shp) == 4:
            x = x.to(memory_format=torch.channels_last)
        return x.requires_grad_()

    shapes = [s for s in itertools.product([0, 2], [0, 3], [0, 5], [0, 4]) if 0 in s]
    shapes += [(0, 3, 5), (3, 0, 5), (3, 5, 0)]
    # no channels with many values per (absent) channel: the CUDA batch norm sized its
    # workspace by dividing by the channel tiles (SIGFPE) -- with few values the compiler had
    # dropped the unused division, so the small shapes above passed by luck
    shapes += [(64, 0, 17, 16)]
    for shp, cl in itertools.product(shapes, (False, True)):
        if cl and len(shp) == 3:
            continue
        tag = f"{shp}{' CL' if cl else ''}"
        C = shp[-3]
        for oc, kw in [(4, dict()), (4, dict(padding=1)), (4, dict(stride=2, padding=1)),
                       (0, dict())]:
            def mk(oc=oc):
                return (inp(shp, cl), torch.randn(oc, C, 3, 3, device=device, requires_grad=True),
                        torch.randn(oc, device=device, requires_grad=True))
            case(f"conv2d {tag} oc={oc} {kw}", shp, kw,
                 lambda x, w, b: TF.conv2d(x, w, b, **kw),
                 lambda x, w, b: F.conv2d(x, w, b, backend=backend, **kw), mk)
        # a 1x1 kernel with padding has a non-empty padded input even for empty planes
        case(f"conv2d 1x1 {tag} padding=1", shp, None,
             lambda x, w: TF.conv2d(x, w, padding=1),
             lambda x, w: F.conv2d(x, w, padding=1, backend=backend),
             lambda: (inp(shp, cl), torch.randn(2, C, 1, 1, device=device, requires_grad=True)))
        for kw in [dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1)]:
            case(f"max_pool2d {tag} {kw}", shp, kw, lambda x: TF.max_pool2d(x, return_indices=True, **kw),
                 lambda x: F.max_pool2d(x, return_indices=True, backend=backend, **kw),
                 lambda: (inp(shp, cl),))
            case(f"avg_pool2d {tag} {kw}", shp, kw, lambda x: TF.avg_pool2d(x, **kw),
                 lambda x: F.avg_pool2d(x, backend=backend, **kw), lambda: (inp(shp, cl),))
        for size in [(2, 2), 1, (None, 3)]:
            case(f"adaptive_avg_pool2d {tag} {size}", shp, size,
                 lambda x: TF.adaptive_avg_pool2d(x, size),
                 lambda x: F.adaptive_avg_pool2d(x, size, backend=backend), lambda: (inp(shp, cl),))
            case(f"adaptive_max_pool2d {tag} {size}", shp, size,
                 lambda x: TF.adaptive_max_pool2d(x, size, return_indices=True),
                 lambda x: F.adaptive_max_pool2d(x, size, return_indices=True, backend=backend),
                 lambda: (inp(shp, cl),))
        if len(shp) == 4:
            for training, stats in [(True, True), (True, False), (False, True)]:
                def mkb():
                    c = shp[1]
                    return (inp(shp, cl), torch.zeros(c, device=device) if stats else None,
                            torch.ones(c, device=device) if stats else None,
                            torch.randn(c, device=device, requires_grad=True),
                            torch.randn(c, device=device, requires_grad=True))

                def bn(f, **kw):
                    def run(x, rm, rv, w, b):
                        y = f(x, rm, rv, w, b, training=training, **kw)
                        return (y,) + tuple(t for t in (rm, rv) if t is not None)
                    return run
                case(f"batch_norm {tag} training={training} stats={stats}", shp, None,
                     bn(TF.batch_norm), bn(F.batch_norm, backend=backend), mkb)
        for act in ["relu", "sigmoid", "tanh", "elu", "leaky_relu"]:
            tf = getattr(TF, act, None) or getattr(torch, act)
            case(f"{act} {tag}", shp, None, tf, lambda x: getattr(F, act)(x, backend=backend),
                 lambda: (inp(shp, cl),))
    print("DONE", n, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))

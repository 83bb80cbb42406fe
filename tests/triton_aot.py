"""Compile every Triton kernel pydl launches for an H100 (sm_90) -- without a GPU.

Why: on a machine without a GPU the Triton kernels only ever run under the interpreter
(TRITON_INTERPRET=1), which executes their Python body with numpy and never runs
Triton's compiler. What only the compiler checks -- tl.dot operand and precision rules,
layouts, constexpr branches that do not type-check, shared memory over the per-block
limit -- would otherwise first show on a GPU, where device time is scarce.

How: this script imports pydl with the *compiled* Triton kernels (TRITON_INTERPRET unset)
and replaces the launch (JITFunction.run) by a recorder: the real launch helpers in
pydl/kernels/*.py then run, on CPU tensors, with the block sizes they use on a GPU, and
every launch is recorded as (kernel, argument types, constexpr values, num_warps,
num_stages) -- nothing is executed. The autotuned conv kernels record every config. The
driver below calls the public API (forward and backward, every dtype, both layouts, the
flags that select constexpr branches) and the optimizer steps. Each distinct
specialization is then compiled with triton.compile(..., target=GPUTarget("cuda", 90, 32))
down to a cubin (ptxas), and its resources are checked against an H100's limits:
shared memory per block <= 227 KiB, registers x threads <= 64 Ki, and no register
spilling but in the GEMM tiles' slow paths (see compile_all).

    python tests/triton_aot.py            # a covering subset (every constexpr branch, every
                                          # tile shape per dtype); one line per variant
    python tests/triton_aot.py --all      # every recorded variant (~15 min on 2 cores)
    python tests/triton_aot.py conv pool  # only some families
    python tests/triton_aot.py --list     # the recorded variants, no compilation

Exit status 0 and a last line "all N compiled" on success. Run by
tests/test_triton_aot.py (CI); with a GPU the test suite compiles and runs the kernels
itself.
"""
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.backends.compiler import BaseBackend  # noqa: E402
from triton.runtime.jit import JITFunction, native_specialize_impl  # noqa: E402

import pydl  # noqa: E402
from pydl import _dispatch  # noqa: E402

SMEM_LIMIT = 232448        # bytes of shared memory one block may use on sm_90 (227 KiB)
REGS_PER_SM = 65536        # 32-bit registers per SM: a block must fit in them
SPILL_CAP = 1536           # bytes of spill a thread tolerated on the GEMMs' slow paths
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")

# ------------------------------------------------------------------ recording launches
RECORDS = {}  # key -> (JITFunction, signature, constexprs, attrs, options)


def _record(fn: JITFunction, args, kwargs):
    """One launch, specialized as the JIT would: an int argument equal to 1 becomes the
    constant 1, and ints and pointers divisible by 16 get the divisibility hint (which lets
    Triton vectorize loads), except where the kernel says do_not_specialize -- so what is
    compiled here is what a GPU run compiles."""
    options = {k: kwargs.pop(k) for k in LAUNCH_OPTIONS if k in kwargs and kwargs[k] is not None}
    options.setdefault("num_warps", 4)
    options.setdefault("num_stages", 3)
    bound = dict(zip(fn.arg_names, args))
    bound.update(kwargs)
    sig, consts, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        name = p.name
        v = bound[name] if name in bound else p.default
        if p.is_constexpr:
            sig[name] = "constexpr"
            consts[name] = v
            continue
        ann = getattr(p, "annotation_type", "")  # e.g. `eps64: tl.float64`: the JIT obeys it
        if ann and not ann.startswith("*"):
            sig[name] = ann
            continue
        t, hint = native_specialize_impl(BaseBackend, v, False, not p.do_not_specialize,
                                         not p.do_not_specialize_on_alignment)
        sig[name] = t
        if t == "constexpr":  # None, an int equal to 1, or a tl.dtype passed positionally
            consts[name] = v
        elif hint == "D":
            attrs[(i,)] = BaseBackend.parse_attr(hint)
    key = (fn.__name__, fn.fn.__module__, tuple(sig.items()),
           tuple((k, repr(v)) for k, v in consts.items()), tuple(sorted(attrs)),
           tuple(sorted(options.items())))
    RECORDS.setdefault(key, (fn, sig, consts, attrs, options))


GRID_PROBLEMS = []  # launches whose grid a GPU would refuse


def _check_grid(fn: JITFunction, grid, args, kwargs):
    """CUDA's launch limits: at most 2^31 - 1 blocks on the grid's x axis, 65535 on y, z."""
    if callable(grid):
        named = dict(zip(fn.arg_names, args))
        named.update(kwargs)
        grid = grid(named)
    grid = tuple(grid) + (1,) * (3 - len(grid))
    if grid[0] > 2 ** 31 - 1 or grid[1] > 65535 or grid[2] > 65535:
        GRID_PROBLEMS.append(f"{fn.__name__}: grid {grid} exceeds CUDA's (2^31-1, 65535, 65535)")


def _jit_run(self, *args, grid, warmup, **kwargs):
    _check_grid(self, grid, args, kwargs)
    _record(self, args, dict(kwargs))


def _autotune_run(self, *args, **kwargs):
    # every config the tuner would time (after its pruning; or the pinned one), each
    # recorded as a launch
    self.nargs = dict(zip(self.arg_names, args))
    configs = self.prune_configs(kwargs) if len(self.configs) > 1 else self.configs
    for cfg in configs:
        self.fn.run(*args, **kwargs, **cfg.all_kwargs())


JITFunction.run = _jit_run
Autotuner.run = _autotune_run
# the Triton backend on CPU tensors, only to walk the launch helpers (nothing runs)
_dispatch._STATUS["triton"] = _dispatch.BackendStatus(True, True, ("cpu",), "AOT recording")
from pydl.kernels import conv as _kconv  # noqa: E402

_kconv._num_sms = lambda device: 132  # an H100 SXM
import pydl.ops.conv as _oconv  # noqa: E402

# float32 convs use TF32 when torch's would -- decided only for CUDA tensors; here too
_oconv._tf32 = lambda x: x.dtype == torch.float32 and _oconv.tf32_allowed()


# ---------------------------------------------------------------------------- driver
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _x(shape, dtype, cl):
    x = torch.randn(shape, dtype=dtype)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    return x.requires_grad_()


def _backward(y):
    if isinstance(y, tuple):
        y = y[0]
    y.backward(torch.ones_like(y))


def drive_conv():
    # ResNet-like layers (channel counts multiples of 16, so the strides carry the
    # divisibility hints a real network's do; 3x3 stride 1 and 2, 1x1), one odd grouped one
    # and one with a single output pixel
    F = pydl.functional
    layers = [((2, 64, 14, 14), (64, 64, 3, 3), dict(stride=1, padding=1)),
              ((2, 64, 15, 15), (128, 64, 3, 3), dict(stride=2, padding=1)),
              ((2, 256, 7, 7), (64, 256, 1, 1), dict()),
              ((2, 6, 9, 9), (4, 3, 3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=2, groups=2)),
              # a squeeze-excitation 1x1 conv on a 1x1 map of one image: OH, OW, M (and the
              # input gradient's rows) are 1, which the JIT makes constexprs
              ((1, 16, 1, 1), (16, 16, 1, 1), dict())]
    for dtype in DTYPES:
        for cl in (False, True):
            for tf32 in ((False, True) if dtype == torch.float32 else (False,)):
                torch.backends.cudnn.allow_tf32 = tf32
                for xs, ws, kw in layers:
                    x = _x(xs, dtype, cl)
                    w = torch.randn(ws, dtype=dtype, requires_grad=True)
                    b = torch.randn(ws[0], dtype=dtype, requires_grad=True)
                    _backward(F.conv2d(x, w, b, activation="relu", backend="triton", **kw))
                    _backward(F.conv2d(x, w, None, backend="triton", **kw))
    torch.backends.cudnn.allow_tf32 = True


def drive_pool():
    F = pydl.functional
    for dtype in DTYPES:
        for cl in (False, True):
            x = _x((2, 5, 9, 11), dtype, cl)
            _backward(F.max_pool2d(x, 3, 2, 1, backend="triton"))
            _backward(F.max_pool2d(x, 2, return_indices=True, backend="triton"))
            _backward(F.max_pool2d(x, 3, 1, 1, 2, ceil_mode=True, backend="triton"))
            with torch.no_grad():
                F.max_pool2d(x, 3, 2, backend="triton")  # values only
            _backward(F.avg_pool2d(x, 3, 2, 1, backend="triton"))
            _backward(F.avg_pool2d(x, 2, count_include_pad=False, divisor_override=3,
                                   backend="triton"))
            _backward(F.adaptive_avg_pool2d(x, (4, 3), backend="triton"))
            _backward(F.adaptive_avg_pool2d(x, 1, backend="triton"))
            _backward(F.adaptive_max_pool2d(x, (4, 5), return_indices=True, backend="triton"))
            # double backward of max pooling: the gather kernel
            y = F.max_pool2d(x, 2, backend="triton")
            v = torch.ones_like(y, requires_grad=True)
            (g,) = torch.autograd.grad(y, x, v, create_graph=True)
            g.backward(torch.ones_like(g))  # d(dx)/dv gathers v's gradient at the argmax


def drive_batchnorm():
    F = pydl.functional
    for dtype in DTYPES[:3] + [torch.float64]:
        pdt = torch.float64 if dtype == torch.float64 else torch.float32
        for cl in (False, True):
            x = _x((3, 5, 7, 9), dtype, cl)
            w = torch.rand(5, dtype=pdt, requires_grad=True)
            b = torch.rand(5, dtype=pdt, requires_grad=True)
            rm, rv = torch.zeros(5, dtype=pdt), torch.ones(5, dtype=pdt)
            r = _x((3, 5, 7, 9), dtype, cl)
            for training in (True, False):
                _backward(F.batch_norm(x, rm, rv, w, b, training, backend="triton"))
                _backward(F.batch_norm(x, rm, rv, None, None, training, backend="triton"))
                for act in ("relu", "leaky_relu"):
                    _backward(F.batch_norm_act(x, rm, rv, w, b, training, residual=r, act=act,
                                               backend="triton"))
            x1 = _x((4, 5), dtype, False)  # BatchNorm1d on (N, C)
            _backward(F.batch_norm(x1, rm, rv, w, b, True, backend="triton"))


def drive_activation():
    F = pydl.functional
    for dtype in DTYPES:
        x = _x((3, 7, 5), dtype, False)
        for f in (F.relu, F.leaky_relu, F.elu, F.sigmoid, F.tanh):
            _backward(f(x, backend="triton"))


def drive_optim():
    kinds = [(pydl.optim.SGD, dict(lr=0.1)), (pydl.optim.SGD, dict(lr=0.1, momentum=0.9)),
             (pydl.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1,
                                   maximize=True)),
             (pydl.optim.Adam, dict(lr=0.1)), (pydl.optim.Adam, dict(lr=0.1, amsgrad=True,
                                                                     weight_decay=0.1)),
             (pydl.optim.AdamW, dict(lr=0.1, maximize=True)),
             (pydl.optim.RMSprop, dict(lr=0.1)),
             (pydl.optim.RMSprop, dict(lr=0.1, centered=True, momentum=0.9, weight_decay=0.1)),
             (pydl.optim.Adagrad, dict(lr=0.1)), (pydl.optim.Adagrad, dict(lr=0.1, weight_decay=0.1))]
    for dtype in DTYPES:
        for cls, kw in kinds:
            for amp in (False, True):
                ps = [torch.randn(s, dtype=dtype, requires_grad=True) for s in ((3, 5), (7,))]
                for p in ps:
                    p.grad = torch.randn_like(p)
                opt = cls(ps, backend="triton", **kw)
                if amp:
                    opt.grad_scale = torch.ones((), dtype=torch.float32)
                    opt.found_inf = torch.zeros((), dtype=torch.float32)
                opt.step()
                opt.step()


def drive_huge():
    """The largest shapes the GPU tests use, and past them: index spaces near 2^31 (the conv's
    int64 index variant), one 8192 x 8200 plane, 2^31 + elements. Tensors are torch.empty --
    CPU pages that are never touched, since nothing is computed -- and gradients empty_like."""
    F = pydl.functional

    def bwd(y):
        y = y[0] if isinstance(y, tuple) else y
        y.backward(torch.empty_like(y))

    def big(shape, dtype=torch.float16, cl=False):
        x = torch.empty(shape, dtype=dtype)
        return (x.to(memory_format=torch.channels_last) if cl else x).requires_grad_()

    x = big((1, 1, 32768, 32768))                       # 2^30 output pixels: int64 indices
    w = torch.empty((4, 1, 3, 3), dtype=torch.float16, requires_grad=True)
    bwd(F.conv2d(x, w, None, padding=1, backend="triton"))
    x = big((256, 3, 224, 224), torch.bfloat16, True)   # a ResNet stem at batch 256
    w = torch.empty((64, 3, 7, 7), dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    bwd(F.conv2d(x, w.requires_grad_(), None, stride=2, padding=3, backend="triton"))
    # more groups than a grid's third axis holds (a depthwise conv of 1024 channels under
    # vmap over a batch of 80: 81920 groups): launched in chunks of at most 65535
    x = big((2, 81920, 5, 5), torch.bfloat16)
    w = torch.empty((81920, 1, 3, 3), dtype=torch.bfloat16, requires_grad=True)
    bwd(F.conv2d(x, w, None, padding=1, groups=81920, backend="triton"))
    for cl in (False, True):
        x = big((1, 2, 8192, 8200), cl=cl)              # 67M-pixel planes
        rm, rv = torch.zeros(2), torch.ones(2)
        bwd(F.batch_norm(x, rm, rv, torch.ones(2, requires_grad=True), None, True,
                         backend="triton"))
    x = big((1, 2, 32768, 32800))                       # 2^31 + 2^21 elements
    bwd(F.max_pool2d(x, 2, return_indices=True, backend="triton"))
    bwd(F.avg_pool2d(x, 3, 2, backend="triton"))
    bwd(F.adaptive_avg_pool2d(x.detach().view(1, 65536, 32800, 1).requires_grad_(), 1,
                              backend="triton"))
    bwd(F.relu(big((2 ** 31 + 1000,)), backend="triton"))
    ps = [torch.empty(25_000_000, requires_grad=True) for _ in range(4)]  # 100M parameters
    for p in ps:
        p.grad = torch.empty_like(p)
    pydl.optim.Adam(ps, backend="triton").step()


DRIVERS = [drive_conv, drive_pool, drive_batchnorm, drive_activation, drive_optim, drive_huge]


# ------------------------------------------------------------------------ selection
def _features(rec):
    """What a variant exercises: its kernel, each constexpr value (a branch of the code),
    its pointer dtypes, and for the tiled kernels its block shape per element type (shared
    memory grows with both)."""
    fn, sig, consts, attrs, options = rec
    name = fn.__name__
    ptrs = tuple(sorted({t for t in sig.values() if t.startswith("*")}))
    out = {(name,), (name, "ptrs", ptrs)}
    out |= {(name, k, repr(v)) for k, v in consts.items() if not k.startswith("BLOCK")}
    if "BLOCK_M" in consts:
        out.add((name, "tile", consts["BLOCK_M"], consts["BLOCK_N"], consts["BLOCK_K"],
                 options["num_warps"], options["num_stages"], sig[fn.arg_names[0]]))
    return out


def cover(records):
    """A subset in which every feature of every recorded variant appears at least once
    (greedy, in recording order): each constexpr branch and each tile shape x dtype is
    compiled, not every combination of them."""
    seen, out = set(), []
    for rec in records:
        f = _features(rec)
        if not f <= seen:
            seen |= f
            out.append(rec)
    return out


# ------------------------------------------------------------------------ compilation
def _cuobjdump():
    from triton.backends.nvidia import compiler as nv
    try:
        return nv.get_ptxas().path.replace("ptxas", "cuobjdump")  # Triton >= 3.4
    except Exception:  # noqa: BLE001 -- older layouts: next to the bundled ptxas
        return os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump")


def _resources(cubin: bytes, tool: str):
    """(registers per thread, stack bytes per thread) of the kernel in a cubin. A stack
    frame in a Triton kernel (which makes no calls) is register spilling: values that did
    not fit in the registers, stored to and reloaded from local memory."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                             text=True).stdout
    regs = [int(tok[4:]) for tok in out.split() if tok.startswith("REG:")]
    stack = [int(tok[6:]) for tok in out.split() if tok.startswith("STACK:")]
    return (max(regs) if regs else -1), (max(stack) if stack else -1)


def _loop_bodies(cubin: bytes, tool: str):
    """The SASS instructions of each loop (a backward branch to an earlier address)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True).stdout
    code = [(int(m.group(1), 16), m.group(2)) for m in
            re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = []
    for at, ins in code:
        target = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", ins)
        if target and int(target.group(1), 16) < at:
            start = int(target.group(1), 16)
            loops.append([i for a, i in code if start <= a <= at])
    return loops


# the GEMM kernels' channel count that is contiguous in channels_last memory
_VECTOR_DIM = {"conv2d_fwd_kernel": "Cg", "conv2d_bwd_input_kernel": "OCg",
               "conv2d_bwd_weight_kernel": "Cg"}


def _spill_cap(fn, sig, consts, attrs) -> int:
    if "BLOCK_M" not in consts:
        return 0
    vec = _VECTOR_DIM.get(fn.__name__)
    fast = (sig[fn.arg_names[0]] in ("*fp16", "*bf16")
            and consts.get("K_CL", consts.get("N_CL", False))
            and vec is not None and (fn.arg_names.index(vec),) in attrs)
    return 0 if fast else SPILL_CAP


def compile_all(records) -> int:
    tool = _cuobjdump()
    failures = 0
    for i, (fn, sig, consts, attrs, options) in enumerate(records):
        label = f"{fn.__name__} " + " ".join(
            f"{k}={v}" for k, v in consts.items() if v is not None) + \
            f" warps={options['num_warps']} stages={options['num_stages']} " + \
            ",".join(sorted({t for t in sig.values() if t.startswith("*")}))
        t0 = time.time()
        try:
            src = ASTSource(fn=fn, signature=sig, attrs=attrs,
                            constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
            k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
            smem = k.metadata.shared
            regs, stack = _resources(k.asm["cubin"], tool)
            threads = 32 * options["num_warps"]
            problems = []
            # Spilling: values that do not fit in registers go to local memory. None is
            # allowed but in the tiled GEMMs off their fast path -- 16-bit, channels_last,
            # a channel count the loads can be vectorized over (one that carries the JIT's
            # divisibility-by-16 hint): elsewhere the operands are gathered element by
            # element (NCHW, odd channel counts) or are 4-/8-byte elements (FMA float32 /
            # float64, TF32), the largest tiles need more than 255 registers a thread, and
            # may spill up to SPILL_CAP bytes (the autotuner also has smaller tiles).
            cap = _spill_cap(fn, sig, consts, attrs)
            note = ""
            if stack > cap and cap == 0 and stack <= SPILL_CAP and not any(
                    "LDL" in i or "STL" in i for body in _loop_bodies(k.asm["cubin"], tool) for i in body):
                # On the fast path a spill is tolerated only outside every loop: values parked
                # in local memory across the K loop (row offsets, epilogue addresses) and read
                # back once per program, not per K step. Seen with Triton 3.6 and 3.8 on the
                # strided (phase) input gradient with a channels_last weight, 128-row tiles.
                note = f" (spills {stack} B outside its loops)"
            elif stack > cap:
                problems.append(f"spills {stack} B of stack a thread (at most {cap}"
                                + (", and none inside a loop" if cap == 0 else "") + ")")
            # A kernel built for 32-bit indices must do no 64-bit division: on the GPU that is
            # a software routine of ~70 instructions, per element in a memory-bound kernel.
            div64 = len(re.findall(r"\b(?:div|rem)\.[su]64", k.asm["ptx"]))
            if consts.get("IDX") == tl.int32 and div64:
                problems.append("64-bit integer division in an IDX=int32 kernel")
            # A tap-major K loop carries its tap as counters: no integer division (on the GPU
            # a reciprocal-and-correct sequence, MUFU.RCP) may be left inside any loop.
            if consts.get("TAP_MAJOR") and any("MUFU.RCP" in i for body in _loop_bodies(k.asm["cubin"], tool)
                                               for i in body):
                problems.append("integer division inside the tap-major K loop")
            if smem > SMEM_LIMIT:
                problems.append(f"shared memory {smem} B > {SMEM_LIMIT}")
            if regs * threads > REGS_PER_SM:
                problems.append(f"{regs} registers x {threads} threads > {REGS_PER_SM}")
            status = "; ".join(problems) if problems else "ok" + note
            failures += bool(problems)
            print(f"[{i + 1}/{len(records)}] {status}: {label} (smem {smem} B, {regs} regs, "
                  f"stack {stack} B, {div64} div64, {time.time() - t0:.1f} s)", flush=True)
        except Exception as e:  # noqa: BLE001 -- report every variant, then fail
            failures += 1
            print(f"[{i + 1}/{len(records)}] FAILED: {label}\n    {type(e).__name__}: "
                  f"{str(e)[-1500:]}", flush=True)
    return failures


def main(argv):
    only = [a for a in argv if not a.startswith("--")]
    for drive in DRIVERS:
        if not only or drive.__name__.replace("drive_", "") in only:
            drive()
    records = list(RECORDS.values())
    print(f"recorded {len(records)} kernel variants (Triton {triton.__version__})", flush=True)
    for problem in GRID_PROBLEMS:
        print("GRID:", problem)
    if "--all" not in argv:
        records = cover(records)
        print(f"compiling a covering subset of {len(records)} (--all: every one)", flush=True)
    if "--list" in argv:
        for fn, sig, consts, attrs, options in records:
            print(fn.__name__, consts, options)
        return 0
    failures = compile_all(records) + len(GRID_PROBLEMS)
    if failures:
        print(f"{failures} of {len(records)} failed")
        return 1
    print(f"all {len(records)} compiled")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Fused multi-tensor optimizer steps in Triton: SGD, Adam/AdamW, RMSprop, Adagrad.

Per element, in float32 (float64 for float64 parameters), the formulas of
csrc/optim_math.h (the C++ twin), in torch.optim's order:

    SGD      g = -g (maximize);  g += wd*p
             buf = g (first step) | momentum*buf + (1-dampening)*g
             g = g + momentum*buf (nesterov) | buf;         p -= lr*g
    Adam     g = -g;  p *= 1 - lr*wd (AdamW) | g += wd*p (Adam)
             m = lerp(m, g, 1-beta1);  v = beta2*v + (1-beta2)*g*g;  vmax = max(vmax, v)
             p -= step_size * m / (sqrt(v|vmax) / bc2_sqrt + eps)
    RMSprop  sq = alpha*sq + (1-alpha)*g*g;  ga = lerp(ga, g, 1-alpha) (centered)
             avg = sqrt(sq - ga*ga | sq) + eps
             buf = momentum*buf + g/avg; p -= lr*buf  |  p -= lr*g/avg
    Adagrad  sum += g*g;  p -= clr * g / (sqrt(sum) + eps)

Multi-tensor decomposition (Apex's multi_tensor_apply, in Triton): the host builds
  * a pointer table: for each tensor list (params, grads, state...) the data pointer of
    every tensor, as int64 -- the kernel casts them back to typed pointers;
  * a numel table, and a chunk table: for every CHUNK elements of every tensor one
    (tensor index, start offset) entry;
  * a float64 table of hyperparameters;
all in one int64 and one float64 tensor, copied to the device once. ONE launch then
covers every tensor of the group: program c reads chunk c's (tensor, start), loads the
tensor's pointers, and streams its chunk in BLOCK-wide vector steps. Offsets are int64.

Step counts stay on the device (float32 scalars, their pointers one more list of the
table): each program reads its tensor's count t and computes the step-dependent scalars
(Adam's bias corrections by binary exponentiation, Adagrad's decayed lr) from t + 1 in
float64; a second small launch then adds 1 to every count (after the first: same
stream) -- two launches per group, nothing read back to the host.

GradScaler: with HAS_SCALE the gradient is divided by *grad_scale (and written back
unscaled, as torch's fused optimizers do); with HAS_INF a program
whose *found_inf != 0 makes its chunk empty -- the step is skipped on the device,
without a host synchronization.
"""
import torch
import triton
import triton.language as tl

from . import INTERPRET

CHUNK = 16384  # elements per program: enough work to hide the table lookups
BLOCK = 1024   # elements per vector step

_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
       torch.float64: tl.float64}


# The Triton interpreter (TRITON_INTERPRET=1) converts float32 -> bfloat16 by truncation
# (triton/runtime/interpreter.py, cast_impl), a GPU rounds to nearest even. An optimizer
# update is often far below a bfloat16 ulp, so truncation would move every parameter a
# whole ulp towards zero per step; under the interpreter the stores round explicitly.
_RNE_BF16 = tl.constexpr(INTERPRET)


# ---------------------------------------------------------------------------- helpers
@triton.jit
def _to(x, DT: tl.constexpr):
    """x (float32/float64) in storage dtype DT, rounded to nearest even."""
    if _RNE_BF16 and DT == tl.bfloat16:
        u = x.to(tl.float32).to(tl.uint32, bitcast=True)
        u = u + 0x7FFF + ((u >> 16) & 1)  # round half to even on the dropped 16 bits
        r = (u >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        return tl.where(x != x, x.to(DT), r)  # NaN stays NaN
    else:
        return x.to(DT)


@triton.jit
def _chunk(meta, n_tensors, n_chunks, inf_ptr, N_LISTS: tl.constexpr, HAS_INF: tl.constexpr,
           CHUNK: tl.constexpr):
    """(tensor index, start, end) of this program's chunk. meta = [pointers (N_LISTS x
    n_tensors) | numels (n_tensors) | chunk tensor (n_chunks) | chunk start (n_chunks)].
    With HAS_INF and *found_inf != 0 the chunk is empty: the step is skipped on the device."""
    c = tl.program_id(0)
    base = N_LISTS * n_tensors
    t = tl.load(meta + base + n_tensors + c)
    start = tl.load(meta + base + n_tensors + n_chunks + c)
    end = tl.minimum(tl.load(meta + base + t), start + CHUNK)
    if HAS_INF:
        end = tl.where(tl.load(inf_ptr) == 0, end, start)
    return t, start, end


@triton.jit
def _ptr(meta, n_tensors, t, LIST: tl.constexpr, DT: tl.constexpr):
    return tl.load(meta + LIST * n_tensors + t).to(tl.pointer_type(DT))


@triton.jit
def _powi(base, t):
    """base ** t for a whole number 0 <= t < 2^32 (a step count), by binary exponentiation:
    exact to a few ulps in float64, and needs no exp/log."""
    n = t.to(tl.int64)
    r = base * 0.0 + 1.0
    b = base
    for _ in tl.static_range(32):
        r = tl.where((n & 1) == 1, r * b, r)
        b = b * b
        n = n >> 1
    return r


@triton.jit
def _new_step(meta, n_tensors, t, LIST: tl.constexpr):
    """The tensor's step count after this step (float64)."""
    return tl.load(_ptr(meta, n_tensors, t, LIST, tl.float32)).to(tl.float64) + 1.0


@triton.jit
def bump_steps_kernel(meta, n_tensors, inf_ptr, LIST: tl.constexpr, HAS_INF: tl.constexpr,
                      NB: tl.constexpr):
    """Every step count (pointer list LIST of the table) += 1, unless found_inf is set."""
    n = n_tensors
    if HAS_INF:
        n = tl.where(tl.load(inf_ptr) == 0, n_tensors, 0)  # skipped step: no count moves
    offs = tl.program_id(0) * NB + tl.arange(0, NB)
    mask = offs < n
    ptrs = tl.load(meta + LIST * n_tensors + offs, mask=mask, other=0).to(
        tl.pointer_type(tl.float32))
    tl.store(ptrs, tl.load(ptrs, mask=mask) + 1.0, mask=mask)


@triton.jit
def _load_grad(g_ptr, offs, mask, scale_ptr, P_DT: tl.constexpr, C_DT: tl.constexpr,
               HAS_SCALE: tl.constexpr, MAXIMIZE: tl.constexpr):
    """The gradient every optimizer starts from: unscaled by GradScaler's scale (and written
    back unscaled, as torch's fused optimizers leave it), negated for maximize."""
    g = tl.load(g_ptr + offs, mask=mask).to(C_DT)
    if HAS_SCALE:
        g = g / tl.load(scale_ptr).to(C_DT)
        tl.store(g_ptr + offs, _to(g, P_DT), mask=mask)
    if MAXIMIZE:
        g = -g
    return g


@triton.jit
def _lerp(a, b, w):
    # torch's lerp: from the nearer end, so w = 1 gives b exactly
    return tl.where((w < 0.5) & (w > -0.5), a + w * (b - a), b - (b - a) * (1.0 - w))


# ---------------------------------------------------------------------------- kernels
@triton.jit
def sgd_kernel(meta, scal, n_tensors, n_chunks, scale_ptr, inf_ptr,
               P_DT: tl.constexpr, S_DT: tl.constexpr, C_DT: tl.constexpr,
               USE_BUF: tl.constexpr, FIRST: tl.constexpr, NESTEROV: tl.constexpr,
               MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr,
               HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, BLOCK: tl.constexpr,
               CHUNK: tl.constexpr):
    t, start, end = _chunk(meta, n_tensors, n_chunks, inf_ptr, 3, HAS_INF, CHUNK)
    p_ptr = _ptr(meta, n_tensors, t, 0, P_DT)
    g_ptr = _ptr(meta, n_tensors, t, 1, P_DT)
    b_ptr = _ptr(meta, n_tensors, t, 2, S_DT)
    lr = tl.load(scal + 0).to(C_DT)
    mom = tl.load(scal + 1).to(C_DT)
    damp_c = tl.load(scal + 2).to(C_DT)
    wd = tl.load(scal + 3).to(C_DT)
    for off in range(start, end, BLOCK):
        offs = off + tl.arange(0, BLOCK)
        mask = offs < end
        p = tl.load(p_ptr + offs, mask=mask).to(C_DT)
        g = _load_grad(g_ptr, offs, mask, scale_ptr, P_DT, C_DT, HAS_SCALE, MAXIMIZE)
        if HAS_WD:
            g = g + wd * p
        if USE_BUF:
            if FIRST:
                buf = g
            else:
                buf = tl.load(b_ptr + offs, mask=mask).to(C_DT) * mom + damp_c * g
            tl.store(b_ptr + offs, _to(buf, S_DT), mask=mask)
            if NESTEROV:
                g = g + mom * buf
            else:
                g = buf
        tl.store(p_ptr + offs, _to(p - lr * g, P_DT), mask=mask)


@triton.jit
def adam_kernel(meta, scal, n_tensors, n_chunks, scale_ptr, inf_ptr,
                P_DT: tl.constexpr, S_DT: tl.constexpr, C_DT: tl.constexpr,
                AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr,
                DECOUPLED: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr,
                BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    t, start, end = _chunk(meta, n_tensors, n_chunks, inf_ptr, 6, HAS_INF, CHUNK)
    p_ptr = _ptr(meta, n_tensors, t, 0, P_DT)
    g_ptr = _ptr(meta, n_tensors, t, 1, P_DT)
    m_ptr = _ptr(meta, n_tensors, t, 2, S_DT)
    v_ptr = _ptr(meta, n_tensors, t, 3, S_DT)
    vmax_ptr = _ptr(meta, n_tensors, t, 4, S_DT)
    beta1_c = tl.load(scal + 0).to(C_DT)
    beta2 = tl.load(scal + 1).to(C_DT)
    beta2_c = tl.load(scal + 2).to(C_DT)
    eps = tl.load(scal + 3).to(C_DT)
    wd = tl.load(scal + 4).to(C_DT)
    decay = tl.load(scal + 5).to(C_DT)
    # torch: step_size = lr / (1 - beta1^t), bias_correction2_sqrt = sqrt(1 - beta2^t)
    step = _new_step(meta, n_tensors, t, 5)
    step_size = (tl.load(scal + 6) / (1.0 - _powi(tl.load(scal + 7), step))).to(C_DT)
    bc2_sqrt = tl.sqrt(1.0 - _powi(tl.load(scal + 8), step)).to(C_DT)
    for off in range(start, end, BLOCK):
        offs = off + tl.arange(0, BLOCK)
        mask = offs < end
        p = tl.load(p_ptr + offs, mask=mask).to(C_DT)
        g = _load_grad(g_ptr, offs, mask, scale_ptr, P_DT, C_DT, HAS_SCALE, MAXIMIZE)
        m = tl.load(m_ptr + offs, mask=mask).to(C_DT)
        v = tl.load(v_ptr + offs, mask=mask).to(C_DT)
        if HAS_WD:
            if DECOUPLED:
                p = p * decay
            else:
                g = g + wd * p
        m = _lerp(m, g, beta1_c)
        v = v * beta2 + beta2_c * (g * g)
        s = v
        if AMSGRAD:
            vm = tl.load(vmax_ptr + offs, mask=mask).to(C_DT)
            vm = tl.where((vm != vm) | (vm > v), vm, v)  # torch.maximum: NaN wins
            tl.store(vmax_ptr + offs, _to(vm, S_DT), mask=mask)
            s = vm
        denom = tl.sqrt(s) / bc2_sqrt + eps
        tl.store(m_ptr + offs, _to(m, S_DT), mask=mask)
        tl.store(v_ptr + offs, _to(v, S_DT), mask=mask)
        tl.store(p_ptr + offs, _to(p - step_size * (m / denom), P_DT), mask=mask)


@triton.jit
def rmsprop_kernel(meta, scal, n_tensors, n_chunks, scale_ptr, inf_ptr,
                   P_DT: tl.constexpr, S_DT: tl.constexpr, C_DT: tl.constexpr,
                   CENTERED: tl.constexpr, USE_BUF: tl.constexpr, MAXIMIZE: tl.constexpr,
                   HAS_WD: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr,
                   BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    t, start, end = _chunk(meta, n_tensors, n_chunks, inf_ptr, 6, HAS_INF, CHUNK)
    p_ptr = _ptr(meta, n_tensors, t, 0, P_DT)
    g_ptr = _ptr(meta, n_tensors, t, 1, P_DT)
    sq_ptr = _ptr(meta, n_tensors, t, 2, S_DT)
    ga_ptr = _ptr(meta, n_tensors, t, 3, S_DT)
    b_ptr = _ptr(meta, n_tensors, t, 4, S_DT)
    lr = tl.load(scal + 0).to(C_DT)
    alpha = tl.load(scal + 1).to(C_DT)
    alpha_c = tl.load(scal + 2).to(C_DT)
    eps = tl.load(scal + 3).to(C_DT)
    wd = tl.load(scal + 4).to(C_DT)
    mom = tl.load(scal + 5).to(C_DT)
    for off in range(start, end, BLOCK):
        offs = off + tl.arange(0, BLOCK)
        mask = offs < end
        p = tl.load(p_ptr + offs, mask=mask).to(C_DT)
        g = _load_grad(g_ptr, offs, mask, scale_ptr, P_DT, C_DT, HAS_SCALE, MAXIMIZE)
        sq = tl.load(sq_ptr + offs, mask=mask).to(C_DT)
        if HAS_WD:
            g = g + wd * p
        sq = sq * alpha + alpha_c * (g * g)
        tl.store(sq_ptr + offs, _to(sq, S_DT), mask=mask)
        if CENTERED:
            ga = _lerp(tl.load(ga_ptr + offs, mask=mask).to(C_DT), g, alpha_c)
            tl.store(ga_ptr + offs, _to(ga, S_DT), mask=mask)
            avg = tl.sqrt(sq - ga * ga)
        else:
            avg = tl.sqrt(sq)
        avg = avg + eps
        if USE_BUF:
            buf = tl.load(b_ptr + offs, mask=mask).to(C_DT) * mom + g / avg
            tl.store(b_ptr + offs, _to(buf, S_DT), mask=mask)
            p = p - lr * buf
        else:
            p = p - lr * (g / avg)
        tl.store(p_ptr + offs, _to(p, P_DT), mask=mask)


@triton.jit
def adagrad_kernel(meta, scal, n_tensors, n_chunks, scale_ptr, inf_ptr,
                   P_DT: tl.constexpr, S_DT: tl.constexpr, C_DT: tl.constexpr,
                   MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr, HAS_SCALE: tl.constexpr,
                   HAS_INF: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    t, start, end = _chunk(meta, n_tensors, n_chunks, inf_ptr, 4, HAS_INF, CHUNK)
    p_ptr = _ptr(meta, n_tensors, t, 0, P_DT)
    g_ptr = _ptr(meta, n_tensors, t, 1, P_DT)
    s_ptr = _ptr(meta, n_tensors, t, 2, S_DT)
    eps = tl.load(scal + 0).to(C_DT)
    wd = tl.load(scal + 1).to(C_DT)
    # torch: clr = lr / (1 + (t - 1) * lr_decay)
    step = _new_step(meta, n_tensors, t, 3)
    clr = (tl.load(scal + 2) / (1.0 + (step - 1.0) * tl.load(scal + 3))).to(C_DT)
    for off in range(start, end, BLOCK):
        offs = off + tl.arange(0, BLOCK)
        mask = offs < end
        p = tl.load(p_ptr + offs, mask=mask).to(C_DT)
        g = _load_grad(g_ptr, offs, mask, scale_ptr, P_DT, C_DT, HAS_SCALE, MAXIMIZE)
        s = tl.load(s_ptr + offs, mask=mask).to(C_DT)
        if HAS_WD:
            g = g + wd * p
        s = s + g * g
        tl.store(s_ptr + offs, _to(s, S_DT), mask=mask)
        tl.store(p_ptr + offs, _to(p - clr * (g / (tl.sqrt(s) + eps)), P_DT), mask=mask)


# ----------------------------------------------------------------------- launch helpers
def _tables(lists, scalars, device):
    """The int64 meta table (pointers, numels, chunk table) and the float64 scalar table,
    on `device`. An empty list (unused state) gets null pointers: the kernel never
    dereferences them (its constexpr flags skip that state)."""
    params = lists[0]
    n = len(params)
    ptrs = []
    for lst in lists:
        ptrs += [t.data_ptr() for t in lst] if lst else [0] * n
    numels = [p.numel() for p in params]
    ctens, cstart = [], []
    for i, k in enumerate(numels):
        for s in range(0, k, CHUNK):
            ctens.append(i)
            cstart.append(s)
    meta = torch.tensor(ptrs + numels + ctens + cstart, dtype=torch.int64)
    scal = torch.tensor(scalars, dtype=torch.float64)
    if device.type != "cpu":  # one pinned host->device copy each, asynchronous
        meta = meta.pin_memory().to(device, non_blocking=True)
        scal = scal.pin_memory().to(device, non_blocking=True)
    return meta, scal, len(ctens)


def _bump_steps(meta, n, steps_list, found_inf):
    """The second launch: every step count += 1 unless found_inf (see the module doc)."""
    nb = 128
    bump_steps_kernel[(triton.cdiv(n, nb),)](
        meta, n, found_inf if found_inf is not None else meta, LIST=steps_list,
        HAS_INF=found_inf is not None, NB=nb)


def _amp_args(meta, grad_scale, found_inf):
    return (grad_scale if grad_scale is not None else meta,
            found_inf if found_inf is not None else meta,
            grad_scale is not None, found_inf is not None)


def _dtypes(params):
    p = params[0].dtype
    s = torch.float32 if p in (torch.float16, torch.bfloat16) else p
    c = tl.float64 if p == torch.float64 else tl.float32
    return _TL[p], _TL[s], c


def sgd_step(params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov, maximize,
             first, grad_scale, found_inf) -> None:
    if not params:
        return
    meta, scal, nc = _tables([params, grads, bufs], [lr, momentum, 1.0 - dampening,
                                                     weight_decay], params[0].device)
    if nc == 0:
        return
    sp, ip, hs, hi = _amp_args(meta, grad_scale, found_inf)
    pdt, sdt, cdt = _dtypes(params)
    sgd_kernel[(nc,)](meta, scal, len(params), nc, sp, ip, P_DT=pdt, S_DT=sdt, C_DT=cdt,
                      USE_BUF=momentum != 0, FIRST=first, NESTEROV=nesterov, MAXIMIZE=maximize,
                      HAS_WD=weight_decay != 0, HAS_SCALE=hs, HAS_INF=hi, BLOCK=BLOCK, CHUNK=CHUNK)


def adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1,
              beta2, eps, weight_decay, amsgrad, maximize, decoupled, grad_scale,
              found_inf) -> None:
    if not params:
        return
    sc = [1.0 - beta1, beta2, 1.0 - beta2, eps, weight_decay, 1.0 - lr * weight_decay, lr,
          beta1, beta2]
    meta, scal, nc = _tables([params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                              state_steps], sc, params[0].device)
    sp, ip, hs, hi = _amp_args(meta, grad_scale, found_inf)
    pdt, sdt, cdt = _dtypes(params)
    if nc:
        adam_kernel[(nc,)](meta, scal, len(params), nc, sp, ip, P_DT=pdt, S_DT=sdt, C_DT=cdt,
                           AMSGRAD=amsgrad, MAXIMIZE=maximize, HAS_WD=weight_decay != 0,
                           DECOUPLED=decoupled, HAS_SCALE=hs, HAS_INF=hi, BLOCK=BLOCK,
                           CHUNK=CHUNK)
    _bump_steps(meta, len(params), 5, found_inf)


def rmsprop_step(params, grads, square_avgs, grad_avgs, bufs, state_steps, lr, alpha, eps,
                 weight_decay, momentum, centered, maximize, grad_scale, found_inf) -> None:
    if not params:
        return
    meta, scal, nc = _tables([params, grads, square_avgs, grad_avgs, bufs, state_steps],
                             [lr, alpha, 1.0 - alpha, eps, weight_decay, momentum],
                             params[0].device)
    sp, ip, hs, hi = _amp_args(meta, grad_scale, found_inf)
    pdt, sdt, cdt = _dtypes(params)
    if nc:
        rmsprop_kernel[(nc,)](meta, scal, len(params), nc, sp, ip, P_DT=pdt, S_DT=sdt, C_DT=cdt,
                              CENTERED=centered, USE_BUF=momentum > 0, MAXIMIZE=maximize,
                              HAS_WD=weight_decay != 0, HAS_SCALE=hs, HAS_INF=hi, BLOCK=BLOCK,
                              CHUNK=CHUNK)
    _bump_steps(meta, len(params), 5, found_inf)


def adagrad_step(params, grads, state_sums, state_steps, lr, lr_decay, weight_decay, eps,
                 maximize, grad_scale, found_inf) -> None:
    if not params:
        return
    meta, scal, nc = _tables([params, grads, state_sums, state_steps],
                             [eps, weight_decay, lr, lr_decay], params[0].device)
    sp, ip, hs, hi = _amp_args(meta, grad_scale, found_inf)
    pdt, sdt, cdt = _dtypes(params)
    if nc:
        adagrad_kernel[(nc,)](meta, scal, len(params), nc, sp, ip, P_DT=pdt, S_DT=sdt, C_DT=cdt,
                              MAXIMIZE=maximize, HAS_WD=weight_decay != 0, HAS_SCALE=hs,
                              HAS_INF=hi, BLOCK=BLOCK, CHUNK=CHUNK)
    _bump_steps(meta, len(params), 3, found_inf)

"""Batch normalization in Triton (the formulas of csrc/batchnorm_math.h):

    mean_c, var_c  over the M = N * spatial values of channel c (var biased)
    y  = act((x - mean) * invstd * w + b [+ r]),   invstd = 1 / sqrt(var + eps)
    dz = g * act'(y);  sum_dz_c = sum dz;  sum_dz_xhat_c = invstd * sum dz * (x - mean)
    dx = w * invstd * (dz - k * (sum_dz + xhat * sum_dz_xhat))    k = 1/M (train), 0 (eval)

act: 0 none, 1 relu, 2 leaky_relu (alpha = negative_slope >= 0).

Layout: x is seen as (outer, C, inner), element (o, c, i) at (o*C + c)*inner + i:
NCHW = (N, C, H*W), channels-last = (N*H*W, C, 1). A channel's M values are indexed
j in [0, M) with o = j // inner, i = j % inner.

Decomposition of the reductions (statistics, backward sums), so that even a small C
fills the GPU: grid (channel tiles, B splits). Program (pc, pb) owns a tile of BLOCK_C
channels and the pb-th slice of their M values, walked as [BLOCK_J, BLOCK_C] tiles
(NCHW: BLOCK_C = 1, j runs along the contiguous plane; channels-last: the channel is
the contiguous axis, so it is the tile's fast dimension). Each lane keeps a Welford
state (count, mean, M2); at the end the lanes are merged in closed form --
mean = sum(n_l mean_l)/n, M2 = sum(M2_l + n_l (mean_l - mean)^2) -- and the program
writes one partial per channel. Values are shifted by the channel's first value
before accumulating, so a channel with mean 1e4 and std 1e-2 keeps its precision. A second tiny kernel merges the B partials of each
channel the same way, always in the same order: no atomics, so the result is the same
bits every run. Elementwise passes walk 2-D tiles: (planes, plane positions) for NCHW,
(rows, channels) for channels-last, so the channel of an element costs no division
and its coefficients are loaded once per tile row / column.
Offsets are int64 so tensors past 2^31 elements index correctly.
"""
import torch
import triton
import triton.language as tl

from . import INTERPRET

ACT_IDS = {"none": 0, "relu": 1, "leaky_relu": 2}

BLOCK = 1024          # elementwise: elements per program
TARGET_PROGRAMS = 8 if INTERPRET else 1024  # reduction programs to aim for (fills a GPU)


# A Python float reaches a compiled kernel as float32 unless its parameter is annotated
# tl.float64. eps, alpha and 1/count come twice: float64 statistics use the float64 copy
# (as float32, 1/count is off by ~1e-8 relative), float32 ones the float32 copy. The
# choice is on a constexpr flag, F64, written inline at each use: under the interpreter a
# test on a tensor's dtype, a helper returning the scalar, or an assignment would turn
# the float64 scalar into a float32 tensor.
@triton.jit
def _act(z, alpha, ACT: tl.constexpr):
    if ACT == 1:
        z = tl.where((z > 0) | (z != z), z, 0.0)  # keeps NaN, like torch's relu
    elif ACT == 2:
        z = tl.where(z > 0, z, z * alpha)
    return z


@triton.jit
def _act_grad(g, y, alpha, ACT: tl.constexpr):
    if ACT == 1:
        g = tl.where(y <= 0, 0.0, g)
    elif ACT == 2:
        g = tl.where(y > 0, g, g * alpha)
    return g


@triton.jit
def _tile_offsets(j, c, C, inner):
    # j: [BLOCK_J, 1] value index within the channel, c: [1, BLOCK_C] channel
    o = j // inner
    return (o * C + c) * inner + (j - o * inner)


# ------------------------------------------------------------------------ statistics
@triton.jit
def stats_partial_kernel(x_ptr, pmean_ptr, pm2_ptr, pcnt_ptr, C, inner, M, J_PER, B,
                         BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr):
    pc = tl.program_id(0)
    pb = tl.program_id(1)
    acc_ty = pmean_ptr.dtype.element_ty
    c = pc * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    cmask = c < C
    j_begin = pb.to(tl.int64) * J_PER
    j_end = tl.minimum(j_begin + J_PER, M)
    # Shift by the channel's first value K (the same for every program): Welford then
    # runs on x - K, small numbers whose running mean float32 holds to full precision
    # even when |mean| >> std. The combine kernel adds K back once.
    k = tl.load(x_ptr + c.to(tl.int64) * inner, mask=cmask & (M > 0), other=0.0).to(acc_ty)
    mean = tl.zeros((BLOCK_J, BLOCK_C), dtype=acc_ty)
    m2 = tl.zeros((BLOCK_J, BLOCK_C), dtype=acc_ty)
    cnt = tl.zeros((BLOCK_J, BLOCK_C), dtype=acc_ty)
    for j0 in range(j_begin, j_end, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)[:, None].to(tl.int64)
        mask = (j < j_end) & cmask
        x = tl.load(x_ptr + _tile_offsets(j, c, C, inner), mask=mask, other=0.0).to(acc_ty) - k
        # Welford per lane; masked lanes keep their state
        new_cnt = cnt + mask.to(acc_ty)
        d = x - mean
        mean = tl.where(mask, mean + d / tl.maximum(new_cnt, 1.0), mean)
        m2 = tl.where(mask, m2 + d * (x - mean), m2)
        cnt = new_cnt
    # merge the BLOCK_J lanes of each channel (closed form, deviations only)
    n = tl.sum(cnt, axis=0)
    cmean = tl.sum(cnt * mean, axis=0) / tl.maximum(n, 1.0)
    dev = mean - cmean[None, :]
    cm2 = tl.sum(m2 + cnt * dev * dev, axis=0)
    c1 = pc * BLOCK_C + tl.arange(0, BLOCK_C)
    out = c1.to(tl.int64) * B + pb
    tl.store(pmean_ptr + out, cmean, mask=c1 < C)
    tl.store(pm2_ptr + out, cm2, mask=c1 < C)
    tl.store(pcnt_ptr + out, n, mask=c1 < C)


@triton.jit
def stats_combine_kernel(x_ptr, pmean_ptr, pm2_ptr, pcnt_ptr, mean_ptr, var_ptr, C, inner, M, B,
                         BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    # one program per BLOCK_C channels, partials merged in the fixed order of the tile
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    acc_ty = pmean_ptr.dtype.element_ty
    n = tl.zeros((BLOCK_C,), dtype=acc_ty)
    s = tl.zeros((BLOCK_C,), dtype=acc_ty)
    for b0 in range(0, B, BLOCK_B):
        b = b0 + tl.arange(0, BLOCK_B)[:, None]
        m = (b < B) & cmask[None, :]
        off = c[None, :].to(tl.int64) * B + b
        cn = tl.load(pcnt_ptr + off, mask=m, other=0.0)
        n += tl.sum(cn, axis=0)
        s += tl.sum(cn * tl.load(pmean_ptr + off, mask=m, other=0.0), axis=0)
    n = tl.where(cmask, n, 1.0)  # channels past C: no 0 / 0
    mean = s / n  # 0 / 0 = NaN for an empty batch, as torch
    m2 = tl.zeros((BLOCK_C,), dtype=acc_ty)
    for b0 in range(0, B, BLOCK_B):
        b = b0 + tl.arange(0, BLOCK_B)[:, None]
        m = (b < B) & cmask[None, :]
        off = c[None, :].to(tl.int64) * B + b
        cn = tl.load(pcnt_ptr + off, mask=m, other=0.0)
        d = tl.load(pmean_ptr + off, mask=m, other=0.0) - mean[None, :]
        m2 += tl.sum(tl.load(pm2_ptr + off, mask=m, other=0.0) + cn * d * d, axis=0)
    k = tl.load(x_ptr + c.to(tl.int64) * inner, mask=cmask & (M > 0), other=0.0).to(acc_ty)
    tl.store(mean_ptr + c, k + mean, mask=cmask)
    tl.store(var_ptr + c, m2 / n, mask=cmask)


# --------------------------------------------------------------- backward reduction
@triton.jit
def bwd_reduce_partial_kernel(g_ptr, x_ptr, y_ptr, mean_ptr, pdz_ptr, pdzx_ptr,
                              alpha64: tl.float64, alpha, C, inner, M, J_PER, B, ACT: tl.constexpr,
                              F64: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr):
    # (alpha64 before alpha: in the other order ptxas gave the float32 leaky-ReLU variant a
    # 16-byte stack frame; tests/triton_aot.py checks for that)
    pc = tl.program_id(0)
    pb = tl.program_id(1)
    acc_ty = pdz_ptr.dtype.element_ty
    c = pc * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    cmask = c < C
    mean = tl.load(mean_ptr + c, mask=cmask, other=0.0)
    j_begin = pb.to(tl.int64) * J_PER
    j_end = tl.minimum(j_begin + J_PER, M)
    sdz = tl.zeros((BLOCK_J, BLOCK_C), dtype=acc_ty)
    sdzx = tl.zeros((BLOCK_J, BLOCK_C), dtype=acc_ty)
    for j0 in range(j_begin, j_end, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)[:, None].to(tl.int64)
        mask = (j < j_end) & cmask
        off = _tile_offsets(j, c, C, inner)
        g = tl.load(g_ptr + off, mask=mask, other=0.0).to(acc_ty)
        if ACT != 0:
            y = tl.load(y_ptr + off, mask=mask, other=0.0).to(acc_ty)
            g = _act_grad(g, y, (alpha64 if F64 else alpha), ACT)
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(acc_ty)
        sdz += g
        sdzx += tl.where(mask, g * (x - mean), 0.0)
    c1 = pc * BLOCK_C + tl.arange(0, BLOCK_C)
    out = c1.to(tl.int64) * B + pb
    tl.store(pdz_ptr + out, tl.sum(sdz, axis=0), mask=c1 < C)
    tl.store(pdzx_ptr + out, tl.sum(sdzx, axis=0), mask=c1 < C)


@triton.jit
def bwd_reduce_combine_kernel(pdz_ptr, pdzx_ptr, var_ptr, sdz_ptr, sdzxh_ptr, eps,
                              eps64: tl.float64, C, B, F64: tl.constexpr, BLOCK_B: tl.constexpr,
                              BLOCK_C: tl.constexpr):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    acc_ty = pdz_ptr.dtype.element_ty
    s1 = tl.zeros((BLOCK_C,), dtype=acc_ty)
    s2 = tl.zeros((BLOCK_C,), dtype=acc_ty)
    for b0 in range(0, B, BLOCK_B):
        b = b0 + tl.arange(0, BLOCK_B)[:, None]
        m = (b < B) & cmask[None, :]
        off = c[None, :].to(tl.int64) * B + b
        s1 += tl.sum(tl.load(pdz_ptr + off, mask=m, other=0.0), axis=0)
        s2 += tl.sum(tl.load(pdzx_ptr + off, mask=m, other=0.0), axis=0)
    var = tl.load(var_ptr + c, mask=cmask, other=1.0)
    invstd = 1.0 / tl.sqrt(var + (eps64 if F64 else eps))
    tl.store(sdz_ptr + c, s1, mask=cmask)
    tl.store(sdzxh_ptr + c, s2 * invstd, mask=cmask)


# ------------------------------------------------------------------ elementwise passes
# The storage is walked as a 2-D grid of tiles [BLOCK_R, BLOCK_K] over (rows, cols):
#   planes (NCHW):        rows = the outer*C planes, cols = inner; channel = row % C
#   channels-last (CL):   rows = outer,              cols = C;     channel = col
# so the channel index costs one modulo per row (or none), not a division per element,
# and the per-channel coefficients are loaded once per row / column of the tile.
@triton.jit
def _tile(nrows, ncols, C, CL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    # a 1-D grid over (row block, column block): a 2-D grid's second axis stops at 65535
    # blocks, which one 8192 x 8192 plane (NCHW: 65536 column blocks) would pass
    pid = tl.program_id(0).to(tl.int64)
    n_kb = tl.cdiv(ncols, BLOCK_K)
    rb = pid // n_kb
    r = rb * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    k = (pid - rb * n_kb) * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
    mask = (r[:, None] < nrows) & (k[None, :] < ncols)
    offs = r[:, None] * ncols + k[None, :]
    if CL:
        c = k[None, :]
        cmask = c < ncols
    else:
        c = (r % C)[:, None]
        cmask = r[:, None] < nrows
    return offs, mask, c, cmask


@triton.jit
def normalize_kernel(x_ptr, r_ptr, y_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, eps,
                     eps64: tl.float64, alpha, alpha64: tl.float64, C, nrows, ncols,
                     HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_R: tl.constexpr,
                     ACT: tl.constexpr, CL: tl.constexpr, F64: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    offs, mask, c, cmask = _tile(nrows, ncols, C, CL, BLOCK_R, BLOCK_K)
    acc_ty = mean_ptr.dtype.element_ty
    mean = tl.load(mean_ptr + c, mask=cmask, other=0.0)
    var = tl.load(var_ptr + c, mask=cmask, other=1.0)
    scale = 1.0 / tl.sqrt(var + (eps64 if F64 else eps))
    if HAS_W:
        scale = scale * tl.load(w_ptr + c, mask=cmask, other=1.0)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    z = (x - mean) * scale
    if HAS_B:
        z = z + tl.load(b_ptr + c, mask=cmask, other=0.0)
    if HAS_R:
        z = z + tl.load(r_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    z = _act(z, (alpha64 if F64 else alpha), ACT)
    tl.store(y_ptr + offs, z.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def bwd_elemt_kernel(g_ptr, x_ptr, y_ptr, mean_ptr, var_ptr, w_ptr, sdz_ptr, sdzxh_ptr, dx_ptr,
                     dz_ptr, eps, eps64: tl.float64, inv_count, inv_count64: tl.float64, alpha,
                     alpha64: tl.float64, C, nrows, ncols, HAS_W: tl.constexpr,
                     TRAIN: tl.constexpr, WANT_DZ: tl.constexpr, ACT: tl.constexpr,
                     CL: tl.constexpr, F64: tl.constexpr, BLOCK_R: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    offs, mask, c, cmask = _tile(nrows, ncols, C, CL, BLOCK_R, BLOCK_K)
    acc_ty = mean_ptr.dtype.element_ty
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    if ACT != 0:
        y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        g = _act_grad(g, y, (alpha64 if F64 else alpha), ACT)
    if WANT_DZ:
        tl.store(dz_ptr + offs, g.to(dz_ptr.dtype.element_ty), mask=mask)
    var = tl.load(var_ptr + c, mask=cmask, other=1.0)
    invstd = 1.0 / tl.sqrt(var + (eps64 if F64 else eps))
    scale = invstd
    if HAS_W:
        scale = scale * tl.load(w_ptr + c, mask=cmask, other=1.0)
    if TRAIN:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        mean = tl.load(mean_ptr + c, mask=cmask, other=0.0)
        a = tl.load(sdz_ptr + c, mask=cmask, other=0.0) * (inv_count64 if F64 else inv_count)
        b = tl.load(sdzxh_ptr + c, mask=cmask, other=0.0) * (inv_count64 if F64 else inv_count)
        b = b * invstd
        g = g - a - (x - mean) * b
    tl.store(dx_ptr + offs, (g * scale).to(dx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------- launch helpers
def _shape(x):
    """(outer, C, inner) of a dense x: contiguous -> planes, else channels-last."""
    N, C = x.shape[0], x.shape[1]
    S = 1
    for s in x.shape[2:]:
        S *= s
    return (N, C, S) if x.is_contiguous() else (N * S, C, 1)


def _reduce_geometry(outer, C, inner):
    """Tile sizes and the split of each channel's M values into B programs."""
    M = outer * inner
    if inner == 1:  # channels-last: channels along the tile's fast axis
        block_c = min(triton.next_power_of_2(max(C, 1)), 32 if INTERPRET else 64)
        block_j = max(1, (256 if INTERPRET else 2048) // block_c)
    else:
        block_c = 1
        block_j = 128 if INTERPRET else 1024
    n_ctiles = triton.cdiv(C, block_c)
    b = max(1, min(triton.cdiv(M, block_j), triton.cdiv(TARGET_PROGRAMS, n_ctiles)))
    j_per = block_j * triton.cdiv(triton.cdiv(max(M, 1), b), block_j)
    b = max(1, triton.cdiv(M, j_per))
    return M, block_c, block_j, n_ctiles, b, j_per


def bn_stats(x, mean, var):
    """mean, var (biased) of each channel of dense x, into the given (C,) tensors."""
    outer, C, inner = _shape(x)
    if C == 0:
        return
    M, block_c, block_j, n_ctiles, B, j_per = _reduce_geometry(outer, C, inner)
    part = torch.empty((3, C, B), dtype=mean.dtype, device=x.device)
    stats_partial_kernel[(n_ctiles, B)](x, part[0], part[1], part[2], C, inner, M, j_per, B,
                                        BLOCK_J=block_j, BLOCK_C=block_c)
    cb = min(triton.next_power_of_2(C), 64)
    stats_combine_kernel[(triton.cdiv(C, cb),)](x, part[0], part[1], part[2], mean, var, C, inner,
                                                M, B,
                                                BLOCK_B=min(triton.next_power_of_2(B), 64),
                                                BLOCK_C=cb)


def _elem_grid(outer, C, inner):
    """(nrows, ncols, CL, BLOCK_R, BLOCK_K, grid) of the elementwise tiles."""
    cl = inner == 1
    nrows, ncols = (outer, C) if cl else (outer * C, inner)
    block_k = min(triton.next_power_of_2(max(ncols, 1)), 128 if cl else BLOCK)
    block_r = max(1, BLOCK // block_k)
    return nrows, ncols, cl, block_r, block_k, (triton.cdiv(nrows, block_r) * triton.cdiv(ncols, block_k),)


def bn_normalize(x, mean, var, w, b, r, y, eps, act, alpha):
    """y = act((x - mean) * invstd * w + b [+ r]); x, r, y dense with the same strides."""
    outer, C, inner = _shape(x)
    if x.numel() == 0:
        return
    nrows, ncols, cl, block_r, block_k, grid = _elem_grid(outer, C, inner)
    normalize_kernel[grid](
        x, r if r is not None else x, y, mean, var, w if w is not None else mean,
        b if b is not None else mean, eps, eps, alpha, alpha, C, nrows, ncols, HAS_W=w is not None,
        HAS_B=b is not None, HAS_R=r is not None, ACT=ACT_IDS[act], CL=cl,
        F64=mean.dtype == torch.float64, BLOCK_R=block_r,
        BLOCK_K=block_k)


def bn_bwd_reduce(g, x, y, mean, var, eps, act, alpha, sum_dz, sum_dzxh):
    outer, C, inner = _shape(x)
    if C == 0:
        return
    M, block_c, block_j, n_ctiles, B, j_per = _reduce_geometry(outer, C, inner)
    part = torch.empty((2, C, B), dtype=sum_dz.dtype, device=x.device)
    bwd_reduce_partial_kernel[(n_ctiles, B)](
        g, x, y if y is not None else g, mean, part[0], part[1], alpha, alpha, C, inner, M, j_per, B,
        ACT=ACT_IDS[act], F64=mean.dtype == torch.float64, BLOCK_J=block_j, BLOCK_C=block_c)
    cb = min(triton.next_power_of_2(C), 64)
    bwd_reduce_combine_kernel[(triton.cdiv(C, cb),)](
        part[0], part[1], var, sum_dz, sum_dzxh, eps, eps, C, B, F64=var.dtype == torch.float64,
        BLOCK_B=min(triton.next_power_of_2(B), 64), BLOCK_C=cb)


def bn_bwd_elemt(g, x, y, mean, var, w, sum_dz, sum_dzxh, eps, inv_count, act, alpha, dx, dz):
    outer, C, inner = _shape(x)
    if x.numel() == 0:
        return
    nrows, ncols, cl, block_r, block_k, grid = _elem_grid(outer, C, inner)
    train = sum_dz is not None
    bwd_elemt_kernel[grid](
        g, x, y if y is not None else g, mean, var, w if w is not None else mean,
        sum_dz if train else mean, sum_dzxh if train else mean, dx,
        dz if dz is not None else dx, eps, eps, inv_count, inv_count, alpha, alpha, C, nrows, ncols,
        HAS_W=w is not None, TRAIN=train, WANT_DZ=dz is not None, ACT=ACT_IDS[act], CL=cl,
        F64=mean.dtype == torch.float64,
        BLOCK_R=block_r, BLOCK_K=block_k)

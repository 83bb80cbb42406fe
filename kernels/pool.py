"""Pooling in Triton: max_pool2d, avg_pool2d, adaptive_avg_pool2d, adaptive_max_pool2d,
forward and backward. The same window arithmetic as csrc/pool_math.h:

    fixed window (max/avg), output o, tap t < k:   i = o*s - p + t*d      (d = 1 for avg)
    adaptive window, output o of O over I:          [floor(o*I/O), ceil((o+1)*I/O))
    max:  y = max over the taps (NaN wins, ties keep the first), ind = ih*IW + iw
    avg:  y = sum / divisor; divisor = divisor_override, else the window clipped to the
          padded input (count_include_pad) or to the input; adaptive: the window size
    backward, a gather per input element i over the outputs whose window may hold it:
          fixed:    o in [ceil((i + p - (k-1)*d) / s), floor((i + p) / s)]
          adaptive: o in [floor(i*O/I), ceil((i+1)*O/I))
          max: dx = sum of g[o] where ind[o] == ih*IW + iw;   avg: dx = sum of g[o] / div(o)

Decomposition: tensors are NCHW- or NHWC-contiguous (CL), outputs in the input's
format. Forward: program i owns BLOCK consecutive *output* elements in memory order
(for NHWC that is a run of channels, so every tap's load is a coalesced run); each
lane walks its window with loop bounds fixed at compile time (the kernel size, or the
largest adaptive window) and masks the taps outside the input. Backward: program i owns
BLOCK consecutive *input* elements and gathers, in increasing (oh, ow) order, from the
outputs that may see them -- no atomics, so the gradient is bit-identical run to run.
Global average pooling (adaptive output 1x1) has its own reduction kernel: a tile of
[BLOCK_E spatial positions, BLOCK_Q planes] summed along the spatial axis.
pool_gather (out[n, c, o] = x[n, c, ind[n, c, o]], the max pools' double backward) is
one load per output. Accumulation in float32 (float64 for float64).

Index arithmetic: each lane decodes its flat offset into (n, c, h, w) -- divisions by
runtime sizes, the costliest part of a memory-bound kernel. They run in IDX = int32 (a
few instructions each; an int64 division is a software routine of ~70) unless a tensor
or a window product nears 2^31 elements, when the whole kernel runs in int64; and each
level of the decoding is one division with the remainder taken by a multiply-subtract.
"""
import triton
import triton.language as tl

from . import index_type as _idx

MODES = {"max": 0, "avg": 1, "adaptive_avg": 2, "adaptive_max": 3}
BLOCK = 256


@triton.jit
def _decode(offs, C, H, W, CL: tl.constexpr):
    """Memory-order offset -> (n, c, h, w) of an (N, C, H, W) tensor stored NCHW or NHWC."""
    if CL:
        t = offs // C
        c = offs - t * C
        u = t // W
        w = t - u * W
        n = u // H
        h = u - n * H
    else:
        t = offs // W
        w = offs - t * W
        u = t // H
        h = t - u * H
        n = u // C
        c = u - n * C
    return n, c, h, w


@triton.jit
def _avg_div(oh, ow, IH, IW, kh, kw, sh, sw, ph, pw, divisor_override,
             COUNT_PAD: tl.constexpr):
    """torch's avg_pool2d divisor (csrc/pool_math.h AvgDivisor)."""
    hs = oh * sh - ph
    ws = ow * sw - pw
    he = tl.minimum(hs + kh, IH + ph)
    we = tl.minimum(ws + kw, IW + pw)
    if not COUNT_PAD:
        hs = tl.maximum(hs, 0)
        ws = tl.maximum(ws, 0)
        he = tl.minimum(he, IH)
        we = tl.minimum(we, IW)
    d = (he - hs) * (we - ws)
    return tl.where(divisor_override != 0, divisor_override, d)


@triton.jit
def pool_fwd_kernel(x_ptr, y_ptr, ind_ptr, total, C, IH, IW, OH, OW,
                    kh, kw, sh, sw, ph, pw, dh, dw, divisor_override,
                    MODE: tl.constexpr, CL: tl.constexpr, WITH_IDX: tl.constexpr,
                    COUNT_PAD: tl.constexpr, F64: tl.constexpr,
                    LH: tl.constexpr, LW: tl.constexpr, IDX: tl.constexpr, BLOCK: tl.constexpr):
    # LH x LW: the taps each lane visits (the kernel, or the largest adaptive window)
    IS_MAX: tl.constexpr = (MODE == 0) or (MODE == 3)
    ADAPTIVE: tl.constexpr = MODE >= 2
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    offs = tl.program_id(0).to(IDX) * BLOCK + tl.arange(0, BLOCK).to(IDX)
    mask = offs < total
    n, c, oh, ow = _decode(offs, C, OH, OW, CL)
    # input element (n, c, ih, iw) at base + (ih * IW + iw) * s_w; every product starts from
    # an index tensor, so it is formed in IDX (a product of two scalar arguments, IH * IW,
    # would be int32 and wrap for a plane past 2^31 elements)
    if CL:
        base = n * IH * IW * C + c
        s_w = C
    else:
        base = (n * C + c) * IH * IW
        s_w = 1
    if ADAPTIVE:
        hs = (oh * IH) // OH
        he = ((oh + 1) * IH + OH - 1) // OH
        ws = (ow * IW) // OW
        we = ((ow + 1) * IW + OW - 1) // OW
        h0 = hs
        w0 = ws
    else:
        hs = oh * sh - ph
        ws = ow * sw - pw
        # first tap inside the input: torch's index when no tap beats -inf
        h0 = tl.where(hs < 0, hs + ((tl.maximum(-hs, 0) + dh - 1) // dh) * dh, hs)
        w0 = tl.where(ws < 0, ws + ((tl.maximum(-ws, 0) + dw - 1) // dw) * dw, ws)
    if IS_MAX:
        acc = tl.full([BLOCK], float("-inf"), ACC)
        best_i = h0 * IW + w0
    else:
        acc = tl.zeros([BLOCK], ACC)
    for i in range(LH):
        if ADAPTIVE:
            ih = hs + i
            vh = ih < he
        else:
            ih = hs + i * dh
            vh = (ih >= 0) & (ih < IH)
        for j in range(LW):
            if ADAPTIVE:
                iw = ws + j
                vw = iw < we
            else:
                iw = ws + j * dw
                vw = (iw >= 0) & (iw < IW)
            valid = mask & vh & vw
            v = tl.load(x_ptr + base + (ih * IW + iw) * s_w, mask=valid, other=0.0).to(ACC)
            if IS_MAX:
                take = valid & ((v > acc) | (v != v))
                acc = tl.where(take, v, acc)
                best_i = tl.where(take, ih * IW + iw, best_i)
            else:
                acc += tl.where(valid, v, 0.0)
    if IS_MAX:
        y = acc
        if WITH_IDX:
            tl.store(ind_ptr + offs, best_i, mask=mask)
    else:
        if ADAPTIVE:
            div = (he - hs) * (we - ws)
        else:
            div = _avg_div(oh, ow, IH, IW, kh, kw, sh, sw, ph, pw, divisor_override, COUNT_PAD)
        y = acc / div.to(ACC)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def global_avg_kernel(x_ptr, y_ptr, Q, C, HW, F64: tl.constexpr, CL: tl.constexpr,
                      BLOCK_Q: tl.constexpr, BLOCK_E: tl.constexpr):
    # y[q] = mean over the HW positions of plane q = n*C + c
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    q = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qmask = q < Q
    if CL:  # NHWC: plane q's elements at n*HW*C + e*C + c (channels contiguous)
        qbase = (q // C) * HW * C + q % C
        e_stride = C
    else:  # NCHW: plane q is the contiguous run [q*HW, (q+1)*HW)
        qbase = q * HW
        e_stride = 1
    acc = tl.zeros([BLOCK_Q], ACC)
    for e0 in range(0, HW, BLOCK_E):
        e = e0 + tl.arange(0, BLOCK_E).to(tl.int64)
        m = qmask[None, :] & (e < HW)[:, None]
        v = tl.load(x_ptr + qbase[None, :] + e[:, None] * e_stride, mask=m, other=0.0)
        acc += tl.sum(v.to(ACC), axis=0)
    tl.store(y_ptr + q, (acc / HW).to(y_ptr.dtype.element_ty), mask=qmask)


@triton.jit
def pool_bwd_kernel(g_ptr, ind_ptr, dx_ptr, total, C, IH, IW, OH, OW,
                    kh, kw, sh, sw, ph, pw, dh, dw, divisor_override,
                    MODE: tl.constexpr, CL: tl.constexpr, COUNT_PAD: tl.constexpr,
                    F64: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr, IDX: tl.constexpr,
                    BLOCK: tl.constexpr):
    # LH x LW: the most outputs along each axis whose windows can hold one input element
    IS_MAX: tl.constexpr = (MODE == 0) or (MODE == 3)
    ADAPTIVE: tl.constexpr = MODE >= 2
    ACC: tl.constexpr = tl.float64 if F64 else tl.float32
    offs = tl.program_id(0).to(IDX) * BLOCK + tl.arange(0, BLOCK).to(IDX)
    mask = offs < total
    n, c, ih, iw = _decode(offs, C, IH, IW, CL)
    # output element (n, c, oh, ow) at base + (oh * OW + ow) * s_w (products from index
    # tensors, in IDX: see pool_fwd_kernel)
    if CL:
        base = n * OH * OW * C + c
        s_w = C
    else:
        base = (n * C + c) * OH * OW
        s_w = 1
    if ADAPTIVE:
        ohb = (ih * OH) // IH
        ohe = tl.minimum(((ih + 1) * OH + IH - 1) // IH, OH)
        owb = (iw * OW) // IW
        owe = tl.minimum(((iw + 1) * OW + IW - 1) // IW, OW)
    else:
        lo_h = tl.maximum(ih + ph - (kh - 1) * dh, 0)
        lo_w = tl.maximum(iw + pw - (kw - 1) * dw, 0)
        ohb = (lo_h + sh - 1) // sh
        owb = (lo_w + sw - 1) // sw
        ohe = tl.minimum((ih + ph) // sh + 1, OH)
        owe = tl.minimum((iw + pw) // sw + 1, OW)
    flat = ih * IW + iw
    acc = tl.zeros([BLOCK], ACC)
    for i in range(LH):
        oh = ohb + i
        vh = oh < ohe
        if MODE == 2:  # adaptive average: output row oh's window height, once per row
            win_h = ((oh + 1) * IH + OH - 1) // OH - (oh * IH) // OH
        for j in range(LW):
            ow = owb + j
            valid = mask & vh & (ow < owe)
            o = base + (oh * OW + ow) * s_w
            g = tl.load(g_ptr + o, mask=valid, other=0.0).to(ACC)
            if IS_MAX:
                idx = tl.load(ind_ptr + o, mask=valid, other=-1)
                acc += tl.where(valid & (idx == flat), g, 0.0)
            else:
                if ADAPTIVE:
                    div = win_h * (((ow + 1) * IW + OW - 1) // OW - (ow * IW) // OW)
                else:
                    div = _avg_div(oh, ow, IH, IW, kh, kw, sh, sw, ph, pw, divisor_override,
                                   COUNT_PAD)
                div = tl.where(valid, div, 1)
                acc += tl.where(valid, g / div.to(ACC), 0.0)
    tl.store(dx_ptr + offs, acc.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def pool_gather_kernel(x_ptr, ind_ptr, out_ptr, n_out, C, HW, OHW, CL: tl.constexpr,
                       IDX: tl.constexpr, BLOCK: tl.constexpr):
    # out[n, c, o] = x[n, c, ind[n, c, o]]; an index outside the plane gives 0
    o = tl.program_id(0).to(IDX) * BLOCK + tl.arange(0, BLOCK).to(IDX)
    mask = o < n_out
    k = tl.load(ind_ptr + o, mask=mask, other=0)
    ok = mask & (k >= 0) & (k < HW)
    k = tl.where(ok, k, 0).to(IDX)  # in [0, HW): fits IDX
    if CL:
        t = o // C
        src = ((t // OHW) * HW + k) * C + (o - t * C)
    else:
        src = (o // OHW) * HW + k
    v = tl.load(x_ptr + src, mask=ok, other=0.0)
    tl.store(out_ptr + o, v, mask=mask)


def _cdiv(a, b):
    return -(-a // b)


def _geometry(mode, kernel, stride, padding, dilation):
    if mode.startswith("adaptive"):
        return [1, 1], [1, 1], [0, 0], [1, 1]
    return list(kernel), list(stride), list(padding), list(dilation)


def pool_fwd(x, y, ind, cl: bool, mode: str, kernel=None, stride=None, padding=None,
             dilation=None, count_include_pad: bool = True, divisor_override: int = 0) -> None:
    """y (and ind, if not None) = pooling of x; x and y in the same format (cl: NHWC)."""
    N, C, IH, IW = x.shape
    OH, OW = y.shape[2], y.shape[3]
    total = y.numel()
    if total == 0:
        return
    f64 = x.dtype.is_floating_point and x.dtype.itemsize == 8
    if mode == "adaptive_avg" and OH == 1 and OW == 1:  # global average pooling
        Q, HW = N * C, IH * IW
        bq = 32 if cl else 8
        be = 32 if cl else 128
        global_avg_kernel[(triton.cdiv(Q, bq),)](x, y, Q, C, HW, F64=f64, CL=cl, BLOCK_Q=bq,
                                                  BLOCK_E=be)
        return
    k, s, p, d = _geometry(mode, kernel, stride, padding, dilation)
    if mode.startswith("adaptive"):
        lh, lw = _cdiv(IH, OH) + 1, _cdiv(IW, OW) + 1  # the largest window, a bound
    else:
        lh, lw = k
    pool_fwd_kernel[(triton.cdiv(total, BLOCK),)](
        x, y, ind if ind is not None else y, total, C, IH, IW, OH, OW,
        k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1], int(divisor_override),
        MODE=MODES[mode], CL=cl, WITH_IDX=ind is not None, COUNT_PAD=bool(count_include_pad),
        F64=f64, LH=lh, LW=lw, IDX=_idx(x.numel(), total, (IH + 1) * (OH + 1), (IW + 1) * (OW + 1)),
        BLOCK=BLOCK)


def pool_bwd(g, ind, dx, cl: bool, mode: str, kernel=None, stride=None, padding=None,
             dilation=None, count_include_pad: bool = True, divisor_override: int = 0) -> None:
    """dx = the gradient of the pooling for output gradient g (ind: the saved indices for
    max modes); g, ind, dx in the same format (cl: NHWC)."""
    N, C, IH, IW = dx.shape
    OH, OW = g.shape[2], g.shape[3]
    total = dx.numel()
    if total == 0:
        return
    if OH == 0 or OW == 0:  # an empty adaptive output: nothing flows back
        dx.zero_()
        return
    k, s, p, d = _geometry(mode, kernel, stride, padding, dilation)
    if mode.startswith("adaptive"):
        lh, lw = _cdiv(OH, IH) + 1, _cdiv(OW, IW) + 1
    else:  # outputs o with o*s in a window of (k-1)*d + 1 positions
        lh, lw = _cdiv((k[0] - 1) * d[0] + 1, s[0]), _cdiv((k[1] - 1) * d[1] + 1, s[1])
    f64 = dx.dtype.itemsize == 8
    pool_bwd_kernel[(triton.cdiv(total, BLOCK),)](
        g, ind if ind is not None else g, dx, total, C, IH, IW, OH, OW,
        k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1], int(divisor_override),
        MODE=MODES[mode], CL=cl, COUNT_PAD=bool(count_include_pad), F64=f64, LH=lh, LW=lw,
        IDX=_idx(g.numel(), total, (IH + 1) * (OH + 1), (IW + 1) * (OW + 1)), BLOCK=BLOCK)


def pool_gather(x, ind, out, cl: bool) -> None:
    """out[n, c, o] = x[n, c, ind[n, c, o]] (the max pools' double backward); all three in
    the same format (cl: NHWC), out shaped like ind."""
    n_out = out.numel()
    if n_out:
        pool_gather_kernel[(triton.cdiv(n_out, BLOCK),)](
            x, ind, out, n_out, x.shape[1], x.shape[2] * x.shape[3], ind.shape[2] * ind.shape[3],
            CL=cl, IDX=_idx(x.numel(), n_out), BLOCK=BLOCK)

"""Activations in Triton: y = f(x) and dx = g * f'(.) elementwise.

    relu(x)       = max(x, 0)                      dx = g * (y > 0)
    leaky_relu(x) = x if x > 0 else a*x            dx = g if s > 0 else a*g
    elu(x)        = x if x > 0 else a*(exp(x)-1)   dx = g if s > 0 else g*a*exp(x)  (s = x)
                                                                   else g*(y + a)   (s = y)
    sigmoid(x)    = 1 / (1 + exp(-x))              dx = g * y * (1 - y)
    tanh(x)                                        dx = g * (1 - y*y)

s is the tensor autograd saved: the output y (is_result) or the input x. The same
formulas, NaN behaviour included, as csrc/activation_math.h.

Decomposition: the operands are dense, so the kernels walk their storage as one flat
array. Program i owns elements [i*BLOCK, (i+1)*BLOCK), loads them with one masked
vector load, computes in float32 (float64 stays float64) and stores them back in the
storage dtype. Offsets are int64 so tensors past 2^31 elements index correctly.
"""
import torch
import triton
import triton.language as tl

# Activation ids, shared with the C++ enum pydl::Act.
ACT_IDS = {"relu": 0, "leaky_relu": 1, "elu": 2, "sigmoid": 3, "tanh": 4}

BLOCK = 1024


@triton.jit
def _expm1(x):
    # exp(x) - 1 loses all relative precision as x -> 0 (it subtracts two numbers near 1).
    # Kahan's trick divides that rounding error back out: with u = exp(x) rounded,
    # (u - 1) * x / log(u) is accurate to a few ulps in float32 and float64 alike.
    # u == 1 (|x| below half an ulp) gives x itself; u == 0 (x -> -inf) gives -1.
    u = tl.exp(x)
    um1 = u - 1.0
    r = tl.where(u == 1.0, x, um1 * x / tl.log(u))
    return tl.where(u == 0.0, um1, r)


@triton.jit
def _forward(x, alpha, ACT: tl.constexpr):
    if ACT == 0:
        y = tl.where((x > 0) | (x != x), x, 0.0)  # keep NaN, like torch
    elif ACT == 1:
        y = tl.where(x > 0, x, x * alpha)
    elif ACT == 2:
        y = tl.where(x > 0, x, alpha * _expm1(x))
    elif ACT == 3:
        y = 1.0 / (1.0 + tl.exp(-x))
    else:
        # tanh(|x|) = (1 - e) / (1 + e) with e = exp(-2|x|): no overflow for large |x|,
        # and -expm1 keeps 1 - e accurate for small |x|.
        m = -_expm1(-2.0 * tl.abs(x))
        t = m / (2.0 - m)
        y = tl.where(x < 0, -t, t)
    return y


@triton.jit
def _backward(g, s, alpha, ACT: tl.constexpr, IS_RESULT: tl.constexpr):
    if ACT == 0:
        d = tl.where(s <= 0, 0.0, g)
    elif ACT == 1:
        d = tl.where(s > 0, g, g * alpha)
    elif ACT == 2:
        if IS_RESULT:
            neg = g * (s + alpha)
        else:
            neg = g * alpha * tl.exp(s)
        d = tl.where(s <= 0, neg, g)
    elif ACT == 3:
        d = g * s * (1.0 - s)
    else:
        d = g * (1.0 - s * s)
    return d


@triton.jit
def _compute_type(v):
    # float32 arithmetic for float32/float16/bfloat16, float64 for float64
    if v.dtype == tl.float64:
        return v
    else:
        return v.to(tl.float32)


# A Python float reaches a compiled kernel as float32 unless its parameter is annotated
# tl.float64. alpha comes twice: float64 data uses the float64 copy (0.01 as float32 is
# off by 2e-10, far above float64's rounding), the rest the float32 one (no float64 math
# on their path). The choice is on a constexpr flag, F64, written inline at each use:
# under the interpreter a test on a tensor's dtype, a helper returning the scalar, or an
# assignment would turn the float64 scalar into a float32 tensor.
@triton.jit
def act_fwd_kernel(x_ptr, y_ptr, n, alpha, alpha64: tl.float64, ACT: tl.constexpr,
                   F64: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = _compute_type(tl.load(x_ptr + offs, mask=mask, other=0.0))
    y = _forward(x, (alpha64 if F64 else alpha), ACT)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def act_bwd_kernel(g_ptr, s_ptr, dx_ptr, n, alpha, alpha64: tl.float64, ACT: tl.constexpr,
                   IS_RESULT: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = _compute_type(tl.load(g_ptr + offs, mask=mask, other=0.0))
    s = _compute_type(tl.load(s_ptr + offs, mask=mask, other=0.0))
    d = _backward(g, s, (alpha64 if F64 else alpha), ACT, IS_RESULT)
    tl.store(dx_ptr + offs, d.to(dx_ptr.dtype.element_ty), mask=mask)


def act_fwd(x, y, act: str, alpha: float) -> None:
    """y = f(x); x and y dense with the same strides (y may be x)."""
    n = x.numel()
    if n:
        act_fwd_kernel[(triton.cdiv(n, BLOCK),)](x, y, n, alpha, alpha, ACT=ACT_IDS[act],
                                                  F64=x.dtype == torch.float64, BLOCK=BLOCK)


def act_bwd(g, s, dx, act: str, alpha: float, is_result: bool) -> None:
    """dx = g * f'(s); all three dense with the same strides."""
    n = s.numel()
    if n:
        act_bwd_kernel[(triton.cdiv(n, BLOCK),)](g, s, dx, n, alpha, alpha, ACT=ACT_IDS[act],
                                                  IS_RESULT=is_result,
                                                  F64=s.dtype == torch.float64, BLOCK=BLOCK)

// The pooling window arithmetic, written once for every C++ backend: included by the CPU
// kernels (csrc/cpu/pool.cpp) and the CUDA kernels (csrc/cuda/pool_kernel.cu), so the
// two cannot drift apart. No torch headers: nvcc compiles this in about a second.
//
// One spatial axis at a time (the 2-D windows are products of two 1-D ones):
//
//   fixed windows (max_pool2d, avg_pool2d), output o, tap t in [0, k):
//       input coordinate  i = o*s - p + t*d            (d = dilation; 1 for avg)
//   adaptive windows (adaptive_*_pool2d), output o of O over an input of I:
//       [start, end) = [floor(o*I/O), ceil((o+1)*I/O))
//
// The backward passes are gathers (one input element at a time, summing the gradients
// of the outputs whose windows contain it), so they need the inverse maps:
//   fixed:    o*s - p <= i <= o*s - p + (k-1)*d, i.e. the range
//             ceil((i + p - (k-1)*d) / s) <= o <= floor((i + p) / s), clamped to [0, O).
//             With d > 1 some o in it straddle i between two taps; only max pooling
//             has d > 1, and there the saved index (== i or not) decides anyway;
//   adaptive: start(o) <= i < end(o)  <=>  floor(i*O/I) <= o < ceil((i+1)*O/I),
//             the same formula with I and O swapped.
// Walking those outputs in a fixed order is what makes the gradients bit-identical
// from run to run (no atomics).
//
// avg_pool2d's divisor (torch's rule, including ceil_mode windows that run past the
// padded edge): the window [hs, he) is first clipped to the padded input
// [-p, I + p), its size there is the count_include_pad divisor; then it is clipped to
// the input [0, I), and that size is the count_include_pad=False divisor.
// divisor_override, when set (non-zero), replaces both.
#pragma once

#include <cstdint>
#include <type_traits>

#ifndef PYDL_HD
#if defined(__CUDACC__)
#define PYDL_HD __host__ __device__ __forceinline__
#else
#define PYDL_HD inline
#endif
#endif

namespace pydl {

// Which pooling a kernel computes (the CUDA launchers take it as a plain enum).
enum class PoolMode : int { Max = 0, Avg = 1, AdaptiveAvg = 2, AdaptiveMax = 3 };

// Everything a pooling kernel needs about its sizes and window, plain data (no torch
// headers): the CUDA launchers take it by value. Sizes are N, C, input IH x IW,
// output OH x OW; kernel/stride/padding/dilation per axis (unused for adaptive).
struct PoolParams {
  int64_t N, C, IH, IW, OH, OW;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  bool count_include_pad;
  int64_t divisor_override;  // 0: none
};

// The window arithmetic is written for an index type Idx: int64_t for the CPU backend
// (the names without a T suffix below), int32_t or int64_t for the CUDA kernels, whose
// launchers run it in 32 bits when everything it can compute fits (pool_device.cuh: a
// 64-bit division is a software routine on a GPU, a 32-bit one a few instructions).
template <typename Idx> PYDL_HD Idx pool_min(Idx a, Idx b) { return a < b ? a : b; }
template <typename Idx> PYDL_HD Idx pool_max(Idx a, Idx b) { return a > b ? a : b; }

// a / b for a >= 0 and b > 0, which every division of the window arithmetic below is:
// done in the unsigned type, the same quotient (on the CPU too), and on a GPU a few
// instructions fewer than a signed division, which takes absolute values and fixes the
// sign (measured on an H200: the backward kernels up to 14% faster with 32-bit indices).
template <typename Idx> PYDL_HD Idx div_nonneg(Idx a, Idx b) {
  using U = std::make_unsigned_t<Idx>;
  return Idx(U(a) / U(b));
}

// The input taps of one output along one axis: b, b + step, ... < e (empty if b >= e).
template <typename Idx> struct AxisWinT { Idx b, e, step; };
// The outputs along one axis whose windows may contain one input coordinate: [b, e).
template <typename Idx> struct AxisRangeT { Idx b, e; };

// One axis of max_pool2d / avg_pool2d: input size I, output size O (already computed by
// the caller, ceil_mode included), kernel k, stride s, padding p, dilation d (1 for avg).
// Every division has a numerator >= 0 (o*s - p and i + p - (k-1)*d can be negative, but
// they are divided only where they are not), so div_nonneg applies.
template <typename Idx> struct FixedAxisT {
  Idx I, O, k, s, p, d;

  PYDL_HD AxisWinT<Idx> win(Idx o) const {
    const Idx start = o * s - p;
    Idx b = start;
    if (b < 0) b += div_nonneg(-b + d - 1, d) * d;  // first tap inside the input
    return {b, pool_min<Idx>(start + (k - 1) * d + 1, I), d};
  }
  // o*s - p <= i <= o*s - p + (k-1)*d  <=>  (i + p - (k-1)*d) / s <= o <= (i + p) / s.
  // With d > 1 an o in this range may straddle i between two taps: max pooling needs no
  // extra test (the saved index decides), avg pooling has d = 1.
  PYDL_HD AxisRangeT<Idx> outs(Idx i) const {
    const Idx lo = i + p - (k - 1) * d;
    return {lo <= 0 ? Idx(0) : div_nonneg(lo + s - 1, s),
            pool_min<Idx>(div_nonneg(i + p, s) + 1, O)};
  }
};

// One axis of adaptive pooling: window o covers [floor(o*I/O), ceil((o+1)*I/O)).
template <typename Idx> struct AdaptiveAxisT {
  Idx I, O;

  PYDL_HD AxisWinT<Idx> win(Idx o) const {
    return {div_nonneg(o * I, O), div_nonneg((o + 1) * I + O - 1, O), 1};
  }
  // start(o) <= i < end(o)  <=>  floor(i*O/I) <= o < ceil((i+1)*O/I)
  PYDL_HD AxisRangeT<Idx> outs(Idx i) const {
    return {div_nonneg(i * O, I), pool_min<Idx>(div_nonneg((i + 1) * O + I - 1, I), O)};
  }
};

// avg_pool2d's divisor for the window of output (oh, ow), torch's rule (see the top).
template <typename Idx> struct AvgDivisorT {
  FixedAxisT<Idx> h, w;
  bool count_include_pad;
  Idx divisor_override;  // 0: none

  PYDL_HD Idx operator()(Idx oh, Idx ow) const {
    if (divisor_override != 0) return divisor_override;
    Idx hs = oh * h.s - h.p, ws = ow * w.s - w.p;
    Idx he = pool_min<Idx>(hs + h.k, h.I + h.p), we = pool_min<Idx>(ws + w.k, w.I + w.p);
    if (count_include_pad) return (he - hs) * (we - ws);
    hs = pool_max<Idx>(hs, 0);
    ws = pool_max<Idx>(ws, 0);
    he = pool_min<Idx>(he, h.I);
    we = pool_min<Idx>(we, w.I);
    return (he - hs) * (we - ws);
  }
};

// adaptive_avg_pool2d's divisor: the number of elements in the window.
template <typename Idx> struct AdaptiveDivisorT {
  AdaptiveAxisT<Idx> h, w;

  PYDL_HD Idx operator()(Idx oh, Idx ow) const {
    const AxisWinT<Idx> a = h.win(oh), b = w.win(ow);
    return (a.e - a.b) * (b.e - b.b);
  }
};

// Max pooling divides by nothing; the kernels take a divisor functor uniformly.
struct NoDivisor {
  template <typename Idx> PYDL_HD Idx operator()(Idx, Idx) const { return 1; }
};

// The 64-bit instantiations, under the names the CPU backend uses.
using AxisWin = AxisWinT<int64_t>;
using AxisRange = AxisRangeT<int64_t>;
using FixedAxis = FixedAxisT<int64_t>;
using AdaptiveAxis = AdaptiveAxisT<int64_t>;
using AvgDivisor = AvgDivisorT<int64_t>;
using AdaptiveDivisor = AdaptiveDivisorT<int64_t>;

// The max-pool comparison, torch's: a later element replaces the running maximum when
// it is larger or NaN (so NaN propagates, and its index is that of the last NaN in
// window order); ties keep the first.
template <typename C>
PYDL_HD bool max_takes(C v, C cur) {
  return v > cur || v != v;
}

}  // namespace pydl

// Batch-norm formulas, written once for every C++ backend: included by the CPU kernels
// (csrc/cpu/batchnorm.cpp) and the CUDA kernels (csrc/cuda/batchnorm_kernel.cu), so the
// two cannot drift apart. No torch headers: nvcc compiles this in ~1 s.
//
// Per channel c, over the M = N * prod(spatial) values x_j of that channel:
//   mean     = sum_j x_j / M
//   var      = sum_j (x_j - mean)^2 / M            (biased: used to normalize)
//   invstd   = 1 / sqrt(var + eps)
//   xhat     = (x - mean) * invstd
//   z        = xhat * w + b (+ residual)            (w = 1, b = 0 when affine=False)
//   y        = act(z),  act in {none, relu, leaky_relu}
//
// Backward, with dz = g * act'(.) (read from the saved output y, see below):
//   dbias    = sum_j dz_j
//   dweight  = sum_j dz_j * xhat_j
//   dx       = w * invstd * (dz - k * (dbias + xhat * dweight))   k = 1/M in training,
//                                                                  k = 0 in eval
//   dresidual = dz
//
// The statistics are accumulated with Welford's update (the GPU kernels: its form for a
// group of values, welford_add_group) and merged with Chan's formula: all work on
// deviations from a running mean, so a channel with mean 1e4 and
// std 1e-2 keeps its variance (the textbook E[x^2] - E[x]^2 would cancel it away in
// float32).
//
// act'(.) is taken from the output y: relu and leaky_relu with negative_slope >= 0 keep
// the sign (y > 0 exactly when z > 0), so y determines the derivative and z need not be
// saved. (This is why pydl rejects a negative slope for the fused op, as torch rejects
// a negative slope for in-place leaky_relu.)
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>
#include <type_traits>

#if defined(__CUDACC__)
#define PYDL_BN_HD __host__ __device__ __forceinline__
#else
#define PYDL_BN_HD inline
#endif

namespace pydl {

// The activation fused after batch norm: none, relu, leaky_relu (the schema's `str act`).
enum class BnAct : int { None = 0, ReLU = 1, LeakyReLU = 2 };

inline bool parse_bn_act(std::string_view name, BnAct* out) {
  if (name == "none") { *out = BnAct::None; return true; }
  if (name == "relu") { *out = BnAct::ReLU; return true; }
  if (name == "leaky_relu") { *out = BnAct::LeakyReLU; return true; }
  return false;
}

// Calls fn(std::integral_constant<BnAct, A>{}) for the runtime `act`, so each kernel is
// instantiated once per activation with its formula inlined into the loop.
template <typename Fn>
inline void with_bn_act(BnAct act, Fn&& fn) {
  switch (act) {
    case BnAct::None: fn(std::integral_constant<BnAct, BnAct::None>{}); break;
    case BnAct::ReLU: fn(std::integral_constant<BnAct, BnAct::ReLU>{}); break;
    case BnAct::LeakyReLU: fn(std::integral_constant<BnAct, BnAct::LeakyReLU>{}); break;
  }
}

// A running mean / sum of squared deviations over `n` values (Welford). C is float for
// float32/float16/bfloat16 inputs and double for float64.
template <typename C>
struct Welford {
  C mean;
  C m2;
  int64_t n;
};

// Adds one value.
template <typename C>
PYDL_BN_HD void welford_add(Welford<C>& w, C x) {
  w.n += 1;
  const C d = x - w.mean;
  w.mean += d / C(w.n);
  w.m2 += d * (x - w.mean);
}

// Adds a group of ng values at once: s1 and s2 are the sum and the sum of squares of their
// deviations d_i = x_i - w.mean from the current mean. With n' = n + ng:
//   mean' = mean + s1 / n'          m2' = m2 + s2 - s1^2 / n'
// (Chan's merge of the group's own (ng, mean + s1/ng, s2 - s1^2/ng) into w, simplified:
// 1/ng - n/(ng n') = 1/n'). For ng = 1 it is welford_add. The GPU kernels use it so that a
// thread loads a whole group before using any value -- several loads in flight -- and pays
// one division per group instead of one per value; the deviations are still taken from a
// running mean, so nothing cancels that welford_add would keep.
template <typename C>
PYDL_BN_HD void welford_add_group(Welford<C>& w, C s1, C s2, int64_t ng) {
  w.n += ng;
  const C r = C(1) / C(w.n);
  w.mean += s1 * r;
  w.m2 += s2 - s1 * s1 * r;
}

// Chan et al.'s merge of two partial results: exact in exact arithmetic, and stable
// because it only ever adds deviations. Merging in a fixed order gives the same bits
// every run.
template <typename C>
PYDL_BN_HD Welford<C> welford_merge(const Welford<C>& a, const Welford<C>& b) {
  if (b.n == 0) return a;
  if (a.n == 0) return b;
  const int64_t n = a.n + b.n;
  const C fb = C(double(b.n) / double(n));  // weight of b in the merged mean
  const C d = b.mean - a.mean;
  Welford<C> r;
  r.n = n;
  r.mean = a.mean + d * fb;
  r.m2 = a.m2 + b.m2 + d * d * C(a.n) * fb;  // d^2 * na * nb / n
  return r;
}

template <typename C>
PYDL_BN_HD C bn_invstd(C var, C eps) {
  using std::sqrt;  // std:: for the host; nvcc provides the float overloads on the device
  return C(1) / sqrt(var + eps);
}

// act(z) for the fused forward.
template <BnAct A, typename C>
PYDL_BN_HD C bn_act(C z, C alpha) {
  if constexpr (A == BnAct::ReLU) {
    return (z > C(0) || z != z) ? z : C(0);  // keeps NaN, as torch's relu
  } else if constexpr (A == BnAct::LeakyReLU) {
    return z > C(0) ? z : z * alpha;
  } else {
    return z;
  }
}

// dz = g * act'(z), from the output y (see the header comment).
template <BnAct A, typename C>
PYDL_BN_HD C bn_act_grad(C g, C y, C alpha) {
  if constexpr (A == BnAct::ReLU) {
    return y <= C(0) ? C(0) : g;  // torch's threshold_backward on the result
  } else if constexpr (A == BnAct::LeakyReLU) {
    return y > C(0) ? g : g * alpha;
  } else {
    return g;
  }
}

}  // namespace pydl

// The activation formulas, written once for every C++ backend: included by the CPU
// kernels (csrc/cpu/activation.cpp) and the CUDA kernels (csrc/cuda/activation_kernel.cu),
// so the two cannot drift apart. No torch headers: nvcc compiles this in ~1 s.
//
//   relu(x)        = max(x, 0)
//   leaky_relu(x)  = x            if x > 0 else a * x            (a = negative_slope)
//   elu(x)         = x            if x > 0 else a * (exp(x) - 1)  (a = alpha)
//   sigmoid(x)     = 1 / (1 + exp(-x))
//   tanh(x)        = tanh(x)
//
// Backward, dL/dx = g * f'(x), written from whatever the autograd formula saved:
// the output y (relu, sigmoid, tanh; in-place leaky_relu/elu) or the input x
// (out-of-place leaky_relu/elu, which is what torch saves too, for accuracy: for
// elu, y + a loses the small exp(x) term to rounding when y is stored in 16 bits).
//   relu:        0 if y <= 0 else g
//   leaky_relu:  g            if s > 0 else a * g          (s = x or y: same sign, a > 0)
//   elu:         g            if s > 0 else g * a * exp(x)  (from x)
//                                        else g * (y + a)   (from y)
//   sigmoid:     g * y * (1 - y)
//   tanh:        g * (1 - y * y)
//
// NaN: relu/leaky_relu/elu propagate NaN as torch does (a NaN compares false, so the
// "else" branch runs and NaN * a is NaN; relu uses an explicit isnan test because
// max(NaN, 0) would drop it).
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>
#include <type_traits>

#if defined(__CUDACC__)
#define PYDL_HD __host__ __device__ __forceinline__
#else
#define PYDL_HD inline
#endif

namespace pydl {

enum class Act : int { ReLU = 0, LeakyReLU = 1, ELU = 2, Sigmoid = 3, Tanh = 4 };

// The schema's `str act` -> Act; false for an unknown name.
inline bool parse_act(std::string_view name, Act* out) {
  constexpr std::string_view names[] = {"relu", "leaky_relu", "elu", "sigmoid", "tanh"};
  for (int i = 0; i < 5; ++i)
    if (name == names[i]) { *out = Act(i); return true; }
  return false;
}

// Calls fn(std::integral_constant<Act, A>{}) for the runtime activation `act`, so each
// kernel is instantiated once per activation with its formula inlined into the loop.
template <typename Fn>
inline void with_act(Act act, Fn&& fn) {
  switch (act) {
    case Act::ReLU: fn(std::integral_constant<Act, Act::ReLU>{}); break;
    case Act::LeakyReLU: fn(std::integral_constant<Act, Act::LeakyReLU>{}); break;
    case Act::ELU: fn(std::integral_constant<Act, Act::ELU>{}); break;
    case Act::Sigmoid: fn(std::integral_constant<Act, Act::Sigmoid>{}); break;
    case Act::Tanh: fn(std::integral_constant<Act, Act::Tanh>{}); break;
  }
}

// C is the compute type: float for float32/float16/bfloat16, double for float64.
template <Act A, typename C>
PYDL_HD C act_forward(C x, C a) {
  using std::exp;  // std:: for the host; nvcc provides the float overloads on the device
  using std::expm1;
  using std::tanh;
  if constexpr (A == Act::ReLU) {
    return (x > C(0) || x != x) ? x : C(0);
  } else if constexpr (A == Act::LeakyReLU) {
    return x > C(0) ? x : x * a;
  } else if constexpr (A == Act::ELU) {
    return x > C(0) ? x : a * C(expm1(x));
  } else if constexpr (A == Act::Sigmoid) {
    return C(1) / (C(1) + C(exp(-x)));
  } else {
    return C(tanh(x));
  }
}

// s is the saved tensor's element: the output y when is_result, else the input x.
template <Act A, typename C>
PYDL_HD C act_backward(C g, C s, C a, bool is_result) {
  using std::exp;
  if constexpr (A == Act::ReLU) {
    return s <= C(0) ? C(0) : g;  // torch's threshold_backward: a NaN y passes g
  } else if constexpr (A == Act::LeakyReLU) {
    return s > C(0) ? g : g * a;
  } else if constexpr (A == Act::ELU) {
    if (!(s <= C(0))) return g;  // torch's elu_backward: a NaN s takes this branch
    return is_result ? g * (s + a) : g * a * C(exp(s));
  } else if constexpr (A == Act::Sigmoid) {
    return g * s * (C(1) - s);
  } else {
    return g * (C(1) - s * s);
  }
}

}  // namespace pydl

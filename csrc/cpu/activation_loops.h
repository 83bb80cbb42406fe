// The innermost loops of the CPU activations (csrc/cpu/activation.cpp), compiled for
// AVX-512, AVX2 + FMA and the baseline x86-64 (SSE2) by csrc/cpu/simd_copies.h, which
// includes this file three times, inside a struct each time; the widest the CPU has runs
// (csrc/cpu/simd.h). No include guard, on purpose, and no includes: what it uses
// (act_forward, act_backward, simd_load, simd_store) comes before.
//
// One straight pass over n elements in memory order, the formula inlined: the compiler
// vectorizes it, its branches (x > 0 ? x : a * x) becoming selects -- relu and
// leaky_relu run at memory speed. (sigmoid, tanh and elu call exp/tanh, which stay scalar
// calls; the loop around them costs nothing.) C: float for float/half/bfloat16, double
// for double. y may be x (the in-place op): no __restrict on them.

template <Act A, typename T>
static void act_fwd_run(const T* x, T* y, int64_t n, at::opmath_type<T> a) {
  using C = at::opmath_type<T>;
  for (int64_t i = 0; i < n; ++i) y[i] = simd_store<T>(act_forward<A, C>(simd_load<C>(x[i]), a));
}

// dx = g * f'(s), s the saved input or output (is_result), see csrc/activation_math.h.
template <Act A, typename T>
static void act_bwd_run(const T* __restrict g, const T* __restrict s, T* __restrict dx, int64_t n,
                        at::opmath_type<T> a, bool is_result) {
  using C = at::opmath_type<T>;
  if (is_result) {  // two loops: the flag is a constant inside each
    for (int64_t i = 0; i < n; ++i)
      dx[i] = simd_store<T>(act_backward<A, C>(simd_load<C>(g[i]), simd_load<C>(s[i]), a, true));
  } else {
    for (int64_t i = 0; i < n; ++i)
      dx[i] = simd_store<T>(act_backward<A, C>(simd_load<C>(g[i]), simd_load<C>(s[i]), a, false));
  }
}

// The innermost loops of the CPU optimizer steps (csrc/cpu/optim.cpp), compiled for
// AVX-512, AVX2 + FMA and the baseline x86-64 (SSE2) by csrc/cpu/simd_copies.h, which
// includes this file three times, inside a struct each time; the widest the CPU has runs
// (csrc/cpu/simd.h). No include guard, on purpose, and no includes: what it uses (the
// *_update formulas and hyper-parameter structs of csrc/optim_math.h, simd_load,
// simd_store) comes before.
//
// Each runs one chunk: n elements of a parameter, its gradient and its state, in
// lockstep. What makes them vectorize:
//  * the flags that decide which arrays exist (a momentum buffer, amsgrad's max, the
//    centered average, GradScaler's write-back of the unscaled gradient) are template
//    parameters, so no element loads or stores conditionally;
//  * the hyper-parameters arrive by value -- a local copy that no store to the float
//    arrays can alias --, so their remaining flags (maximize, nesterov, weight decay...)
//    are loop-invariant, and the compiler makes a loop version per combination (it gives
//    up when there are too many: hence the array flags set as constants in the copy);
//  * sqrt and division are the correctly rounded vector instructions (the extension is
//    built with -fno-math-errno: a sqrt that must set errno stays a scalar call).
// T: the parameter type; C = S: the compute and state type (float; double for double).

// The gradient element; with GradScaler (kScaled) divided by its scale gs and written back
// unscaled, as torch's fused optimizers do.
template <bool kScaled, typename T>
static inline at::opmath_type<T> grad_at(T& g, at::opmath_type<T> gs) {
  const at::opmath_type<T> v = simd_load<at::opmath_type<T>>(g);
  if constexpr (!kScaled) return v;
  const at::opmath_type<T> u = v / gs;
  g = simd_store<T>(u);
  return u;
}

template <bool kBuf, bool kScaled, typename T>
static void sgd_run(T* __restrict p, T* __restrict g, at::opmath_type<T>* __restrict b, int64_t n,
                    SgdHyper<at::opmath_type<T>> h, at::opmath_type<T> gs) {
  using C = at::opmath_type<T>;
  for (int64_t i = 0; i < n; ++i) {
    C pv = simd_load<C>(p[i]), gv = grad_at<kScaled>(g[i], gs);
    C bv = kBuf ? b[i] : C(0);
    sgd_update<C>(pv, gv, bv, h);
    p[i] = simd_store<T>(pv);
    if constexpr (kBuf) b[i] = bv;
  }
}

template <bool kAmsgrad, bool kScaled, typename T>
static void adam_run(T* __restrict p, T* __restrict g, at::opmath_type<T>* __restrict m,
                     at::opmath_type<T>* __restrict v, at::opmath_type<T>* __restrict vmax, int64_t n,
                     AdamHyper<at::opmath_type<T>> h, at::opmath_type<T> gs,
                     at::opmath_type<T> step_size, at::opmath_type<T> bc2_sqrt) {
  using C = at::opmath_type<T>;
  h.amsgrad = kAmsgrad;  // a constant: its branch in adam_update folds away
  for (int64_t i = 0; i < n; ++i) {
    C pv = simd_load<C>(p[i]), gv = grad_at<kScaled>(g[i], gs);
    C mv = m[i], vv = v[i], vm = kAmsgrad ? vmax[i] : C(0);
    adam_update<C>(pv, gv, mv, vv, vm, h, step_size, bc2_sqrt);
    p[i] = simd_store<T>(pv);
    m[i] = mv;
    v[i] = vv;
    if constexpr (kAmsgrad) vmax[i] = vm;
  }
}

template <bool kCentered, bool kBuf, bool kScaled, typename T>
static void rmsprop_run(T* __restrict p, T* __restrict g, at::opmath_type<T>* __restrict sq,
                        at::opmath_type<T>* __restrict ga, at::opmath_type<T>* __restrict b, int64_t n,
                        RmspropHyper<at::opmath_type<T>> h, at::opmath_type<T> gs) {
  using C = at::opmath_type<T>;
  h.centered = kCentered;  // a constant: its branch in rmsprop_update folds away
  for (int64_t i = 0; i < n; ++i) {
    C pv = simd_load<C>(p[i]), gv = grad_at<kScaled>(g[i], gs);
    C sv = sq[i], gav = kCentered ? ga[i] : C(0), bv = kBuf ? b[i] : C(0);
    rmsprop_update<C>(pv, gv, sv, gav, bv, h);
    p[i] = simd_store<T>(pv);
    sq[i] = sv;
    if constexpr (kCentered) ga[i] = gav;
    if constexpr (kBuf) b[i] = bv;
  }
}

template <bool kScaled, typename T>
static void adagrad_run(T* __restrict p, T* __restrict g, at::opmath_type<T>* __restrict sum, int64_t n,
                        AdagradHyper<at::opmath_type<T>> h, at::opmath_type<T> gs, at::opmath_type<T> clr) {
  using C = at::opmath_type<T>;
  for (int64_t i = 0; i < n; ++i) {
    C pv = simd_load<C>(p[i]), gv = grad_at<kScaled>(g[i], gs);
    C sv = sum[i];
    adagrad_update<C>(pv, gv, sv, h, clr);
    p[i] = simd_store<T>(pv);
    sum[i] = sv;
  }
}

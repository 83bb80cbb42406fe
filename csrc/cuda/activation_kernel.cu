// Activations on the GPU -- the launchers: y = f(x) and dx = g * f'(.) elementwise (the
// kernels and the description of the algorithm are in activation_device.cuh; the
// formulas in csrc/activation_math.h, shared with the CPU kernels). They pick the
// 16-byte vector path when every pointer is 16-byte aligned (else VEC = 1), size the
// grid-stride grid to the GPU and launch on the caller's stream. CUDA runtime headers
// only (no torch).
#include "activation_kernel.h"
#include "elementwise.cuh"

#include "activation_device.cuh"

namespace pydl {

using namespace act_detail;

int launch_act_fwd(Act act, DType dtype, const void* x, void* y, int64_t n, double alpha,
                   cudaStream_t stream) {
  if (n == 0) return 0;
  const bool vec_ok = aligned16(x) && aligned16(y);
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using C = typename OpMath<T>::type;
    constexpr int VEC = vec_width<T>();
    with_act(act, [&](auto a) {
      constexpr Act A = decltype(a)::value;
      if (vec_ok) {
        act_fwd_kernel<A, T, VEC><<<grid_for(n / VEC + 1), kThreads, 0, stream>>>(
            static_cast<const T*>(x), static_cast<T*>(y), n, C(alpha));
      } else {
        act_fwd_kernel<A, T, 1><<<grid_for(n), kThreads, 0, stream>>>(
            static_cast<const T*>(x), static_cast<T*>(y), n, C(alpha));
      }
    });
  });
  return int(cudaGetLastError());
}

int launch_act_bwd(Act act, DType dtype, const void* grad, const void* saved, void* dx,
                   int64_t n, double alpha, bool is_result, cudaStream_t stream) {
  if (n == 0) return 0;
  const bool vec_ok = aligned16(grad) && aligned16(saved) && aligned16(dx);
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using C = typename OpMath<T>::type;
    constexpr int VEC = vec_width<T>();
    with_act(act, [&](auto a) {
      constexpr Act A = decltype(a)::value;
      if (vec_ok) {
        act_bwd_kernel<A, T, VEC><<<grid_for(n / VEC + 1), kThreads, 0, stream>>>(
            static_cast<const T*>(grad), static_cast<const T*>(saved), static_cast<T*>(dx), n,
            C(alpha), is_result);
      } else {
        act_bwd_kernel<A, T, 1><<<grid_for(n), kThreads, 0, stream>>>(
            static_cast<const T*>(grad), static_cast<const T*>(saved), static_cast<T*>(dx), n,
            C(alpha), is_result);
      }
    });
  });
  return int(cudaGetLastError());
}

}  // namespace pydl

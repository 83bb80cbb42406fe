// Activations on the GPU: y = f(x) and dx = g * f'(.) elementwise; the formulas are in
// csrc/activation_math.h (shared with the CPU kernels).
//
// Algorithm: memory-bound streaming. The operands are dense, so element i of each lives
// at ptr[i]. Each thread takes VEC consecutive elements (16 bytes: 4 floats or 8 halves)
// as one vector load, computes in float (double for float64), and stores one vector;
// a grid-stride loop walks the vectors so the grid can be sized to the GPU rather than
// to the tensor. The VEC-wide path needs 16-byte-aligned pointers (checked on the host);
// otherwise the same kernel runs with VEC = 1. The n % VEC tail is done by the last
// vector's owner, element by element. Indices are 64-bit throughout.
#include "activation_kernel.h"
#include "elementwise.cuh"

namespace pydl {
namespace {

template <Act A, typename T, int VEC>
__global__ void act_fwd_kernel(const T* x, T* y, int64_t n, typename OpMath<T>::type alpha) {
  using C = typename OpMath<T>::type;
  const int64_t nvec = n / VEC;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec; v += stride) {
    Pack<T, VEC> p = reinterpret_cast<const Pack<T, VEC>*>(x)[v];
#pragma unroll
    for (int k = 0; k < VEC; ++k) p.v[k] = from_c<T>(act_forward<A, C>(to_c(p.v[k]), alpha));
    reinterpret_cast<Pack<T, VEC>*>(y)[v] = p;
  }
  // Tail: at most VEC - 1 elements, taken by the first threads of the grid.
  const int64_t i = nvec * VEC + int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = from_c<T>(act_forward<A, C>(to_c(x[i]), alpha));
}

template <Act A, typename T, int VEC>
__global__ void act_bwd_kernel(const T* g, const T* s, T* dx, int64_t n,
                               typename OpMath<T>::type alpha, bool is_result) {
  using C = typename OpMath<T>::type;
  const int64_t nvec = n / VEC;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec; v += stride) {
    const Pack<T, VEC> gp = reinterpret_cast<const Pack<T, VEC>*>(g)[v];
    const Pack<T, VEC> sp = reinterpret_cast<const Pack<T, VEC>*>(s)[v];
    Pack<T, VEC> out;
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      out.v[k] = from_c<T>(act_backward<A, C>(to_c(gp.v[k]), to_c(sp.v[k]), alpha, is_result));
    reinterpret_cast<Pack<T, VEC>*>(dx)[v] = out;
  }
  const int64_t i = nvec * VEC + int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dx[i] = from_c<T>(act_backward<A, C>(to_c(g[i]), to_c(s[i]), alpha, is_result));
}

}  // namespace

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

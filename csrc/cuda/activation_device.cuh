// Activations on the GPU -- the device code: y = f(x) and dx = g * f'(.) elementwise; the
// formulas are in csrc/activation_math.h (shared with the CPU kernels).
//
// Algorithm: memory-bound streaming. The operands are dense, so element i of each lives
// at ptr[i]. Each thread takes VEC consecutive elements (16 bytes: 4 floats or 8 halves)
// as one vector load, computes in float (double for float64), and stores one vector;
// a grid-stride loop walks the vectors so the grid can be sized to the GPU rather than
// to the tensor. The VEC-wide path needs 16-byte-aligned pointers (the launchers in
// activation_kernel.cu check them); otherwise the same kernel runs with VEC = 1. The
// n % VEC tail is done by the first threads of the grid, element by element. Indices
// are 64-bit throughout.
//
// This header holds the kernels only and needs, before it is included, the CUDA headers
// plus OpMath / to_c / from_c / Pack (csrc/cuda/elementwise.cuh): activation_kernel.cu
// includes it for the GPU, and tests/activation_cuda_emulation.cpp includes it on the
// host, with fibers standing in for CUDA threads, to check these kernels on machines
// without a GPU.
#pragma once

#include <cstdint>

#include "activation_math.h"

namespace pydl {
namespace act_detail {

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

}  // namespace act_detail
}  // namespace pydl

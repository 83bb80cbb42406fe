// Batch normalization on the GPU: the launchers. They size the reduction and elementwise
// grids (the geometry, the kernels and the description of the algorithms are in
// batchnorm_device.cuh), pick the 16-byte vector path where alignment allows, and launch
// on the caller's stream. CUDA runtime headers only (no torch).
#include "batchnorm_kernel.h"
#include "elementwise.cuh"

#include <algorithm>
#include <cmath>
#include <initializer_list>

#include "batchnorm_device.cuh"

namespace pydl {
namespace {

using namespace bn_detail;

// The 16-byte Pack path of the planes walk: VEC divides the plane size (so every plane
// starts aligned) and every given pointer is 16-byte aligned (null pointers are unused).
template <typename T>
bool vec_ok(int64_t inner, std::initializer_list<const void*> ptrs) {
  if (inner == 1 || inner % vec_width<T>() != 0) return false;
  for (const void* p : ptrs)
    if (p && !aligned16(p)) return false;
  return true;
}

}  // namespace

int64_t bn_workspace_elems(int64_t outer, int64_t C, int64_t inner) {
  const ReduceGrid g = reduce_grid(outer, C, inner);
  return 2 * C * g.B;
}

int launch_bn_stats(DType dtype, const void* x, int64_t outer, int64_t C, int64_t inner,
                    void* mean, void* var, void* workspace, cudaStream_t stream) {
  if (C == 0) return 0;
  const ReduceGrid rg = reduce_grid(outer, C, inner);
  const int64_t M = outer * inner;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using Cc = typename OpMath<T>::type;
    Cc* pmean = static_cast<Cc*>(workspace);
    Cc* pm2 = pmean + C * rg.B;
    const dim3 grid(unsigned(rg.tiles), unsigned(rg.B)), block(rg.tx, rg.ty);
    if (M > 0) {  // (an empty batch only needs the combine, which writes NaN)
      if (inner == 1)
        stats_partial_kernel<T, true><<<grid, block, 0, stream>>>(
            static_cast<const T*>(x), C, inner, M, rg.J, rg.B, pmean, pm2);
      else
        stats_partial_kernel<T, false><<<grid, block, 0, stream>>>(
            static_cast<const T*>(x), C, inner, M, rg.J, rg.B, pmean, pm2);
    }
    stats_combine_kernel<T><<<warp_blocks(C), kBnThreads, 0, stream>>>(
        static_cast<const T*>(x), pmean, pm2, C, inner, M, rg.J, rg.B, static_cast<Cc*>(mean),
        static_cast<Cc*>(var));
  });
  return int(cudaGetLastError());
}

int launch_bn_normalize(BnAct act, DType dtype, const void* x, const void* r, void* y,
                        const void* mean, const void* var, const void* w, const void* b,
                        double eps, double alpha, int64_t outer, int64_t C, int64_t inner,
                        cudaStream_t stream) {
  if (outer * C * inner == 0) return 0;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using Cc = typename OpMath<T>::type;
    const bool vec = vec_ok<T>(inner, {x, r, y});
    const ElemGrid eg = elem_grid(outer, C, vec ? inner / vec_width<T>() : inner);
    with_bn_act(act, [&](auto a) {
      constexpr BnAct A = decltype(a)::value;
      auto args = [&](auto kernel) {
        kernel<<<eg.grid, eg.block, 0, stream>>>(
            static_cast<const T*>(x), static_cast<const T*>(r), static_cast<T*>(y),
            static_cast<const Cc*>(mean), static_cast<const Cc*>(var),
            static_cast<const Cc*>(w), static_cast<const Cc*>(b), Cc(eps), Cc(alpha), outer, C,
            inner);
      };
      if (inner == 1) args(normalize_kernel<A, T, true, 1>);
      else if (vec) args(normalize_kernel<A, T, false, vec_width<T>()>);
      else args(normalize_kernel<A, T, false, 1>);
    });
  });
  return int(cudaGetLastError());
}

int launch_bn_bwd_reduce(BnAct act, DType dtype, const void* g, const void* x, const void* y,
                         const void* mean, const void* var, double eps, double alpha,
                         int64_t outer, int64_t C, int64_t inner, void* sum_dz, void* sum_dzxh,
                         void* workspace, cudaStream_t stream) {
  if (C == 0) return 0;
  const ReduceGrid rg = reduce_grid(outer, C, inner);
  const int64_t M = outer * inner;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using Cc = typename OpMath<T>::type;
    Cc* pdz = static_cast<Cc*>(workspace);
    Cc* pdzx = pdz + C * rg.B;
    const dim3 grid(unsigned(rg.tiles), unsigned(rg.B)), block(rg.tx, rg.ty);
    with_bn_act(act, [&](auto a) {
      constexpr BnAct A = decltype(a)::value;
      auto args = [&](auto kernel) {
        kernel<<<grid, block, 0, stream>>>(
            static_cast<const T*>(g), static_cast<const T*>(x), static_cast<const T*>(y),
            static_cast<const Cc*>(mean), Cc(alpha), C, inner, M, rg.J, rg.B, pdz, pdzx);
      };
      if (inner == 1) args(bwd_reduce_partial_kernel<A, T, true>);
      else args(bwd_reduce_partial_kernel<A, T, false>);
    });
    // an empty batch (M = 0) still runs the partials: every thread sums nothing -> 0
    bwd_reduce_combine_kernel<Cc><<<warp_blocks(C), kBnThreads, 0, stream>>>(
        pdz, pdzx, static_cast<const Cc*>(var), Cc(eps), C, rg.B, static_cast<Cc*>(sum_dz),
        static_cast<Cc*>(sum_dzxh));
  });
  return int(cudaGetLastError());
}

int launch_bn_bwd_elemt(BnAct act, DType dtype, const void* g, const void* x, const void* y,
                        const void* mean, const void* var, const void* w, const void* sum_dz,
                        const void* sum_dzxh, double eps, double inv_count, double alpha,
                        void* dx, void* dz, int64_t outer, int64_t C, int64_t inner,
                        cudaStream_t stream) {
  if (outer * C * inner == 0) return 0;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using Cc = typename OpMath<T>::type;
    const bool vec = vec_ok<T>(inner, {g, x, y, dx, dz});
    const ElemGrid eg = elem_grid(outer, C, vec ? inner / vec_width<T>() : inner);
    with_bn_act(act, [&](auto a) {
      constexpr BnAct A = decltype(a)::value;
      auto args = [&](auto kernel) {
        kernel<<<eg.grid, eg.block, 0, stream>>>(
            static_cast<const T*>(g), static_cast<const T*>(x), static_cast<const T*>(y),
            static_cast<const Cc*>(mean), static_cast<const Cc*>(var),
            static_cast<const Cc*>(w), static_cast<const Cc*>(sum_dz),
            static_cast<const Cc*>(sum_dzxh), Cc(eps), Cc(inv_count), Cc(alpha),
            static_cast<T*>(dx), static_cast<T*>(dz), outer, C, inner);
      };
      if (inner == 1) args(bwd_elemt_kernel<A, T, true, 1>);
      else if (vec) args(bwd_elemt_kernel<A, T, false, vec_width<T>()>);
      else args(bwd_elemt_kernel<A, T, false, 1>);
    });
  });
  return int(cudaGetLastError());
}

}  // namespace pydl

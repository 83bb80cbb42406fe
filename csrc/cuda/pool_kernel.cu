// Pooling on the GPU: the launchers. They pick the kernel for a mode and layout (16-byte
// vectors across channels where alignment allows) and its index type (32-bit unless the
// sizes need 64), size the grid and launch on the caller's stream. The kernels and the
// description of their algorithms are in pool_device.cuh. CUDA runtime headers only (no
// torch).
#include "pool_kernel.h"
#include "elementwise.cuh"

#include <cmath>
#include <type_traits>

#include "pool_device.cuh"

namespace pydl {
namespace {

using namespace pool_detail;

// Calls fn(integral_constant<int, VEC>, integral_constant<bool, CL>) for the layout:
// NCHW, NHWC one channel per thread, or NHWC with VEC channels per thread.
template <typename T, class Fn>
void with_layout(bool cl, bool vec_ok, Fn&& fn) {
  constexpr int V = vec_width<T>();
  if (!cl) fn(std::integral_constant<int, 1>{}, std::false_type{});
  else if (vec_ok) fn(std::integral_constant<int, V>{}, std::true_type{});
  else fn(std::integral_constant<int, 1>{}, std::true_type{});
}

// Calls fn(I{}) with the kernels' index type: I = int32_t when `small` (pool_index32_ok
// or gather_index32_ok said every index fits), else int64_t.
template <class Fn>
void with_index(bool small, Fn&& fn) {
  if (small) fn(int32_t{});
  else fn(int64_t{});
}

bool can_vectorize(DType dtype, bool cl, int64_t C, const void* a, const void* b) {
  const int64_t vec = dtype == DType::F64 ? 2 : dtype == DType::F32 ? 4 : 8;
  return cl && C % vec == 0 && aligned16(a) && aligned16(b);
}

}  // namespace

int launch_pool_gather(DType dtype, bool channels_last, const void* x, const int64_t* ind,
                       void* out, int64_t N, int64_t C, int64_t HW, int64_t OHW,
                       cudaStream_t stream) {
  const int64_t n_out = N * C * OHW;
  if (n_out == 0) return 0;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    with_index(gather_index32_ok(N, C, HW, OHW), [&](auto itag) {
      using I = decltype(itag);
      if (channels_last)
        pool_gather_kernel<T, true, I><<<grid_for(n_out), kThreads, 0, stream>>>(
            static_cast<const T*>(x), ind, static_cast<T*>(out), n_out, C, HW, OHW);
      else
        pool_gather_kernel<T, false, I><<<grid_for(n_out), kThreads, 0, stream>>>(
            static_cast<const T*>(x), ind, static_cast<T*>(out), n_out, C, HW, OHW);
    });
  });
  return int(cudaGetLastError());
}

int launch_pool_fwd(PoolMode mode, DType dtype, bool channels_last, const void* x, void* y,
                    int64_t* ind, const PoolParams& p, cudaStream_t stream) {
  const int64_t total = p.N * p.C * p.OH * p.OW;
  if (total == 0) return 0;
  const bool vec_ok = can_vectorize(dtype, channels_last, p.C, x, y);
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = vec_width<T>();
    const T* xs = static_cast<const T*>(x);
    T* ys = static_cast<T*>(y);
    with_index(pool_index32_ok(mode, p), [&](auto itag) {
      using I = decltype(itag);
      if (mode == PoolMode::AdaptiveAvg && p.OH == 1 && p.OW == 1) {  // global average pool
        if (!channels_last) {
          const int64_t planes = p.N * p.C;
          global_avg_nchw_kernel<T, I><<<grid_for(planes * 32), kThreads, 0, stream>>>(
              xs, ys, planes, p.IH * p.IW);
        } else if (vec_ok) {
          global_avg_nhwc_kernel<T, V, I><<<grid_for(p.N * p.C / V), kThreads, 0, stream>>>(
              xs, ys, p.N, p.C, p.IH * p.IW);
        } else {
          global_avg_nhwc_kernel<T, 1, I><<<grid_for(p.N * p.C), kThreads, 0, stream>>>(
              xs, ys, p.N, p.C, p.IH * p.IW);
        }
        return;
      }
      with_layout<T>(channels_last, vec_ok, [&](auto vec, auto cl) {
        constexpr int VEC = decltype(vec)::value;
        constexpr bool CL = decltype(cl)::value;
        const unsigned grid = grid_for(total / VEC);
        switch (mode) {
          case PoolMode::Max:
            if (ind)
              pool_fwd_kernel<T, VEC, CL, true, true, I><<<grid, kThreads, 0, stream>>>(
                  xs, ys, ind, p, fixed_h<I>(p), fixed_w<I>(p), NoDivisor{});
            else
              pool_fwd_kernel<T, VEC, CL, true, false, I><<<grid, kThreads, 0, stream>>>(
                  xs, ys, nullptr, p, fixed_h<I>(p), fixed_w<I>(p), NoDivisor{});
            break;
          case PoolMode::Avg:
            pool_fwd_kernel<T, VEC, CL, false, false, I><<<grid, kThreads, 0, stream>>>(
                xs, ys, nullptr, p, fixed_h<I>(p), fixed_w<I>(p), avg_divisor<I>(p));
            break;
          case PoolMode::AdaptiveAvg: {
            const AdaptiveAxisT<I> ah = adaptive_h<I>(p), aw = adaptive_w<I>(p);
            pool_fwd_kernel<T, VEC, CL, false, false, I><<<grid, kThreads, 0, stream>>>(
                xs, ys, nullptr, p, ah, aw, AdaptiveDivisorT<I>{ah, aw});
            break;
          }
          case PoolMode::AdaptiveMax: {
            const AdaptiveAxisT<I> ah = adaptive_h<I>(p), aw = adaptive_w<I>(p);
            if (ind)
              pool_fwd_kernel<T, VEC, CL, true, true, I><<<grid, kThreads, 0, stream>>>(
                  xs, ys, ind, p, ah, aw, NoDivisor{});
            else
              pool_fwd_kernel<T, VEC, CL, true, false, I><<<grid, kThreads, 0, stream>>>(
                  xs, ys, nullptr, p, ah, aw, NoDivisor{});
            break;
          }
        }
      });
    });
  });
  return int(cudaGetLastError());
}

int launch_pool_bwd(PoolMode mode, DType dtype, bool channels_last, const void* g,
                    const int64_t* ind, void* dx, const PoolParams& p, cudaStream_t stream) {
  const int64_t total = p.N * p.C * p.IH * p.IW;
  if (total == 0) return 0;
  const bool vec_ok = can_vectorize(dtype, channels_last, p.C, g, dx);
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* gs = static_cast<const T*>(g);
    T* ds = static_cast<T*>(dx);
    with_index(pool_index32_ok(mode, p), [&](auto itag) {
      using I = decltype(itag);
      with_layout<T>(channels_last, vec_ok, [&](auto vec, auto cl) {
        constexpr int VEC = decltype(vec)::value;
        constexpr bool CL = decltype(cl)::value;
        const unsigned grid = grid_for(total / VEC);
        switch (mode) {
          case PoolMode::Max:
            pool_bwd_kernel<T, VEC, CL, true, I><<<grid, kThreads, 0, stream>>>(
                gs, ind, ds, p, fixed_h<I>(p), fixed_w<I>(p), NoDivisor{});
            break;
          case PoolMode::Avg:
            pool_bwd_kernel<T, VEC, CL, false, I><<<grid, kThreads, 0, stream>>>(
                gs, nullptr, ds, p, fixed_h<I>(p), fixed_w<I>(p), avg_divisor<I>(p));
            break;
          case PoolMode::AdaptiveAvg: {
            const AdaptiveAxisT<I> ah = adaptive_h<I>(p), aw = adaptive_w<I>(p);
            pool_bwd_kernel<T, VEC, CL, false, I><<<grid, kThreads, 0, stream>>>(
                gs, nullptr, ds, p, ah, aw, AdaptiveDivisorT<I>{ah, aw});
            break;
          }
          case PoolMode::AdaptiveMax: {
            const AdaptiveAxisT<I> ah = adaptive_h<I>(p), aw = adaptive_w<I>(p);
            pool_bwd_kernel<T, VEC, CL, true, I><<<grid, kThreads, 0, stream>>>(
                gs, ind, ds, p, ah, aw, NoDivisor{});
            break;
          }
        }
      });
    });
  });
  return int(cudaGetLastError());
}

}  // namespace pydl

// Pooling on the GPU: the launchers. They pick the kernel for a mode and layout (16-byte
// vectors across channels where alignment allows), size the grid and launch on the
// caller's stream. The kernels and the description of their algorithms are in
// pool_device.cuh. CUDA runtime headers only (no torch).
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
    if (channels_last)
      pool_gather_kernel<T, true><<<grid_for(n_out), kThreads, 0, stream>>>(
          static_cast<const T*>(x), ind, static_cast<T*>(out), n_out, C, HW, OHW);
    else
      pool_gather_kernel<T, false><<<grid_for(n_out), kThreads, 0, stream>>>(
          static_cast<const T*>(x), ind, static_cast<T*>(out), n_out, C, HW, OHW);
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
    if (mode == PoolMode::AdaptiveAvg && p.OH == 1 && p.OW == 1) {  // global average pool
      if (!channels_last) {
        const int64_t planes = p.N * p.C;
        global_avg_nchw_kernel<T><<<grid_for(planes * 32), kThreads, 0, stream>>>(
            xs, ys, planes, p.IH * p.IW);
      } else if (vec_ok) {
        global_avg_nhwc_kernel<T, V><<<grid_for(p.N * p.C / V), kThreads, 0, stream>>>(
            xs, ys, p.N, p.C, p.IH * p.IW);
      } else {
        global_avg_nhwc_kernel<T, 1><<<grid_for(p.N * p.C), kThreads, 0, stream>>>(
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
            pool_fwd_kernel<T, VEC, CL, true, true><<<grid, kThreads, 0, stream>>>(
                xs, ys, ind, p, fixed_h(p), fixed_w(p), NoDivisor{});
          else
            pool_fwd_kernel<T, VEC, CL, true, false><<<grid, kThreads, 0, stream>>>(
                xs, ys, nullptr, p, fixed_h(p), fixed_w(p), NoDivisor{});
          break;
        case PoolMode::Avg:
          pool_fwd_kernel<T, VEC, CL, false, false><<<grid, kThreads, 0, stream>>>(
              xs, ys, nullptr, p, fixed_h(p), fixed_w(p),
              AvgDivisor{fixed_h(p), fixed_w(p), p.count_include_pad, p.divisor_override});
          break;
        case PoolMode::AdaptiveAvg: {
          const AdaptiveAxis ah{p.IH, p.OH}, aw{p.IW, p.OW};
          pool_fwd_kernel<T, VEC, CL, false, false><<<grid, kThreads, 0, stream>>>(
              xs, ys, nullptr, p, ah, aw, AdaptiveDivisor{ah, aw});
          break;
        }
        case PoolMode::AdaptiveMax: {
          const AdaptiveAxis ah{p.IH, p.OH}, aw{p.IW, p.OW};
          if (ind)
            pool_fwd_kernel<T, VEC, CL, true, true><<<grid, kThreads, 0, stream>>>(
                xs, ys, ind, p, ah, aw, NoDivisor{});
          else
            pool_fwd_kernel<T, VEC, CL, true, false><<<grid, kThreads, 0, stream>>>(
                xs, ys, nullptr, p, ah, aw, NoDivisor{});
          break;
        }
      }
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
    with_layout<T>(channels_last, vec_ok, [&](auto vec, auto cl) {
      constexpr int VEC = decltype(vec)::value;
      constexpr bool CL = decltype(cl)::value;
      const unsigned grid = grid_for(total / VEC);
      switch (mode) {
        case PoolMode::Max:
          pool_bwd_kernel<T, VEC, CL, true><<<grid, kThreads, 0, stream>>>(
              gs, ind, ds, p, fixed_h(p), fixed_w(p), NoDivisor{});
          break;
        case PoolMode::Avg:
          pool_bwd_kernel<T, VEC, CL, false><<<grid, kThreads, 0, stream>>>(
              gs, nullptr, ds, p, fixed_h(p), fixed_w(p),
              AvgDivisor{fixed_h(p), fixed_w(p), p.count_include_pad, p.divisor_override});
          break;
        case PoolMode::AdaptiveAvg: {
          const AdaptiveAxis ah{p.IH, p.OH}, aw{p.IW, p.OW};
          pool_bwd_kernel<T, VEC, CL, false><<<grid, kThreads, 0, stream>>>(
              gs, nullptr, ds, p, ah, aw, AdaptiveDivisor{ah, aw});
          break;
        }
        case PoolMode::AdaptiveMax: {
          const AdaptiveAxis ah{p.IH, p.OH}, aw{p.IW, p.OW};
          pool_bwd_kernel<T, VEC, CL, true><<<grid, kThreads, 0, stream>>>(
              gs, ind, ds, p, ah, aw, NoDivisor{});
          break;
        }
      }
    });
  });
  return int(cudaGetLastError());
}

}  // namespace pydl

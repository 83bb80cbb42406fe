// Pooling on the GPU: max_pool2d, avg_pool2d, adaptive_avg_pool2d, adaptive_max_pool2d,
// forward and backward. The window arithmetic is csrc/pool_math.h (shared with the CPU):
//
//   max:  y = max over the window's taps (NaN wins, ties keep the first),
//         ind = ih*IW + iw of the chosen tap
//   avg:  y = sum over the window / divisor(oh, ow)   (torch's divisor rules)
//   backward, a gather per input element over the outputs whose window may hold it:
//         max: dx = sum of g[o] with ind[o] == ih*IW + iw;  avg: dx = sum of g[o] / div(o)
//
// Algorithm and decomposition. Pooling is memory-bound: each input element is read by
// about k*k/s^2 windows (mostly from L1/L2), each output written once. One thread
// produces one output element (forward) or one input-gradient element (backward),
// threads ordered as the output's (input's) memory, in a grid-stride loop:
//   NCHW: consecutive threads take consecutive w of one row, so stores are coalesced
//         and the window loads of a warp are a strided run through the same rows.
//   NHWC (channels_last): consecutive threads take consecutive channels of one spatial
//         site, so every tap's load is a contiguous run across the warp; when C is a
//         multiple of VEC (16 bytes of channels) and the pointers are 16-byte aligned,
//         each thread moves VEC channels per tap as one vector load.
// The backward gather walks its candidate outputs in increasing (oh, ow) order and each
// thread writes only its own elements: no atomics, so the gradient is bit-identical
// from run to run (torch's adaptive-pool backward on CUDA uses atomicAdd and is not).
// Global average pooling (adaptive, output 1x1) has its own reduction: NCHW, one warp
// per plane with a fixed-order shuffle tree; NHWC, one thread per channel vector,
// looping over the plane (coalesced across channels).
// pool_gather (out[n,c,o] = x[n,c,ind[n,c,o]], the max pools' double backward) is one
// thread per output. Arithmetic in float (double for float64); all indexing is 64-bit
// (a 32-bit variant for tensors under 2^31 elements would save the 64-bit divisions
// of the index decode; not done, as it could not be measured here).
//
// This header holds the device code only and needs, before it is included, the CUDA
// headers plus OpMath / to_c / from_c / Pack (csrc/cuda/elementwise.cuh): pool_kernel.cu
// includes it for the GPU, and tests/pool_cuda_emulation.cpp includes it on the host,
// with fibers standing in for CUDA threads, to check these kernels on machines
// without a GPU.
#pragma once

#include <cmath>
#include <cstdint>

#include "pool_math.h"

namespace pydl {
namespace pool_detail {

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, VEC>*>(p);
}

// ------------------------------------------------------------------ forward
template <typename T, int VEC, bool CL, bool MAX, bool WITH_IDX, class Axis, class Div>
__global__ void pool_fwd_kernel(const T* __restrict__ x, T* __restrict__ y,
                                int64_t* __restrict__ ind, PoolParams p, Axis ah, Axis aw,
                                Div div) {
  using C = typename OpMath<T>::type;
  const int64_t CV = p.C / VEC;  // channel vectors per site (VEC is 1 for NCHW)
  const int64_t items = CL ? p.N * p.OH * p.OW * CV : p.N * p.C * p.OH * p.OW;
  const int64_t grid_stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t it = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; it < items;
       it += grid_stride) {
    int64_t oh, ow, out, sw;
    const T* xb;  // the input at (n, c, 0, 0)
    if constexpr (CL) {
      const int64_t c = (it % CV) * VEC, site = it / CV;
      ow = site % p.OW;
      oh = (site / p.OW) % p.OH;
      const int64_t n = site / (p.OW * p.OH);
      out = site * p.C + c;
      xb = x + n * p.IH * p.IW * p.C + c;
      sw = p.C;
    } else {
      ow = it % p.OW;
      oh = (it / p.OW) % p.OH;
      out = it;
      xb = x + (it / (p.OW * p.OH)) * p.IH * p.IW;
      sw = 1;
    }
    const AxisWin hw = ah.win(oh), ww = aw.win(ow);
    C acc[VEC];
    int64_t best[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      acc[j] = MAX ? C(-INFINITY) : C(0);
      best[j] = hw.b * p.IW + ww.b;  // torch's index when no tap beats -inf
    }
    for (int64_t ih = hw.b; ih < hw.e; ih += hw.step) {
      for (int64_t iw = ww.b; iw < ww.e; iw += ww.step) {
        const Pack<T, VEC> v = load_pack<T, VEC>(xb + (ih * p.IW + iw) * sw);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const C f = to_c(v.v[j]);
          if constexpr (MAX) {
            if (max_takes(f, acc[j])) {
              acc[j] = f;
              best[j] = ih * p.IW + iw;
            }
          } else {
            acc[j] += f;
          }
        }
      }
    }
    Pack<T, VEC> o;
    if constexpr (MAX) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) o.v[j] = from_c<T>(acc[j]);
      if constexpr (WITH_IDX) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) ind[out + j] = best[j];
      }
    } else {
      const C dv = C(div(oh, ow));
#pragma unroll
      for (int j = 0; j < VEC; ++j) o.v[j] = from_c<T>(acc[j] / dv);
    }
    *reinterpret_cast<Pack<T, VEC>*>(y + out) = o;
  }
}

// Global average pooling, NCHW: warp w reduces plane w (HW contiguous elements).
template <typename T>
__global__ void global_avg_nchw_kernel(const T* __restrict__ x, T* __restrict__ y,
                                       int64_t planes, int64_t HW) {
  using C = typename OpMath<T>::type;
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t q = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; q < planes;
       q += warps) {
    const T* xp = x + q * HW;
    C acc = 0;
    for (int64_t e = lane; e < HW; e += 32) acc += to_c(xp[e]);
    // a fixed tree: the same sum in the same order on every run
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) y[q] = from_c<T>(acc / C(HW));
  }
}

// Global average pooling, NHWC: thread t owns VEC channels of one image.
template <typename T, int VEC>
__global__ void global_avg_nhwc_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t N,
                                       int64_t C_, int64_t HW) {
  using C = typename OpMath<T>::type;
  const int64_t CV = C_ / VEC, items = N * CV;
  const int64_t grid_stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t it = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; it < items;
       it += grid_stride) {
    const int64_t n = it / CV, c = (it % CV) * VEC;
    const T* xp = x + n * HW * C_ + c;
    C acc[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[j] = 0;
    for (int64_t e = 0; e < HW; ++e) {
      const Pack<T, VEC> v = load_pack<T, VEC>(xp + e * C_);
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] += to_c(v.v[j]);
    }
    Pack<T, VEC> o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) o.v[j] = from_c<T>(acc[j] / C(HW));
    *reinterpret_cast<Pack<T, VEC>*>(y + n * C_ + c) = o;
  }
}

// ----------------------------------------------------------------- backward
template <typename T, int VEC, bool CL, bool MAX, class Axis, class Div>
__global__ void pool_bwd_kernel(const T* __restrict__ g, const int64_t* __restrict__ ind,
                                T* __restrict__ dx, PoolParams p, Axis ah, Axis aw, Div div) {
  using C = typename OpMath<T>::type;
  const int64_t CV = p.C / VEC;
  const int64_t items = CL ? p.N * p.IH * p.IW * CV : p.N * p.C * p.IH * p.IW;
  const int64_t grid_stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t it = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; it < items;
       it += grid_stride) {
    int64_t ih, iw, out, base, sw;  // base: offset of (n, c, 0, 0) in g / ind
    if constexpr (CL) {
      const int64_t c = (it % CV) * VEC, site = it / CV;
      iw = site % p.IW;
      ih = (site / p.IW) % p.IH;
      const int64_t n = site / (p.IW * p.IH);
      out = site * p.C + c;
      base = n * p.OH * p.OW * p.C + c;
      sw = p.C;
    } else {
      iw = it % p.IW;
      ih = (it / p.IW) % p.IH;
      out = it;
      base = (it / (p.IW * p.IH)) * p.OH * p.OW;
      sw = 1;
    }
    const AxisRange hr = ah.outs(ih), wr = aw.outs(iw);
    const int64_t flat = ih * p.IW + iw;
    C acc[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[j] = 0;
    for (int64_t oh = hr.b; oh < hr.e; ++oh) {
      for (int64_t ow = wr.b; ow < wr.e; ++ow) {
        const int64_t o = base + (oh * p.OW + ow) * sw;
        const Pack<T, VEC> gv = load_pack<T, VEC>(g + o);
        if constexpr (MAX) {
#pragma unroll
          for (int j = 0; j < VEC; ++j)
            if (ind[o + j] == flat) acc[j] += to_c(gv.v[j]);
        } else {
          const C dv = C(div(oh, ow));
#pragma unroll
          for (int j = 0; j < VEC; ++j) acc[j] += to_c(gv.v[j]) / dv;
        }
      }
    }
    Pack<T, VEC> r;
#pragma unroll
    for (int j = 0; j < VEC; ++j) r.v[j] = from_c<T>(acc[j]);
    *reinterpret_cast<Pack<T, VEC>*>(dx + out) = r;
  }
}

inline FixedAxis fixed_h(const PoolParams& p) { return {p.IH, p.OH, p.kh, p.sh, p.ph, p.dh}; }
inline FixedAxis fixed_w(const PoolParams& p) { return {p.IW, p.OW, p.kw, p.sw, p.pw, p.dw}; }

// out[n, c, o] = x[n, c, ind[n, c, o]]; an index outside [0, HW) (a dilated window with
// no tap inside the input, which depends on nothing) gives 0, never an out-of-bounds read.
template <typename T, bool CL>
__global__ void pool_gather_kernel(const T* __restrict__ x, const int64_t* __restrict__ ind,
                                   T* __restrict__ out, int64_t n_out, int64_t C, int64_t HW,
                                   int64_t OHW) {
  const int64_t grid_stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < n_out; o += grid_stride) {
    const int64_t k = ind[o];
    const int64_t src = CL ? ((o / (C * OHW)) * HW + k) * C + o % C : (o / OHW) * HW + k;
    out[o] = (k >= 0 && k < HW) ? x[src] : from_c<T>(typename OpMath<T>::type(0));
  }
}

}  // namespace pool_detail
}  // namespace pydl

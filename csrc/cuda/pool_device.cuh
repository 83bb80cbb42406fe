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
// thread per output. Arithmetic in float (double for float64).
//
// Index arithmetic. Each thread decodes its flat item into (n, c, h, w) and computes its
// window bounds: divisions by runtime sizes, per element, in a memory-bound kernel. On
// the GPU a 64-bit integer division (or remainder) is a software routine of ~70
// instructions, a 32-bit one a few, so every kernel is a template on its index type I:
// int32_t when every quantity it can compute is below 2^30 (pool_index32_ok below:
// the element counts, the adaptive products (I+1)*(O+1), the fixed windows' extents; the
// margin up to 2^31 leaves room for a grid-stride counter that runs one stride past the
// end), else int64_t -- tensors of 2^30 elements and more, 4 GiB in float32. The
// launchers (pool_kernel.cu) choose, per launch. With 32-bit indices every pointer
// offset is below 2^31, so `ptr + offset` is exact. The saved max indices stay int64 in
// memory (torch's format) whatever I is. Each level of the decode is one division,
// the remainder taken by a multiply-subtract (divmod below). The 32-bit instantiations
// hold no 64-bit division at all. Measured on an H200 against the all-64-bit kernels,
// over typical CNN shapes (ResNet's 3x3/2 max pool, 2x2 and 3x3 avg pools, adaptive avg
// and max, global average): most forwards 1.1-1.7x and backwards 1.1-2.1x as fast, 1.5x
// over all; the global-average forward, pool_gather and the bfloat16 channels-last max
// pool (few divisions per byte moved) within 6% either way.
//
// This header holds the device code, plus the launchers' host-side choice of index type
// (pool_index32_ok, gather_index32_ok), and needs, before it is included, the CUDA
// headers plus OpMath / to_c / from_c / Pack (csrc/cuda/elementwise.cuh): pool_kernel.cu
// includes it for the GPU, and tests/pool_cuda_emulation.cpp includes it on the host,
// with fibers standing in for CUDA threads, to check these kernels on machines
// without a GPU.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "pool_math.h"

namespace pydl {
namespace pool_detail {

// ------------------------------------------------------------ index type choice
// The 32-bit index path is taken when every quantity a kernel computes stays below 2^30
// (see the top).
constexpr int64_t kIndex32Limit = int64_t(1) << 30;

// Whether a pooling kernel of `mode` over p may run with int32_t indices. Host code (the
// launchers call it; tests/pool_cuda_emulation.cpp checks it at the threshold).
inline bool pool_index32_ok(PoolMode mode, const PoolParams& p) {
  auto small = [](int64_t v) { return v >= 0 && v < kIndex32Limit; };
  // Each size and window parameter on its own first, so that the sums and products of
  // two of them below cannot overflow int64 (the front-end accepts, e.g., a dilation
  // of 2^40 with a padding to match).
  for (int64_t v : {p.N, p.C, p.IH, p.IW, p.OH, p.OW, p.kh, p.kw, p.sh, p.sw, p.ph, p.pw,
                    p.dh, p.dw})
    if (!small(v)) return false;
  // the tensors (sizes of allocated memory, so no overflow): item counts, offsets, the
  // flat tap index ih*IW + iw; plus at most one grid stride (grid_for caps it at 4096
  // threads per SM, far below 2^30) past the item count in a grid-stride loop
  if (!small(p.N * p.C * p.IH * p.IW) || !small(p.N * p.C * p.OH * p.OW)) return false;
  if (mode == PoolMode::AdaptiveAvg || mode == PoolMode::AdaptiveMax)
    // AdaptiveAxisT: (o+1)*I + O - 1 and (i+1)*O + I - 1, both below (I+1)*(O+1)
    return small((p.IH + 1) * (p.OH + 1)) && small((p.IW + 1) * (p.OW + 1));
  // FixedAxisT and AvgDivisorT: along one axis every value they compute (o*s - p, the
  // window's end o*s - p + (k-1)*d + 1, i + p - (k-1)*d, a tap loop's last ih + d, a
  // clipped window size, ...) lies within +-E, E = max(I, O*s) + p + k*d + s + d; the
  // products of the two axes (the avg divisor; the first-tap index hb*IW + wb, which an
  // empty dilated window may put past the input) stay below E_h*E_w
  const int64_t eh = std::max(p.IH, p.OH * p.sh) + p.ph + p.kh * p.dh + p.sh + p.dh;
  const int64_t ew = std::max(p.IW, p.OW * p.sw) + p.pw + p.kw * p.dw + p.sw + p.dw;
  if (!small(eh) || !small(ew) || !small(eh * ew)) return false;
  // avg_pool2d's divisor_override is returned as an I (-(v+1): no overflow at INT64_MIN)
  const int64_t d = p.divisor_override;
  return mode != PoolMode::Avg || small(d < 0 ? -(d + 1) : d);
}

// The same for pool_gather: N*C planes of HW inputs and of OHW outputs.
inline bool gather_index32_ok(int64_t N, int64_t C, int64_t HW, int64_t OHW) {
  return N * C * HW < kIndex32Limit && N * C * OHW < kIndex32Limit;
}

// The window helpers of one launch in the kernel's index type (the launcher checked, with
// pool_index32_ok, that every value fits it).
template <typename I> FixedAxisT<I> fixed_h(const PoolParams& p) {
  return {I(p.IH), I(p.OH), I(p.kh), I(p.sh), I(p.ph), I(p.dh)};
}
template <typename I> FixedAxisT<I> fixed_w(const PoolParams& p) {
  return {I(p.IW), I(p.OW), I(p.kw), I(p.sw), I(p.pw), I(p.dw)};
}
template <typename I> AvgDivisorT<I> avg_divisor(const PoolParams& p) {
  return {fixed_h<I>(p), fixed_w<I>(p), p.count_include_pad, I(p.divisor_override)};
}
template <typename I> AdaptiveAxisT<I> adaptive_h(const PoolParams& p) {
  return {I(p.IH), I(p.OH)};
}
template <typename I> AdaptiveAxisT<I> adaptive_w(const PoolParams& p) {
  return {I(p.IW), I(p.OW)};
}

// ---------------------------------------------------------------------- helpers
template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, VEC>*>(p);
}

// a / b, with a % b in *rem: one division, the remainder by a multiply-subtract. Signed,
// although a >= 0 here too: the unsigned division that pool_math.h's window arithmetic
// uses (div_nonneg) made the max forward ~9% slower here, measured on an H200.
template <typename I>
__device__ __forceinline__ I divmod(I a, I b, I* rem) {
  const I q = a / b;
  *rem = a - q * b;
  return q;
}

// The first item of this thread and the grid's stride, in I (a grid holds far fewer
// than 2^30 threads).
template <typename I>
__device__ __forceinline__ I first_item() {
  return I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x);
}
template <typename I>
__device__ __forceinline__ I grid_stride() {
  return I(gridDim.x) * I(blockDim.x);
}

// ------------------------------------------------------------------ forward
template <typename T, int VEC, bool CL, bool MAX, bool WITH_IDX, typename I, class Axis,
          class Div>
__global__ void pool_fwd_kernel(const T* __restrict__ x, T* __restrict__ y,
                                int64_t* __restrict__ ind, PoolParams p, Axis ah, Axis aw,
                                Div div) {
  using C = typename OpMath<T>::type;
  const I C_ = I(p.C), IH = I(p.IH), IW = I(p.IW), OH = I(p.OH), OW = I(p.OW);
  const I CV = C_ / VEC;  // channel vectors per site (VEC is 1 for NCHW)
  const I items = CL ? I(p.N) * OH * OW * CV : I(p.N) * C_ * OH * OW;
  for (I it = first_item<I>(); it < items; it += grid_stride<I>()) {
    I oh, ow, out, sw;
    const T* xb;  // the input at (n, c, 0, 0)
    if constexpr (CL) {  // it = ((n*OH + oh)*OW + ow)*CV + cv
      I cv;
      const I site = divmod(it, CV, &cv);
      const I n = divmod(divmod(site, OW, &ow), OH, &oh);
      out = site * C_ + cv * VEC;
      xb = x + n * IH * IW * C_ + cv * VEC;
      sw = C_;
    } else {  // it = ((n*C + c)*OH + oh)*OW + ow
      const I nc = divmod(divmod(it, OW, &ow), OH, &oh);
      out = it;
      xb = x + nc * IH * IW;
      sw = 1;
    }
    const AxisWinT<I> hw = ah.win(oh), ww = aw.win(ow);
    C acc[VEC];
    I best[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      acc[j] = MAX ? C(-INFINITY) : C(0);
      best[j] = hw.b * IW + ww.b;  // torch's index when no tap beats -inf
    }
    for (I ih = hw.b; ih < hw.e; ih += hw.step) {
      for (I iw = ww.b; iw < ww.e; iw += ww.step) {
        const Pack<T, VEC> v = load_pack<T, VEC>(xb + (ih * IW + iw) * sw);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const C f = to_c(v.v[j]);
          if constexpr (MAX) {
            if (max_takes(f, acc[j])) {
              acc[j] = f;
              best[j] = ih * IW + iw;
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
        for (int j = 0; j < VEC; ++j) ind[out + j] = int64_t(best[j]);
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
template <typename T, typename I>
__global__ void global_avg_nchw_kernel(const T* __restrict__ x, T* __restrict__ y,
                                       int64_t planes_, int64_t HW_) {
  using C = typename OpMath<T>::type;
  const I planes = I(planes_), HW = I(HW_);
  const int lane = threadIdx.x & 31;
  const I warps = grid_stride<I>() >> 5;
  for (I q = first_item<I>() >> 5; q < planes; q += warps) {
    const T* xp = x + q * HW;
    C acc = 0;
    for (I e = lane; e < HW; e += 32) acc += to_c(xp[e]);
    // a fixed tree: the same sum in the same order on every run
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) y[q] = from_c<T>(acc / C(HW));
  }
}

// Global average pooling, NHWC: thread t owns VEC channels of one image.
template <typename T, int VEC, typename I>
__global__ void global_avg_nhwc_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t N,
                                       int64_t C_, int64_t HW_) {
  using C = typename OpMath<T>::type;
  const I Cn = I(C_), HW = I(HW_);
  const I CV = Cn / VEC, items = I(N) * CV;
  for (I it = first_item<I>(); it < items; it += grid_stride<I>()) {
    I cv;
    const I n = divmod(it, CV, &cv), c = cv * VEC;
    const T* xp = x + n * HW * Cn + c;
    C acc[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[j] = 0;
    for (I e = 0; e < HW; ++e) {
      const Pack<T, VEC> v = load_pack<T, VEC>(xp + e * Cn);
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] += to_c(v.v[j]);
    }
    Pack<T, VEC> o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) o.v[j] = from_c<T>(acc[j] / C(HW));
    *reinterpret_cast<Pack<T, VEC>*>(y + n * Cn + c) = o;
  }
}

// ----------------------------------------------------------------- backward
template <typename T, int VEC, bool CL, bool MAX, typename I, class Axis, class Div>
__global__ void pool_bwd_kernel(const T* __restrict__ g, const int64_t* __restrict__ ind,
                                T* __restrict__ dx, PoolParams p, Axis ah, Axis aw, Div div) {
  using C = typename OpMath<T>::type;
  const I C_ = I(p.C), IH = I(p.IH), IW = I(p.IW), OH = I(p.OH), OW = I(p.OW);
  const I CV = C_ / VEC;
  const I items = CL ? I(p.N) * IH * IW * CV : I(p.N) * C_ * IH * IW;
  for (I it = first_item<I>(); it < items; it += grid_stride<I>()) {
    I ih, iw, out, base, sw;  // base: offset of (n, c, 0, 0) in g / ind
    if constexpr (CL) {  // it = ((n*IH + ih)*IW + iw)*CV + cv
      I cv;
      const I site = divmod(it, CV, &cv);
      const I n = divmod(divmod(site, IW, &iw), IH, &ih);
      out = site * C_ + cv * VEC;
      base = n * OH * OW * C_ + cv * VEC;
      sw = C_;
    } else {  // it = ((n*C + c)*IH + ih)*IW + iw
      const I nc = divmod(divmod(it, IW, &iw), IH, &ih);
      out = it;
      base = nc * OH * OW;
      sw = 1;
    }
    const AxisRangeT<I> hr = ah.outs(ih), wr = aw.outs(iw);
    const I flat = ih * IW + iw;
    C acc[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[j] = 0;
    for (I oh = hr.b; oh < hr.e; ++oh) {
      for (I ow = wr.b; ow < wr.e; ++ow) {
        const I o = base + (oh * OW + ow) * sw;
        const Pack<T, VEC> gv = load_pack<T, VEC>(g + o);
        if constexpr (MAX) {
#pragma unroll
          for (int j = 0; j < VEC; ++j)
            if (ind[o + j] == int64_t(flat)) acc[j] += to_c(gv.v[j]);
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

// out[n, c, o] = x[n, c, ind[n, c, o]]; an index outside [0, HW) (a dilated window with
// no tap inside the input, which depends on nothing) gives 0, never an out-of-bounds read.
template <typename T, bool CL, typename I>
__global__ void pool_gather_kernel(const T* __restrict__ x, const int64_t* __restrict__ ind,
                                   T* __restrict__ out, int64_t n_out_, int64_t C_, int64_t HW_,
                                   int64_t OHW_) {
  const I n_out = I(n_out_), Cn = I(C_), HW = I(HW_), OHW = I(OHW_);
  for (I o = first_item<I>(); o < n_out; o += grid_stride<I>()) {
    I base, step;  // x[n, c, k] is x[base + k*step]
    if constexpr (CL) {  // o = (n*OHW + ohw)*C + c
      I c;
      const I n = divmod(o, Cn, &c) / OHW;
      base = n * HW * Cn + c;
      step = Cn;
    } else {  // o = (n*C + c)*OHW + ohw
      base = (o / OHW) * HW;
      step = 1;
    }
    const int64_t k = ind[o];  // tested in 64 bits: any int64 may be stored there
    out[o] = (k >= 0 && k < int64_t(HW)) ? x[base + I(k) * step]
                                         : from_c<T>(typename OpMath<T>::type(0));
  }
}

}  // namespace pool_detail
}  // namespace pydl

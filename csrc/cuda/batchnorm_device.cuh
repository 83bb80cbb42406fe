// Batch normalization on the GPU (formulas in csrc/batchnorm_math.h, shared with the CPU):
//   statistics  mean_c, var_c (biased) over the M = N * spatial values of channel c
//   forward     y = act((x - mean) * invstd * w + b [+ r])
//   backward    sum_dz_c, sum_dz_xhat_c (reduction), then
//               dx = w * invstd * (dz - k * (sum_dz + xhat * sum_dz_xhat))  (elementwise)
//
// Layout: x is (outer, C, inner): NCHW = (N, C, H*W) "planes", channels-last =
// (N*H*W, C, 1) with the channel fastest (CL below).
//
// Reductions (statistics, backward sums) use the whole GPU even when C is small --
// torch's NCHW kernel gives one block per channel, which leaves most SMs idle for C = 64.
// Here a channel's M values are split into B slices; block (tile, b) reduces slice b of
// a tile of channels and writes one partial per channel to a workspace; a second tiny
// kernel merges the B partials of each channel, one warp per channel, in a fixed order
// (strided lanes, then a shuffle tree). No atomics anywhere: the same bits every run.
//   planes: a block is 256 threads on ONE channel; consecutive threads read consecutive
//           values of a plane (coalesced), walking (o, i) incrementally (no division
//           per element).
//   CL:     a block is TX x TY threads, TX = the channel tile (power of two <= 32),
//           TY rows; a warp reads TX consecutive channels of a row (coalesced for
//           C >= 32), and each thread keeps its channel.
//   Either way a thread takes its values kGroup (8) at a time: it issues the group's loads,
//   then uses them (walk_channel) -- eight loads in flight where a one-at-a-time loop has
//   one, which is what a channels-last thread reading 2 bytes a row needs to come near the
//   memory bandwidth.
// Inside a block the per-thread states are merged by a shared-memory tree over the
// rows (fixed order). Statistics: Welford per thread on x - K, K = the channel's first
// value (every block reads the same K), so a channel with mean 1e4 and std 1e-2 keeps its
// precision in float32 -- updated once per group (welford_add_group: the group's sums of
// deviations from the running mean, one division a group instead of one a value); Chan's
// merge for the partials; K is added back at the end.
//
// Elementwise passes (normalize, input gradient):
//   planes: 16-byte vector loads/stores (Pack) when the plane size allows;
//           grid (chunks of a plane, groups of planes); a block is bx x by threads,
//           bx along the plane (a power of two >= the plane size, <= 256: a 7x7 plane
//           does not leave 4/5 of the threads idle), by planes; a thread loads its
//           channel's coefficients once per plane and streams along it.
//   CL:     the same TX x TY blocks as the reductions; each thread keeps its channel's
//           coefficients in registers and walks rows, kGroup rows a step: their loads
//           first, then the results.
// Indices are 64-bit throughout. float16/bfloat16 are computed in float.
//
// This header holds the device code and the launch geometry (so the emulation launches
// the shapes the launchers do). It needs, before it is included, the CUDA headers plus
// OpMath / to_c / from_c / Pack / vec_width / num_sms (csrc/cuda/elementwise.cuh):
// batchnorm_kernel.cu includes it for the GPU, and tests/batchnorm_cuda_emulation.cpp
// includes it on the host, with fibers standing in for CUDA threads, to check these
// kernels on machines without a GPU.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "batchnorm_math.h"

namespace pydl {
namespace bn_detail {

constexpr int kBnThreads = 256;
constexpr int64_t kMinPerThread = 16;  // values per thread below which a split does not pay

// Channel-tile width for channels-last blocks: the smallest power of two >= C, <= 32.
inline int cl_tx(int64_t C) {
  int tx = 1;
  while (tx < C && tx < 32) tx <<= 1;
  return tx;
}

struct ReduceGrid {
  int tx, ty;      // block shape
  int64_t tiles;   // channel tiles (gridDim.x)
  int64_t B;       // slices per channel (gridDim.y)
  int64_t J;       // values per slice (the last one may be shorter)
};

inline ReduceGrid reduce_grid(int64_t outer, int64_t C, int64_t inner) {
  ReduceGrid g;
  g.tx = inner == 1 ? cl_tx(C) : 1;
  g.ty = kBnThreads / g.tx;
  g.tiles = (C + g.tx - 1) / g.tx;
  const int64_t M = outer * inner;
  // aim for 4 blocks per SM in total, without giving a thread fewer than kMinPerThread values
  // (no channels: no tiles, and one slice -- nothing is launched, but the glue sizes the
  // workspace with this first, and a division by zero tiles would kill the process)
  int64_t B = (int64_t(num_sms()) * 4 + g.tiles - 1) / std::max<int64_t>(1, g.tiles);
  B = std::min<int64_t>(B, std::max<int64_t>(1, M / (int64_t(g.ty) * kMinPerThread)));
  B = std::max<int64_t>(1, std::min<int64_t>(B, 65535));
  g.J = std::max<int64_t>(1, (M + B - 1) / B);
  g.B = std::max<int64_t>(1, (M + g.J - 1) / g.J);
  return g;
}

// A thread reads its values kGroup at a time: the group's loads are issued together, then
// used -- kGroup loads in flight per thread instead of one. A channels-last thread reads one
// 2-byte (bf16) value per row, and with one load outstanding at a time a GPU holds too few
// bytes in flight to reach its memory bandwidth (Little's law: ~4.8 TB/s x ~0.7 us is ~25 KB
// per SM, against 64 warps x 32 lanes x 2 B = 4 KB).
constexpr int kGroup = 8;

// Calls f(off, cnt) for the values j = jb + lane, jb + lane + step, ... < je of channel c, in
// groups: off[0 .. cnt-1] are the offsets of the next cnt <= kGroup of them. A full group
// passes cnt as the constant kGroup (std::integral_constant), so f's tests u < cnt fold
// away there; only a thread's last group pays them.
template <typename F>
__device__ __forceinline__ void call_group(F& f, const int64_t* off, int cnt) {
  if (cnt == kGroup) f(off, std::integral_constant<int, kGroup>{});
  else f(off, cnt);
}

// How many of i, i + step, ... lie below end, at most kGroup: counted, not divided (a 64-bit
// division is a long software routine on the GPU; this runs once per group).
__device__ __forceinline__ int group_count(int64_t i, int64_t end, int64_t step) {
  if (i + (kGroup - 1) * step < end) return kGroup;
  int cnt = 0;
  for (; i < end; i += step) ++cnt;
  return cnt;
}

template <bool CL, typename F>
__device__ __forceinline__ void walk_channel(int64_t jb, int64_t je, int lane, int step, int64_t C,
                                             int64_t inner, int64_t c, F&& f) {
  int64_t j = jb + lane;
  if (j >= je) return;
  int64_t off[kGroup];
  if (CL) {  // value j of channel c sits at j*C + c: offsets advance by step*C
    const int64_t d = int64_t(step) * C;
    for (int64_t base = j * C + c; j < je; j += int64_t(kGroup) * step, base += kGroup * d) {
      const int cnt = group_count(j, je, step);
      off[0] = base;
#pragma unroll
      for (int u = 1; u < kGroup; ++u) off[u] = off[u - 1] + d;
      call_group(f, off, cnt);
    }
  } else {
    int64_t o = j / inner, i = j - o * inner;  // one division; then step incrementally
    const int64_t dq = step / inner, dr = step - dq * inner;
    while (j < je) {
      int cnt = 0;
      for (; cnt < kGroup && j < je; ++cnt, j += step) {
        off[cnt] = (o * C + c) * inner + i;
        i += dr;
        o += dq;
        if (i >= inner) { i -= inner; ++o; }
      }
      call_group(f, off, cnt);
    }
  }
}

// The channels-last elementwise walk: thread rows o0, o0 + stride, ... < outer (a grid-
// stride loop over rows), kGroup rows a step; calls f(e, d, cnt) with e the element index
// of the group's first row (o*C + c), d = stride*C the distance to the next, cnt as above.
template <typename F>
__device__ __forceinline__ void walk_rows(int64_t outer, int64_t C, int64_t c, F&& f) {
  const int64_t stride = int64_t(gridDim.y) * blockDim.y, d = stride * C;
  int64_t o = int64_t(blockIdx.y) * blockDim.y + threadIdx.y;
  for (int64_t e = o * C + c; o < outer; o += kGroup * stride, e += kGroup * d) {
    const int cnt = group_count(o, outer, stride);
    if (cnt == kGroup) f(e, d, std::integral_constant<int, kGroup>{});
    else f(e, d, cnt);
  }
}

// ------------------------------------------------------------------------ statistics
template <typename T, bool CL>
__global__ void stats_partial_kernel(const T* __restrict__ x, int64_t C, int64_t inner, int64_t M,
                                     int64_t J, int64_t B, typename OpMath<T>::type* pmean,
                                     typename OpMath<T>::type* pm2) {
  using Cc = typename OpMath<T>::type;
  __shared__ Cc s_mean[kBnThreads];
  __shared__ Cc s_m2[kBnThreads];
  __shared__ int64_t s_n[kBnThreads];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + tx;
  const int64_t b = blockIdx.y;
  const int64_t jb = b * J, je = std::min(jb + J, M);
  Welford<Cc> w{Cc(0), Cc(0), 0};
  if (c < C) {
    const Cc k = to_c(x[c * inner]);  // the shift K: value j = 0 of channel c
    walk_channel<CL>(jb, je, ty, blockDim.y, C, inner, c, [&](const int64_t* off, auto cnt) {
      Cc v[kGroup];
#pragma unroll
      for (int u = 0; u < kGroup; ++u) v[u] = u < cnt ? to_c(x[off[u]]) - k : Cc(0);  // loads first
      Cc s1 = 0, s2 = 0;  // the group's deviations from the running mean
#pragma unroll
      for (int u = 0; u < kGroup; ++u) {
        const Cc d = u < cnt ? v[u] - w.mean : Cc(0);
        s1 += d;
        s2 += d * d;
      }
      welford_add_group(w, s1, s2, cnt);
    });
  }
  const int idx = ty * blockDim.x + tx;
  s_mean[idx] = w.mean;
  s_m2[idx] = w.m2;
  s_n[idx] = w.n;
  __syncthreads();
  for (int s = blockDim.y / 2; s > 0; s >>= 1) {  // tree over the rows, fixed order
    if (ty < s) {
      const int o = idx + s * blockDim.x;
      Welford<Cc> a{s_mean[idx], s_m2[idx], s_n[idx]}, e{s_mean[o], s_m2[o], s_n[o]};
      a = welford_merge(a, e);
      s_mean[idx] = a.mean;
      s_m2[idx] = a.m2;
      s_n[idx] = a.n;
    }
    __syncthreads();
  }
  if (ty == 0 && c < C) {
    pmean[c * B + b] = s_mean[tx];
    pm2[c * B + b] = s_m2[tx];
  }
}

// One warp per channel merges its B partials: lane l takes partials l, l+32, ... in
// order, then a shuffle tree merges the lanes. The slice sizes follow from (b, J, M).
template <typename T>
__global__ void stats_combine_kernel(const T* __restrict__ x, const typename OpMath<T>::type* pmean,
                                     const typename OpMath<T>::type* pm2, int64_t C, int64_t inner,
                                     int64_t M, int64_t J, int64_t B,
                                     typename OpMath<T>::type* mean,
                                     typename OpMath<T>::type* var) {
  using Cc = typename OpMath<T>::type;
  const int lane = threadIdx.x & 31;
  const int64_t c = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (c >= C) return;  // the whole warp leaves together
  Welford<Cc> w{Cc(0), Cc(0), 0};
  for (int64_t b = lane; b < B; b += 32) {
    const int64_t n = std::min(J, M - b * J);
    if (n > 0) w = welford_merge(w, Welford<Cc>{pmean[c * B + b], pm2[c * B + b], n});
  }
  for (int off = 16; off > 0; off >>= 1) {
    Welford<Cc> o;
    o.mean = __shfl_down_sync(0xffffffffu, w.mean, off);
    o.m2 = __shfl_down_sync(0xffffffffu, w.m2, off);
    o.n = __shfl_down_sync(0xffffffffu, (long long)w.n, off);
    w = welford_merge(w, o);
  }
  if (lane == 0) {
    if (w.n > 0) {
      mean[c] = to_c(x[c * inner]) + w.mean;
      var[c] = w.m2 / Cc(w.n);
    } else {  // empty batch: 0 / 0, as torch
      mean[c] = Cc(NAN);
      var[c] = Cc(NAN);
    }
  }
}

// --------------------------------------------------------------- backward reduction
template <BnAct A, typename T, bool CL>
__global__ void bwd_reduce_partial_kernel(const T* __restrict__ g, const T* __restrict__ x,
                                          const T* __restrict__ y,
                                          const typename OpMath<T>::type* mean,
                                          typename OpMath<T>::type alpha, int64_t C,
                                          int64_t inner, int64_t M, int64_t J, int64_t B,
                                          typename OpMath<T>::type* pdz,
                                          typename OpMath<T>::type* pdzx) {
  using Cc = typename OpMath<T>::type;
  __shared__ Cc s_a[kBnThreads];
  __shared__ Cc s_b[kBnThreads];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + tx;
  const int64_t bk = blockIdx.y;
  const int64_t jb = bk * J, je = std::min(jb + J, M);
  Cc sa = 0, sb = 0;
  if (c < C) {
    const Cc m = mean[c];
    walk_channel<CL>(jb, je, ty, blockDim.y, C, inner, c, [&](const int64_t* off, auto cnt) {
      Cc gv[kGroup], yv[kGroup], xv[kGroup];
#pragma unroll
      for (int u = 0; u < kGroup; ++u) {  // loads first
        gv[u] = u < cnt ? to_c(g[off[u]]) : Cc(0);
        yv[u] = u < cnt && A != BnAct::None ? to_c(y[off[u]]) : Cc(0);
        xv[u] = u < cnt ? to_c(x[off[u]]) : m;
      }
#pragma unroll
      for (int u = 0; u < kGroup; ++u) {  // then the sums, in the values' order
        const Cc dz = bn_act_grad<A, Cc>(gv[u], yv[u], alpha);
        sa += u < cnt ? dz : Cc(0);
        sb += u < cnt ? dz * (xv[u] - m) : Cc(0);
      }
    });
  }
  const int idx = ty * blockDim.x + tx;
  s_a[idx] = sa;
  s_b[idx] = sb;
  __syncthreads();
  for (int s = blockDim.y / 2; s > 0; s >>= 1) {
    if (ty < s) {
      s_a[idx] += s_a[idx + s * blockDim.x];
      s_b[idx] += s_b[idx + s * blockDim.x];
    }
    __syncthreads();
  }
  if (ty == 0 && c < C) {
    pdz[c * B + bk] = s_a[tx];
    pdzx[c * B + bk] = s_b[tx];
  }
}

template <typename Cc>
__global__ void bwd_reduce_combine_kernel(const Cc* pdz, const Cc* pdzx, const Cc* var, Cc eps,
                                          int64_t C, int64_t B, Cc* sum_dz, Cc* sum_dzxh) {
  const int lane = threadIdx.x & 31;
  const int64_t c = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (c >= C) return;
  Cc a = 0, b = 0;
  for (int64_t k = lane; k < B; k += 32) {
    a += pdz[c * B + k];
    b += pdzx[c * B + k];
  }
  for (int off = 16; off > 0; off >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, off);
    b += __shfl_down_sync(0xffffffffu, b, off);
  }
  if (lane == 0) {
    sum_dz[c] = a;
    sum_dzxh[c] = b * bn_invstd<Cc>(var[c], eps);
  }
}

// ------------------------------------------------------------------ elementwise passes
// Per-channel coefficients of the forward: y = act((x - mean) * scale + shift [+ r]).
template <typename Cc>
struct FwdCoef {
  Cc mean, scale, shift;
  __device__ FwdCoef(const Cc* m, const Cc* v, const Cc* w, const Cc* b, Cc eps, int64_t c) {
    mean = m[c];
    scale = bn_invstd<Cc>(v[c], eps) * (w ? w[c] : Cc(1));
    shift = b ? b[c] : Cc(0);
  }
  __device__ Cc z(Cc x) const { return (x - mean) * scale + shift; }  // before r and act
};

// VEC > 1 (planes only): VEC consecutive values of a plane move as one 16-byte Pack;
// the launcher checks that VEC divides the plane size and every pointer is aligned.
template <BnAct A, typename T, bool CL, int VEC>
__global__ void normalize_kernel(const T* __restrict__ x, const T* __restrict__ r,
                                 T* __restrict__ y, const typename OpMath<T>::type* mean,
                                 const typename OpMath<T>::type* var,
                                 const typename OpMath<T>::type* w,
                                 const typename OpMath<T>::type* b,
                                 typename OpMath<T>::type eps, typename OpMath<T>::type alpha,
                                 int64_t outer, int64_t C, int64_t inner) {
  using Cc = typename OpMath<T>::type;
  auto one = [&](int64_t idx, const FwdCoef<Cc>& k) {
    Cc z = k.z(to_c(x[idx]));
    if (r) z += to_c(r[idx]);
    y[idx] = from_c<T>(bn_act<A, Cc>(z, alpha));
  };
  if constexpr (CL) {  // kGroup rows a step: their loads, then their results
    const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const FwdCoef<Cc> k(mean, var, w, b, eps, c);
    walk_rows(outer, C, c, [&](int64_t e, int64_t d, auto cnt) {
      Cc z[kGroup];
#pragma unroll
      for (int u = 0; u < kGroup; ++u) {
        if (u < cnt) {
          z[u] = k.z(to_c(x[e + u * d]));
          if (r) z[u] += to_c(r[e + u * d]);
        }
      }
#pragma unroll
      for (int u = 0; u < kGroup; ++u)
        if (u < cnt) y[e + u * d] = from_c<T>(bn_act<A, Cc>(z[u], alpha));
    });
  } else {
    const int64_t nv = inner / VEC;
    for (int64_t p = int64_t(blockIdx.y) * blockDim.y + threadIdx.y; p < outer * C;
         p += int64_t(gridDim.y) * blockDim.y) {
      const FwdCoef<Cc> k(mean, var, w, b, eps, p % C);
      for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < nv;
           v += int64_t(gridDim.x) * blockDim.x) {
        const int64_t base = p * inner + v * VEC;
        if constexpr (VEC == 1) {
          one(base, k);
        } else {
          const Pack<T, VEC> xp = *reinterpret_cast<const Pack<T, VEC>*>(x + base);
          Pack<T, VEC> rp = xp;
          if (r) rp = *reinterpret_cast<const Pack<T, VEC>*>(r + base);
          Pack<T, VEC> yp;
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            Cc z = k.z(to_c(xp.v[e]));
            if (r) z += to_c(rp.v[e]);
            yp.v[e] = from_c<T>(bn_act<A, Cc>(z, alpha));
          }
          *reinterpret_cast<Pack<T, VEC>*>(y + base) = yp;
        }
      }
    }
  }
}

// Per-channel coefficients of the input gradient: dx = (dz - a - (x - mean) * bb) * scale.
template <typename Cc>
struct BwdCoef {
  Cc mean, scale, a, bb;
  __device__ BwdCoef(const Cc* m, const Cc* v, const Cc* w, const Cc* sdz, const Cc* sdzxh,
                     Cc eps, Cc k, int64_t c) {
    const Cc invstd = bn_invstd<Cc>(v[c], eps);
    mean = m[c];
    scale = invstd * (w ? w[c] : Cc(1));
    a = sdz ? k * sdz[c] : Cc(0);            // eval: the statistics do not depend on x
    bb = sdz ? k * sdzxh[c] * invstd : Cc(0);
  }
  __device__ Cc dx(Cc dz, Cc x) const { return (dz - a - (x - mean) * bb) * scale; }
};

template <BnAct A, typename T, bool CL, int VEC>
__global__ void bwd_elemt_kernel(const T* __restrict__ g, const T* __restrict__ x,
                                 const T* __restrict__ y, const typename OpMath<T>::type* mean,
                                 const typename OpMath<T>::type* var,
                                 const typename OpMath<T>::type* w,
                                 const typename OpMath<T>::type* sdz,
                                 const typename OpMath<T>::type* sdzxh,
                                 typename OpMath<T>::type eps, typename OpMath<T>::type k,
                                 typename OpMath<T>::type alpha, T* __restrict__ dx,
                                 T* __restrict__ dzo, int64_t outer, int64_t C, int64_t inner) {
  using Cc = typename OpMath<T>::type;
  auto one = [&](int64_t idx, const BwdCoef<Cc>& q) {
    const Cc dz = bn_act_grad<A, Cc>(to_c(g[idx]), A == BnAct::None ? Cc(0) : to_c(y[idx]), alpha);
    if (dzo) dzo[idx] = from_c<T>(dz);
    dx[idx] = from_c<T>(q.dx(dz, to_c(x[idx])));
  };
  if constexpr (CL) {  // kGroup rows a step, loads first (as in normalize_kernel)
    const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const BwdCoef<Cc> q(mean, var, w, sdz, sdzxh, eps, k, c);
    walk_rows(outer, C, c, [&](int64_t e, int64_t d, auto cnt) {
      Cc gv[kGroup], yv[kGroup], xv[kGroup];
#pragma unroll
      for (int u = 0; u < kGroup; ++u) {
        if (u < cnt) {
          gv[u] = to_c(g[e + u * d]);
          yv[u] = A != BnAct::None ? to_c(y[e + u * d]) : Cc(0);
          xv[u] = to_c(x[e + u * d]);
        }
      }
#pragma unroll
      for (int u = 0; u < kGroup; ++u) {
        if (u < cnt) {
          const Cc dz = bn_act_grad<A, Cc>(gv[u], yv[u], alpha);
          if (dzo) dzo[e + u * d] = from_c<T>(dz);
          dx[e + u * d] = from_c<T>(q.dx(dz, xv[u]));
        }
      }
    });
  } else {
    const int64_t nv = inner / VEC;
    for (int64_t p = int64_t(blockIdx.y) * blockDim.y + threadIdx.y; p < outer * C;
         p += int64_t(gridDim.y) * blockDim.y) {
      const BwdCoef<Cc> q(mean, var, w, sdz, sdzxh, eps, k, p % C);
      for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < nv;
           v += int64_t(gridDim.x) * blockDim.x) {
        const int64_t base = p * inner + v * VEC;
        if constexpr (VEC == 1) {
          one(base, q);
        } else {
          const Pack<T, VEC> gp = *reinterpret_cast<const Pack<T, VEC>*>(g + base);
          const Pack<T, VEC> xp = *reinterpret_cast<const Pack<T, VEC>*>(x + base);
          Pack<T, VEC> yp = gp;
          if constexpr (A != BnAct::None) yp = *reinterpret_cast<const Pack<T, VEC>*>(y + base);
          Pack<T, VEC> dzp, dxp;
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const Cc dz = bn_act_grad<A, Cc>(to_c(gp.v[e]), to_c(yp.v[e]), alpha);
            dzp.v[e] = from_c<T>(dz);
            dxp.v[e] = from_c<T>(q.dx(dz, to_c(xp.v[e])));
          }
          if (dzo) *reinterpret_cast<Pack<T, VEC>*>(dzo + base) = dzp;
          *reinterpret_cast<Pack<T, VEC>*>(dx + base) = dxp;
        }
      }
    }
  }
}

// Launch shape of the elementwise passes: enough blocks to fill the GPU ~16 times over.
struct ElemGrid {
  dim3 grid, block;
};

inline ElemGrid elem_grid(int64_t outer, int64_t C, int64_t inner) {
  const int64_t cap = int64_t(num_sms()) * 16;
  ElemGrid e;
  if (inner == 1) {
    const int tx = cl_tx(C), ty = kBnThreads / tx;
    const int64_t tiles = (C + tx - 1) / tx;
    int64_t gy = std::min<int64_t>((outer + ty - 1) / ty, std::max<int64_t>(1, cap / tiles));
    gy = std::max<int64_t>(1, std::min<int64_t>(gy, 65535));
    e.block = dim3(tx, ty);
    e.grid = dim3(unsigned(tiles), unsigned(gy));
  } else {
    // a block is bx threads along a plane (the smallest power of two >= inner, <= 256)
    // times by planes, so small planes (7x7) still keep most threads busy
    int bx = 1;
    while (bx < inner && bx < kBnThreads) bx <<= 1;
    const int by = kBnThreads / bx;
    const int64_t gx = std::min<int64_t>((inner + bx - 1) / bx, cap);
    int64_t gy = std::min<int64_t>((outer * C + by - 1) / by, std::max<int64_t>(1, cap / gx));
    gy = std::max<int64_t>(1, std::min<int64_t>(gy, 65535));
    e.block = dim3(bx, by);
    e.grid = dim3(unsigned(gx), unsigned(gy));
  }
  return e;
}

inline unsigned warp_blocks(int64_t C) {  // one warp per channel, 8 warps per block
  return unsigned(std::max<int64_t>(1, (C * 32 + kBnThreads - 1) / kBnThreads));
}

}  // namespace bn_detail
}  // namespace pydl

// 2-D convolution on the GPU: the launchers. They pick the kernel for a problem (implicit
// GEMM on tensor cores for float16/bfloat16, on FMA units for float32/float64; direct
// kernels when each group has one input channel), size the grid and split-K, and launch on
// the caller's stream. The kernels and the description of their algorithms are in
// conv_device.cuh. CUDA runtime headers only (no torch): this file compiles in seconds.
#include "conv_kernel.h"
#include "elementwise.cuh"

#include <mma.h>

#include <algorithm>
#include <type_traits>

#include "conv_device.cuh"

namespace pydl {
namespace {

using namespace conv_detail;

template <typename T>
constexpr bool is_16bit() {
  return std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value;
}

int device_major() {
  int dev = 0, major = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  return major;
}

// Runs problem p over an M x N result, `z` blocks deep (groups x splits): on tensor cores
// for 16-bit types and for float32 with TF32 allowed, else on the FMA units.
template <typename T, typename P>
int run_gemm(const P& p, int64_t M, int64_t N, int64_t z, bool tf32, cudaStream_t stream) {
  const int64_t gx = (M + kTile - 1) / kTile, gy = (N + kTile - 1) / kTile;
  if (gx == 0 || gy == 0 || z == 0) return 0;
  if (gx > 0x7fffffff || gy > 65535 || z > 65535) return int(cudaErrorInvalidConfiguration);
  const dim3 grid{unsigned(gx), unsigned(gy), unsigned(z)};
  if constexpr (is_16bit<T>()) {
    // WMMA with bfloat16 needs sm_80; float16 is compiled in the same kernel.
    if (device_major() < 8) return int(cudaErrorNotSupported);
    gemm_wmma_kernel<P, T><<<grid, 128, 0, stream>>>(p);
  } else if constexpr (std::is_same<T, float>::value) {
    if (tf32 && device_major() >= 8)
      gemm_wmma_kernel<P, T><<<grid, 128, 0, stream>>>(p);
    else
      gemm_simt_kernel<P, T><<<grid, 256, 0, stream>>>(p);
  } else {
    gemm_simt_kernel<P, T><<<grid, 256, 0, stream>>>(p);
  }
  return int(cudaGetLastError());
}

bool channels_last(const Strides4& t) { return t.c == 1 && t.w != 1; }

// The 16-byte-load forward needs channels contiguous in x and w (channels_last), whole
// vectors of 8 channels per group, and every vector start 16-byte aligned.
bool fwd_vec_ok(const void* x, const void* w, const Strides4& xs, const Strides4& ws, const ConvShape& s) {
  auto m8 = [](int64_t v) { return v % 8 == 0; };
  return s.Cg() % 8 == 0 && xs.c == 1 && ws.c == 1 && m8(xs.n) && m8(xs.h) && m8(xs.w) && m8(ws.n) &&
         (m8(ws.h) || s.KH == 1) && (m8(ws.w) || s.KW == 1) && aligned16(x) && aligned16(w);
}

template <typename T, typename P>
int run_gemm_vec(const P& p, int64_t M, int64_t N, int64_t z, cudaStream_t stream) {
  const int64_t gx = (M + kTile - 1) / kTile, gy = (N + kTile - 1) / kTile;
  if (gx == 0 || gy == 0 || z == 0) return 0;
  if (gx > 0x7fffffff || gy > 65535 || z > 65535) return int(cudaErrorInvalidConfiguration);
  if (device_major() < 8) return int(cudaErrorNotSupported);
  const dim3 grid{unsigned(gx), unsigned(gy), unsigned(z)};
  gemm_wmma_vec_kernel<P, T><<<grid, 128, 0, stream>>>(p);
  return int(cudaGetLastError());
}

constexpr int64_t kWgradBK = 32;  // split-K slices are whole multiples of both engines' BK

}  // namespace

// ---------------------------------------------------------------------------- launchers
int launch_conv2d_fwd(DType dtype, const void* x, Strides4 xs, const void* w, Strides4 ws,
                      const void* b, void* y, Strides4 ys, const ConvShape& s, bool relu,
                      bool tf32, cudaStream_t stream) {
  const int64_t total = s.N * s.OC * s.OH * s.OW;
  if (total == 0) return 0;
  int err = 0;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x);
    const T* wp = static_cast<const T*>(w);
    const T* bp = static_cast<const T*>(b);
    T* yp = static_cast<T*>(y);
    if (s.Cg() == 1) {
      dw_fwd_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(xp, wp, bp, yp, s, xs, ws, ys, relu,
                                                                 channels_last(ys), total);
      err = int(cudaGetLastError());
      return;
    }
    FwdProblem<T> p{xp, wp, bp, yp, s, xs, ws, ys, relu, s.N * s.OH * s.OW, s.OCg(),
                    s.Cg() * s.KH * s.KW};
    if constexpr (is_16bit<T>()) {
      if (fwd_vec_ok(x, w, xs, ws, s)) {
        FwdVecProblem<T> pv{p};
        pv.vec_out = fwd_out_vec_ok(y, ys, s);
        err = run_gemm_vec<T>(pv, p.M, p.N, s.groups, stream);
        return;
      }
    }
    err = run_gemm<T>(p, p.M, p.N, s.groups, tf32, stream);
  });
  return err;
}

int launch_conv2d_bwd_input(DType dtype, const void* grad, Strides4 gs, const void* w, Strides4 ws,
                            void* dx, Strides4 xs, const ConvShape& s, bool tf32, cudaStream_t stream) {
  const int64_t total = s.N * s.C * s.H * s.W;
  if (total == 0) return 0;
  int err = 0;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* gp = static_cast<const T*>(grad);
    const T* wp = static_cast<const T*>(w);
    T* xp = static_cast<T*>(dx);
    if (s.Cg() == 1) {
      dw_dgrad_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(gp, wp, xp, s, gs, ws, xs,
                                                                   channels_last(xs), total);
      err = int(cudaGetLastError());
      return;
    }
    const DgradProblem<T> p = make_dgrad(gp, wp, xp, s, gs, ws, xs);  // one GEMM per stride phase
    err = run_gemm<T>(p, p.grid_x() * kTile, p.N, s.groups, tf32, stream);
  });
  return err;
}

int64_t conv2d_wgrad_splits(DType dtype, const ConvShape& s) {
  (void)dtype;
  if (s.Cg() == 1) return 0;  // the depthwise kernel needs no workspace
  const int64_t K = s.N * s.OH * s.OW;
  const int64_t tiles = ((s.OCg() + kTile - 1) / kTile) * ((s.Cg() * s.KH * s.KW + kTile - 1) / kTile) *
                        s.groups;
  // enough blocks for ~2 waves, but every slice at least 8 K steps long
  const int64_t want = (2 * int64_t(num_sms()) + tiles - 1) / tiles;
  const int64_t max_by_k = std::max<int64_t>(1, K / (8 * kWgradBK));
  const int64_t max_by_grid = std::max<int64_t>(1, 65535 / s.groups);
  int64_t splits = std::max<int64_t>(1, std::min({want, max_by_k, max_by_grid}));
  // slices are whole BK multiples; recompute the count so that none is empty
  const int64_t per = ((K + splits - 1) / splits + kWgradBK - 1) / kWgradBK * kWgradBK;
  return per > 0 ? (K + per - 1) / per : 1;
}

int launch_conv2d_bwd_weight(DType dtype, const void* grad, Strides4 gs, const void* x, Strides4 xs,
                             void* dw, Strides4 dws, void* workspace, const ConvShape& s, bool tf32,
                             cudaStream_t stream) {
  const int64_t total = s.OC * s.Cg() * s.KH * s.KW;
  if (total == 0) return 0;
  int err = 0;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename OpMath<T>::type;
    const T* gp = static_cast<const T*>(grad);
    const T* xp = static_cast<const T*>(x);
    T* wp = static_cast<T*>(dw);
    if (s.Cg() == 1) {
      if (total > 0x7fffffff) { err = int(cudaErrorInvalidConfiguration); return; }
      dw_wgrad_kernel<T><<<unsigned(total), kThreads, 0, stream>>>(gp, xp, wp, s, gs, xs, dws);
      err = int(cudaGetLastError());
      return;
    }
    const int64_t K = s.N * s.OH * s.OW;
    const int64_t splits = conv2d_wgrad_splits(dtype, s);
    const int64_t per = splits > 0 ? ((K + splits - 1) / splits + kWgradBK - 1) / kWgradBK * kWgradBK : 0;
    WgradProblem<T> p{gp, xp, static_cast<Acc*>(workspace), s, gs, xs, s.OCg(), s.Cg() * s.KH * s.KW,
                      K, splits, per};
    err = run_gemm<T>(p, p.M, p.N, s.groups * splits, tf32, stream);
    if (err) return;
    wgrad_reduce_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(p.work, wp, splits, s, dws);
    err = int(cudaGetLastError());
  });
  return err;
}

int launch_conv2d_bwd_bias(DType dtype, const void* grad, Strides4 gs, void* db, int64_t N, int64_t OC,
                           int64_t OH, int64_t OW, cudaStream_t stream) {
  if (OC == 0) return 0;
  if (OC > 0x7fffffff) return int(cudaErrorInvalidConfiguration);
  int err = 0;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    bias_grad_kernel<T><<<unsigned(OC), kThreads, 0, stream>>>(static_cast<const T*>(grad),
                                                                static_cast<T*>(db), N, OH, OW, gs);
    err = int(cudaGetLastError());
  });
  return err;
}

}  // namespace pydl

// 2-D convolution on the GPU: forward (with an optional fused bias + ReLU epilogue), input
// gradient, weight gradient and bias gradient.
//
//   y [n, oc, oh, ow] = act(b[oc] + sum_{c, kh, kw} x[n, g*Cg+c, ih, iw] * w[oc, c, kh, kw])
//   dx[n, ic, ih, iw] = sum_{j, kh, kw} dy[n, g*OCg+j, oh, ow] * w[g*OCg+j, ic%Cg, kh, kw]
//   dw[oc, c, kh, kw] = sum_{n, oh, ow} dy[n, oc, oh, ow] * x[n, g*Cg+c, ih, iw]
//   db[oc]            = sum_{n, oh, ow} dy[n, oc, oh, ow]
//   with ih = oh*sh - ph + kh*dh, iw = ow*sw - pw + kw*dw; x outside the image reads as 0.
//
// Algorithm 1 -- implicit GEMM (grouped convolutions with more than one input channel per
// group). Each of the three convolutions is a matrix product C[M x N] = A[M x K] B[K x N]
// whose operands are gathered from the tensors on the fly, never materialized (no im2col):
//
//     problem       rows M            cols N           reduction K        A          B
//     forward       n, oh, ow         oc (in group)    c, kh, kw          x patch    w
//     input grad    n, ih, iw         c  (in group)    oc, kh, kw         dy         w
//     weight grad   oc (in group)     c, kh, kw        n, oh, ow          dy         x patch
//
// A "problem" struct below knows how to fetch A[m, k] and B[k, n] for its convolution (the
// padding becomes zeros) and how to store C[m, n] (the epilogue). The input gradient is
// split into stride phases, one GEMM each over only the taps that reach its rows (see
// DgradProblem). One GEMM engine runs all three:
//   - a thread block computes a 64 x 64 tile of C; blockIdx.z is the group (and the
//     split-K slice for the weight gradient), blockIdx.x the row tile (and the stride
//     phase for the input gradient): the problem's part() says which;
//   - per K step the block stages a 64 x BK tile of A and a BK x 64 tile of B in shared
//     memory (each element fetched once from global memory, then reused 64 times); the
//     step's BK reduction indices are decoded once each (the problem's kinfo, into shared
//     memory) and the block's 64 columns once per block (ninfo), so the element loads do
//     additions and bounds tests, no divisions;
//   - float32 / float64 (SIMT engine): 256 threads, each accumulating a 4 x 4 sub-tile with
//     FMAs in registers -- float32 when TF32 is not allowed (torch's cuDNN conv setting,
//     torch.backends.cudnn.allow_tf32 / cudnn.conv.fp32_precision), and float64;
//   - float32 with TF32 allowed: the WMMA engine below with TF32 fragments;
//   - float16 / bfloat16 (WMMA engine): 4 warps, each owning a 32 x 32 sub-tile as 2 x 2
//     16x16x16 tensor-core fragments (nvcuda::wmma) with float32 accumulators; the result
//     goes through shared memory to the epilogue, which rounds once to the storage type.
// The weight gradient reduces over N*OH*OW, typically huge, while its M x N is small: K is
// split into slices (split-K) written to a float workspace and summed afterwards in a fixed
// order, so the result is deterministic.
//
// Algorithm 2 -- direct kernels for one input channel per group (depthwise, groups == C):
// a GEMM there would have an inner dimension of KH*KW and waste most of each tile, so
//   - forward / input grad: one thread per output element, looping over the KH x KW taps
//     (and the channel multiplier); threads walk the output in its memory order, so
//     neighbouring threads touch neighbouring addresses in NCHW and NHWC alike;
//   - weight grad: one block per weight element, a block-wide reduction over n, oh, ow.
//
// Bias gradient: one block per output channel, a block-wide reduction.
//
// Every index and offset is int64_t: tensors past 2^31 elements index correctly; the
// divisions of the index decodes run in 32 bits when their operands fit (idiv). Tensors
// are addressed through their element strides, so NCHW and channels_last (and any other
// strides) are read and written in place.
//
// This header holds the device code only and needs, before it is included, the CUDA
// headers plus OpMath / to_c / from_c / kThreads (csrc/cuda/elementwise.cuh) and
// nvcuda::wmma (<mma.h>): conv_kernel.cu includes it for the GPU, and
// tests/conv_cuda_emulation.cpp includes it on the host, with fibers standing in
// for CUDA threads, to check these kernels' indexing on machines without a GPU.
#pragma once

#include <algorithm>
#include <cstdint>

#include "conv_shape.h"

namespace pydl {
namespace conv_detail {

// a / b, as C++ divides int64_t. Every gather decodes indices by dividing by runtime
// sizes; on the GPU a 64-bit division is a software routine of ~70 instructions, a 32-bit
// one a few. So it runs in 32 bits whenever both operands are in [0, 2^31) -- every index
// of a tensor under 2^31 elements -- and in 64 bits otherwise (a negative operand, or
// past 2^31), which keeps the indexing exact everywhere.
__device__ __forceinline__ int64_t idiv(int64_t a, int64_t b) {
  return ((a | b) >> 31) == 0 ? int64_t(uint32_t(a) / uint32_t(b)) : a / b;
}

template <typename T>
__device__ __forceinline__ T zero() {
  return from_c<T>(typename OpMath<T>::type(0));
}

constexpr int kTile = 64;  // BM = BN = 64 in both GEMM engines below

// One dimension of an input-gradient stride phase (DgradProblem): the input rows
// i0, i0 + s, ... (n of them) and the taps k0, k0 + kstep, ... (taps of them) that reach
// them, the first tap reading dy at row q + off0 for input row i0 + q*s.
struct PhaseDim {
  int64_t i0, n, k0, taps, off0;
};

// Which rows, group and K range a thread block works on: row tile m0, group g, split-K
// slice `split` covering [k_lo, k_hi), and for the input gradient its stride phase.
struct Part {
  int64_t g, split, k_lo, k_hi, m0;
  PhaseDim ph{}, pw{};
};

// ------------------------------------------------------------------------------ problems
template <typename T>
struct FwdProblem {
  using Acc = typename OpMath<T>::type;
  const T* x; const T* w; const T* b; T* y;
  ConvShape s; Strides4 xs, ws, ys; bool relu;
  int64_t M, N, K;  // N*OH*OW, OC/groups, C/groups*KH*KW

  struct Row { const T* base; int64_t ih0, iw0; bool ok; };

  __device__ Part part(int64_t bx, int64_t z) const { return {z, 0, 0, K, bx * kTile}; }
  __device__ Row row(int64_t m, const Part& p) const {
    const int64_t g = p.g;
    Row r;
    r.ok = m < M;
    const int64_t mm = r.ok ? m : 0, plane = s.OH * s.OW;
    const int64_t n = idiv(mm, plane), hw = mm - n * plane, oh = idiv(hw, s.OW), ow = hw - oh * s.OW;
    r.base = x + n * xs.n + g * s.Cg() * xs.c;
    r.ih0 = oh * s.sh - s.ph;
    r.iw0 = ow * s.sw - s.pw;
    return r;
  }
  // Column k = (c, kh, kw) of a K step, decoded once per step for the whole block (kinfo,
  // kept in shared memory by the engine) instead of once per element: its offset inside a
  // row's window and in the weight, and its tap displacement for the window test.
  struct KInfo { int64_t xoff, woff, dh, dw; };
  __device__ KInfo kinfo(int64_t k, const Part&) const {
    const int64_t khw = s.KH * s.KW;
    const int64_t c = idiv(k, khw), t = k - c * khw, kh = idiv(t, s.KW), kw = t - kh * s.KW;
    const int64_t dh = kh * s.dh, dw = kw * s.dw;
    return {c * xs.c + dh * xs.h + dw * xs.w, c * ws.c + kh * ws.h + kw * ws.w, dh, dw};
  }
  // Column n of the block (an output channel), decoded once per block.
  struct NInfo { int64_t woff; bool ok; };
  __device__ NInfo ninfo(int64_t n, const Part& p) const { return {(p.g * N + n) * ws.n, n < N}; }
  __device__ T a(const Row& r, const KInfo& k) const {
    const int64_t ih = r.ih0 + k.dh, iw = r.iw0 + k.dw;
    if (!r.ok || ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) return zero<T>();
    return r.base[r.ih0 * xs.h + r.iw0 * xs.w + k.xoff];
  }
  __device__ T b_at(const KInfo& k, const NInfo& n, const Part&) const {
    return n.ok ? w[n.woff + k.woff] : zero<T>();
  }
  // The epilogue: output row m's offset (-1: past M) is decoded once per row (out_row),
  // then store() adds the column's.
  __device__ int64_t out_row(int64_t m, const Part&) const {
    if (m >= M) return -1;
    const int64_t plane = s.OH * s.OW;
    const int64_t nb = idiv(m, plane), hw = m - nb * plane, oh = idiv(hw, s.OW), ow = hw - oh * s.OW;
    return nb * ys.n + oh * ys.h + ow * ys.w;
  }
  __device__ T epilogue(Acc v, int64_t oc) const {  // bias, relu, rounding to T
    if (b) v += to_c(b[oc]);
    if (relu && v < Acc(0)) v = Acc(0);  // NaN stays NaN, as torch's relu
    return from_c<T>(v);
  }
  __device__ void store(int64_t row, int64_t n, const Part& p, Acc v) const {
    if (row < 0 || n >= N) return;
    const int64_t oc = p.g * N + n;
    y[row + oc * ys.c] = epilogue(v, oc);
  }
};

// The input gradient, one GEMM per stride phase. A tap kh reaches input row ih only when
// kh*dh = ih + ph (mod sh), so the rows ih of one phase r = (ih + ph) mod sh are all reached
// by the same taps -- kh0(r), kh0(r) + kstep, ... with kstep = sh / gcd(sh, dh) -- and for
// ih = i0 + q*sh and kh = kh0 + u*kstep the output row is oh = q + off0 - u*doff (off0 =
// (i0 + ph - kh0*dh) / sh and doff = kstep*dh / sh, exact divisions). So per phase pair
// (rows, columns) the problem is a GEMM without stride: rows (n, qh, qw), reduction
// (j, u, v) over only the taps that reach -- a quarter of the work of a masked all-taps
// loop at stride 2, nothing at all for the phases no tap reaches (a 1x1 stride-2 shortcut:
// three quarters of dx are zeros) -- and no division by the stride per element. Blocks
// (bx, by, g): phase bx / tiles_m, row tile bx % tiles_m of it. Stride 1 is one phase.
__host__ __device__ inline PhaseDim phase_dim(int64_t r, int64_t size, int64_t k, int64_t s, int64_t p,
                                              int64_t d, int64_t kstep) {
  PhaseDim q;
  q.i0 = ((r - p) % s + s) % s;  // the first input row with (ih + p) mod s == r
  q.n = size > q.i0 ? (size - q.i0 + s - 1) / s : 0;
  q.k0 = -1;                     // the first tap with k0*d mod s == r, if any (< kstep)
  for (int64_t t = 0; t < kstep && q.k0 < 0; ++t)
    if ((t * d - r) % s == 0) q.k0 = t;
  q.taps = q.k0 >= 0 && q.k0 < k ? (k - q.k0 + kstep - 1) / kstep : 0;
  if (q.k0 < 0) q.k0 = 0;
  q.off0 = (q.i0 + p - q.k0 * d) / s;  // exact when taps > 0 (unused otherwise)
  return q;
}

template <typename T>
struct DgradProblem {
  using Acc = typename OpMath<T>::type;
  const T* dy; const T* w; T* dx;
  ConvShape s; Strides4 gs, ws, xs;
  int64_t M, N, K;          // rows of the largest phase, C/groups, its reduction length
  int64_t kstep_h, kstep_w, doff_h, doff_w, tiles_m;

  struct Row { const T* base; int64_t oh0, ow0; bool ok; };

  __device__ Part part(int64_t bx, int64_t z) const {
    const int64_t phase = idiv(bx, tiles_m), rh = idiv(phase, s.sw), rw = phase - rh * s.sw;
    Part p{z, 0, 0, 0, (bx - phase * tiles_m) * kTile};
    p.ph = phase_dim(rh, s.H, s.KH, s.sh, s.ph, s.dh, kstep_h);
    p.pw = phase_dim(rw, s.W, s.KW, s.sw, s.pw, s.dw, kstep_w);
    p.k_hi = p.ph.taps * p.pw.taps * s.OCg();
    return p;
  }
  __device__ Row row(int64_t m, const Part& p) const {
    Row r;
    const int64_t plane = p.ph.n * p.pw.n;
    r.ok = m < s.N * plane;
    const int64_t mm = r.ok ? m : 0;
    const int64_t n = r.ok ? idiv(mm, plane) : 0, q = mm - n * plane;
    const int64_t qh = r.ok ? idiv(q, p.pw.n) : 0, qw = q - qh * p.pw.n;
    r.base = dy + n * gs.n + p.g * s.OCg() * gs.c;
    r.oh0 = qh + p.ph.off0;  // the dy row and column the phase's first tap reads
    r.ow0 = qw + p.pw.off0;
    return r;
  }
  // k = (j, u, v), v fastest: output channel j through the phase's tap (kh0 + u*kstep_h,
  // kw0 + v*kstep_w), which reads dy at (oh0 - du, ow0 - dv); decoded once per K step.
  struct KInfo { int64_t gyoff, woff, du, dv; };
  __device__ KInfo kinfo(int64_t k, const Part& p) const {
    const int64_t taps = p.ph.taps * p.pw.taps;
    const int64_t j = idiv(k, taps), t = k - j * taps, u = idiv(t, p.pw.taps), v = t - u * p.pw.taps;
    const int64_t kh = p.ph.k0 + u * kstep_h, kw = p.pw.k0 + v * kstep_w, du = u * doff_h, dv = v * doff_w;
    return {j * gs.c - du * gs.h - dv * gs.w, (p.g * s.OCg() + j) * ws.n + kh * ws.h + kw * ws.w, du, dv};
  }
  struct NInfo { int64_t woff; bool ok; };  // input channel n
  __device__ NInfo ninfo(int64_t n, const Part&) const { return {n * ws.c, n < N}; }
  __device__ T a(const Row& r, const KInfo& k) const {
    const int64_t oh = r.oh0 - k.du, ow = r.ow0 - k.dv;
    if (!r.ok || oh < 0 || oh >= s.OH || ow < 0 || ow >= s.OW) return zero<T>();
    return r.base[r.oh0 * gs.h + r.ow0 * gs.w + k.gyoff];
  }
  __device__ T b_at(const KInfo& k, const NInfo& n, const Part&) const {
    return n.ok ? w[k.woff + n.woff] : zero<T>();
  }
  __device__ int64_t out_row(int64_t m, const Part& p) const {
    const int64_t plane = p.ph.n * p.pw.n;
    if (m >= s.N * plane) return -1;
    const int64_t nb = idiv(m, plane), q = m - nb * plane, qh = idiv(q, p.pw.n), qw = q - qh * p.pw.n;
    return nb * xs.n + (p.ph.i0 + qh * s.sh) * xs.h + (p.pw.i0 + qw * s.sw) * xs.w;
  }
  __device__ void store(int64_t row, int64_t n, const Part& p, Acc v) const {
    if (row < 0 || n >= N) return;
    dx[row + (p.g * N + n) * xs.c] = from_c<T>(v);
  }
  // blocks along x: every phase's row tiles
  int64_t grid_x() const { return s.sh * s.sw * tiles_m; }
};

// The input-gradient problem with its phase geometry (host side).
template <typename T>
DgradProblem<T> make_dgrad(const T* dy, const T* w, T* dx, const ConvShape& s, Strides4 gs, Strides4 ws,
                           Strides4 xs) {
  auto gcd = [](int64_t a, int64_t b) { while (b) { const int64_t t = a % b; a = b; b = t; } return a; };
  DgradProblem<T> p{dy, w, dx, s, gs, ws, xs, 0, s.Cg(), 0};
  p.kstep_h = s.sh / gcd(s.sh, s.dh);
  p.kstep_w = s.sw / gcd(s.sw, s.dw);
  p.doff_h = p.kstep_h * s.dh / s.sh;
  p.doff_w = p.kstep_w * s.dw / s.sw;
  for (int64_t rh = 0; rh < s.sh; ++rh)
    for (int64_t rw = 0; rw < s.sw; ++rw) {
      const PhaseDim h = phase_dim(rh, s.H, s.KH, s.sh, s.ph, s.dh, p.kstep_h);
      const PhaseDim v = phase_dim(rw, s.W, s.KW, s.sw, s.pw, s.dw, p.kstep_w);
      p.M = std::max(p.M, s.N * h.n * v.n);
      p.K = std::max(p.K, h.taps * v.taps * s.OCg());
    }
  p.tiles_m = (p.M + kTile - 1) / kTile;
  return p;
}

template <typename T>
struct WgradProblem {
  using Acc = typename OpMath<T>::type;
  const T* dy; const T* x; Acc* work;  // work: [splits, OC, Cg*KH*KW]
  ConvShape s; Strides4 gs, xs;
  int64_t M, N, K;  // OC/groups, C/groups*KH*KW, N*OH*OW
  int64_t splits, k_per_split;

  struct Row { const T* base; bool ok; };

  __device__ Part part(int64_t bx, int64_t z) const {
    const int64_t split = z % splits, lo = split * k_per_split;
    return {z / splits, split, lo, lo + k_per_split < K ? lo + k_per_split : K, bx * kTile};
  }
  __device__ Row row(int64_t m, const Part& p) const {
    Row r;
    r.ok = m < M;
    r.base = dy + (p.g * M + (r.ok ? m : 0)) * gs.c;
    return r;
  }
  // k = (n, oh, ow), decoded once per K step: its dy offset, and the x offset and position
  // of the top-left of its window.
  struct KInfo { int64_t gyoff, xoff, ih0, iw0; };
  __device__ KInfo kinfo(int64_t k, const Part&) const {
    const int64_t plane = s.OH * s.OW;
    const int64_t n = idiv(k, plane), hw = k - n * plane, oh = idiv(hw, s.OW), ow = hw - oh * s.OW;
    const int64_t ih0 = oh * s.sh - s.ph, iw0 = ow * s.sw - s.pw;
    return {n * gs.n + oh * gs.h + ow * gs.w, n * xs.n + ih0 * xs.h + iw0 * xs.w, ih0, iw0};
  }
  // col = (c, kh, kw), decoded once per block: its x offset and tap displacement.
  struct NInfo { int64_t xoff, dh, dw; bool ok; };
  __device__ NInfo ninfo(int64_t col, const Part& p) const {
    const int64_t khw = s.KH * s.KW, cc = col < N ? col : 0;
    const int64_t c = idiv(cc, khw), t = cc - c * khw, kh = idiv(t, s.KW), kw = t - kh * s.KW;
    const int64_t dh = kh * s.dh, dw = kw * s.dw;
    return {(p.g * s.Cg() + c) * xs.c + dh * xs.h + dw * xs.w, dh, dw, col < N};
  }
  __device__ T a(const Row& r, const KInfo& k) const { return r.ok ? r.base[k.gyoff] : zero<T>(); }
  __device__ T b_at(const KInfo& k, const NInfo& n, const Part&) const {
    const int64_t ih = k.ih0 + n.dh, iw = k.iw0 + n.dw;
    if (!n.ok || ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) return zero<T>();
    return x[k.xoff + n.xoff];
  }
  __device__ int64_t out_row(int64_t m, const Part&) const { return m < M ? m : -1; }
  __device__ void store(int64_t m, int64_t col, const Part& p, Acc v) const {
    if (m < 0 || col >= N) return;
    work[(p.split * s.OC + p.g * M + m) * N + col] = v;
  }
};

// Forward for channels_last input and weight with Cg % 8 == 0 (the launcher checks this
// and 16-byte alignment): K is ordered (kh, kw, c) with the channel fastest, so 8
// consecutive k are 8 consecutive channels of one tap -- one 16-byte load (a8 / b8) instead
// of 8 scalar ones. The epilogue is the generic forward's, or 16-byte stores of 8 output
// channels (store8) when the output allows.
template <typename T>
struct FwdVecProblem : FwdProblem<T> {
  using V = Pack<T, 8>;
  // The epilogue stores 8 output channels as one 16-byte vector (store8) when the output
  // is channels_last with 8 | OC/groups and every such run 16-byte aligned (fwd_out_vec_ok);
  // else element by element (the generic store).
  bool vec_out = false;

  __device__ V zeros() const {
    V z;
#pragma unroll
    for (int i = 0; i < 8; ++i) z.v[i] = zero<T>();
    return z;
  }
  // Where a thread's k = (kh*KW + kw)*Cg + c is: decoded (two divisions) once per thread,
  // then moved forward by BK per K step with a subtraction or two (advance): the inner
  // loop divides nothing.
  struct Tap { int64_t c, kh, kw; };
  __device__ Tap tap(int64_t k) const {
    const ConvShape& s = this->s;
    const int64_t t = idiv(k, s.Cg()), kh = idiv(t, s.KW);
    return {k - t * s.Cg(), kh, t - kh * s.KW};
  }
  __device__ void advance(Tap& t, int64_t dk) const {
    const ConvShape& s = this->s;
    t.c += dk;
    while (t.c >= s.Cg()) {  // once per Cg channels crossed: at most dk / Cg + 1 times
      t.c -= s.Cg();
      if (++t.kw == s.KW) {
        t.kw = 0;
        ++t.kh;
      }
    }
  }
  __device__ V a8(const typename FwdProblem<T>::Row& r, const Tap& t) const {
    const ConvShape& s = this->s;
    const int64_t ih = r.ih0 + t.kh * s.dh, iw = r.iw0 + t.kw * s.dw;
    if (!r.ok || ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) return zeros();
    return *reinterpret_cast<const V*>(r.base + t.c + ih * this->xs.h + iw * this->xs.w);
  }
  __device__ V b8(const Tap& t, int64_t n, int64_t g) const {
    if (n >= this->N) return zeros();
    return *reinterpret_cast<const V*>(this->w + (g * this->N + n) * this->ws.n + t.c + t.kh * this->ws.h +
                                       t.kw * this->ws.w);
  }
  // Output channels n .. n+7 of row `row` (vec_out only: all 8 in or out of the group).
  __device__ void store8(int64_t row, int64_t n, const Part& p, const float* v) const {
    if (row < 0 || n >= this->N) return;
    const int64_t oc = p.g * this->N + n;
    V out;
#pragma unroll
    for (int i = 0; i < 8; ++i) out.v[i] = this->epilogue(v[i], oc + i);
    store_pack16(this->y + row + oc, out);  // channels_last: channel stride 1
  }
};

// Whether FwdVecProblem may store whole 8-channel vectors: channels_last output, 8 | OC/groups
// (so a vector never straddles two groups or the end), row strides multiples of 8 and the
// output 16-byte aligned (so every vector is).
inline bool fwd_out_vec_ok(const void* y, const Strides4& ys, const ConvShape& s) {
  auto m8 = [](int64_t v) { return v % 8 == 0; };
  return ys.c == 1 && m8(s.OCg()) && m8(ys.n) && m8(ys.h) && m8(ys.w) &&
         (reinterpret_cast<uintptr_t>(y) & 15) == 0;
}

// ---------------------------------------------------------------------- GEMM engines

// SIMT: 256 threads, BK = 16, thread (ty, tx) owns rows ty + 16*i and columns tx + 16*j
// (i, j < 4) of the tile: the interleaving makes a warp's shared-memory reads of one k
// row hit consecutive addresses.
template <typename P, typename T>
__global__ void __launch_bounds__(256) gemm_simt_kernel(const P p) {
  using Acc = typename OpMath<T>::type;
  constexpr int BK = 16;
  __shared__ Acc As[BK][kTile];
  __shared__ Acc Bs[BK][kTile + 1];  // +1: the column-wise stores below avoid bank conflicts
  __shared__ typename P::KInfo Ks[BK];     // this K step's columns of A / rows of B, decoded
  __shared__ typename P::NInfo Ns[kTile];  // the block's columns of B, decoded
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const Part part = p.part(blockIdx.x, blockIdx.z);
  const int64_t m0 = part.m0, n0 = int64_t(blockIdx.y) * kTile;
  // every thread loads A elements of one row (tid % 64): decode that row once
  const int am = tid % kTile;
  const auto row = p.row(m0 + am, part);
  if (tid < kTile) Ns[tid] = p.ninfo(n0 + tid, part);
  Acc acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = Acc(0);

  for (int64_t k0 = part.k_lo; k0 < part.k_hi; k0 += BK) {
    if (tid < BK && k0 + tid < part.k_hi) Ks[tid] = p.kinfo(k0 + tid, part);
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // A: 64 x 16, consecutive threads -> consecutive rows
      const int kl = tid / kTile + 4 * i;
      As[kl][am] = k0 + kl < part.k_hi ? to_c(p.a(row, Ks[kl])) : Acc(0);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // B: 16 x 64, consecutive threads -> consecutive k
      const int e = tid + 256 * i, kl = e % BK, nl = e / BK;
      Bs[kl][nl] = k0 + kl < part.k_hi ? to_c(p.b_at(Ks[kl], Ns[nl], part)) : Acc(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      Acc ar[4], br[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) ar[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) br[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fma(ar[i], br[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t orow = p.out_row(m0 + ty + 16 * i, part);
#pragma unroll
    for (int j = 0; j < 4; ++j) p.store(orow, n0 + tx + 16 * j, part, acc[i][j]);
  }
}

// WMMA (tensor cores, float32 accumulate): 128 threads = 4 warps in a 2 x 2 arrangement,
// each warp a 32 x 32 sub-tile = 2 x 2 fragments of 16 x 16; BK = 32. float16 / bfloat16
// use 16x16x16 fragments; float32 (only when TF32 is allowed) uses 16x16x8 TF32 fragments
// whose elements are rounded to TF32 after the load, as cuDNN's TF32 convolutions do.
// Shared-memory rows are padded by 8 elements to spread the fragment loads over the banks
// while keeping every fragment pointer 32-byte aligned, as WMMA requires.
template <typename T> struct WmmaFrag { using type = T; static constexpr int K = 16; };
template <> struct WmmaFrag<float> { using type = nvcuda::wmma::precision::tf32; static constexpr int K = 8; };

template <typename P, typename T>
__global__ void __launch_bounds__(128) gemm_wmma_kernel(const P p) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  using FT = typename WmmaFrag<T>::type;
  constexpr int FK = WmmaFrag<T>::K;
  constexpr int BK = 32, LDA = BK + 8, LDB = kTile + 8, LDC = kTile + 4;
  __shared__ __align__(32) T As[kTile * LDA];   // A tile, row-major [m][k]
  __shared__ __align__(32) T Bs[BK * LDB];      // B tile, row-major [k][n]
  __shared__ __align__(32) float Cs[kTile * LDC];
  __shared__ typename P::KInfo Ks[BK];     // this K step's columns of A / rows of B, decoded
  __shared__ typename P::NInfo Ns[kTile];  // the block's columns of B, decoded
  const int tid = threadIdx.x, warp = tid / 32, wm = warp / 2, wn = warp % 2;
  const Part part = p.part(blockIdx.x, blockIdx.z);
  const int64_t m0 = part.m0, n0 = int64_t(blockIdx.y) * kTile;
  const int am = tid % kTile;
  const auto row = p.row(m0 + am, part);
  const T z = zero<T>();
  if (tid < kTile) Ns[tid] = p.ninfo(n0 + tid, part);

  wmma::fragment<wmma::accumulator, 16, 16, FK, float> c[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(c[i][j], 0.0f);

  for (int64_t k0 = part.k_lo; k0 < part.k_hi; k0 += BK) {
    // Each k of the step is decoded once, by one thread, for the whole block: the loads
    // below then read its offsets from shared memory instead of dividing per element.
    if (tid < BK && k0 + tid < part.k_hi) Ks[tid] = p.kinfo(k0 + tid, part);
    __syncthreads();
#pragma unroll 4
    for (int i = 0; i < 16; ++i) {  // A: 64 x 32
      const int kl = tid / kTile + 2 * i;
      As[am * LDA + kl] = k0 + kl < part.k_hi ? p.a(row, Ks[kl]) : z;
    }
    const int kb = tid % BK;        // B: 32 x 64, this thread's k row fixed
    const bool kb_ok = k0 + kb < part.k_hi;
#pragma unroll 4
    for (int i = 0; i < 16; ++i) {
      const int nl = tid / BK + 4 * i;
      Bs[kb * LDB + nl] = kb_ok ? p.b_at(Ks[kb], Ns[nl], part) : z;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += FK) {
      wmma::fragment<wmma::matrix_a, 16, 16, FK, FT, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, FK, FT, wmma::row_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], As + (wm * 32 + i * 16) * LDA + kk, LDA);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], Bs + kk * LDB + wn * 32 + j * 16, LDB);
      if constexpr (FK == 8) {  // TF32: round the float32 operands to 10-bit mantissas
#pragma unroll
        for (int i = 0; i < 2; ++i)
          for (int t = 0; t < fa[i].num_elements; ++t) fa[i].x[t] = wmma::__float_to_tf32(fa[i].x[t]);
#pragma unroll
        for (int j = 0; j < 2; ++j)
          for (int t = 0; t < fb[j].num_elements; ++t) fb[j].x[t] = wmma::__float_to_tf32(fb[j].x[t]);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(c[i][j], fa[i], fb[j], c[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * LDC + wn * 32 + j * 16, c[i][j], LDC,
                              wmma::mem_row_major);
  __shared__ int64_t orow[kTile];  // each output row's offset, decoded once
  if (tid < kTile) orow[tid] = p.out_row(m0 + tid, part);
  __syncthreads();
  for (int e = tid; e < kTile * kTile; e += 128) {  // consecutive threads -> consecutive n
    const int ml = e / kTile, nl = e % kTile;
    p.store(orow[ml], n0 + nl, part, Cs[ml * LDC + nl]);
  }
#endif
}

// WMMA engine with 16-byte operand loads, for problems with a8/b8 (FwdVecProblem): each
// thread moves 2 A and 2 B vectors of 8 elements per K step. B is staged column-major
// ([n][k], a WMMA col_major matrix_b) so that a vector of 8 consecutive k is one 16-byte
// shared-memory store. The next K step's vectors are fetched into registers before the
// tensor cores work on the current one, so global-memory latency overlaps the MMAs. The
// epilogue writes 16-byte vectors where the output allows (p.vec_out): for a 1x1 layer with
// 64 channels the two K steps are little work, and 32 scalar 2-byte stores a thread were
// most of the block's instructions; now 4 vector stores.
template <typename P, typename T>
__global__ void __launch_bounds__(128) gemm_wmma_vec_kernel(const P p) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  using V = Pack<T, 8>;
  constexpr int BK = 32, LDA = BK + 8, LDB = BK + 8, LDC = kTile + 4;
  __shared__ __align__(32) T As[kTile * LDA];   // A tile, row-major [m][k]
  __shared__ __align__(32) T Bs[kTile * LDB];   // B tile, column-major [n][k]
  __shared__ __align__(32) float Cs[kTile * LDC];
  const int tid = threadIdx.x, warp = tid / 32, wm = warp / 2, wn = warp % 2;
  const Part part = p.part(blockIdx.x, blockIdx.z);
  const int64_t m0 = part.m0, n0 = int64_t(blockIdx.y) * kTile;
  // this thread's vectors: rows/columns r0 and r0 + 32, k offset 8 * kq within the step
  const int kq = tid % 4, r0 = tid / 4;
  const auto row0 = p.row(m0 + r0, part);
  const auto row1 = p.row(m0 + r0 + 32, part);
  const V zv = p.zeros();

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(c[i][j], 0.0f);

  // K is a multiple of 8 here, so a vector is wholly inside or outside [k_lo, k_hi).
  // fetch(k0) is called for k0 = k_lo, k_lo + BK, ... in turn; tap tracks k0 + 8 * kq.
  V a0 = zv, a1 = zv, b0 = zv, b1 = zv;
  auto tap = p.tap(part.k_lo + 8 * kq);
  auto fetch = [&](int64_t k0) {
    const bool in = k0 + 8 * kq < part.k_hi;
    a0 = in ? p.a8(row0, tap) : zv;
    a1 = in ? p.a8(row1, tap) : zv;
    b0 = in ? p.b8(tap, n0 + r0, part.g) : zv;
    b1 = in ? p.b8(tap, n0 + r0 + 32, part.g) : zv;
    p.advance(tap, BK);
  };
  if (part.k_lo < part.k_hi) fetch(part.k_lo);
  for (int64_t k0 = part.k_lo; k0 < part.k_hi; k0 += BK) {
    *reinterpret_cast<V*>(As + r0 * LDA + 8 * kq) = a0;
    *reinterpret_cast<V*>(As + (r0 + 32) * LDA + 8 * kq) = a1;
    *reinterpret_cast<V*>(Bs + r0 * LDB + 8 * kq) = b0;
    *reinterpret_cast<V*>(Bs + (r0 + 32) * LDB + 8 * kq) = b1;
    __syncthreads();
    if (k0 + BK < part.k_hi) fetch(k0 + BK);  // in flight during the MMAs below
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], As + (wm * 32 + i * 16) * LDA + kk, LDA);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], Bs + (wn * 32 + j * 16) * LDB + kk, LDB);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(c[i][j], fa[i], fb[j], c[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * LDC + wn * 32 + j * 16, c[i][j], LDC,
                              wmma::mem_row_major);
  __shared__ int64_t orow[kTile];
  if (tid < kTile) orow[tid] = p.out_row(m0 + tid, part);
  __syncthreads();
  if (p.vec_out) {  // 16-byte stores: 8 threads cover a row's 64 channels (128 bytes)
    for (int e = tid; e < kTile * kTile / 8; e += 128) {
      const int ml = e / (kTile / 8), nl = e % (kTile / 8) * 8;
      p.store8(orow[ml], n0 + nl, part, Cs + ml * LDC + nl);
    }
  } else {
    for (int e = tid; e < kTile * kTile; e += 128) {
      const int ml = e / kTile, nl = e % kTile;
      p.store(orow[ml], n0 + nl, part, Cs[ml * LDC + nl]);
    }
  }
#endif
}

// ------------------------------------------------------------------- depthwise (Cg == 1)
// Output element i in the output's memory order (NCHW or NHWC), as (n, c, h, w).
__device__ __forceinline__ void decode4(int64_t i, bool cl, int64_t C, int64_t H, int64_t W,
                                        int64_t& n, int64_t& c, int64_t& h, int64_t& w) {
  int64_t t, u;
  if (cl) {
    t = idiv(i, C); c = i - t * C; u = idiv(t, W); w = t - u * W; n = idiv(u, H); h = u - n * H;
  } else {
    t = idiv(i, W); w = i - t * W; u = idiv(t, H); h = t - u * H; n = idiv(u, C); c = u - n * C;
  }
}

template <typename T>
__global__ void dw_fwd_kernel(const T* x, const T* w, const T* b, T* y, const ConvShape s,
                              const Strides4 xs, const Strides4 ws, const Strides4 ys, bool relu,
                              bool cl, int64_t total) {
  using Acc = typename OpMath<T>::type;
  const int64_t mult = s.OCg();  // output channels per input channel
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, oc, oh, ow;
    decode4(i, cl, s.OC, s.OH, s.OW, n, oc, oh, ow);
    const T* xp = x + n * xs.n + idiv(oc, mult) * xs.c;
    const T* wp = w + oc * ws.n;
    Acc acc = b ? to_c(b[oc]) : Acc(0);
    for (int64_t kh = 0; kh < s.KH; ++kh) {
      const int64_t ih = oh * s.sh - s.ph + kh * s.dh;
      if (ih < 0 || ih >= s.H) continue;
      for (int64_t kw = 0; kw < s.KW; ++kw) {
        const int64_t iw = ow * s.sw - s.pw + kw * s.dw;
        if (iw < 0 || iw >= s.W) continue;
        acc = fma(to_c(xp[ih * xs.h + iw * xs.w]), to_c(wp[kh * ws.h + kw * ws.w]), acc);
      }
    }
    if (relu && acc < Acc(0)) acc = Acc(0);
    y[n * ys.n + oc * ys.c + oh * ys.h + ow * ys.w] = from_c<T>(acc);
  }
}

template <typename T>
__global__ void dw_dgrad_kernel(const T* dy, const T* w, T* dx, const ConvShape s, const Strides4 gs,
                                const Strides4 ws, const Strides4 xs, bool cl, int64_t total) {
  using Acc = typename OpMath<T>::type;
  const int64_t mult = s.OCg();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, ic, ih, iw;
    decode4(i, cl, s.C, s.H, s.W, n, ic, ih, iw);
    Acc acc = Acc(0);
    for (int64_t kh = 0; kh < s.KH; ++kh) {
      const int64_t th = ih + s.ph - kh * s.dh;
      if (th < 0) continue;
      const int64_t oh = idiv(th, s.sh);
      if (oh * s.sh != th || oh >= s.OH) continue;
      for (int64_t kw = 0; kw < s.KW; ++kw) {
        const int64_t tw = iw + s.pw - kw * s.dw;
        if (tw < 0) continue;
        const int64_t ow = idiv(tw, s.sw);
        if (ow * s.sw != tw || ow >= s.OW) continue;
        for (int64_t j = 0; j < mult; ++j) {
          const int64_t oc = ic * mult + j;
          acc = fma(to_c(dy[n * gs.n + oc * gs.c + oh * gs.h + ow * gs.w]),
                    to_c(w[oc * ws.n + kh * ws.h + kw * ws.w]), acc);
        }
      }
    }
    dx[n * xs.n + ic * xs.c + ih * xs.h + iw * xs.w] = from_c<T>(acc);
  }
}

// Sum of v over the block (blockDim.x == kThreads, a power of two); valid in thread 0.
template <typename Acc>
__device__ Acc block_sum(Acc v) {
  __shared__ Acc buf[kThreads];
  buf[threadIdx.x] = v;
  __syncthreads();
  for (int o = kThreads / 2; o > 0; o >>= 1) {
    if (int(threadIdx.x) < o) buf[threadIdx.x] += buf[threadIdx.x + o];
    __syncthreads();
  }
  return buf[0];
}

// One block per weight element (oc, kh, kw).
template <typename T>
__global__ void __launch_bounds__(kThreads) dw_wgrad_kernel(const T* dy, const T* x, T* dw,
                                                            const ConvShape s, const Strides4 gs,
                                                            const Strides4 xs, const Strides4 dws) {
  using Acc = typename OpMath<T>::type;
  const int64_t e = blockIdx.x, khw = s.KH * s.KW;
  const int64_t oc = e / khw, kh = (e % khw) / s.KW, kw = e % s.KW, ic = oc / s.OCg();
  const int64_t plane = s.OH * s.OW, total = s.N * plane;
  Acc acc = Acc(0);
  for (int64_t k = threadIdx.x; k < total; k += kThreads) {
    const int64_t n = idiv(k, plane), hw = k - n * plane, oh = idiv(hw, s.OW), ow = hw - oh * s.OW;
    const int64_t ih = oh * s.sh - s.ph + kh * s.dh, iw = ow * s.sw - s.pw + kw * s.dw;
    if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
    acc = fma(to_c(dy[n * gs.n + oc * gs.c + oh * gs.h + ow * gs.w]),
              to_c(x[n * xs.n + ic * xs.c + ih * xs.h + iw * xs.w]), acc);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) dw[oc * dws.n + kh * dws.h + kw * dws.w] = from_c<T>(acc);
}

// dw[oc, c, kh, kw] = sum over the split-K slices of the workspace.
template <typename T>
__global__ void wgrad_reduce_kernel(const typename OpMath<T>::type* work, T* dw, int64_t splits,
                                    const ConvShape s, const Strides4 dws) {
  using Acc = typename OpMath<T>::type;
  const int64_t khw = s.KH * s.KW, cols = s.Cg() * khw, total = s.OC * cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    Acc v = Acc(0);
    for (int64_t sp = 0; sp < splits; ++sp) v += work[sp * total + i];
    const int64_t oc = idiv(i, cols), col = i - oc * cols, c = idiv(col, khw), t = col - c * khw;
    const int64_t kh = idiv(t, s.KW);
    dw[oc * dws.n + c * dws.c + kh * dws.h + (t - kh * s.KW) * dws.w] = from_c<T>(v);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) bias_grad_kernel(const T* dy, T* db, int64_t N, int64_t OH,
                                                             int64_t OW, const Strides4 gs) {
  using Acc = typename OpMath<T>::type;
  const int64_t oc = blockIdx.x, plane = OH * OW, total = N * plane;
  Acc acc = Acc(0);
  for (int64_t k = threadIdx.x; k < total; k += kThreads) {
    const int64_t n = idiv(k, plane), hw = k - n * plane, oh = idiv(hw, OW), ow = hw - oh * OW;
    acc += to_c(dy[n * gs.n + oc * gs.c + oh * gs.h + ow * gs.w]);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) db[oc] = from_c<T>(acc);
}

}  // namespace conv_detail
}  // namespace pydl

// Host emulation of the CUDA convolution kernels (csrc/cuda/conv_device.cuh), so that their
// indexing -- implicit-GEMM gathers, padding and stride masks, tiles, split-K, the depthwise
// kernels, block reductions -- is checked on machines without a GPU (tests/test_conv.py
// compiles and runs this with g++).
//
// How: tests/cuda_emulation.h (CUDA keywords as plain C++, each CUDA thread a fiber,
// __syncthreads() a barrier of the fibers, blocks one after the other). nvcuda::wmma
// is emulated with every thread of a warp holding a whole 16x16 fragment (the real API
// spreads it over the warp; the result is the same). The header's bfloat16 stand-in runs
// the tensor-core engine too.
// What this cannot check: timing, memory coalescing, the real WMMA fragment layouts.
//
// Each kernel is compared with a float64 direct convolution; exit status 0 = all passed.
#include <random>

#include "cuda_emulation.h"

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}
enum layout_t { mem_row_major };
// x holds the fragment's whole matrix, row-major, whatever its layout in memory:
// matrix_a is M x K, matrix_b K x N, the accumulator M x N. A TF32 fragment holds floats.
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  using elem = std::conditional_t<std::is_same_v<T, precision::tf32>, float, T>;
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = rows * cols;
  elem x[rows * cols];
};
template <typename Use, int M, int N, int K, typename T, typename L>
L layout_of(const fragment<Use, M, N, K, T, L>&);
template <typename F> void fill_fragment(F& f, float v) {
  for (auto& e : f.x) e = v;
}
template <typename F, typename T> void load_matrix_sync(F& f, const T* p, unsigned ldm) {
  constexpr bool col = std::is_same_v<decltype(layout_of(f)), col_major>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = col ? p[c * ldm + r] : p[r * ldm + c];
}
template <typename D, typename A, typename B> void mma_sync(D& d, const A& a, const B& b, const D& c) {
  float t[256];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float s = c.x[i * 16 + j];
      for (int k = 0; k < A::cols; ++k) s += pydl::to_c(a.x[i * A::cols + k]) * pydl::to_c(b.x[k * 16 + j]);
      t[i * 16 + j] = s;
    }
  std::copy(t, t + 256, d.x);
}
template <typename F> void store_matrix_sync(float* p, const F& f, unsigned ldm, layout_t) {
  if (threadIdx.x % 32) return;  // one writer per warp
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) p[r * ldm + c] = f.x[r * 16 + c];
}
// float -> TF32 (10 explicit mantissa bits), round to nearest (ties away), kept in a float
inline float __float_to_tf32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace wmma
}  // namespace nvcuda

#include "cuda/conv_device.cuh"

using namespace pydl;
using namespace pydl::conv_detail;

struct Cfg {
  int64_t N, C, H, W, OC, KH, KW, sh, sw, pt, pl, pb, pr, dh, dw, g;
  bool cl;
};

static std::mt19937 rng(1);

template <typename T>
std::vector<T> rnd(size_t n) {
  std::normal_distribution<double> d;
  std::vector<T> v(n);
  for (auto& x : v) x = from_c<T>(typename OpMath<T>::type(d(rng)));
  return v;
}

Strides4 strides(int64_t C, int64_t H, int64_t W, bool cl) {
  return cl ? Strides4{H * W * C, 1, W * C, C} : Strides4{C * H * W, H * W, W, 1};
}

template <typename T>
double err(const std::vector<T>& got, const std::vector<double>& ref) {
  double e = 0, scale = 1;
  for (size_t i = 0; i < ref.size(); ++i) scale = std::max(scale, std::fabs(ref[i]));
  for (size_t i = 0; i < ref.size(); ++i) {
    const double v = to_c(got[i]);
    if (std::isnan(v)) return INFINITY;  // an element no kernel wrote
    e = std::max(e, std::fabs(v - ref[i]));
  }
  return e / scale;
}

template <typename T>
T poison() {
  return from_c<T>(typename OpMath<T>::type(NAN));
}

// All kernels for one configuration and element type; returns the number of failures.
// VEC: channels_last weight and the 16-byte-load forward engine (needs C/groups % 8 == 0).
template <typename T, bool WMMA, bool VEC = false>
int run(const Cfg& c, double tol) {
  ConvShape s;
  s.N = c.N; s.C = c.C; s.H = c.H; s.W = c.W; s.OC = c.OC; s.KH = c.KH; s.KW = c.KW;
  s.sh = c.sh; s.sw = c.sw; s.ph = c.pt; s.pw = c.pl; s.dh = c.dh; s.dw = c.dw; s.groups = c.g;
  s.OH = (c.H + c.pt + c.pb - c.dh * (c.KH - 1) - 1) / c.sh + 1;
  s.OW = (c.W + c.pl + c.pr - c.dw * (c.KW - 1) - 1) / c.sw + 1;
  const int64_t Cg = s.Cg(), OCg = s.OCg();
  auto X = rnd<T>(c.N * c.C * c.H * c.W), Wt = rnd<T>(c.OC * Cg * c.KH * c.KW), B = rnd<T>(c.OC),
       G = rnd<T>(c.N * c.OC * s.OH * s.OW);
  const Strides4 xs = strides(c.C, c.H, c.W, c.cl), ws = strides(Cg, c.KH, c.KW, VEC),
                 ys = strides(c.OC, s.OH, s.OW, c.cl);
  // float64 reference: y = relu(conv + b), dx, dw, db
  std::vector<double> Yr(G.size()), DXr(X.size(), 0), DWr(Wt.size(), 0), DBr(c.OC, 0);
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t oc = 0; oc < c.OC; ++oc)
      for (int64_t oh = 0; oh < s.OH; ++oh)
        for (int64_t ow = 0; ow < s.OW; ++ow) {
          const int64_t yi = n * ys.n + oc * ys.c + oh * ys.h + ow * ys.w;
          const double gy = to_c(G[yi]);
          double acc = to_c(B[oc]);
          DBr[oc] += gy;
          for (int64_t ci = 0; ci < Cg; ++ci)
            for (int64_t kh = 0; kh < c.KH; ++kh)
              for (int64_t kw = 0; kw < c.KW; ++kw) {
                const int64_t ih = oh * c.sh - c.pt + kh * c.dh, iw = ow * c.sw - c.pl + kw * c.dw;
                if (ih < 0 || ih >= c.H || iw < 0 || iw >= c.W) continue;
                const int64_t xi = n * xs.n + ((oc / OCg) * Cg + ci) * xs.c + ih * xs.h + iw * xs.w;
                const int64_t wi = oc * ws.n + ci * ws.c + kh * ws.h + kw * ws.w;
                acc += double(to_c(X[xi])) * to_c(Wt[wi]);
                DXr[xi] += gy * to_c(Wt[wi]);
                DWr[wi] += gy * to_c(X[xi]);
              }
          Yr[yi] = std::max(acc, 0.0);
        }
  std::vector<T> Y(Yr.size(), poison<T>()), DX(X.size(), poison<T>()), DW(Wt.size(), poison<T>()),
      DB(c.OC, poison<T>());
  const char* path;
  if (Cg == 1) {
    path = "depthwise";
    const int64_t ty = Y.size(), tx = X.size();
    launch({3, 1, 1}, 32, [&] { dw_fwd_kernel<T>(X.data(), Wt.data(), B.data(), Y.data(), s, xs, ws, ys, true, c.cl, ty); });
    launch({3, 1, 1}, 32, [&] { dw_dgrad_kernel<T>(G.data(), Wt.data(), DX.data(), s, ys, ws, xs, c.cl, tx); });
    launch({unsigned(Wt.size()), 1, 1}, kThreads, [&] { dw_wgrad_kernel<T>(G.data(), X.data(), DW.data(), s, ys, xs, ws); });
  } else {
    path = VEC ? "gemm-vec" : WMMA ? "gemm-wmma" : "gemm-simt";
    auto gemm = [&](const auto& p, int64_t M, int64_t N, int64_t z) {
      using P = std::decay_t<decltype(p)>;
      const Dim3 grid{unsigned((M + kTile - 1) / kTile), unsigned((N + kTile - 1) / kTile), unsigned(z)};
      if constexpr (WMMA) launch(grid, 128, [&] { gemm_wmma_kernel<P, T>(p); });
      else launch(grid, 256, [&] { gemm_simt_kernel<P, T>(p); });
    };
    FwdProblem<T> f{X.data(), Wt.data(), B.data(), Y.data(), s, xs, ws, ys, true, s.N * s.OH * s.OW, OCg,
                    Cg * s.KH * s.KW};
    if constexpr (VEC) {
      FwdVecProblem<T> fv{f};
      fv.vec_out = fwd_out_vec_ok(Y.data(), ys, s);  // as the launcher decides
      launch({unsigned((f.M + kTile - 1) / kTile), unsigned((f.N + kTile - 1) / kTile), unsigned(s.groups)}, 128,
             [&] { gemm_wmma_vec_kernel<FwdVecProblem<T>, T>(fv); });
    } else {
      gemm(f, f.M, f.N, s.groups);
    }
    const DgradProblem<T> d = make_dgrad(G.data(), Wt.data(), DX.data(), s, ys, ws, xs);
    gemm(d, d.grid_x() * kTile, d.N, s.groups);
    const int64_t K = s.N * s.OH * s.OW, splits = 3, per = ((K + splits - 1) / splits + 31) / 32 * 32;
    using Acc = typename OpMath<T>::type;
    std::vector<Acc> work(splits * Wt.size(), Acc(NAN));
    WgradProblem<T> w{G.data(), X.data(), work.data(), s, ys, xs, OCg, Cg * s.KH * s.KW, K, splits, per};
    gemm(w, w.M, w.N, s.groups * splits);
    launch({2, 1, 1}, 32, [&] { wgrad_reduce_kernel<T>(work.data(), DW.data(), splits, s, ws); });
  }
  launch({unsigned(c.OC), 1, 1}, kThreads,
         [&] { bias_grad_kernel<T>(G.data(), DB.data(), c.N, s.OH, s.OW, ys); });
  const double e[4] = {err(Y, Yr), err(DX, DXr), err(DW, DWr), err(DB, DBr)};
  const bool ok = e[0] <= tol && e[1] <= tol && e[2] <= tol && e[3] <= tol;
  std::printf("%-4s %-9s N%ld C%ld %ldx%ld OC%ld k%ldx%ld s%ld,%ld p%ld,%ld,%ld,%ld d%ld,%ld g%ld %s: "
              "y %.1e dx %.1e dw %.1e db %.1e %s\n",
              sizeof(T) == 8 ? "f64" : std::is_same_v<T, BF16> ? "bf16" : WMMA ? "tf32" : "f32", path,
              long(c.N), long(c.C), long(c.H), long(c.W), long(c.OC), long(c.KH), long(c.KW), long(c.sh),
              long(c.sw), long(c.pt), long(c.pl), long(c.pb), long(c.pr), long(c.dh), long(c.dw), long(c.g),
              c.cl ? "NHWC" : "NCHW", e[0], e[1], e[2], e[3], ok ? "ok" : "FAIL");
  return ok ? 0 : 1;
}

int main() {
  // N, C, H, W, OC, KH, KW, sh, sw, pad top/left/bottom/right, dh, dw, groups, channels_last
  const std::vector<Cfg> cfgs = {
      {2, 5, 9, 8, 70, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, false},   // 2 column tiles, 3 row tiles
      {2, 6, 9, 11, 6, 3, 5, 2, 1, 1, 2, 1, 2, 1, 2, 2, true},    // grouped, mixed stride/dilation
      {1, 3, 7, 6, 4, 4, 2, 1, 1, 1, 0, 2, 1, 1, 1, 1, false},    // 'same' with an even kernel
      {2, 40, 5, 5, 8, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 2, true},    // 1x1, K spans tiles
      {1, 3, 15, 13, 8, 7, 7, 2, 2, 3, 3, 3, 3, 1, 1, 1, false},  // 7x7 stride 2
      {2, 6, 9, 7, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 6, false},    // depthwise
      {2, 4, 8, 9, 8, 3, 3, 2, 1, 1, 1, 1, 1, 2, 1, 4, true},     // depthwise, multiplier 2
      // input-gradient stride phases: no tap reaches some (1x1 and 2x2 under stride 3,
      // stride 2 with dilation 2), stride and dilation coprime, a phase with no rows (H = 1)
      {2, 4, 7, 9, 6, 1, 1, 3, 2, 0, 0, 0, 0, 1, 1, 1, true},
      {1, 4, 10, 7, 6, 2, 2, 3, 3, 1, 0, 1, 0, 1, 1, 2, false},
      {2, 4, 9, 9, 6, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, true},
      {1, 3, 13, 12, 5, 7, 7, 2, 3, 3, 3, 3, 3, 1, 2, 1, false},
      {2, 3, 1, 9, 4, 1, 3, 2, 2, 0, 1, 0, 1, 1, 1, 1, true},
  };
  // channels_last, C/groups a multiple of 8: the 16-byte-load forward
  const std::vector<Cfg> vec_cfgs = {
      {2, 16, 9, 7, 70, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, true},   // K = 144: 5 K steps, 2 column tiles
      {2, 16, 9, 11, 12, 3, 2, 2, 1, 1, 0, 1, 1, 1, 2, 2, true},  // grouped, Cg = 8
      {3, 24, 5, 5, 20, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, true},   // 1x1
      // 8 | OC/groups: the 16-byte epilogue (store8), a partial last column tile, rows past M
      {2, 16, 9, 7, 72, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, true},
      {3, 16, 5, 7, 32, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 2, true},   // grouped 1x1, OC/groups = 16
  };
  int fails = 0;
  // idiv: C++'s int64_t division, in 32 bits only where that gives the same quotient
  const int64_t big = int64_t(1) << 31;
  for (int64_t a : {int64_t(0), int64_t(7), big - 1, big, big + 5, 3 * big + 1, int64_t(-7), -big - 3})
    for (int64_t b : {int64_t(1), int64_t(3), big - 1, big, big + 1, int64_t(-2)})
      if (idiv(a, b) != a / b) {
        std::printf("idiv(%lld, %lld) = %lld, not %lld\n", (long long)a, (long long)b,
                    (long long)idiv(a, b), (long long)(a / b));
        ++fails;
      }
  for (const auto& c : cfgs) {
    fails += run<double, false>(c, 1e-12);
    fails += run<float, false>(c, 1e-5);
    fails += run<float, true>(c, 2e-3);  // TF32 operands: 2^-11 relative each, K terms
    fails += run<BF16, true>(c, 1e-2);   // rounded once to 8 bits on store: 2^-8 relative
  }
  for (const auto& c : vec_cfgs) fails += run<BF16, true, true>(c, 1e-2);
  std::printf("%d failure(s)\n", fails);
  return fails ? 1 : 0;
}

// Host emulation of the CUDA pooling kernels (csrc/cuda/pool_device.cuh), so that their
// indexing -- the per-layout decode of a thread's item, the window and inverse-window
// arithmetic of csrc/pool_math.h as the kernels use it, the channels-last 16-byte vector
// path, the warp-shuffle global average, the backward gathers, the max pools' gather --
// is checked on machines without a GPU (tests/test_pool.py compiles and runs this with g++).
//
// How: tests/cuda_emulation.h (each CUDA thread a fiber, warp shuffles through per-warp
// slots). Grids of 256-thread blocks as the launchers size them, and a 2-block grid so
// the grid-stride loops go round several times. Every case runs with both index types
// of the kernels (int32_t, what the launchers pick for all but huge tensors, and int64_t);
// the launchers' choice between them (pool_index32_ok, gather_index32_ok) is checked at
// its 2^30 threshold, without running kernels that large. Outputs start as NaN (indices as -7), so
// an element nobody writes fails. The float64 reference here is written from torch's
// definitions, not from pool_math.h: output sizes with ceil_mode, max over the window's
// taps with the index ih*IW + iw of the first maximum, avg with torch's divisor rules
// (count_include_pad, divisor_override, windows past the padded edge), adaptive windows
// [floor(o*I/O), ceil((o+1)*I/O)); the backward passes scatter the gradient through the
// same windows.
// What this cannot check: timing, coalescing, alignment (the launcher's check).
//
// Exit status 0 = all passed; one line per check.
#include <random>
#include <string>

#include "cuda_emulation.h"
#include "cuda/pool_device.cuh"

using namespace pydl;
using namespace pydl::pool_detail;

static std::mt19937 rng(11);
template <typename T>
T poison() {
  return from_c<T>(typename OpMath<T>::type(NAN));
}

inline int64_t to_c(int64_t v) { return v; }  // (indices compare through err too)

template <typename V>
double err(const std::vector<V>& got, const std::vector<double>& ref) {
  double e = 0, scale = 1;
  for (double r : ref) scale = std::max(scale, std::fabs(r));
  for (size_t i = 0; i < ref.size(); ++i) {
    const double v = double(to_c(got[i]));
    if (std::isnan(v) != std::isnan(ref[i])) return INFINITY;  // (outputs start as NaN)
    if (!std::isnan(v)) e = std::max(e, std::fabs(v - ref[i]));
  }
  return e / scale;
}

enum Mode { kMax, kAvg, kAdaAvg, kAdaMax };
const char* mname(Mode m) {
  return m == kMax ? "max" : m == kAvg ? "avg" : m == kAdaAvg ? "adaptive-avg" : "adaptive-max";
}

struct Case {
  Mode mode;
  int64_t N, C, IH, IW;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;  // fixed windows; for adaptive: OH = kh, OW = kw
  bool ceil_mode, count_include_pad;
  int64_t divisor_override;
  bool nans = false;  // every 11th input NaN: max pooling propagates it, index of the last
};

// torch's output size of a fixed window axis
int64_t out_size(int64_t I, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  const int64_t span = I + 2 * p - d * (k - 1) - 1;
  int64_t O = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
  if (ceil_mode && (O - 1) * s >= I + p) --O;  // the last window must start inside
  return O;
}

// The taps of output o along one axis, and its avg divisor's share, from torch's rules.
struct Taps {
  std::vector<int64_t> in;  // input coordinates inside [0, I)
  int64_t padded;           // the window's size clipped to [-p, I + p)
};
Taps taps(const Case& c, bool h, int64_t o, int64_t O) {
  const int64_t I = h ? c.IH : c.IW;
  Taps t;
  if (c.mode == kAdaAvg || c.mode == kAdaMax) {
    const int64_t b = (o * I) / O, e = ((o + 1) * I + O - 1) / O;
    for (int64_t i = b; i < e; ++i) t.in.push_back(i);
    t.padded = e - b;
    return t;
  }
  const int64_t k = h ? c.kh : c.kw, s = h ? c.sh : c.sw, p = h ? c.ph : c.pw, d = h ? c.dh : c.dw;
  const int64_t start = o * s - p;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t i = start + j * d;
    if (i >= 0 && i < I) t.in.push_back(i);
  }
  t.padded = std::min(start + k, I + p) - start;
  return t;
}

template <typename T> const char* tname() {
  return sizeof(T) == 8 ? "f64" : std::is_same_v<T, BF16> ? "bf16" : "f32";
}

template <typename T, typename I>
void run(const Case& c, bool cl, int vec, unsigned max_blocks) {
  using Cc = typename OpMath<T>::type;
  const bool adaptive = c.mode == kAdaAvg || c.mode == kAdaMax, is_max = c.mode == kMax || c.mode == kAdaMax;
  PoolParams p{};
  p.N = c.N; p.C = c.C; p.IH = c.IH; p.IW = c.IW;
  p.kh = c.kh; p.kw = c.kw; p.sh = c.sh; p.sw = c.sw; p.ph = c.ph; p.pw = c.pw; p.dh = c.dh; p.dw = c.dw;
  p.count_include_pad = c.count_include_pad;
  p.divisor_override = c.divisor_override;
  p.OH = adaptive ? c.kh : out_size(c.IH, c.kh, c.sh, c.ph, c.dh, c.ceil_mode);
  p.OW = adaptive ? c.kw : out_size(c.IW, c.kw, c.sw, c.pw, c.dw, c.ceil_mode);
  const int64_t N = c.N, C = c.C, IH = c.IH, IW = c.IW, OH = p.OH, OW = p.OW;
  auto xi = [&](int64_t n, int64_t ch, int64_t h, int64_t w) {  // offset in x / dx
    return cl ? ((n * IH + h) * IW + w) * C + ch : ((n * C + ch) * IH + h) * IW + w;
  };
  auto yi = [&](int64_t n, int64_t ch, int64_t h, int64_t w) {  // offset in y / g / ind
    return cl ? ((n * OH + h) * OW + w) * C + ch : ((n * C + ch) * OH + h) * OW + w;
  };
  std::normal_distribution<double> nd;
  std::vector<T> X(N * C * IH * IW), G(N * C * OH * OW);
  for (size_t i = 0; i < X.size(); ++i) X[i] = from_c<T>(Cc(c.nans && i % 11 == 3 ? NAN : nd(rng)));
  for (auto& v : G) v = from_c<T>(Cc(nd(rng)));
  // float64 reference: y, ind, dx
  std::vector<double> Yr(G.size()), DXr(X.size(), 0), GATHr(G.size());
  std::vector<int64_t> Ir(G.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t ch = 0; ch < C; ++ch)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          const Taps th = taps(c, true, oh, OH), tw = taps(c, false, ow, OW);
          const int64_t o = yi(n, ch, oh, ow);
          const double g = to_c(G[o]);
          if (is_max) {
            double best = -INFINITY;
            int64_t bi = -1;
            for (int64_t h : th.in)
              for (int64_t w : tw.in)
                // torch: a larger value or a NaN takes over (so the last NaN's index wins)
                if (double v = to_c(X[xi(n, ch, h, w)]); v > best || std::isnan(v)) best = v, bi = h * IW + w;
            Yr[o] = best;
            Ir[o] = bi;
            if (bi >= 0) DXr[xi(n, ch, bi / IW, bi % IW)] += g;  // (no case has an empty window)
            GATHr[o] = best;
          } else {
            double s = 0;
            for (int64_t h : th.in)
              for (int64_t w : tw.in) s += to_c(X[xi(n, ch, h, w)]);
            const double div = c.divisor_override ? double(c.divisor_override)
                               : (c.count_include_pad || adaptive) ? double(th.padded * tw.padded)
                                                                   : double(th.in.size() * tw.in.size());
            Yr[o] = s / div;
            for (int64_t h : th.in)
              for (int64_t w : tw.in) DXr[xi(n, ch, h, w)] += g / div;
          }
        }
  const unsigned threads = 256;
  auto blocks = [&](int64_t work) {
    return unsigned(std::max<int64_t>(1, std::min<int64_t>((work + threads - 1) / threads, max_blocks)));
  };
  char tag[200];
  std::snprintf(tag, sizeof tag,
                "%-4s %s %-12s %s vec%d N%ld C%ld %ldx%ld->%ldx%ld k%ldx%ld s%ld,%ld p%ld,%ld d%ld,%ld%s%s%s grid<=%u",
                tname<T>(), sizeof(I) == 4 ? "i32" : "i64", mname(c.mode), cl ? "NHWC" : "NCHW", vec, long(N), long(C), long(IH), long(IW),
                long(OH), long(OW), long(c.kh), long(c.kw), long(c.sh), long(c.sw), long(c.ph), long(c.pw),
                long(c.dh), long(c.dw), c.ceil_mode ? " ceil" : "", c.count_include_pad ? " incl-pad" : "",
                c.divisor_override ? " div-override" : "", max_blocks);
  const std::string base = std::string(tag) + (c.nans ? " NaN-in" : "");
  const double tol = std::is_same_v<T, BF16> ? 1e-2 : sizeof(Cc) == 8 ? 1e-12 : 1e-5;

  std::vector<T> Y(G.size(), poison<T>()), DX(X.size(), poison<T>());
  std::vector<int64_t> Ind(G.size(), -7);
  const int64_t fwd_items = N * C * OH * OW / (cl ? vec : 1), bwd_items = N * C * IH * IW / (cl ? vec : 1);
  std::vector<T> Yv(G.size(), poison<T>());  // the values-only max forward (no indices)
  auto dispatch = [&](auto V, auto CL) {
    constexpr int VEC = decltype(V)::value;
    constexpr bool L = decltype(CL)::value;
    const Dim3 fwd_grid(blocks(fwd_items)), bwd_grid(blocks(bwd_items));
    auto run_max = [&](auto ah, auto aw) {
      const NoDivisor nd;
      launch(fwd_grid, threads, [&] {
        pool_fwd_kernel<T, VEC, L, true, true, I>(X.data(), Y.data(), Ind.data(), p, ah, aw, nd);
      });
      launch(fwd_grid, threads, [&] {
        pool_fwd_kernel<T, VEC, L, true, false, I>(X.data(), Yv.data(), nullptr, p, ah, aw, nd);
      });
      launch(bwd_grid, threads,
             [&] { pool_bwd_kernel<T, VEC, L, true, I>(G.data(), Ind.data(), DX.data(), p, ah, aw, nd); });
    };
    auto run_avg = [&](auto ah, auto aw, auto dv, bool fwd) {
      if (fwd)
        launch(fwd_grid, threads, [&] {
          pool_fwd_kernel<T, VEC, L, false, false, I>(X.data(), Y.data(), nullptr, p, ah, aw, dv);
        });
      launch(bwd_grid, threads,
             [&] { pool_bwd_kernel<T, VEC, L, false, I>(G.data(), nullptr, DX.data(), p, ah, aw, dv); });
    };
    const bool global = c.mode == kAdaAvg && OH == 1 && OW == 1;
    if (global && !L)  // the global average kernels (the backward is the adaptive one)
      launch(Dim3(blocks(N * C * 32)), threads,
             [&] { global_avg_nchw_kernel<T, I>(X.data(), Y.data(), N * C, IH * IW); });
    else if (global)
      launch(Dim3(blocks(N * C / VEC)), threads,
             [&] { global_avg_nhwc_kernel<T, VEC, I>(X.data(), Y.data(), N, C, IH * IW); });
    if (adaptive) {
      const AdaptiveAxisT<I> ah = adaptive_h<I>(p), aw = adaptive_w<I>(p);
      if (is_max) run_max(ah, aw);
      else run_avg(ah, aw, AdaptiveDivisorT<I>{ah, aw}, !global);
    } else {
      const FixedAxisT<I> fh = fixed_h<I>(p), fw = fixed_w<I>(p);
      if (is_max) run_max(fh, fw);
      else run_avg(fh, fw, avg_divisor<I>(p), true);
    }
  };
  if (!cl) dispatch(std::integral_constant<int, 1>{}, std::false_type{});
  else if (vec == 1) dispatch(std::integral_constant<int, 1>{}, std::true_type{});
  else dispatch(std::integral_constant<int, vec_width<T>()>{}, std::true_type{});
  report(base + " y", err(Y, Yr), tol);
  report(base + " dx", err(DX, DXr), tol);
  if (is_max) {
    std::vector<double> Id(Ir.begin(), Ir.end());
    report(base + " ind", err(Ind, Id), 0);
    report(base + " y (values-only)", err(Yv, Yr), tol);
    // the max pools' double backward: out = x[ind], with the kernels' own indices
    std::vector<T> Gt(G.size(), poison<T>());
    const int64_t n = G.size();
    launch(Dim3(blocks(n)), threads, [&] {
      if (cl) pool_gather_kernel<T, true, I>(X.data(), Ind.data(), Gt.data(), n, C, IH * IW, OH * OW);
      else pool_gather_kernel<T, false, I>(X.data(), Ind.data(), Gt.data(), n, C, IH * IW, OH * OW);
    });
    report(base + " gather", err(Gt, GATHr), 0);
  }
}

template <typename T, typename I>
void all_layouts(const Case& c) {
  for (unsigned mb : {2u, 1u << 20}) {
    run<T, I>(c, false, 1, mb);
    run<T, I>(c, true, 1, mb);
    if (c.C % vec_width<T>() == 0) run<T, I>(c, true, vec_width<T>(), mb);
  }
}

// The launchers' choice of index type, at its threshold: int32_t exactly when every
// quantity a kernel computes is below 2^30 (pool_device.cuh).
static PoolParams sizes(int64_t N, int64_t C, int64_t IH, int64_t IW, int64_t OH, int64_t OW,
                        int64_t k = 1, int64_t s = 1, int64_t pad = 0, int64_t d = 1,
                        int64_t divisor_override = 0) {  // square windows
  return {N, C, IH, IW, OH, OW, k, k, s, s, pad, pad, d, d, true, divisor_override};
}

static void check_index_choice() {
  const int64_t L = int64_t(1) << 30;
  const PoolMode MX = PoolMode::Max, AV = PoolMode::Avg, AA = PoolMode::AdaptiveAvg,
                 AM = PoolMode::AdaptiveMax;
  const struct { const char* what; PoolMode mode; PoolParams p; bool want; } choices[] = {
      {"input 2^30 - 1 elements", AA, sizes(1, L - 1, 1, 1, 1, 1), true},
      {"input 2^30 elements", AA, sizes(1, L, 1, 1, 1, 1), false},
      {"input 2^30 elements (N*C*H*W)", AA, sizes(1024, 1024, 32, 32, 1, 1), false},
      {"output 2^30 - 1 elements", AM, sizes(1, L - 1, 1, 1, 1, 1), true},
      {"output 2^30 elements", AM, sizes(1, 1, 2, 1, L, 1), false},
      {"adaptive (IH+1)*(OH+1) = 2^30 - 2^15", AA, sizes(1, 1, 32767, 1, 32766, 1), true},
      {"adaptive (IH+1)*(OH+1) = 2^30", AA, sizes(1, 1, 32767, 1, 32767, 1), false},
      {"adaptive (IW+1)*(OW+1) = 2^30", AM, sizes(1, 1, 1, 32767, 1, 32767), false},
      {"max 3x3/2 over an 8192^2 plane", MX, sizes(1, 1, 8192, 8192, 4096, 4096, 3, 2, 1), true},
      {"max 3x3/2 over a 16384^2 plane", MX, sizes(1, 1, 16384, 16384, 8192, 8192, 3, 2, 1), true},
      // k1 s1 p0 d1: a window extent E = I + 3 per axis, E_h*E_w at 2^30 - 2^15 and 2^30
      {"max 1x1, extents 2^15 * (2^15 - 1)", MX, sizes(1, 1, 32765, 32764, 32765, 32764), true},
      {"max 1x1, extents 2^15 * 2^15", MX, sizes(1, 1, 32765, 32765, 32765, 32765), false},
      {"max, k 2 * dilation 2^29 (tiny tensor)", MX, sizes(1, 1, 5, 5, 5, 5, 2, 1, L / 4, L / 2), false},
      {"max, dilation 2^40 (tiny tensor)", MX, sizes(1, 1, 5, 5, 5, 5, 2, 1, 0, L << 10), false},
      {"avg, divisor_override 2^30 - 1", AV, sizes(1, 1, 5, 5, 2, 2, 2, 2, 0, 1, L - 1), true},
      {"avg, divisor_override 2^30", AV, sizes(1, 1, 5, 5, 2, 2, 2, 2, 0, 1, L), false},
      {"avg, divisor_override -2^30", AV, sizes(1, 1, 5, 5, 2, 2, 2, 2, 0, 1, -L), true},
      {"avg, divisor_override -2^30 - 1", AV, sizes(1, 1, 5, 5, 2, 2, 2, 2, 0, 1, -L - 1), false},
      {"avg, divisor_override INT64_MIN", AV, sizes(1, 1, 5, 5, 2, 2, 2, 2, 0, 1, INT64_MIN), false},
  };
  for (const auto& c : choices) {
    const bool got = pool_index32_ok(c.mode, c.p);
    std::printf("%-86s %s %s\n", (std::string("index type: ") + c.what).c_str(),
                got ? "int32" : "int64", got == c.want ? "ok" : "FAIL");
    g_fails += got != c.want;
  }
  const struct { int64_t N, C, HW, OHW; bool want; } gathers[] = {
      {1, 1, L - 1, 1, true}, {1, 1, L, 1, false}, {1, 1, 1, L, false},
      {1024, 1024, 1023, 1023, true}, {1024, 1024, 1024, 1, false},
  };
  for (const auto& g : gathers) {
    const bool got = gather_index32_ok(g.N, g.C, g.HW, g.OHW);
    char what[120];
    std::snprintf(what, sizeof what, "index type: gather N%ld C%ld HW%ld OHW%ld", long(g.N),
                  long(g.C), long(g.HW), long(g.OHW));
    std::printf("%-86s %s %s\n", what, got ? "int32" : "int64", got == g.want ? "ok" : "FAIL");
    g_fails += got != g.want;
  }
}

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  // mode, N, C, IH, IW, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode, count_include_pad, divisor_override
  const std::vector<Case> cases = {
      {kMax, 2, 3, 9, 7, 3, 3, 2, 2, 1, 1, 1, 1, false, false, 0},     // ResNet stem-like, odd sizes
      {kMax, 1, 8, 8, 9, 2, 3, 2, 1, 0, 1, 2, 1, true, false, 0},      // ceil_mode, dilation, C % vec == 0
      {kMax, 2, 2, 6, 6, 3, 3, 3, 3, 1, 1, 1, 1, true, false, 0},      // ceil_mode: a last window half outside
      {kAvg, 2, 3, 9, 7, 3, 3, 2, 2, 1, 1, 1, 1, false, true, 0},      // count_include_pad
      {kAvg, 2, 3, 9, 7, 3, 3, 2, 2, 1, 1, 1, 1, false, false, 0},     // padding not counted
      {kAvg, 1, 8, 7, 8, 3, 2, 2, 2, 1, 1, 1, 1, true, true, 0},       // ceil_mode: past the padded edge
      {kAvg, 1, 8, 7, 8, 3, 2, 2, 2, 1, 1, 1, 1, true, false, 0},
      {kAvg, 2, 3, 5, 6, 2, 3, 1, 2, 0, 1, 1, 1, false, true, 5},      // divisor_override
      {kAdaAvg, 2, 3, 9, 7, 4, 3, 0, 0, 0, 0, 1, 1, false, false, 0},  // overlapping adaptive windows
      {kAdaAvg, 2, 16, 5, 3, 1, 1, 0, 0, 0, 0, 1, 1, false, false, 0}, // global average (1x1)
      {kAdaAvg, 3, 3, 7, 7, 1, 1, 0, 0, 0, 0, 1, 1, false, false, 0},  // global, C not a vec multiple
      {kAdaMax, 2, 8, 7, 10, 3, 4, 0, 0, 0, 0, 1, 1, false, false, 0}, // adaptive max
      {kAdaMax, 1, 3, 5, 5, 7, 6, 0, 0, 0, 0, 1, 1, false, false, 0},  // output larger than input
      {kMax, 2, 3, 9, 7, 3, 3, 1, 1, 1, 1, 1, 1, false, false, 0, true},  // NaN inputs, overlapping windows
      {kAdaMax, 2, 8, 9, 7, 4, 3, 0, 0, 0, 0, 1, 1, false, false, 0, true},
      {kAvg, 2, 3, 9, 7, 3, 3, 2, 2, 1, 1, 1, 1, false, false, 0, true},  // NaN reaches y, not dx
  };
  check_index_choice();
  for (const auto& c : cases) {
    all_layouts<float, int32_t>(c);
    all_layouts<float, int64_t>(c);
    all_layouts<BF16, int32_t>(c);
    all_layouts<BF16, int64_t>(c);
  }
  for (const auto& c : {cases[1], cases[5], cases[10]}) {
    all_layouts<double, int32_t>(c);
    all_layouts<double, int64_t>(c);
  }
  std::printf("%d failure(s)\n", g_fails);
  return g_fails ? 1 : 0;
}

// Host emulation of the CUDA batch-norm kernels (csrc/cuda/batchnorm_device.cuh), so that
// their indexing -- the split of a channel over several blocks and the partials' merge
// (one warp per channel, strided lanes then a shuffle tree), the planes walk with its
// incremental (o, i) stepping, the channels-last channel tiles, the 16-byte Pack path,
// the grid-stride loops of the elementwise passes -- is checked on machines without a GPU
// (tests/test_batchnorm.py compiles and runs this with g++).
//
// How: tests/cuda_emulation.h (each CUDA thread a fiber, __syncthreads() and warp
// shuffles barriers of the fibers, shuffles through per-warp slots). The grids are the launchers' own
// (reduce_grid / elem_grid / warp_blocks from the device header), computed for a 1-SM and
// a 132-SM GPU (the SM count sizes the split and the grid-stride loops), plus a forced
// split with a short last slice and more than 32 slices per channel (so the combine's
// lanes take several partials each). Every kernel gets NaN-filled outputs and workspace,
// so an element nobody writes fails. Each output is compared with a float64 reference
// computed here: batch mean, biased variance, y = act(xhat * w + b + r), the backward
// sums and dx (training: k = 1/M; eval: k = 0, no sums), dz = g * act'(y).
// What this cannot check: timing, coalescing, and races that the GPU's real schedule
// could expose (here the threads of a block interleave as the OS schedules them).
//
// Exit status 0 = all passed; one line per check.
#include <random>
#include <string>

#include "cuda_emulation.h"
#include "cuda/batchnorm_device.cuh"

using namespace pydl;
using namespace pydl::bn_detail;

static std::mt19937 rng(7);

template <typename T>
T poison() {
  return from_c<T>(typename OpMath<T>::type(NAN));
}

// Largest |got - ref| over the largest |ref| (at least 1); a NaN anywhere is a failure.
template <typename V>
double err(const std::vector<V>& got, const std::vector<double>& ref) {
  double e = 0, scale = 1;
  for (double r : ref) scale = std::max(scale, std::fabs(r));
  for (size_t i = 0; i < ref.size(); ++i) {
    const double v = to_c(got[i]);
    if (std::isnan(v) != std::isnan(ref[i])) return INFINITY;
    if (!std::isnan(v)) e = std::max(e, std::fabs(v - ref[i]));
  }
  return e / scale;
}

struct Cfg {
  int64_t N, C, HW;
  bool cl;             // channels_last: (N*HW, C, 1); else NCHW: (N, C, HW)
  bool far = false;    // x = 1e4 + 1e-2 * noise: the variance survives only thanks to the shift
};

template <typename T> const char* tname() {
  return sizeof(T) == 8 ? "f64" : std::is_same_v<T, BF16> ? "bf16" : "f32";
}

const char* aname(BnAct a) { return a == BnAct::None ? "none" : a == BnAct::ReLU ? "relu" : "leaky"; }

// Calls f(std::integral_constant<BnAct, A>) for the three activations.
template <typename F> void each_act(F f) {
  f(std::integral_constant<BnAct, BnAct::None>{});
  f(std::integral_constant<BnAct, BnAct::ReLU>{});
  f(std::integral_constant<BnAct, BnAct::LeakyReLU>{});
}

template <typename T>
void run(const Cfg& cf, int sms) {
  using Cc = typename OpMath<T>::type;
  g_num_sms = sms;
  const int64_t outer = cf.cl ? cf.N * cf.HW : cf.N, C = cf.C, inner = cf.cl ? 1 : cf.HW;
  const int64_t M = outer * inner, total = outer * C * inner;
  const double alpha = 0.1, eps = 1e-5;
  auto at = [&](int64_t j, int64_t c) {  // offset of value j of channel c
    return ((j / inner) * C + c) * inner + j % inner;
  };
  // inputs: channel c centred on 3 + c (the kernels' shift K matters), stored as T
  std::normal_distribution<double> nd;
  std::vector<T> X(total), R(total), G(total);
  std::vector<Cc> W(C), Bi(C);
  for (int64_t c = 0; c < C; ++c) {
    W[c] = Cc(1 + 0.5 * nd(rng));
    Bi[c] = Cc(nd(rng));
    for (int64_t j = 0; j < M; ++j) {
      X[at(j, c)] = from_c<T>(Cc(cf.far ? 1e4 + 1e-2 * nd(rng) : 3 + c + nd(rng)));
      R[at(j, c)] = from_c<T>(Cc(nd(rng)));
      G[at(j, c)] = from_c<T>(Cc(nd(rng)));
    }
  }
  // float64 reference statistics
  std::vector<double> mean(C, 0), var(C, 0), invstd(C);
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t j = 0; j < M; ++j) mean[c] += to_c(X[at(j, c)]);
    mean[c] /= double(M);
    for (int64_t j = 0; j < M; ++j) var[c] += std::pow(to_c(X[at(j, c)]) - mean[c], 2);
    var[c] /= double(M);
    invstd[c] = 1 / std::sqrt(var[c] + eps);
  }
  std::vector<Cc> meanC(mean.begin(), mean.end()), varC(var.begin(), var.end());
  const double tol_c = sizeof(Cc) == 8 ? 1e-12 : 1e-5;       // compute-type results
  const double tol_t = std::is_same_v<T, BF16> ? 1e-2 : tol_c;  // rounded to T once
  char tag[96];
  std::snprintf(tag, sizeof tag, "%-4s %s N%ld C%ld HW%ld%s sms%d", tname<T>(), cf.cl ? "NHWC" : "NCHW",
                long(cf.N), long(C), long(cf.HW), cf.far ? " mean1e4" : "", sms);
  const std::string base = tag;

  // ---- statistics: the launchers' split, and a forced one (short last slice, B > 32)
  auto stats = [&](const ReduceGrid& rg, const std::string& what) {
    std::vector<Cc> ws(2 * C * rg.B, Cc(NAN)), mo(C, Cc(NAN)), vo(C, Cc(NAN));
    launch(Dim3(unsigned(rg.tiles), unsigned(rg.B)), Dim3(rg.tx, rg.ty), [&] {
      if (cf.cl) stats_partial_kernel<T, true>(X.data(), C, inner, M, rg.J, rg.B, ws.data(), ws.data() + C * rg.B);
      else stats_partial_kernel<T, false>(X.data(), C, inner, M, rg.J, rg.B, ws.data(), ws.data() + C * rg.B);
    });
    launch(Dim3(warp_blocks(C)), kBnThreads, [&] {
      stats_combine_kernel<T>(X.data(), ws.data(), ws.data() + C * rg.B, C, inner, M, rg.J, rg.B, mo.data(),
                              vo.data());
    });
    char b[64];
    std::snprintf(b, sizeof b, " B%ld J%ld", long(rg.B), long(rg.J));
    report(base + " stats " + what + b + " mean", err(mo, mean), tol_c);
    report(base + " stats " + what + b + " var", err(vo, var), tol_c);
    double rel = 0;  // relative to each channel's variance (1e-4 for the far case)
    for (int64_t c = 0; c < C; ++c) rel = std::max(rel, std::fabs(vo[c] - var[c]) / var[c]);
    report(base + " stats " + what + b + " var (relative)", rel, cf.far ? 1e-3 : 10 * tol_c);
  };
  const ReduceGrid rg = reduce_grid(outer, C, inner);
  ReduceGrid forced = rg;
  forced.J = std::max<int64_t>(1, M / 35);  // ~35 slices, the last one shorter
  forced.B = (M + forced.J - 1) / forced.J;
  stats(rg, "grid");
  if (sms == 1) stats(forced, "split");
  // The passes below get the statistics in the compute type (as torch keeps them); their
  // reference uses those same rounded values, so it checks the pass, not the rounding.
  std::vector<double> km(meanC.begin(), meanC.end()), kis(C);
  for (int64_t c = 0; c < C; ++c) kis[c] = 1 / std::sqrt(double(varC[c]) + double(Cc(eps)));

  // ---- forward: y = act((x - mean) * invstd * w + b + r), with and without w, b, r
  std::vector<T> Yact[3];  // the stored y of the affine + residual forward, per activation
  each_act([&](auto a) {
    constexpr BnAct A = decltype(a)::value;
    for (bool affine : {true, false}) {
      std::vector<double> yr(total);
      for (int64_t c = 0; c < C; ++c)
        for (int64_t j = 0; j < M; ++j) {
          const int64_t i = at(j, c);
          double z = (to_c(X[i]) - km[c]) * kis[c];
          if (affine) z = z * W[c] + Bi[c] + to_c(R[i]);
          yr[i] = bn_act<A, double>(z, alpha);
        }
      // narrow: a grid one block tall, so every thread walks many groups of rows (the
      // launchers' grids give a thread of these small tensors a single group)
      auto fwd = [&](auto vec, bool narrow = false) {
        constexpr int VEC = decltype(vec)::value;
        std::vector<T> y(total, poison<T>());
        ElemGrid eg = elem_grid(outer, C, inner / std::max(VEC, 1));
        if (narrow) eg.grid.y = 1;
        launch(eg.grid, eg.block, [&] {
          normalize_kernel<A, T, (VEC == 0), (VEC == 0 ? 1 : VEC)>(
              X.data(), affine ? R.data() : nullptr, y.data(), meanC.data(), varC.data(),
              affine ? W.data() : nullptr, affine ? Bi.data() : nullptr, Cc(eps), Cc(alpha), outer, C, inner);
        });
        report(base + " fwd " + aname(A) + (affine ? " w,b,r" : " plain") + " vec" + std::to_string(VEC) +
                   (narrow ? " narrow" : ""), err(y, yr), tol_t);
        if (affine && !narrow) Yact[int(A)] = y;
      };
      // VEC: 0 = the channels-last walk; 1 = planes, scalar; vec_width = planes, Pack
      if (cf.cl) {
        fwd(std::integral_constant<int, 0>{});
        fwd(std::integral_constant<int, 0>{}, true);
      } else {
        fwd(std::integral_constant<int, 1>{});
        if (inner % vec_width<T>() == 0) fwd(std::integral_constant<int, vec_width<T>()>{});
      }
    }
  });

  // ---- backward, from the stored y of the fused forward
  each_act([&](auto a) {
    constexpr BnAct A = decltype(a)::value;
    const std::vector<T>& Y = Yact[int(A)];
    std::vector<double> dz(total), sdz(C, 0), sdzxh(C, 0);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t j = 0; j < M; ++j) {
        const int64_t i = at(j, c);
        dz[i] = bn_act_grad<A, double>(to_c(G[i]), to_c(Y[i]), alpha);
        sdz[c] += dz[i];
        sdzxh[c] += dz[i] * (to_c(X[i]) - km[c]) * kis[c];
      }
    // reduction: the launchers' split and the forced one
    std::vector<Cc> sdzC(C), sdzxhC(C);
    auto reduce = [&](const ReduceGrid& g, const std::string& what) {
      std::vector<Cc> ws(2 * C * g.B, Cc(NAN)), o1(C, Cc(NAN)), o2(C, Cc(NAN));
      launch(Dim3(unsigned(g.tiles), unsigned(g.B)), Dim3(g.tx, g.ty), [&] {
        const T* y = A == BnAct::None ? nullptr : Y.data();
        if (cf.cl)
          bwd_reduce_partial_kernel<A, T, true>(G.data(), X.data(), y, meanC.data(), Cc(alpha), C, inner, M, g.J, g.B,
                                                ws.data(), ws.data() + C * g.B);
        else
          bwd_reduce_partial_kernel<A, T, false>(G.data(), X.data(), y, meanC.data(), Cc(alpha), C, inner, M, g.J,
                                                 g.B, ws.data(), ws.data() + C * g.B);
      });
      launch(Dim3(warp_blocks(C)), kBnThreads, [&] {
        bwd_reduce_combine_kernel<Cc>(ws.data(), ws.data() + C * g.B, varC.data(), Cc(eps), C, g.B, o1.data(),
                                      o2.data());
      });
      char b[64];
      std::snprintf(b, sizeof b, " B%ld", long(g.B));
      report(base + " bwd-reduce " + aname(A) + " " + what + b + " sum_dz", err(o1, sdz), tol_c);
      report(base + " bwd-reduce " + aname(A) + " " + what + b + " sum_dz_xhat", err(o2, sdzxh), tol_c);
      sdzC = o1;
      sdzxhC = o2;
    };
    if (sms == 1) reduce(forced, "split");
    reduce(rg, "grid");
    // elementwise: training (sums, k = 1/M, dz out, w) and eval (no sums, no dz, no w)
    for (bool train : {true, false}) {
      std::vector<double> dxr(total);
      for (int64_t c = 0; c < C; ++c)
        for (int64_t j = 0; j < M; ++j) {
          const int64_t i = at(j, c);
          const double xh = (to_c(X[i]) - km[c]) * kis[c];
          dxr[i] = train ? W[c] * kis[c] * (dz[i] - (sdz[c] + xh * sdzxh[c]) / double(M)) : kis[c] * dz[i];
        }
      auto bwd = [&](auto vec, bool narrow = false) {
        constexpr int VEC = decltype(vec)::value;
        std::vector<T> dx(total, poison<T>()), dzo(total, poison<T>());
        ElemGrid eg = elem_grid(outer, C, inner / std::max(VEC, 1));
        if (narrow) eg.grid.y = 1;
        launch(eg.grid, eg.block, [&] {
          bwd_elemt_kernel<A, T, (VEC == 0), (VEC == 0 ? 1 : VEC)>(
              G.data(), X.data(), A == BnAct::None ? nullptr : Y.data(), meanC.data(), varC.data(),
              train ? W.data() : nullptr, train ? sdzC.data() : nullptr, train ? sdzxhC.data() : nullptr, Cc(eps),
              Cc(1.0 / double(M)), Cc(alpha), dx.data(), train ? dzo.data() : nullptr, outer, C, inner);
        });
        const std::string w = base + " bwd-elemt " + aname(A) + (train ? " train" : " eval") + " vec" +
                              std::to_string(VEC) + (narrow ? " narrow" : "");
        report(w + " dx", err(dx, dxr), tol_t);
        if (train) report(w + " dz", err(dzo, dz), tol_t);
      };
      if (cf.cl) {
        bwd(std::integral_constant<int, 0>{});
        bwd(std::integral_constant<int, 0>{}, true);
      } else {
        bwd(std::integral_constant<int, 1>{});
        if (inner % vec_width<T>() == 0) bwd(std::integral_constant<int, vec_width<T>()>{});
      }
    }
  });
}

// No values per channel (M = 0): an empty batch, or (NCHW, planes = true) a batch of empty
// planes, e.g. input (2, C, 0, 5) -- outer = 2, inner = 0, which the planes walk must not
// divide by. The statistics are NaN (0 / 0, as torch), the backward sums 0; the launchers
// skip the partials of the statistics and the elementwise passes.
template <typename T>
void run_empty(int64_t C, bool cl, bool planes = false) {
  using Cc = typename OpMath<T>::type;
  const int64_t outer = planes ? 2 : 0, inner = cl ? 1 : planes ? 0 : 9, M = 0;
  const ReduceGrid rg = reduce_grid(outer, C, inner);
  const T* x = nullptr;  // nothing may be read
  std::vector<Cc> ws(2 * C * rg.B, Cc(NAN)), mo(C, Cc(0)), vo(C, Cc(0)), var(C, Cc(1));
  launch(Dim3(warp_blocks(C)), kBnThreads, [&] {
    stats_combine_kernel<T>(x, ws.data(), ws.data() + C * rg.B, C, inner, M, rg.J, rg.B, mo.data(), vo.data());
  });
  bool nan = true;
  for (int64_t c = 0; c < C; ++c) nan &= std::isnan(double(mo[c])) && std::isnan(double(vo[c]));
  const std::string base = std::string(tname<T>()) + (cl ? " NHWC" : " NCHW") +
                           (planes ? " empty planes C" : " empty batch C") + std::to_string(C);
  report(base + " stats NaN", nan ? 0 : INFINITY, 0);
  std::vector<Cc> s1(C, Cc(NAN)), s2(C, Cc(NAN));
  launch(Dim3(unsigned(rg.tiles), unsigned(rg.B)), Dim3(rg.tx, rg.ty), [&] {
    if (cl) bwd_reduce_partial_kernel<BnAct::None, T, true>(x, x, x, var.data(), Cc(0), C, inner, M, rg.J, rg.B,
                                                            ws.data(), ws.data() + C * rg.B);
    else bwd_reduce_partial_kernel<BnAct::None, T, false>(x, x, x, var.data(), Cc(0), C, inner, M, rg.J, rg.B,
                                                          ws.data(), ws.data() + C * rg.B);
  });
  launch(Dim3(warp_blocks(C)), kBnThreads, [&] {
    bwd_reduce_combine_kernel<Cc>(ws.data(), ws.data() + C * rg.B, var.data(), Cc(1e-5), C, rg.B, s1.data(),
                                  s2.data());
  });
  const std::vector<double> zero(C, 0.0);
  report(base + " bwd-reduce sums 0", std::max(err(s1, zero), err(s2, zero)), 0);
}

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // a line per check, also when piped
  // N, C, HW (H*W), channels_last
  const std::vector<Cfg> cfgs = {
      {2, 1, 35, false},   // one channel, odd 7x5 plane: bx = 64, 4 planes a block
      {3, 3, 16, false},   // the Pack path (16 % vec_width == 0)
      {2, 64, 9, false},   // 3x3 planes, 128 of them: several plane groups
      {1, 2, 300, false},  // planes wider than a block (bx = 256, two chunks)
      {40, 2, 7, false},   // 280 values a channel: a thread's walk steps (o, i) by (36, 4)
      {2, 1, 4097, false}, // 16+ values a thread: a real split (B = 2 at 1 SM); 17 chunks
                           // of a plane over a grid of 16 (the grid-stride loops)
      {4, 1, 25, true},    // channels_last, one channel: tx = 1
      {2, 3, 35, true},    // tx = 4, a padded channel tile
      {2, 64, 9, true},    // tx = 32, two tiles
      {3, 37, 5, true},    // tx = 32, the second tile mostly padding
      {2, 3, 2100, true},  // 4200 rows: a real split (B = 4 at 1 SM), rows over blocks
  };
  const std::vector<Cfg> far = {{2, 2, 1000, false, true}, {4, 3, 500, true, true}};
  for (const auto& c : far) {
    run<float>(c, 1);
    run<double>(c, 1);
  }
  // no channels (a (64, 0, 17, 16) input, either layout): the glue sizes its workspace from
  // the grid before the launcher returns early; the grid's split divided by zero tiles
  // (volatile: the sizes as the glue gets them, at run time, so the division is not folded)
  for (int64_t in : {272, 1}) {
    volatile int64_t vo = in == 1 ? 64 * 272 : 64, vc = 0, vi = in;
    const ReduceGrid g0 = reduce_grid(vo, vc, vi);
    report("no channels: reduce_grid(" + std::to_string(vo) + ", 0, " + std::to_string(vi) +
               ") has no tiles (and no division by them)",
           g0.tiles == 0 && g0.B >= 1 ? 0 : INFINITY, 0);
  }
  for (int64_t C : {1, 3, 40}) {
    for (bool cl : {false, true}) run_empty<float>(C, cl);
    run_empty<float>(C, false, true);
  }
  for (int sms : {1, 132})
    for (const auto& c : cfgs) {
      run<float>(c, sms);
      if (sms > 1) continue;  // (the geometry is the type's: one type at 132 SMs suffices)
      run<BF16>(c, sms);
      run<double>(c, sms);
    }
  std::printf("%d failure(s)\n", g_fails);
  return g_fails ? 1 : 0;
}

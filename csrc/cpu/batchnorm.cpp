// Batch normalization on the CPU (formulas in csrc/batchnorm_math.h, shared with CUDA):
//   statistics  mean_c, var_c (biased) over the N * spatial values of channel c
//   forward     y = act((x - mean) * invstd * w + b [+ residual])
//   backward    sum_dz_c, sum_dz_xhat_c (one reduction pass), then
//               dx = w * invstd * (dz - k * (sum_dz + xhat * sum_dz_xhat))  (elementwise);
//               bn_bwd does both (per channel for NCHW: bwd_fused_planes_kernel)
//
// Algorithm: the kernels see x as (outer, C, inner) (csrc/batchnorm.h): channel planes
// for NCHW, channel-fastest rows for channels-last.
//  * Reductions (statistics, backward sums) split the `outer` rows into fixed chunks of
//    about CHUNK values per channel. at::parallel_for runs the (chunk, channel) tasks --
//    or for channels-last the chunks, each covering all channels, so memory is walked in
//    order -- and every task writes its own partial ((n, mean, M2), or two sums). The
//    partials are then merged per channel in chunk order. The chunking depends only on
//    the shape, never on the thread count, so results are bitwise reproducible.
//    Statistics: shifted sums per chunk (no division per value), Chan's merge across
//    chunks (stable for mean >> std, see stats_kernel).
//  * Elementwise passes (normalize, input gradient) precompute the per-channel
//    coefficients once, then stream: over planes (NCHW) or rows (channels-last).
// The reductions' totals are double, as torch's own CPU kernels keep theirs (at::acc_type
// on CPU), added from float sums of short blocks (<= 32 values a lane; double ones for
// float64 input) -- torch sums a whole channel plane in float first. Together with the
// shift by K this keeps a channel with mean 1e4 / std 1e-2 as accurate as torch
// (test_large_mean_small_std). Their results -- mean, var, the two sums -- are stored in float32
// (float64 for float64 input), like torch under autocast. Elementwise math is float for
// float32/float16/bfloat16 (rounded once on store) and double for float64.
// The innermost loops are in csrc/cpu/batchnorm_loops.h, compiled for AVX-512, AVX2 and
// the baseline, the widest this CPU has chosen at run time (PYDL_CPU_SIMD caps it).
#include "batchnorm.h"
#include "simd.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <tuple>
#include <vector>

namespace pydl {
namespace {

constexpr int64_t GRAIN = 32768;  // elements below which a thread's work does not pay off
constexpr int64_t CHUNK = 16384;  // values of one channel per reduction partial

// The innermost loops, one copy per instruction set (csrc/cpu/batchnorm_loops.h): the
// kernels below take the loops struct as a template argument, the glue picks it.
#define PYDL_SIMD_LOOPS "batchnorm_loops.h"
#include "simd_copies.h"

// Rows per reduction chunk: planes hold `inner` values of a channel per row,
// channels-last rows hold one.
int64_t rows_per_chunk(const BnShape& s) {
  return std::max<int64_t>(1, CHUNK / std::max<int64_t>(1, s.inner));
}

// Runs the reduction tasks: body(p, c, o_begin, o_end) reduces rows [o_begin, o_end) of
// channel c into partial p*C + c; c = -1 means every channel (channels-last rows).
template <typename Body>
void for_each_partial(const BnShape& s, int64_t P, int64_t R, Body&& body) {
  if (s.inner == 1) {
    // channels-last: one task per chunk, all channels (the rows are read in order)
    at::parallel_for(0, P, 1, [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p)
        body(p, int64_t(-1), p * R, std::min(s.outer, (p + 1) * R));
    });
  } else {
    at::parallel_for(0, P * s.C, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t p = t / s.C, c = t % s.C;
        body(p, c, p * R, std::min(s.outer, (p + 1) * R));
      }
    });
  }
}

// Runs an elementwise pass: body(o_begin, o_end) for channels-last row ranges, or
// body(plane) for each (n, c) plane of NCHW; at least GRAIN values per task.
template <typename Rows, typename Plane>
void for_each_block(const BnShape& s, Rows&& rows, Plane&& plane) {
  if (s.inner == 1) {
    at::parallel_for(0, s.outer, std::max<int64_t>(1, GRAIN / std::max<int64_t>(1, s.C)), rows);
  } else {
    // (inner may be 0: planes with no values, e.g. input of shape (2, 3, 0, 5))
    at::parallel_for(0, s.outer * s.C, std::max<int64_t>(1, GRAIN / std::max<int64_t>(1, s.inner)),
                     [&](int64_t b, int64_t e) {
      for (int64_t pl = b; pl < e; ++pl) plane(pl);
    });
  }
}

// ------------------------------------------------------------------------ statistics
// Each chunk accumulates s1 = sum (x - K) and s2 = sum (x - K)^2, K = the channel's first
// value: a straight loop of adds (a per-value Welford update would chain a division per
// value, ~3x slower here). Shifting by K keeps s2 - s1^2/n
// from cancelling when |mean| >> std. Each chunk then becomes a Welford state
// (n, mean, M2) and the chunks are merged with Chan's formula in chunk order.
template <class L, typename T, typename C>
void stats_kernel(const T* x, const BnShape& s, C* mean, C* var) {
  using A = double;  // CPU accumulation type (see the file comment)
  const int64_t R = rows_per_chunk(s);
  const int64_t P = std::max<int64_t>(1, (s.outer + R - 1) / R);
  std::vector<Welford<A>> part(P * s.C, Welford<A>{A(0), A(0), 0});
  std::vector<A> K(s.C, A(0));
  if (s.count() > 0)
    for (int64_t c = 0; c < s.C; ++c) K[c] = static_cast<A>(x[c * s.inner]);
  auto finish = [](A k, A s1, A s2, int64_t n) {
    if (n == 0) return Welford<A>{A(0), A(0), 0};
    const A d = s1 / A(n);
    return Welford<A>{k + d, std::max(A(0), s2 - s1 * d), n};
  };
  for_each_partial(s, P, R, [&](int64_t p, int64_t c, int64_t ob, int64_t oe) {
    if (c < 0) {
      std::vector<A> s1(s.C, A(0)), s2(s.C, A(0));
      L::stats_rows(x + ob * s.C, oe - ob, s.C, K.data(), s1.data(), s2.data());
      for (int64_t k = 0; k < s.C; ++k) part[p * s.C + k] = finish(K[k], s1[k], s2[k], oe - ob);
    } else {
      A sums[2];
      L::stats_planes(x + (ob * s.C + c) * s.inner, oe - ob, s.C * s.inner, s.inner, K[c], sums);
      part[p * s.C + c] = finish(K[c], sums[0], sums[1], (oe - ob) * s.inner);
    }
  });
  at::parallel_for(0, s.C, 64, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      Welford<A> w = part[c];
      for (int64_t p = 1; p < P; ++p) w = welford_merge(w, part[p * s.C + c]);
      mean[c] = w.n > 0 ? C(w.mean) : C(NAN);  // no values: NaN, as torch's 0/0
      var[c] = w.n > 0 ? C(w.m2 / A(w.n)) : C(NAN);
    }
  });
}

// ------------------------------------------------------------------ forward (normalize)
// y = act((x - mean) * scale + shift [+ r]) with scale = invstd * w, shift = b.
template <class L, BnAct A, typename T, typename C>
void normalize_kernel(const T* x, const T* r, T* y, const BnShape& s, const C* mean,
                      const C* scale, const C* shift, C alpha) {
  for_each_block(
      s,
      [&](int64_t b, int64_t e) {
        L::template normalize_rows<A>(x + b * s.C, r ? r + b * s.C : nullptr, y + b * s.C, e - b, s.C,
                                      mean, scale, shift, alpha);
      },
      [&](int64_t pl) {
        const int64_t c = pl % s.C, off = pl * s.inner;
        L::template normalize_plane<A>(x + off, r ? r + off : nullptr, y + off, s.inner, mean[c],
                                       scale[c], shift[c], alpha);
      });
}

// --------------------------------------------------------------- backward reduction
// sum_dz[c] = sum dz, sum_dzxh[c] = invstd_c * sum dz * (x - mean_c), dz = g * act'(y).
template <class L, BnAct A, typename T, typename C>
void bwd_reduce_kernel(const T* g, const T* x, const T* y, const BnShape& s, const C* mean,
                       const C* invstd, C alpha, C* sum_dz, C* sum_dzxh) {
  using D = double;  // CPU accumulation type (see the file comment)
  const int64_t R = rows_per_chunk(s);
  const int64_t P = std::max<int64_t>(1, (s.outer + R - 1) / R);
  std::vector<D> pd(P * s.C, D(0)), px(P * s.C, D(0)), m(mean, mean + s.C);
  for_each_partial(s, P, R, [&](int64_t p, int64_t c, int64_t ob, int64_t oe) {
    if (c < 0) {
      const int64_t off = ob * s.C;
      L::template reduce_rows<A>(g + off, x + off, y ? y + off : nullptr, oe - ob, s.C, m.data(), alpha,
                                 &pd[p * s.C], &px[p * s.C]);
    } else {
      const int64_t off = (ob * s.C + c) * s.inner;
      D sums[2];
      L::template reduce_planes<A>(g + off, x + off, y ? y + off : nullptr, oe - ob, s.C * s.inner,
                                   s.inner, m[c], alpha, sums);
      pd[p * s.C + c] = sums[0];
      px[p * s.C + c] = sums[1];
    }
  });
  for (int64_t c = 0; c < s.C; ++c) {
    D d = 0, dx = 0;
    for (int64_t p = 0; p < P; ++p) {
      d += pd[p * s.C + c];
      dx += px[p * s.C + c];
    }
    sum_dz[c] = C(d);
    sum_dzxh[c] = C(dx * D(invstd[c]));
  }
}

// ------------------------------------------------------------- backward elementwise
// dx = (dz - a_c - (x - mean_c) * b_c) * scale_c, with scale = w * invstd and
// a = k * sum_dz, b = k * sum_dz_xhat * invstd (both 0 in eval). dz is stored when asked.
template <class L, BnAct A, typename T, typename C>
void bwd_elemt_kernel(const T* g, const T* x, const T* y, T* dx, T* dzo, const BnShape& s,
                      const C* mean, const C* scale, const C* a, const C* b, C alpha) {
  for_each_block(
      s,
      [&](int64_t bb, int64_t e) {
        const int64_t off = bb * s.C;
        L::template elemt_rows<A>(g + off, x + off, y ? y + off : nullptr, dx + off,
                                  dzo ? dzo + off : nullptr, e - bb, s.C, mean, scale, a, b, alpha);
      },
      [&](int64_t pl) {
        const int64_t c = pl % s.C, off = pl * s.inner;
        L::template elemt_plane<A>(g + off, x + off, y ? y + off : nullptr, dx + off,
                                   dzo ? dzo + off : nullptr, s.inner, mean[c], scale[c], a[c], b[c],
                                   alpha);
      });
}

// ------------------------------------------------ backward, both passes per channel
// The training backward of NCHW input with channels to spare (C >= 2 x threads): one task
// per channel runs the reduction over that channel's N planes, turns the sums into the
// elementwise coefficients, and runs the elementwise pass over the same planes while they
// are still in cache -- torch's CPU kernel does the same. (Apart, the reduction reads all of
// g, x and y, and the elementwise pass reads them again from memory.) The sums are added in
// the chunk order of bwd_reduce_kernel and every value goes through the same loops, so the
// two ways give the same bits.
template <class L, BnAct A, typename T, typename C>
void bwd_fused_planes_kernel(const T* g, const T* x, const T* y, T* dx, T* dzo, const BnShape& s,
                             const C* mean, const C* invstd, const C* w, C alpha, double inv_count,
                             C* sum_dz, C* sum_dzxh) {
  using D = double;  // CPU accumulation type (see the file comment)
  const int64_t R = rows_per_chunk(s);
  const int64_t P = std::max<int64_t>(1, (s.outer + R - 1) / R);
  at::parallel_for(0, s.C, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      D d = 0, dxh = 0;
      for (int64_t p = 0; p < P; ++p) {
        const int64_t ob = p * R, oe = std::min(s.outer, (p + 1) * R);
        const int64_t off = (ob * s.C + c) * s.inner;
        D sums[2];
        L::template reduce_planes<A>(g + off, x + off, y ? y + off : nullptr, oe - ob,
                                     s.C * s.inner, s.inner, D(mean[c]), alpha, sums);
        d += sums[0];
        dxh += sums[1];
      }
      sum_dz[c] = C(d);
      sum_dzxh[c] = C(dxh * D(invstd[c]));
      // bn_bwd_elemt's coefficients, from the sums as stored
      const C scale = invstd[c] * (w ? w[c] : C(1));
      const C ca = C(inv_count) * sum_dz[c], cb2 = C(inv_count) * sum_dzxh[c] * invstd[c];
      for (int64_t o = 0; o < s.outer; ++o) {
        const int64_t off = (o * s.C + c) * s.inner;
        L::template elemt_plane<A>(g + off, x + off, y ? y + off : nullptr, dx + off,
                                   dzo ? dzo + off : nullptr, s.inner, mean[c], scale, ca, cb2,
                                   alpha);
      }
    }
  });
}

// ------------------------------------------------------------------------ torch glue
template <typename C>
std::vector<C> invstd_of(const at::Tensor& var, double eps) {
  const C* v = var.const_data_ptr<C>();
  std::vector<C> out(var.numel());
  for (int64_t c = 0; c < var.numel(); ++c) out[c] = bn_invstd<C>(v[c], C(eps));
  return out;
}

std::tuple<at::Tensor, at::Tensor> bn_stats(const at::Tensor& x_in) {
  bn_check_input(x_in);
  at::Tensor x = bn_dense(x_in);
  const BnShape s = bn_shape(x);
  at::Tensor mean = bn_empty_stats(x), var = bn_empty_stats(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pydl_bn_stats", [&] {
    using C = at::opmath_type<scalar_t>;
    with_cpu_simd([&](auto loops) {
      stats_kernel<decltype(loops), scalar_t, C>(x.const_data_ptr<scalar_t>(), s,
                                                 mean.mutable_data_ptr<C>(), var.mutable_data_ptr<C>());
    });
  });
  return {mean, var};
}

// y = act((x - mean) * invstd * w + b [+ residual]) for given statistics.
at::Tensor normalize(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                     const at::Tensor& w, const at::Tensor& b, const at::Tensor& r, double eps,
                     BnAct act, double alpha) {
  const BnShape s = bn_shape(x);
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pydl_bn_fwd", [&] {
    using C = at::opmath_type<scalar_t>;
    std::vector<C> scale = invstd_of<C>(var, eps), shift(s.C, C(0));
    if (w.defined())
      for (int64_t c = 0; c < s.C; ++c) scale[c] *= w.const_data_ptr<C>()[c];
    if (b.defined())
      for (int64_t c = 0; c < s.C; ++c) shift[c] = b.const_data_ptr<C>()[c];
    const scalar_t* rp = r.defined() ? r.const_data_ptr<scalar_t>() : nullptr;
    with_cpu_simd([&](auto loops) { with_bn_act(act, [&](auto A) {
      normalize_kernel<decltype(loops), decltype(A)::value, scalar_t, C>(
          x.const_data_ptr<scalar_t>(), rp, y.mutable_data_ptr<scalar_t>(), s,
          mean.const_data_ptr<C>(), scale.data(), shift.data(), C(alpha));
    }); });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_fwd_train(
    const at::Tensor& x_in, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual, double eps,
    c10::string_view act, double alpha) {
  bn_check_input(x_in);
  const BnAct a = bn_act_from_name(act);
  at::Tensor x = bn_dense(x_in);
  at::Tensor w = bn_channel(weight, "weight", x), b = bn_channel(bias, "bias", x);
  at::Tensor r = bn_like_x(residual, "residual", x);
  auto [mean, var] = bn_stats(x);
  return {normalize(x, mean, var, w, b, r, eps, a, alpha), mean, var};
}

at::Tensor bn_fwd_eval(const at::Tensor& x_in, const at::Tensor& mean_in,
                       const at::Tensor& var_in, const c10::optional<at::Tensor>& weight,
                       const c10::optional<at::Tensor>& bias,
                       const c10::optional<at::Tensor>& residual, double eps,
                       c10::string_view act, double alpha) {
  bn_check_input(x_in);
  const BnAct a = bn_act_from_name(act);
  at::Tensor x = bn_dense(x_in);
  at::Tensor mean = bn_channel(mean_in, "running_mean", x);
  at::Tensor var = bn_channel(var_in, "running_var", x);
  at::Tensor w = bn_channel(weight, "weight", x), b = bn_channel(bias, "bias", x);
  at::Tensor r = bn_like_x(residual, "residual", x);
  return normalize(x, mean, var, w, b, r, eps, a, alpha);
}

// sum_dz, sum_dzxh <- the backward reduction of b.
void bwd_reduce_into(const BnBwdArgs& b, double eps, double alpha, at::Tensor& sum_dz,
                     at::Tensor& sum_dzxh) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.x.scalar_type(), "pydl_bn_bwd_reduce", [&] {
    using C = at::opmath_type<scalar_t>;
    std::vector<C> invstd = invstd_of<C>(b.var, eps);
    const scalar_t* yp = b.y.defined() ? b.y.const_data_ptr<scalar_t>() : nullptr;
    with_cpu_simd([&](auto loops) { with_bn_act(b.act, [&](auto A) {
      bwd_reduce_kernel<decltype(loops), decltype(A)::value, scalar_t, C>(
          b.g.const_data_ptr<scalar_t>(), b.x.const_data_ptr<scalar_t>(), yp, b.s,
          b.mean.const_data_ptr<C>(), invstd.data(), C(alpha), sum_dz.mutable_data_ptr<C>(),
          sum_dzxh.mutable_data_ptr<C>());
    }); });
  });
}

// dx (and dz when defined) <- the backward elementwise pass of b; training when the sums
// are given (sdz, sdx defined), eval otherwise.
void bwd_elemt_into(const BnBwdArgs& b, const at::Tensor& sdz, const at::Tensor& sdx, double eps,
                    double inv_count, double alpha, at::Tensor& dx, at::Tensor& dz) {
  const at::Tensor& w = b.w;
  const BnShape& s = b.s;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.x.scalar_type(), "pydl_bn_bwd_elemt", [&] {
    using C = at::opmath_type<scalar_t>;
    std::vector<C> invstd = invstd_of<C>(b.var, eps), scale(s.C), ca(s.C, C(0)), cb(s.C, C(0));
    for (int64_t c = 0; c < s.C; ++c) {
      scale[c] = invstd[c] * (w.defined() ? w.const_data_ptr<C>()[c] : C(1));
      if (sdz.defined()) {  // training: the batch statistics depend on x
        ca[c] = C(inv_count) * sdz.const_data_ptr<C>()[c];
        cb[c] = C(inv_count) * sdx.const_data_ptr<C>()[c] * invstd[c];
      }
    }
    const scalar_t* yp = b.y.defined() ? b.y.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* dzp = dz.defined() ? dz.mutable_data_ptr<scalar_t>() : nullptr;
    with_cpu_simd([&](auto loops) { with_bn_act(b.act, [&](auto A) {
      bwd_elemt_kernel<decltype(loops), decltype(A)::value, scalar_t, C>(
          b.g.const_data_ptr<scalar_t>(), b.x.const_data_ptr<scalar_t>(), yp,
          dx.mutable_data_ptr<scalar_t>(), dzp, s, b.mean.const_data_ptr<C>(), scale.data(),
          ca.data(), cb.data(), C(alpha));
    }); });
  });
}

std::tuple<at::Tensor, at::Tensor> bn_bwd_reduce(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& mean_in,
    const at::Tensor& var_in, const c10::optional<at::Tensor>& y_in, double eps,
    c10::string_view act, double alpha) {
  const BnBwdArgs b = bn_bwd_args(grad_in, x_in, mean_in, var_in, c10::nullopt, y_in, act);
  at::Tensor sum_dz = bn_empty_stats(b.x), sum_dzxh = bn_empty_stats(b.x);
  bwd_reduce_into(b, eps, alpha, sum_dz, sum_dzxh);
  return {sum_dz, sum_dzxh};
}

std::tuple<at::Tensor, at::Tensor> bn_bwd_elemt(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& mean_in,
    const at::Tensor& var_in, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& y_in, const c10::optional<at::Tensor>& sum_dz_in,
    const c10::optional<at::Tensor>& sum_dzxh_in, double eps, double inv_count,
    c10::string_view act, double alpha, bool want_dz) {
  const BnBwdArgs b = bn_bwd_args(grad_in, x_in, mean_in, var_in, weight, y_in, act);
  auto [sdz, sdx] = bn_bwd_sums(sum_dz_in, sum_dzxh_in, b.x);
  auto [dx, dz] = bn_bwd_outputs(b.x, want_dz);
  bwd_elemt_into(b, sdz, sdx, eps, inv_count, alpha, dx, dz);
  return {dx, bn_dz_result(dz, b.x)};
}

// The training backward in one call: bn_bwd_reduce's sums, then bn_bwd_elemt's dx (and dz)
// with inv_count = 1 / values per channel -- fused per channel where that pays
// (bwd_fused_planes_kernel), one pass after the other otherwise; the same bits either way.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_bwd(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& mean_in,
    const at::Tensor& var_in, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& y_in, double eps, c10::string_view act, double alpha,
    bool want_dz) {
  const BnBwdArgs b = bn_bwd_args(grad_in, x_in, mean_in, var_in, weight, y_in, act);
  const BnShape& s = b.s;
  bn_check_train_bwd(s);
  at::Tensor sum_dz = bn_empty_stats(b.x), sum_dzxh = bn_empty_stats(b.x);
  auto [dx, dz] = bn_bwd_outputs(b.x, want_dz);
  const double inv_count = 1.0 / double(s.count());
  if (s.inner > 1 && s.C >= 2 * at::get_num_threads()) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.x.scalar_type(), "pydl_bn_bwd", [&] {
      using C = at::opmath_type<scalar_t>;
      std::vector<C> invstd = invstd_of<C>(b.var, eps);
      const scalar_t* yp = b.y.defined() ? b.y.const_data_ptr<scalar_t>() : nullptr;
      with_cpu_simd([&](auto loops) { with_bn_act(b.act, [&](auto A) {
        bwd_fused_planes_kernel<decltype(loops), decltype(A)::value, scalar_t, C>(
            b.g.const_data_ptr<scalar_t>(), b.x.const_data_ptr<scalar_t>(), yp,
            dx.mutable_data_ptr<scalar_t>(), want_dz ? dz.mutable_data_ptr<scalar_t>() : nullptr,
            s, b.mean.const_data_ptr<C>(), invstd.data(),
            b.w.defined() ? b.w.const_data_ptr<C>() : nullptr, C(alpha), inv_count,
            sum_dz.mutable_data_ptr<C>(), sum_dzxh.mutable_data_ptr<C>());
      }); });
    });
  } else {
    bwd_reduce_into(b, eps, alpha, sum_dz, sum_dzxh);
    bwd_elemt_into(b, sum_dz, sum_dzxh, eps, inv_count, alpha, dx, dz);
  }
  return {dx, bn_dz_result(dz, b.x), sum_dz, sum_dzxh};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydl, CPU, m) {
  m.impl("bn_stats", &bn_stats);
  m.impl("bn_fwd_train", &bn_fwd_train);
  m.impl("bn_fwd_eval", &bn_fwd_eval);
  m.impl("bn_bwd_reduce", &bn_bwd_reduce);
  m.impl("bn_bwd_elemt", &bn_bwd_elemt);
  m.impl("bn_bwd", &bn_bwd);
}

}  // namespace pydl

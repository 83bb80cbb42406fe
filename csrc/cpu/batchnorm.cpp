// Batch normalization on the CPU (formulas in csrc/batchnorm_math.h, shared with CUDA):
//   statistics  mean_c, var_c (biased) over the N * spatial values of channel c
//   forward     y = act((x - mean) * invstd * w + b [+ residual])
//   backward    sum_dz_c, sum_dz_xhat_c (one reduction pass), then
//               dx = w * invstd * (dz - k * (sum_dz + xhat * sum_dz_xhat))  (elementwise)
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
// The reductions accumulate in double, as torch's own CPU kernels do (at::acc_type on
// CPU): cheap on a CPU, and it keeps a channel with mean 1e4 / std 1e-2 or a nearly
// cancelling gradient as accurate as torch. Their results -- mean, var, the two sums --
// are stored in float32 (float64 for float64 input), like torch under autocast.
// Elementwise math is float for float32/float16/bfloat16 (rounded once on store) and
// double for float64.
#include "batchnorm.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace pydl {
namespace {

constexpr int64_t GRAIN = 32768;  // elements below which a thread's work does not pay off
constexpr int64_t CHUNK = 16384;  // values of one channel per reduction partial

constexpr int L = 4;  // independent accumulators in the per-plane reduction loops

template <typename A>
A lane_sum(const A (&a)[L]) {
  return (a[0] + a[1]) + (a[2] + a[3]);
}

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

// ------------------------------------------------------------------------ statistics
// Each chunk accumulates s1 = sum (x - K) and s2 = sum (x - K)^2 in double, K = the
// channel's first value: a straight loop of adds (a per-value Welford update would
// chain a division per value, ~3x slower here). Shifting by K keeps s2 - s1^2/n
// from cancelling when |mean| >> std. Each chunk then becomes a Welford state
// (n, mean, M2) and the chunks are merged with Chan's formula in chunk order.
template <typename T, typename C>
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
      for (int64_t o = ob; o < oe; ++o) {
        const T* row = x + o * s.C;
        for (int64_t k = 0; k < s.C; ++k) {
          const A v = static_cast<A>(row[k]) - K[k];
          s1[k] += v;
          s2[k] += v * v;
        }
      }
      for (int64_t k = 0; k < s.C; ++k) part[p * s.C + k] = finish(K[k], s1[k], s2[k], oe - ob);
    } else {
      // L independent accumulators (a fixed split, so still deterministic): the adds
      // no longer wait on each other and the compiler can use SIMD lanes
      A s1[L] = {}, s2[L] = {};
      const A kc = K[c];
      for (int64_t o = ob; o < oe; ++o) {
        const T* plane = x + (o * s.C + c) * s.inner;
        int64_t i = 0;
        for (; i + L <= s.inner; i += L)
          for (int l = 0; l < L; ++l) {
            const A v = static_cast<A>(plane[i + l]) - kc;
            s1[l] += v;
            s2[l] += v * v;
          }
        for (; i < s.inner; ++i) {
          const A v = static_cast<A>(plane[i]) - kc;
          s1[0] += v;
          s2[0] += v * v;
        }
      }
      part[p * s.C + c] = finish(kc, lane_sum(s1), lane_sum(s2), (oe - ob) * s.inner);
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
template <BnAct A, typename T, typename C>
void normalize_kernel(const T* x, const T* r, T* y, const BnShape& s, const C* mean,
                      const C* scale, const C* shift, C alpha) {
  auto one = [&](int64_t idx, int64_t c) {
    C z = (static_cast<C>(x[idx]) - mean[c]) * scale[c] + shift[c];
    if (r) z += static_cast<C>(r[idx]);
    y[idx] = static_cast<T>(bn_act<A, C>(z, alpha));
  };
  if (s.inner == 1) {
    at::parallel_for(0, s.outer, std::max<int64_t>(1, GRAIN / std::max<int64_t>(1, s.C)),
                     [&](int64_t b, int64_t e) {
      for (int64_t o = b; o < e; ++o)
        for (int64_t c = 0; c < s.C; ++c) one(o * s.C + c, c);
    });
  } else {
    at::parallel_for(0, s.outer * s.C, std::max<int64_t>(1, GRAIN / s.inner),
                     [&](int64_t b, int64_t e) {
      for (int64_t pl = b; pl < e; ++pl) {
        const int64_t c = pl % s.C;
        for (int64_t i = 0; i < s.inner; ++i) one(pl * s.inner + i, c);
      }
    });
  }
}

// --------------------------------------------------------------- backward reduction
// sum_dz[c] = sum dz, sum_dzxh[c] = invstd_c * sum dz * (x - mean_c), dz = g * act'(y).
template <BnAct A, typename T, typename C>
void bwd_reduce_kernel(const T* g, const T* x, const T* y, const BnShape& s, const C* mean,
                       const C* invstd, C alpha, C* sum_dz, C* sum_dzxh) {
  using D = double;  // CPU accumulation type (see the file comment)
  const int64_t R = rows_per_chunk(s);
  const int64_t P = std::max<int64_t>(1, (s.outer + R - 1) / R);
  std::vector<D> pd(P * s.C, D(0)), px(P * s.C, D(0));
  auto dz_at = [&](int64_t idx) {
    // y is read only when the activation needs it (A is a compile-time constant)
    return bn_act_grad<A, C>(static_cast<C>(g[idx]),
                             A == BnAct::None ? C(0) : static_cast<C>(y[idx]), alpha);
  };
  for_each_partial(s, P, R, [&](int64_t p, int64_t c, int64_t ob, int64_t oe) {
    if (c < 0) {
      D* d = &pd[p * s.C];
      D* dx = &px[p * s.C];
      for (int64_t o = ob; o < oe; ++o)
        for (int64_t k = 0; k < s.C; ++k) {
          const int64_t idx = o * s.C + k;
          const D dz = dz_at(idx);
          d[k] += dz;
          dx[k] += dz * (D(x[idx]) - D(mean[k]));
        }
    } else {
      D d[L] = {}, dx[L] = {};  // L accumulators, as in stats_kernel
      const D m = mean[c];
      for (int64_t o = ob; o < oe; ++o) {
        const int64_t base = (o * s.C + c) * s.inner;
        int64_t i = 0;
        for (; i + L <= s.inner; i += L)
          for (int l = 0; l < L; ++l) {
            const D dz = dz_at(base + i + l);
            d[l] += dz;
            dx[l] += dz * (D(x[base + i + l]) - m);
          }
        for (; i < s.inner; ++i) {
          const D dz = dz_at(base + i);
          d[0] += dz;
          dx[0] += dz * (D(x[base + i]) - m);
        }
      }
      pd[p * s.C + c] = lane_sum(d);
      px[p * s.C + c] = lane_sum(dx);
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
template <BnAct A, typename T, typename C>
void bwd_elemt_kernel(const T* g, const T* x, const T* y, T* dx, T* dzo, const BnShape& s,
                      const C* mean, const C* scale, const C* a, const C* b, C alpha) {
  auto one = [&](int64_t idx, int64_t c) {
    const C dz = bn_act_grad<A, C>(static_cast<C>(g[idx]),
                                   A == BnAct::None ? C(0) : static_cast<C>(y[idx]), alpha);
    if (dzo) dzo[idx] = static_cast<T>(dz);
    dx[idx] = static_cast<T>((dz - a[c] - (static_cast<C>(x[idx]) - mean[c]) * b[c]) * scale[c]);
  };
  if (s.inner == 1) {
    at::parallel_for(0, s.outer, std::max<int64_t>(1, GRAIN / std::max<int64_t>(1, s.C)),
                     [&](int64_t bb, int64_t e) {
      for (int64_t o = bb; o < e; ++o)
        for (int64_t c = 0; c < s.C; ++c) one(o * s.C + c, c);
    });
  } else {
    at::parallel_for(0, s.outer * s.C, std::max<int64_t>(1, GRAIN / s.inner),
                     [&](int64_t bb, int64_t e) {
      for (int64_t pl = bb; pl < e; ++pl) {
        const int64_t c = pl % s.C;
        for (int64_t i = 0; i < s.inner; ++i) one(pl * s.inner + i, c);
      }
    });
  }
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
    stats_kernel<scalar_t, C>(x.const_data_ptr<scalar_t>(), s, mean.mutable_data_ptr<C>(),
                              var.mutable_data_ptr<C>());
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
    with_bn_act(act, [&](auto A) {
      normalize_kernel<decltype(A)::value, scalar_t, C>(
          x.const_data_ptr<scalar_t>(), rp, y.mutable_data_ptr<scalar_t>(), s,
          mean.const_data_ptr<C>(), scale.data(), shift.data(), C(alpha));
    });
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

std::tuple<at::Tensor, at::Tensor> bn_bwd_reduce(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& mean_in,
    const at::Tensor& var_in, const c10::optional<at::Tensor>& y_in, double eps,
    c10::string_view act, double alpha) {
  bn_check_input(x_in);
  const BnAct a = bn_act_from_name(act);
  at::Tensor x = bn_dense(x_in);
  at::Tensor g = bn_like_x(grad_in, "grad_output", x);
  at::Tensor y = bn_like_x(y_in, "output", x);
  PYDL_CHECK(a == BnAct::None || y.defined(), "batch_norm backward: the output y is needed "
             "for act='", std::string(act), "'");
  at::Tensor mean = bn_channel(mean_in, "mean", x), var = bn_channel(var_in, "var", x);
  const BnShape s = bn_shape(x);
  at::Tensor sum_dz = bn_empty_stats(x), sum_dzxh = bn_empty_stats(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pydl_bn_bwd_reduce", [&] {
    using C = at::opmath_type<scalar_t>;
    std::vector<C> invstd = invstd_of<C>(var, eps);
    const scalar_t* yp = y.defined() ? y.const_data_ptr<scalar_t>() : nullptr;
    with_bn_act(a, [&](auto A) {
      bwd_reduce_kernel<decltype(A)::value, scalar_t, C>(
          g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), yp, s,
          mean.const_data_ptr<C>(), invstd.data(), C(alpha), sum_dz.mutable_data_ptr<C>(),
          sum_dzxh.mutable_data_ptr<C>());
    });
  });
  return {sum_dz, sum_dzxh};
}

std::tuple<at::Tensor, at::Tensor> bn_bwd_elemt(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& mean_in,
    const at::Tensor& var_in, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& y_in, const c10::optional<at::Tensor>& sum_dz_in,
    const c10::optional<at::Tensor>& sum_dzxh_in, double eps, double inv_count,
    c10::string_view act, double alpha, bool want_dz) {
  bn_check_input(x_in);
  const BnAct a = bn_act_from_name(act);
  at::Tensor x = bn_dense(x_in);
  at::Tensor g = bn_like_x(grad_in, "grad_output", x);
  at::Tensor y = bn_like_x(y_in, "output", x);
  PYDL_CHECK(a == BnAct::None || y.defined(), "batch_norm backward: the output y is needed "
             "for act='", std::string(act), "'");
  at::Tensor mean = bn_channel(mean_in, "mean", x), var = bn_channel(var_in, "var", x);
  at::Tensor w = bn_channel(weight, "weight", x);
  at::Tensor sdz = bn_channel(sum_dz_in, "sum_dz", x);
  at::Tensor sdx = bn_channel(sum_dzxh_in, "sum_dz_xhat", x);
  PYDL_CHECK(sdz.defined() == sdx.defined(), "batch_norm backward: sum_dz and sum_dz_xhat "
             "must be given together");
  const BnShape s = bn_shape(x);
  at::Tensor dx = at::empty_like(x);
  at::Tensor dz = want_dz ? at::empty_like(x) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pydl_bn_bwd_elemt", [&] {
    using C = at::opmath_type<scalar_t>;
    std::vector<C> invstd = invstd_of<C>(var, eps), scale(s.C), ca(s.C, C(0)), cb(s.C, C(0));
    for (int64_t c = 0; c < s.C; ++c) {
      scale[c] = invstd[c] * (w.defined() ? w.const_data_ptr<C>()[c] : C(1));
      if (sdz.defined()) {  // training: the batch statistics depend on x
        ca[c] = C(inv_count) * sdz.const_data_ptr<C>()[c];
        cb[c] = C(inv_count) * sdx.const_data_ptr<C>()[c] * invstd[c];
      }
    }
    const scalar_t* yp = y.defined() ? y.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* dzp = want_dz ? dz.mutable_data_ptr<scalar_t>() : nullptr;
    with_bn_act(a, [&](auto A) {
      bwd_elemt_kernel<decltype(A)::value, scalar_t, C>(
          g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), yp,
          dx.mutable_data_ptr<scalar_t>(), dzp, s, mean.const_data_ptr<C>(), scale.data(),
          ca.data(), cb.data(), C(alpha));
    });
  });
  return {dx, dz};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydl, CPU, m) {
  m.impl("bn_stats", &bn_stats);
  m.impl("bn_fwd_train", &bn_fwd_train);
  m.impl("bn_fwd_eval", &bn_fwd_eval);
  m.impl("bn_bwd_reduce", &bn_bwd_reduce);
  m.impl("bn_bwd_elemt", &bn_bwd_elemt);
}

}  // namespace pydl

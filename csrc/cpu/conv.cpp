// 2-D convolution on the CPU: forward (with an optional fused bias + ReLU epilogue), the
// gradient with respect to the input, the weight and the bias.
//
//   y [n, oc, oh, ow] = act(b[oc] + sum_{c, kh, kw} x[n, g*Cg+c, ih, iw] * w[oc, c, kh, kw])
//   dx[n, ic, ih, iw] = sum_{oc in group of ic, kh, kw} dy[n, oc, oh, ow] * w[oc, ic%Cg, kh, kw]
//   dw[oc, c, kh, kw] = sum_{n, oh, ow} dy[n, oc, oh, ow] * x[n, g*Cg+c, ih, iw]
//   db[oc]            = sum_{n, oh, ow} dy[n, oc, oh, ow]
//   where ih = oh*sh - ph + kh*dh, iw = ow*sw - pw + kw*dw (geometry in csrc/conv_shape.h),
//   and terms with (ih, iw) outside the input are zero (zero padding).
//
// Algorithm: direct convolution, written as "scaled row updates". For a fixed weight tap
// (c, kh, kw) the contribution to a whole output plane is wv * (a strided window of the
// input plane), so the innermost loop is acc[oh, ow] += wv * x[ih, ow*sw + off]: a
// straight loop over ow the compiler vectorizes. The valid oh/ow ranges of each tap are
// computed up front (tap_range) so the inner loops carry no padding branches. Accumulators
// are float for float/half/bfloat16 and double for double; the result is rounded once.
//
// Parallel decomposition (at::parallel_for): every task owns whole output planes, so no
// two threads ever write the same element and no atomics are needed:
//   forward:      one task per (n, oc)    -> one plane of y
//   input grad:   one task per (n, ic)    -> one plane of dx (scatters from its group's dy)
//   weight grad:  one task per (oc, c)    -> KH*KW weights, each a reduction over n, oh, ow
//   bias grad:    one task per oc
//
// Layout: the kernels read NCHW-contiguous operands (a channels_last operand is made
// contiguous first -- a copy, no arithmetic) and write the output through its strides, so
// the output may be NCHW or channels_last as the caller asks (pydl/ops/conv.py decides,
// following torch's rule).
#include "common.h"
#include "conv_common.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace pydl {
namespace {

// Output positions o in [lo, hi) whose input coordinate i = o*s - p + k*d lies in [0, L).
struct Range {
  int64_t lo, hi;
};
inline Range tap_range(int64_t L, int64_t O, int64_t s, int64_t p, int64_t off /* k*d */) {
  const int64_t t = p - off;  // need o*s >= t
  const int64_t lo = t <= 0 ? 0 : (t + s - 1) / s;
  const int64_t u = L - 1 + p - off;  // need o*s <= u
  const int64_t hi = u < 0 ? 0 : std::min(O, u / s + 1);
  return {lo, std::max(lo, hi)};
}

// ------------------------------------------------------------------------------ forward
template <typename T>
void fwd_impl(const T* x, const T* w, const T* b, T* y, const ConvShape s, const Strides4 ys,
              bool relu) {
  using C = at::opmath_type<T>;
  const int64_t Cg = s.Cg(), OCg = s.OCg(), plane = s.OH * s.OW;
  at::parallel_for(0, s.N * s.OC, 1, [&](int64_t begin, int64_t end) {
    std::vector<C> acc(plane);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / s.OC, oc = task % s.OC, g = oc / OCg;
      std::fill(acc.begin(), acc.end(), C(0));
      for (int64_t c = 0; c < Cg; ++c) {
        const T* xp = x + ((n * s.C + g * Cg + c) * s.H) * s.W;
        const T* wp = w + (oc * Cg + c) * s.KH * s.KW;
        for (int64_t kh = 0; kh < s.KH; ++kh) {
          const Range rh = tap_range(s.H, s.OH, s.sh, s.ph, kh * s.dh);
          for (int64_t kw = 0; kw < s.KW; ++kw) {
            const Range rw = tap_range(s.W, s.OW, s.sw, s.pw, kw * s.dw);
            const C wv = static_cast<C>(wp[kh * s.KW + kw]);
            for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
              // x index of (oh, ow) is row + ow*sw (kept an offset, not a pointer: it may be
              // negative for ow outside [rw.lo, rw.hi), which is never read)
              const int64_t row = (oh * s.sh - s.ph + kh * s.dh) * s.W - s.pw + kw * s.dw;
              C* a = acc.data() + oh * s.OW;
              for (int64_t ow = rw.lo; ow < rw.hi; ++ow) a[ow] += wv * static_cast<C>(xp[row + ow * s.sw]);
            }
          }
        }
      }
      const C bv = b ? static_cast<C>(b[oc]) : C(0);
      T* yp = y + n * ys.n + oc * ys.c;
      for (int64_t oh = 0; oh < s.OH; ++oh)
        for (int64_t ow = 0; ow < s.OW; ++ow) {
          C v = acc[oh * s.OW + ow] + bv;
          if (relu && v < C(0)) v = C(0);  // NaN stays NaN, as torch's relu
          yp[oh * ys.h + ow * ys.w] = static_cast<T>(v);
        }
    }
  });
}

at::Tensor conv2d_fwd(const at::Tensor& x_in, const at::Tensor& w_in, const std::optional<at::Tensor>& b_in,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                      int64_t groups, c10::string_view act, bool channels_last) {
  const bool relu = check_fwd_args(x_in, w_in, b_in, stride, padding, dilation, groups, act);
  const bool has_b = b_in.has_value() && b_in->defined();
  const auto [OH, OW] = conv_out_size(x_in.sizes(), w_in.sizes(), stride, padding, dilation);
  at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  at::Tensor b = has_b ? b_in->contiguous() : at::Tensor();
  at::Tensor y = conv_alloc4({x.size(0), w.size(0), OH, OW}, x.options(), channels_last);
  if (y.numel() == 0) return y;
  const ConvShape s = make_shape(x.sizes(), w.sizes(), y.sizes(), stride, padding, dilation, groups);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pydl_conv2d_fwd", [&] {
    fwd_impl<scalar_t>(x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                       has_b ? b.const_data_ptr<scalar_t>() : nullptr, y.mutable_data_ptr<scalar_t>(),
                       s, strides_of(y), relu);
  });
  return y;
}

// --------------------------------------------------------------------------- input grad
template <typename T>
void bwd_input_impl(const T* dy, const T* w, T* dx, const ConvShape s, const Strides4 xs) {
  using C = at::opmath_type<T>;
  const int64_t Cg = s.Cg(), OCg = s.OCg(), plane = s.H * s.W;
  at::parallel_for(0, s.N * s.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<C> acc(plane);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / s.C, ic = task % s.C, g = ic / Cg, c = ic % Cg;
      std::fill(acc.begin(), acc.end(), C(0));
      for (int64_t j = 0; j < OCg; ++j) {
        const int64_t oc = g * OCg + j;
        const T* gp = dy + (n * s.OC + oc) * s.OH * s.OW;
        const T* wp = w + (oc * Cg + c) * s.KH * s.KW;
        for (int64_t kh = 0; kh < s.KH; ++kh) {
          const Range rh = tap_range(s.H, s.OH, s.sh, s.ph, kh * s.dh);
          for (int64_t kw = 0; kw < s.KW; ++kw) {
            const Range rw = tap_range(s.W, s.OW, s.sw, s.pw, kw * s.dw);
            const C wv = static_cast<C>(wp[kh * s.KW + kw]);
            for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
              // the transpose of the forward's gather: scatter one dy row into one dx row
              const int64_t row = (oh * s.sh - s.ph + kh * s.dh) * s.W - s.pw + kw * s.dw;
              const T* g_row = gp + oh * s.OW;
              C* a = acc.data();
              for (int64_t ow = rw.lo; ow < rw.hi; ++ow) a[row + ow * s.sw] += wv * static_cast<C>(g_row[ow]);
            }
          }
        }
      }
      T* xp = dx + n * xs.n + ic * xs.c;
      for (int64_t h = 0; h < s.H; ++h)
        for (int64_t x = 0; x < s.W; ++x) xp[h * xs.h + x * xs.w] = static_cast<T>(acc[h * s.W + x]);
    }
  });
}

at::Tensor conv2d_bwd_input(const at::Tensor& grad_in, const at::Tensor& w_in, at::IntArrayRef input_size,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                            int64_t groups, bool channels_last) {
  check_bwd_input_args(grad_in, w_in, input_size, stride, padding, dilation, groups);
  at::Tensor dy = grad_in.contiguous(), w = w_in.contiguous();
  at::Tensor dx = conv_alloc4(input_size, dy.options(), channels_last);
  if (dx.numel() == 0) return dx;
  const ConvShape s = make_shape(input_size, w.sizes(), dy.sizes(), stride, padding, dilation, groups);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "pydl_conv2d_bwd_input", [&] {
    bwd_input_impl<scalar_t>(dy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                             dx.mutable_data_ptr<scalar_t>(), s, strides_of(dx));
  });
  return dx;
}

// -------------------------------------------------------------------------- weight grad
constexpr int kLanes = 8;

template <typename T>
void bwd_weight_impl(const T* dy, const T* x, T* dw, const ConvShape s, const Strides4 wst) {
  using C = at::opmath_type<T>;
  const int64_t Cg = s.Cg(), OCg = s.OCg();
  at::parallel_for(0, s.OC * Cg, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t oc = task / Cg, c = task % Cg, ic = (oc / OCg) * Cg + c;
      for (int64_t kh = 0; kh < s.KH; ++kh) {
        const Range rh = tap_range(s.H, s.OH, s.sh, s.ph, kh * s.dh);
        for (int64_t kw = 0; kw < s.KW; ++kw) {
          const Range rw = tap_range(s.W, s.OW, s.sw, s.pw, kw * s.dw);
          // kLanes independent partial sums: a single running sum would be one long
          // dependency chain the compiler may not vectorize (float addition is not
          // associative); lanes j, j+kLanes, ... form a SIMD-friendly pattern.
          C part[kLanes] = {};
          C acc = 0;
          for (int64_t n = 0; n < s.N; ++n) {
            const T* gp = dy + (n * s.OC + oc) * s.OH * s.OW;
            const T* xp = x + (n * s.C + ic) * s.H * s.W;
            for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
              const int64_t row = (oh * s.sh - s.ph + kh * s.dh) * s.W - s.pw + kw * s.dw;
              const T* g_row = gp + oh * s.OW;
              int64_t ow = rw.lo;
              for (; ow + kLanes <= rw.hi; ow += kLanes)
                for (int j = 0; j < kLanes; ++j)
                  part[j] += static_cast<C>(g_row[ow + j]) * static_cast<C>(xp[row + (ow + j) * s.sw]);
              for (; ow < rw.hi; ++ow) acc += static_cast<C>(g_row[ow]) * static_cast<C>(xp[row + ow * s.sw]);
            }
          }
          for (int j = 0; j < kLanes; ++j) acc += part[j];
          dw[oc * wst.n + c * wst.c + kh * wst.h + kw * wst.w] = static_cast<T>(acc);
        }
      }
    }
  });
}

at::Tensor conv2d_bwd_weight(const at::Tensor& grad_in, const at::Tensor& x_in, at::IntArrayRef weight_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             int64_t groups, bool channels_last) {
  check_bwd_weight_args(grad_in, x_in, weight_size, stride, padding, dilation, groups);
  at::Tensor dy = grad_in.contiguous(), x = x_in.contiguous();
  at::Tensor dw = conv_alloc4(weight_size, dy.options(), channels_last);
  if (dw.numel() == 0) return dw;
  const ConvShape s = make_shape(x.sizes(), weight_size, dy.sizes(), stride, padding, dilation, groups);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "pydl_conv2d_bwd_weight", [&] {
    bwd_weight_impl<scalar_t>(dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                              dw.mutable_data_ptr<scalar_t>(), s, strides_of(dw));
  });
  return dw;
}

// ---------------------------------------------------------------------------- bias grad
at::Tensor conv2d_bwd_bias(const at::Tensor& grad_in) {
  check_floating(grad_in, "grad_output");
  PYDL_CHECK(grad_in.dim() == 4, "grad_output must be 4-D, got ", grad_in.dim(), "-D");
  at::Tensor dy = grad_in.contiguous();
  const int64_t N = dy.size(0), OC = dy.size(1), plane = dy.size(2) * dy.size(3);
  at::Tensor db = at::empty({OC}, dy.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "pydl_conv2d_bwd_bias", [&] {
    using C = at::opmath_type<scalar_t>;
    const scalar_t* gp = dy.const_data_ptr<scalar_t>();
    scalar_t* out = db.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, OC, 1, [&](int64_t begin, int64_t end) {
      for (int64_t oc = begin; oc < end; ++oc) {
        C acc = 0;
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t* p = gp + (n * OC + oc) * plane;
          for (int64_t i = 0; i < plane; ++i) acc += static_cast<C>(p[i]);
        }
        out[oc] = static_cast<scalar_t>(acc);
      }
    });
  });
  return db;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydl, CPU, m) {
  m.impl("conv2d_fwd", &conv2d_fwd);
  m.impl("conv2d_bwd_input", &conv2d_bwd_input);
  m.impl("conv2d_bwd_weight", &conv2d_bwd_weight);
  m.impl("conv2d_bwd_bias", &conv2d_bwd_bias);
}

}  // namespace pydl

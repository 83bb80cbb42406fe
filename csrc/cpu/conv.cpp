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
#include "conv_shape.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
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

at::Tensor alloc4(at::IntArrayRef sizes, const at::TensorOptions& opt, bool channels_last) {
  return at::empty(sizes, opt.memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                          : at::MemoryFormat::Contiguous));
}

Strides4 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

ConvShape make_shape(at::IntArrayRef xs, at::IntArrayRef ws, at::IntArrayRef ys,
                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                     int64_t groups) {
  ConvShape s;
  s.N = xs[0]; s.C = xs[1]; s.H = xs[2]; s.W = xs[3];
  s.OC = ws[0]; s.KH = ws[2]; s.KW = ws[3];
  s.OH = ys[2]; s.OW = ys[3];
  s.sh = stride[0]; s.sw = stride[1];
  s.ph = padding[0]; s.pw = padding[1];
  s.dh = dilation[0]; s.dw = dilation[1];
  s.groups = groups;
  return s;
}

// The checks every op shares; the Python layer raised friendlier errors before this.
void check_geometry(at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                    int64_t groups) {
  PYDL_CHECK(stride.size() == 2 && stride[0] > 0 && stride[1] > 0,
             "stride must be 2 positive integers, got ", stride);
  PYDL_CHECK(padding.size() == 4 && padding[0] >= 0 && padding[1] >= 0 && padding[2] >= 0 &&
                 padding[3] >= 0,
             "padding must be 4 non-negative integers (top, left, bottom, right), got ", padding);
  PYDL_CHECK(dilation.size() == 2 && dilation[0] > 0 && dilation[1] > 0,
             "dilation must be 2 positive integers, got ", dilation);
  PYDL_CHECK(groups > 0, "groups must be positive, got ", groups);
}

void check_weight(const at::Tensor& w, int64_t C, int64_t groups) {
  PYDL_CHECK(w.dim() == 4, "weight must be 4-D [out_channels, in_channels/groups, kH, kW], got ",
             w.dim(), "-D");
  PYDL_CHECK(w.size(0) % groups == 0, "out_channels (", w.size(0), ") must be divisible by groups (",
             groups, ")");
  PYDL_CHECK(C % groups == 0 && w.size(1) * groups == C, "input has ", C,
             " channels but weight expects in_channels/groups = ", w.size(1), " with groups = ", groups);
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
              const T* row = xp + (oh * s.sh - s.ph + kh * s.dh) * s.W - s.pw + kw * s.dw;
              C* a = acc.data() + oh * s.OW;
              for (int64_t ow = rw.lo; ow < rw.hi; ++ow) a[ow] += wv * static_cast<C>(row[ow * s.sw]);
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
  check_floating(x_in, "input");
  check_same_device_dtype(x_in, "input", w_in, "weight");
  PYDL_CHECK(x_in.dim() == 4, "input must be 4-D [N, C, H, W], got ", x_in.dim(), "-D");
  check_geometry(stride, padding, dilation, groups);
  check_weight(w_in, x_in.size(1), groups);
  const bool relu = act == "relu";
  PYDL_CHECK(relu || act == "none", "act must be 'none' or 'relu', got '", std::string(act), "'");
  const bool has_b = b_in.has_value() && b_in->defined();
  if (has_b) {
    check_same_device_dtype(x_in, "input", *b_in, "bias");
    PYDL_CHECK(b_in->dim() == 1 && b_in->size(0) == w_in.size(0), "bias must have shape [",
               w_in.size(0), "], got ", b_in->sizes());
  }
  const int64_t H = x_in.size(2), W = x_in.size(3), KH = w_in.size(2), KW = w_in.size(3);
  const int64_t eh = dilation[0] * (KH - 1) + 1, ew = dilation[1] * (KW - 1) + 1;
  const int64_t Hp = H + padding[0] + padding[2], Wp = W + padding[1] + padding[3];
  PYDL_CHECK(eh <= Hp && ew <= Wp, "kernel size (", eh, " x ", ew,
             " with dilation) can't be greater than the padded input size (", Hp, " x ", Wp, ")");
  const int64_t OH = (Hp - eh) / stride[0] + 1, OW = (Wp - ew) / stride[1] + 1;

  at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  at::Tensor b = has_b ? b_in->contiguous() : at::Tensor();
  at::Tensor y = alloc4({x.size(0), w.size(0), OH, OW}, x.options(), channels_last);
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
              C* row = acc.data() + (oh * s.sh - s.ph + kh * s.dh) * s.W - s.pw + kw * s.dw;
              const T* g_row = gp + oh * s.OW;
              for (int64_t ow = rw.lo; ow < rw.hi; ++ow) row[ow * s.sw] += wv * static_cast<C>(g_row[ow]);
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
  check_floating(grad_in, "grad_output");
  check_same_device_dtype(grad_in, "grad_output", w_in, "weight");
  PYDL_CHECK(grad_in.dim() == 4 && input_size.size() == 4, "grad_output and input_size must be 4-D");
  check_geometry(stride, padding, dilation, groups);
  check_weight(w_in, input_size[1], groups);
  PYDL_CHECK(grad_in.size(0) == input_size[0] && grad_in.size(1) == w_in.size(0),
             "grad_output shape ", grad_in.sizes(), " does not match input_size ", input_size,
             " and weight ", w_in.sizes());
  at::Tensor dy = grad_in.contiguous(), w = w_in.contiguous();
  at::Tensor dx = alloc4(input_size, dy.options(), channels_last);
  if (dx.numel() == 0) return dx;
  const ConvShape s = make_shape(input_size, w.sizes(), dy.sizes(), stride, padding, dilation, groups);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "pydl_conv2d_bwd_input", [&] {
    bwd_input_impl<scalar_t>(dy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                             dx.mutable_data_ptr<scalar_t>(), s, strides_of(dx));
  });
  return dx;
}

// -------------------------------------------------------------------------- weight grad
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
          C acc = 0;
          for (int64_t n = 0; n < s.N; ++n) {
            const T* gp = dy + (n * s.OC + oc) * s.OH * s.OW;
            const T* xp = x + (n * s.C + ic) * s.H * s.W;
            for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
              const T* row = xp + (oh * s.sh - s.ph + kh * s.dh) * s.W - s.pw + kw * s.dw;
              const T* g_row = gp + oh * s.OW;
              for (int64_t ow = rw.lo; ow < rw.hi; ++ow)
                acc += static_cast<C>(g_row[ow]) * static_cast<C>(row[ow * s.sw]);
            }
          }
          dw[oc * wst.n + c * wst.c + kh * wst.h + kw * wst.w] = static_cast<T>(acc);
        }
      }
    }
  });
}

at::Tensor conv2d_bwd_weight(const at::Tensor& grad_in, const at::Tensor& x_in, at::IntArrayRef weight_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             int64_t groups, bool channels_last) {
  check_floating(grad_in, "grad_output");
  check_same_device_dtype(grad_in, "grad_output", x_in, "input");
  PYDL_CHECK(grad_in.dim() == 4 && x_in.dim() == 4 && weight_size.size() == 4,
             "grad_output, input and weight_size must be 4-D");
  check_geometry(stride, padding, dilation, groups);
  PYDL_CHECK(weight_size[0] % groups == 0 && weight_size[1] * groups == x_in.size(1),
             "weight_size ", weight_size, " does not match input channels ", x_in.size(1),
             " with groups = ", groups);
  PYDL_CHECK(grad_in.size(0) == x_in.size(0) && grad_in.size(1) == weight_size[0],
             "grad_output shape ", grad_in.sizes(), " does not match input ", x_in.sizes(),
             " and weight_size ", weight_size);
  at::Tensor dy = grad_in.contiguous(), x = x_in.contiguous();
  at::Tensor dw = alloc4(weight_size, dy.options(), channels_last);
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

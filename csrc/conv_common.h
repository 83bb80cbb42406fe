// Torch-facing helpers shared by the CPU and CUDA convolution glue (csrc/cpu/conv.cpp,
// csrc/cuda/conv.cpp): argument checks (the second line of defence behind pydl/ops/conv.py,
// for direct torch.ops.pydl.* calls), output sizes, allocation in a memory format, and
// the conversion of tensor sizes/strides to the plain ConvShape / Strides4 structs the
// kernels take.
#pragma once

#include "common.h"
#include "conv_shape.h"

#include <ATen/ops/empty.h>

#include <optional>
#include <string>
#include <utility>

namespace pydl {

inline at::Tensor conv_alloc4(at::IntArrayRef sizes, const at::TensorOptions& opt, bool channels_last) {
  return at::empty(sizes, opt.memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                          : at::MemoryFormat::Contiguous));
}

inline Strides4 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

inline ConvShape make_shape(at::IntArrayRef xs, at::IntArrayRef ws, at::IntArrayRef ys,
                            at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t groups) {
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

inline void check_geometry(at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
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

inline void check_weight_size(at::IntArrayRef w, int64_t C, int64_t groups) {
  PYDL_CHECK(w.size() == 4, "weight must be 4-D [out_channels, in_channels/groups, kH, kW], got ",
             w.size(), "-D");
  PYDL_CHECK(w[2] > 0 && w[3] > 0, "kernel size must be positive, got weight of shape ", w);
  PYDL_CHECK(w[0] % groups == 0, "out_channels (", w[0], ") must be divisible by groups (", groups, ")");
  PYDL_CHECK(C % groups == 0 && w[1] * groups == C, "input has ", C,
             " channels but weight expects in_channels/groups = ", w[1], " with groups = ", groups);
}

// (OH, OW) of the forward, after checking that the dilated kernel fits the padded input.
inline std::pair<int64_t, int64_t> conv_out_size(at::IntArrayRef x, at::IntArrayRef w,
                                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                                 at::IntArrayRef dilation) {
  const int64_t eh = dilation[0] * (w[2] - 1) + 1, ew = dilation[1] * (w[3] - 1) + 1;
  const int64_t Hp = x[2] + padding[0] + padding[2], Wp = x[3] + padding[1] + padding[3];
  PYDL_CHECK(eh <= Hp && ew <= Wp, "kernel size (", eh, " x ", ew,
             " with dilation) can't be greater than the padded input size (", Hp, " x ", Wp, ")");
  return {(Hp - eh) / stride[0] + 1, (Wp - ew) / stride[1] + 1};
}

// Returns whether the ReLU epilogue is on.
inline bool check_fwd_args(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                           int64_t groups, c10::string_view act) {
  check_floating(x, "input");
  check_same_device_dtype(x, "input", w, "weight");
  PYDL_CHECK(x.dim() == 4, "input must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  check_geometry(stride, padding, dilation, groups);
  check_weight_size(w.sizes(), x.size(1), groups);
  const bool relu = act == "relu";
  PYDL_CHECK(relu || act == "none", "act must be 'none' or 'relu', got '", std::string(act), "'");
  if (b.has_value() && b->defined()) {
    check_same_device_dtype(x, "input", *b, "bias");
    PYDL_CHECK(b->dim() == 1 && b->size(0) == w.size(0), "bias must have shape [", w.size(0),
               "], got ", b->sizes());
  }
  return relu;
}

// grad_output must have the shape the forward gave for these sizes and this geometry.
inline void check_grad_shape(const at::Tensor& grad, at::IntArrayRef x, at::IntArrayRef w,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto [OH, OW] = conv_out_size(x, w, stride, padding, dilation);
  PYDL_CHECK(grad.dim() == 4 && grad.size(0) == x[0] && grad.size(1) == w[0] && grad.size(2) == OH &&
                 grad.size(3) == OW,
             "grad_output has shape ", grad.sizes(), ", expected [", x[0], ", ", w[0], ", ", OH, ", ",
             OW, "] for input ", x, " and weight ", w);
}

inline void check_bwd_input_args(const at::Tensor& grad, const at::Tensor& w, at::IntArrayRef input_size,
                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, int64_t groups) {
  check_floating(grad, "grad_output");
  check_same_device_dtype(grad, "grad_output", w, "weight");
  PYDL_CHECK(input_size.size() == 4, "input_size must have 4 entries, got ", input_size);
  check_geometry(stride, padding, dilation, groups);
  check_weight_size(w.sizes(), input_size[1], groups);
  check_grad_shape(grad, input_size, w.sizes(), stride, padding, dilation);
}

inline void check_bwd_weight_args(const at::Tensor& grad, const at::Tensor& x, at::IntArrayRef weight_size,
                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, int64_t groups) {
  check_floating(grad, "grad_output");
  check_same_device_dtype(grad, "grad_output", x, "input");
  PYDL_CHECK(x.dim() == 4, "input must be 4-D, got ", x.dim(), "-D");
  check_geometry(stride, padding, dilation, groups);
  check_weight_size(weight_size, x.size(1), groups);
  check_grad_shape(grad, x.sizes(), weight_size, stride, padding, dilation);
}

}  // namespace pydl

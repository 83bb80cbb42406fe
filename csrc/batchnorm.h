// Torch-facing helpers of the batch-norm family, shared by its CPU kernels
// (csrc/cpu/batchnorm.cpp) and its CUDA glue (csrc/cuda/batchnorm.cpp): argument
// checks, the layout the kernels walk, and the per-channel parameters in the compute
// type.
//
// Layout: the kernels see x as (outer, C, inner), element (o, c, i) at
// ((o * C) + c) * inner + i. A contiguous (N, C, *) tensor is (N, C, prod(*)) -- the
// "channel planes" of NCHW; a channels-last tensor is (N * prod(*), C, 1) -- the channel
// is the fastest dimension. Anything else is made contiguous first. (N, C) input is
// (N, C, 1): the channels-last walk.
#pragma once

#include "batchnorm_math.h"
#include "common.h"

#include <ATen/ops/empty.h>

#include <string>
#include <utility>

namespace pydl {

struct BnShape {
  int64_t outer;  // N (planes) or N * spatial (channels last)
  int64_t C;
  int64_t inner;  // spatial (planes) or 1 (channels last)
  int64_t count() const { return outer * inner; }  // values per channel
};

inline bool bn_channels_last(const at::Tensor& x) {
  return (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ||
         (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d));
}

// x as one of the two layouts the kernels walk (a copy only for other strides).
inline at::Tensor bn_dense(const at::Tensor& x) {
  if (x.is_contiguous() || bn_channels_last(x)) return x;
  return x.contiguous();
}

// The (outer, C, inner) view of a tensor returned by bn_dense.
inline BnShape bn_shape(const at::Tensor& x) {
  const int64_t n = x.size(0), c = x.size(1);
  int64_t s = 1;
  for (int64_t d = 2; d < x.dim(); ++d) s *= x.size(d);
  if (x.is_contiguous()) return {n, c, s};
  return {n * s, c, 1};
}

inline BnAct bn_act_from_name(c10::string_view name) {
  BnAct a = BnAct::None;
  PYDL_CHECK(parse_bn_act(std::string_view(name.data(), name.size()), &a),
             "batch_norm: unknown activation '", std::string(name), "' (none, relu, leaky_relu)");
  return a;
}

inline void bn_check_input(const at::Tensor& x) {
  check_floating(x, "input");
  PYDL_CHECK(x.dim() >= 2, "batch_norm: input must have at least 2 dimensions (N, C, ...), got ",
             x.dim());
}

// A per-channel tensor (weight, bias, mean, var, ...): 1-D of size C on x's device.
inline void bn_check_channel(const at::Tensor& t, const char* name, const at::Tensor& x) {
  check_floating(t, name);
  PYDL_CHECK(t.dim() == 1 && t.size(0) == x.size(1), "batch_norm: ", name,
             " must have shape (", x.size(1), ",) (one value per channel), got ", t.sizes());
  PYDL_CHECK(t.device() == x.device(), "batch_norm: ", name, " must be on ", x.device(),
             ", got ", t.device());
}

// The compute type: float for float32/float16/bfloat16, double for float64. The
// statistics come out in it, and per-channel inputs are read in it.
inline at::ScalarType bn_ctype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// A checked per-channel tensor, contiguous in the compute type (undefined stays undefined).
inline at::Tensor bn_channel(const c10::optional<at::Tensor>& t, const char* name,
                             const at::Tensor& x) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  bn_check_channel(*t, name, x);
  return t->to(bn_ctype(x)).contiguous();
}

// A tensor shaped like x (residual, grad_output, saved output) in x's element order.
inline at::Tensor bn_like_x(const c10::optional<at::Tensor>& t, const char* name,
                            const at::Tensor& x) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  check_same_device_dtype(*t, name, x, "input");
  check_same_shape(*t, name, x, "input");
  return like_layout(*t, x);
}

inline at::Tensor bn_empty_stats(const at::Tensor& x) {
  return at::empty({x.size(1)}, x.options().dtype(bn_ctype(x)));
}

// ---------------------------------------------------------------- the backward ops
// The checked, dense operands of bn_bwd_reduce / bn_bwd_elemt / bn_bwd.
struct BnBwdArgs {
  BnAct act;
  at::Tensor x, g, y, mean, var, w;  // y: the saved output (needed unless act is none)
  BnShape s;
};

inline BnBwdArgs bn_bwd_args(const at::Tensor& grad_in, const at::Tensor& x_in,
                             const at::Tensor& mean_in, const at::Tensor& var_in,
                             const c10::optional<at::Tensor>& weight,
                             const c10::optional<at::Tensor>& y_in, c10::string_view act) {
  bn_check_input(x_in);
  BnBwdArgs b;
  b.act = bn_act_from_name(act);
  b.x = bn_dense(x_in);
  b.g = bn_like_x(grad_in, "grad_output", b.x);
  b.y = bn_like_x(y_in, "output", b.x);
  PYDL_CHECK(b.act == BnAct::None || b.y.defined(), "batch_norm backward: the output y is "
             "needed for act='", std::string(act), "'");
  b.mean = bn_channel(mean_in, "mean", b.x);
  b.var = bn_channel(var_in, "var", b.x);
  b.w = bn_channel(weight, "weight", b.x);
  b.s = bn_shape(b.x);
  return b;
}

// bn_bwd_elemt's sums: both given (training) or neither (eval).
inline std::pair<at::Tensor, at::Tensor> bn_bwd_sums(const c10::optional<at::Tensor>& sum_dz,
                                                     const c10::optional<at::Tensor>& sum_dzxh,
                                                     const at::Tensor& x) {
  at::Tensor sdz = bn_channel(sum_dz, "sum_dz", x), sdx = bn_channel(sum_dzxh, "sum_dz_xhat", x);
  PYDL_CHECK(sdz.defined() == sdx.defined(), "batch_norm backward: sum_dz and sum_dz_xhat "
             "must be given together");
  return {sdz, sdx};
}

// bn_bwd: the batch statistics exist only with values in every channel.
inline void bn_check_train_bwd(const BnShape& s) {
  PYDL_CHECK(s.count() > 0, "batch_norm backward: the training backward needs values in "
             "every channel (an empty batch has no batch statistics)");
}

// The elementwise pass's outputs: dx, and dz when wanted (undefined otherwise) ...
inline std::pair<at::Tensor, at::Tensor> bn_bwd_outputs(const at::Tensor& x, bool want_dz) {
  return {at::empty_like(x), want_dz ? at::empty_like(x) : at::Tensor()};
}

// ... returned with an empty tensor for an unwanted dz (the schema returns a Tensor).
inline at::Tensor bn_dz_result(const at::Tensor& dz, const at::Tensor& x) {
  return dz.defined() ? dz : at::empty({0}, x.options());
}

}  // namespace pydl

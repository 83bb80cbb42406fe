// Argument checks shared by the torch-facing optimizer files (csrc/cpu/optim.cpp,
// csrc/cuda/optim.cpp): every tensor list must line up with the parameters (device,
// shape, dense strides) so a kernel can walk a parameter, its gradient and its state with
// one linear index; the state dtype is float32 for 16-bit parameters. An op runs all of
// them before it touches any tensor: pydl/ops/optim.py relies on that (it calls the op
// first and, only when the op refuses its arguments, runs its own checks for the error
// message or the dense copies).
#pragma once

#include <optional>

#include "common.h"

namespace pydl {

// The state dtype for a parameter dtype: float32 for 16-bit parameters.
inline at::ScalarType state_dtype(at::ScalarType p) {
  return (p == at::kHalf || p == at::kBFloat16) ? at::kFloat : p;
}

// Every tensor of `list` must match params[i] in device, shape and strides, and be dense
// (so one linear index addresses the same element of each), with dtype `dtype` (or the
// parameter's dtype when dtype is Undefined). An empty list is allowed when `may_be_empty`.
inline void check_list(at::TensorList params, at::TensorList list, const char* name,
                at::ScalarType dtype, bool may_be_empty) {
  if (may_be_empty && list.empty()) return;
  PYDL_CHECK(list.size() == params.size(), name, " must have one tensor per parameter (",
             params.size(), "), got ", list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& t = list[i];
    const at::ScalarType want = dtype == at::ScalarType::Undefined ? p.scalar_type() : dtype;
    PYDL_CHECK(t.layout() == at::kStrided, name, "[", i, "] must be a strided (dense) tensor, "
               "got layout ", t.layout());
    PYDL_CHECK(t.device() == p.device(), name, "[", i, "] must be on ", p.device(), ", got ",
               t.device());
    PYDL_CHECK(t.scalar_type() == want, name, "[", i, "] must be ", want, ", got ",
               t.scalar_type());
    PYDL_CHECK(t.sizes() == p.sizes(), name, "[", i, "] must have the parameter's shape ",
               p.sizes(), ", got ", t.sizes());
    PYDL_CHECK(t.numel() <= 1 || (t.is_non_overlapping_and_dense() && t.strides() == p.strides()),
               name, "[", i, "] must be dense with the parameter's strides");
  }
}

inline void check_params(at::TensorList params, at::TensorList grads) {
  at::ScalarType dt = params.empty() ? at::kFloat : params[0].scalar_type();
  for (size_t i = 0; i < params.size(); ++i) {
    PYDL_CHECK(params[i].layout() == at::kStrided, "params[", i, "] must be a strided (dense) "
               "tensor, got layout ", params[i].layout());
    check_floating(params[i], "params");
    PYDL_CHECK(params[i].device() == params[0].device() && params[i].scalar_type() == dt,
               "params must all have the same device and dtype (one group)");
    PYDL_CHECK(params[i].numel() <= 1 || params[i].is_non_overlapping_and_dense(), "params[", i,
               "] must be dense");
  }
  check_list(params, grads, "grads", at::ScalarType::Undefined, false);
}

// state_steps: one float32 scalar tensor per parameter, on the parameters' device.
inline void check_steps(at::TensorList params, at::TensorList steps) {
  PYDL_CHECK(steps.size() == params.size(), "state_steps must have one tensor per parameter (",
             params.size(), "), got ", steps.size());
  for (size_t i = 0; i < steps.size(); ++i)
    PYDL_CHECK(steps[i].layout() == at::kStrided && steps[i].numel() == 1 &&
                   steps[i].scalar_type() == at::kFloat && steps[i].device() == params[i].device(),
               "state_steps[", i, "] must be a one-element float32 tensor on ",
               params[i].device());
}

}  // namespace pydl

// Shared by every torch-facing C++ file (csrc/pydl.cpp, csrc/cpu/*.cpp, csrc/cuda/*.cpp):
// argument checks, dtype dispatch and layout helpers.
//
// Only the narrow ATen headers are included: <torch/extension.h> costs ~40 s of g++
// per translation unit on a 2-core machine (DESIGN.md section 3).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>

#include "activation_math.h"
#include "dtype.h"

namespace pydl {

// TORCH_CHECK raises c10::Error, which Python sees as RuntimeError; the argument checks
// that users can trip raise ValueError/TypeError in Python first (pydl/ops), these are
// the second line of defence for direct torch.ops.pydl.* calls.
#define PYDL_CHECK(cond, ...) TORCH_CHECK(cond, "pydl: ", __VA_ARGS__)

inline void check_floating(const at::Tensor& t, const char* name) {
  PYDL_CHECK(t.is_floating_point(), name, " must be a floating-point tensor, got ",
             t.scalar_type());
}

inline void check_same_device_dtype(const at::Tensor& a, const char* an,
                                    const at::Tensor& b, const char* bn) {
  PYDL_CHECK(a.device() == b.device(), an, " and ", bn, " must be on the same device, got ",
             a.device(), " and ", b.device());
  PYDL_CHECK(a.scalar_type() == b.scalar_type(), an, " and ", bn,
             " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
}

inline void check_same_shape(const at::Tensor& a, const char* an, const at::Tensor& b,
                             const char* bn) {
  PYDL_CHECK(a.sizes() == b.sizes(), an, " and ", bn, " must have the same shape, got ",
             a.sizes(), " and ", b.sizes());
}

// Elementwise kernels walk memory linearly. A tensor that is non-overlapping and dense
// (contiguous, channels_last, a transpose...) can be walked as is, and an output made by
// empty_like has the very same strides -- the layout torch would give. Anything else
// (a strided slice) is first made contiguous.
inline at::Tensor dense(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : t.contiguous();
}

// `t` with the element order of `ref` (which must be dense), copying only when needed,
// so two tensors can be walked in lockstep by one linear index.
inline at::Tensor like_layout(const at::Tensor& t, const at::Tensor& ref) {
  if (t.strides() == ref.strides() && t.is_non_overlapping_and_dense()) return t;
  at::Tensor out = at::empty_like(ref);
  out.copy_(t);
  return out;
}

inline Act act_from_name(std::string_view name) {
  Act a = Act::ReLU;
  PYDL_CHECK(parse_act(name, &a), "unknown activation '", std::string(name), "'");
  return a;
}

// The dtype code handed to the CUDA launchers (which see no torch headers).
inline DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kDouble: return DType::F64;
    default: PYDL_CHECK(false, "unsupported dtype ", t);
  }
  return DType::F32;
}

}  // namespace pydl

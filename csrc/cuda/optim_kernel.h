// Launchers for the fused multi-tensor optimizer kernels (csrc/cuda/optim_kernel.cu).
// Raw pointers, sizes and a stream only (no torch headers): the .cpp glue gathers the
// tensors' data pointers into an OptimLists and calls one launcher per (device, dtype)
// group; the launcher packs them into kernel-argument metadata blocks and launches one
// kernel per block of tensors/chunks (usually one in all). Returns the cudaError_t of
// the launches as an int (0 = success).
#pragma once

#include <cstdint>

#include "dtype.h"
#include "optim_math.h"

typedef struct CUstream_st* cudaStream_t;

namespace pydl {

// The tensors of one group. Tensor i of list k lives at ptrs[k][i] (device pointer to
// dense storage of numels[i] elements; all lists of a tensor share its strides). List
// 0 is the parameters (dtype `dtype`), list 1 the gradients (same dtype), lists 2..4 the
// optimizer state (float32 for 16-bit parameters, else the parameters' dtype); a null
// ptrs[k] marks a state list the configuration does not use. steps[i] (device float32
// scalars; null for SGD) is tensor i's step count: the kernels compute the step-dependent
// scalars (bias corrections, decayed lr) from steps[i] + 1 on the device, and a last
// small launch increments every count -- all without the host reading anything.
struct OptimLists {
  int64_t n = 0;
  void* const* ptrs[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
  const int64_t* numels = nullptr;
  float* const* steps = nullptr;
};

// grad_scale (may be null): device float, divides every gradient, which is written back
// unscaled. found_inf (may be null): device float; != 0 makes every block return at once
// (step counts untouched) -- the step is skipped without a host synchronization.
int launch_sgd_step(DType dtype, const OptimLists& lists, const SgdHyper<double>& h,
                    const float* grad_scale, const float* found_inf, cudaStream_t stream);
// bias corrections from t = step + 1: step_size = lr / (1 - beta1^t), sqrt(1 - beta2^t)
int launch_adam_step(DType dtype, const OptimLists& lists, const AdamHyper<double>& h,
                     double lr, double beta1, double beta2, const float* grad_scale,
                     const float* found_inf, cudaStream_t stream);
int launch_rmsprop_step(DType dtype, const OptimLists& lists, const RmspropHyper<double>& h,
                        const float* grad_scale, const float* found_inf, cudaStream_t stream);
// decayed lr from t = step + 1: clr = lr / (1 + (t - 1) * lr_decay)
int launch_adagrad_step(DType dtype, const OptimLists& lists, const AdagradHyper<double>& h,
                        double lr, double lr_decay, const float* grad_scale,
                        const float* found_inf, cudaStream_t stream);

}  // namespace pydl

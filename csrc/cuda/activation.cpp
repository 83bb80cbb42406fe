// CUDA glue for the activations: argument checks, output allocation in the input's
// layout, the launch on the current stream (kernels in activation_kernel.cu), and the
// TORCH_LIBRARY_IMPL(pydl, CUDA) registration.
#include "common.h"
#include "cuda/activation_kernel.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace pydl {
namespace {

void check_launch(int err, const char* what) {
  PYDL_CHECK(err == 0, what, " launch failed: ", cudaGetErrorString(cudaError_t(err)));
}

at::Tensor act_fwd(const at::Tensor& x_in, c10::string_view act, double alpha) {
  check_floating(x_in, "input");
  const Act a = act_from_name(act);
  c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = dense(x_in);
  at::Tensor y = at::empty_like(x);
  check_launch(launch_act_fwd(a, to_dtype(x.scalar_type()), x.const_data_ptr(),
                              y.mutable_data_ptr(), x.numel(), alpha,
                              c10::cuda::getCurrentCUDAStream()),
               "pydl act_fwd");
  return y;
}

void act_fwd_(at::Tensor& x, c10::string_view act, double alpha) {
  check_floating(x, "input");
  const Act a = act_from_name(act);
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor t = dense(x);  // a strided view is computed on a dense copy and written back
  check_launch(launch_act_fwd(a, to_dtype(t.scalar_type()), t.const_data_ptr(),
                              t.mutable_data_ptr(), t.numel(), alpha,
                              c10::cuda::getCurrentCUDAStream()),
               "pydl act_fwd_");
  if (!t.is_same(x)) x.copy_(t);
}

at::Tensor act_bwd(const at::Tensor& grad_in, const at::Tensor& saved_in, c10::string_view act,
                   double alpha, bool is_result) {
  check_floating(saved_in, "saved");
  check_same_device_dtype(grad_in, "grad_output", saved_in, "saved");
  check_same_shape(grad_in, "grad_output", saved_in, "saved");
  const Act a = act_from_name(act);
  c10::cuda::CUDAGuard guard(saved_in.device());
  at::Tensor saved = dense(saved_in);
  at::Tensor grad = like_layout(grad_in, saved);
  at::Tensor dx = at::empty_like(saved);
  check_launch(launch_act_bwd(a, to_dtype(saved.scalar_type()), grad.const_data_ptr(),
                              saved.const_data_ptr(), dx.mutable_data_ptr(), saved.numel(),
                              alpha, is_result, c10::cuda::getCurrentCUDAStream()),
               "pydl act_bwd");
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydl, CUDA, m) {
  m.impl("act_fwd", &act_fwd);
  m.impl("act_fwd_", &act_fwd_);
  m.impl("act_bwd", &act_bwd);
}

}  // namespace pydl

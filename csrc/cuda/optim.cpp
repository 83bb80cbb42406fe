// CUDA glue for the fused multi-tensor optimizer steps: argument checks, gathering the
// tensors' data pointers (and the device pointers of the step counts, which the kernels
// read and increment themselves: nothing is read back to the host), the launch on the
// current stream (kernels in optim_kernel.cu), and the TORCH_LIBRARY_IMPL(pydl, CUDA)
// registration.
#include "common.h"
#include "cuda/optim_kernel.h"
#include "optim_common.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <vector>

namespace pydl {
namespace {

void check_launch(int err, const char* what) {
  PYDL_CHECK(err == 0, what, " launch failed: ", cudaGetErrorString(cudaError_t(err)));
}

// The data pointers of the lists of one group, kept alive while the launcher reads them.
struct Gathered {
  std::vector<void*> ptrs[5];
  std::vector<int64_t> numels;
  std::vector<float*> steps;
  OptimLists lists;

  Gathered(at::TensorList params, at::TensorList grads, at::TensorList s0, at::TensorList s1,
           at::TensorList s2, at::TensorList state_steps = {}) {
    for (const at::Tensor& t : state_steps) steps.push_back(static_cast<float*>(t.data_ptr()));
    if (!steps.empty()) lists.steps = steps.data();
    const at::TensorList all[5] = {params, grads, s0, s1, s2};
    for (int k = 0; k < 5; ++k) {
      if (all[k].empty()) continue;
      for (const at::Tensor& t : all[k]) ptrs[k].push_back(t.data_ptr());
      lists.ptrs[k] = ptrs[k].data();
    }
    for (const at::Tensor& p : params) numels.push_back(p.numel());
    lists.n = int64_t(params.size());
    lists.numels = numels.data();
  }
};

// GradScaler's tensors: one-element float32 on the parameters' device.
const float* amp_ptr(const std::optional<at::Tensor>& t, const at::Tensor& p0, const char* name) {
  if (!t.has_value()) return nullptr;
  PYDL_CHECK(t->numel() == 1 && t->scalar_type() == at::kFloat && t->device() == p0.device(),
             name, " must be a one-element float32 tensor on ", p0.device());
  return t->const_data_ptr<float>();
}

void check_cuda(at::TensorList params) {
  PYDL_CHECK(params[0].is_cuda(), "params must be CUDA tensors");
}

void sgd_step(at::TensorList params, at::TensorList grads, at::TensorList bufs, double lr,
              double momentum, double dampening, double weight_decay, bool nesterov,
              bool maximize, bool first, const std::optional<at::Tensor>& grad_scale,
              const std::optional<at::Tensor>& found_inf) {
  if (params.empty()) return;
  check_cuda(params);
  check_params(params, grads);
  const at::ScalarType sdt = state_dtype(params[0].scalar_type());
  check_list(params, bufs, "momentum_buffers", sdt, momentum == 0.0);
  PYDL_CHECK(momentum == 0.0 || !bufs.empty(), "momentum_buffers are needed when momentum != 0");
  c10::cuda::CUDAGuard guard(params[0].device());
  const float* gs = amp_ptr(grad_scale, params[0], "grad_scale");
  const float* fi = amp_ptr(found_inf, params[0], "found_inf");
  Gathered g(params, grads, momentum != 0.0 ? bufs : at::TensorList(), {}, {});
  const SgdHyper<double> h{lr, momentum, 1.0 - dampening, weight_decay, nesterov, maximize, first};
  check_launch(launch_sgd_step(to_dtype(params[0].scalar_type()), g.lists, h, gs, fi,
                               c10::cuda::getCurrentCUDAStream()),
               "pydl sgd_step");
}

void adam_step(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
               at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
               at::TensorList state_steps, double lr, double beta1, double beta2, double eps,
               double weight_decay, bool amsgrad, bool maximize, bool decoupled,
               const std::optional<at::Tensor>& grad_scale,
               const std::optional<at::Tensor>& found_inf) {
  if (params.empty()) return;
  check_cuda(params);
  check_params(params, grads);
  const at::ScalarType sdt = state_dtype(params[0].scalar_type());
  check_list(params, exp_avgs, "exp_avgs", sdt, false);
  check_list(params, exp_avg_sqs, "exp_avg_sqs", sdt, false);
  check_list(params, max_exp_avg_sqs, "max_exp_avg_sqs", sdt, !amsgrad);
  PYDL_CHECK(!amsgrad || !max_exp_avg_sqs.empty(), "max_exp_avg_sqs are needed with amsgrad");
  check_steps(params, state_steps);
  c10::cuda::CUDAGuard guard(params[0].device());
  const float* gs = amp_ptr(grad_scale, params[0], "grad_scale");
  const float* fi = amp_ptr(found_inf, params[0], "found_inf");
  Gathered g(params, grads, exp_avgs, exp_avg_sqs, amsgrad ? max_exp_avg_sqs : at::TensorList(),
             state_steps);
  const AdamHyper<double> h{1.0 - beta1, beta2, 1.0 - beta2, eps, weight_decay,
                            1.0 - lr * weight_decay, amsgrad, maximize, decoupled};
  check_launch(launch_adam_step(to_dtype(params[0].scalar_type()), g.lists, h, lr, beta1, beta2,
                                gs, fi, c10::cuda::getCurrentCUDAStream()),
               "pydl adam_step");
}

void rmsprop_step(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                  at::TensorList grad_avgs, at::TensorList bufs, at::TensorList state_steps,
                  double lr, double alpha,
                  double eps, double weight_decay, double momentum, bool centered,
                  bool maximize, const std::optional<at::Tensor>& grad_scale,
                  const std::optional<at::Tensor>& found_inf) {
  if (params.empty()) return;
  check_cuda(params);
  check_params(params, grads);
  const at::ScalarType sdt = state_dtype(params[0].scalar_type());
  check_list(params, square_avgs, "square_avgs", sdt, false);
  check_list(params, grad_avgs, "grad_avgs", sdt, !centered);
  check_list(params, bufs, "momentum_buffers", sdt, !(momentum > 0.0));
  PYDL_CHECK(!centered || !grad_avgs.empty(), "grad_avgs are needed when centered");
  PYDL_CHECK(!(momentum > 0.0) || !bufs.empty(), "momentum_buffers are needed when momentum > 0");
  check_steps(params, state_steps);
  c10::cuda::CUDAGuard guard(params[0].device());
  const float* gs = amp_ptr(grad_scale, params[0], "grad_scale");
  const float* fi = amp_ptr(found_inf, params[0], "found_inf");
  Gathered g(params, grads, square_avgs, centered ? grad_avgs : at::TensorList(),
             momentum > 0.0 ? bufs : at::TensorList(), state_steps);
  const RmspropHyper<double> h{lr, alpha, 1.0 - alpha, eps, weight_decay, momentum, centered,
                               maximize};
  check_launch(launch_rmsprop_step(to_dtype(params[0].scalar_type()), g.lists, h, gs, fi,
                                   c10::cuda::getCurrentCUDAStream()),
               "pydl rmsprop_step");
}

void adagrad_step(at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                  at::TensorList state_steps, double lr, double lr_decay, double weight_decay,
                  double eps, bool maximize, const std::optional<at::Tensor>& grad_scale,
                  const std::optional<at::Tensor>& found_inf) {
  if (params.empty()) return;
  check_cuda(params);
  check_params(params, grads);
  const at::ScalarType sdt = state_dtype(params[0].scalar_type());
  check_list(params, state_sums, "state_sums", sdt, false);
  check_steps(params, state_steps);
  c10::cuda::CUDAGuard guard(params[0].device());
  const float* gs = amp_ptr(grad_scale, params[0], "grad_scale");
  const float* fi = amp_ptr(found_inf, params[0], "found_inf");
  Gathered g(params, grads, state_sums, {}, {}, state_steps);
  const AdagradHyper<double> h{eps, weight_decay, maximize};
  check_launch(launch_adagrad_step(to_dtype(params[0].scalar_type()), g.lists, h, lr, lr_decay,
                                   gs, fi, c10::cuda::getCurrentCUDAStream()),
               "pydl adagrad_step");
}

}  // namespace

TORCH_LIBRARY_IMPL(pydl, CUDA, m) {
  m.impl("sgd_step", &sgd_step);
  m.impl("adam_step", &adam_step);
  m.impl("rmsprop_step", &rmsprop_step);
  m.impl("adagrad_step", &adagrad_step);
}

}  // namespace pydl

// Fused multi-tensor optimizer steps on the GPU: SGD, Adam/AdamW, RMSprop, Adagrad -- the
// launchers. They turn the double hyperparameters into the kernels' functors, let the
// plan of csrc/cuda/optim_device.cuh cut the group into launches (the algorithm, the
// kernels and the metadata blocks are described and defined there), and launch each on
// the caller's stream. CUDA runtime headers only (no torch).
#include "optim_kernel.h"
#include "elementwise.cuh"

#include "optim_device.cuh"

namespace pydl {
namespace {

using namespace optim_detail;

// One (dtype, optimizer) step over the group: the multi-tensor launches, then the step
// counts' increment (after them on the same stream: every block has read its count).
template <typename T, typename S, int DEPTH, typename Op>
int multi_tensor_apply(const OptimLists& l, const Op& op, const float* grad_scale,
                       const float* found_inf, cudaStream_t stream) {
  const unsigned used = used_lists<DEPTH>(l);
  int err = plan_multi_tensor<DEPTH>(l, [&](const TensorListMeta<DEPTH>& meta, int chunks) {
    multi_tensor_kernel<T, S, DEPTH, Op>
        <<<chunks, kBlock, 0, stream>>>(meta, op, used, grad_scale, found_inf);
    return int(cudaGetLastError());
  });
  if (err == 0)
    err = plan_step_bumps(l, [&](const StepList& sl) {
      bump_steps_kernel<<<1, kMaxSteps, 0, stream>>>(sl, found_inf);
      return int(cudaGetLastError());
    });
  return err;
}

}  // namespace

int launch_sgd_step(DType dtype, const OptimLists& l, const SgdHyper<double>& h,
                    const float* grad_scale, const float* found_inf, cudaStream_t stream) {
  int err = 0;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using C = typename OpMath<T>::type;
    err = multi_tensor_apply<T, C, 3>(l, sgd_op<C>(h), grad_scale, found_inf, stream);
  });
  return err;
}

int launch_adam_step(DType dtype, const OptimLists& l, const AdamHyper<double>& h, double lr,
                     double beta1, double beta2, const float* grad_scale,
                     const float* found_inf, cudaStream_t stream) {
  int err = 0;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using C = typename OpMath<T>::type;
    err = multi_tensor_apply<T, C, 5>(l, adam_op<C>(h, lr, beta1, beta2), grad_scale,
                                      found_inf, stream);
  });
  return err;
}

int launch_rmsprop_step(DType dtype, const OptimLists& l, const RmspropHyper<double>& h,
                        const float* grad_scale, const float* found_inf, cudaStream_t stream) {
  int err = 0;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using C = typename OpMath<T>::type;
    err = multi_tensor_apply<T, C, 5>(l, rmsprop_op<C>(h), grad_scale, found_inf, stream);
  });
  return err;
}

int launch_adagrad_step(DType dtype, const OptimLists& l, const AdagradHyper<double>& h,
                        double lr, double lr_decay, const float* grad_scale,
                        const float* found_inf, cudaStream_t stream) {
  int err = 0;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using C = typename OpMath<T>::type;
    err = multi_tensor_apply<T, C, 3>(l, adagrad_op<C>(h, lr, lr_decay), grad_scale, found_inf,
                                      stream);
  });
  return err;
}

}  // namespace pydl

// CUDA glue for batch normalization: argument checks, the layout the kernels walk,
// allocation (outputs in the input's layout, the statistics and the reductions'
// scratch space), the launches on the current stream (kernels in batchnorm_kernel.cu),
// and the TORCH_LIBRARY_IMPL(pydl, CUDA) registration. Same ops and semantics as
// csrc/cpu/batchnorm.cpp.
#include "batchnorm.h"
#include "cuda/batchnorm_kernel.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

namespace pydl {
namespace {

void check_launch(int err, const char* what) {
  PYDL_CHECK(err == 0, what, " launch failed: ", cudaGetErrorString(cudaError_t(err)));
}

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

at::Tensor workspace(const at::Tensor& x, const BnShape& s) {
  return at::empty({bn_workspace_elems(s.outer, s.C, s.inner)},
                   x.options().dtype(bn_ctype(x)));
}

std::tuple<at::Tensor, at::Tensor> stats(const at::Tensor& x) {
  const BnShape s = bn_shape(x);
  at::Tensor mean = bn_empty_stats(x), var = bn_empty_stats(x);
  at::Tensor ws = workspace(x, s);
  check_launch(launch_bn_stats(to_dtype(x.scalar_type()), x.const_data_ptr(), s.outer, s.C,
                               s.inner, mean.mutable_data_ptr(), var.mutable_data_ptr(),
                               ws.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()),
               "pydl bn_stats");
  return {mean, var};
}

at::Tensor normalize(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                     const at::Tensor& w, const at::Tensor& b, const at::Tensor& r, double eps,
                     BnAct act, double alpha) {
  const BnShape s = bn_shape(x);
  at::Tensor y = at::empty_like(x);
  check_launch(launch_bn_normalize(act, to_dtype(x.scalar_type()), x.const_data_ptr(),
                                   ptr_or_null(r), y.mutable_data_ptr(), mean.const_data_ptr(),
                                   var.const_data_ptr(), ptr_or_null(w), ptr_or_null(b), eps,
                                   alpha, s.outer, s.C, s.inner,
                                   c10::cuda::getCurrentCUDAStream()),
               "pydl bn_fwd");
  return y;
}

std::tuple<at::Tensor, at::Tensor> bn_stats(const at::Tensor& x_in) {
  bn_check_input(x_in);
  c10::cuda::CUDAGuard guard(x_in.device());
  return stats(bn_dense(x_in));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_fwd_train(
    const at::Tensor& x_in, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual, double eps,
    c10::string_view act, double alpha) {
  bn_check_input(x_in);
  const BnAct a = bn_act_from_name(act);
  c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = bn_dense(x_in);
  at::Tensor w = bn_channel(weight, "weight", x), b = bn_channel(bias, "bias", x);
  at::Tensor r = bn_like_x(residual, "residual", x);
  auto [mean, var] = stats(x);
  return {normalize(x, mean, var, w, b, r, eps, a, alpha), mean, var};
}

at::Tensor bn_fwd_eval(const at::Tensor& x_in, const at::Tensor& mean_in,
                       const at::Tensor& var_in, const c10::optional<at::Tensor>& weight,
                       const c10::optional<at::Tensor>& bias,
                       const c10::optional<at::Tensor>& residual, double eps,
                       c10::string_view act, double alpha) {
  bn_check_input(x_in);
  const BnAct a = bn_act_from_name(act);
  c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = bn_dense(x_in);
  at::Tensor mean = bn_channel(mean_in, "running_mean", x);
  at::Tensor var = bn_channel(var_in, "running_var", x);
  at::Tensor w = bn_channel(weight, "weight", x), b = bn_channel(bias, "bias", x);
  at::Tensor r = bn_like_x(residual, "residual", x);
  return normalize(x, mean, var, w, b, r, eps, a, alpha);
}

void bwd_reduce_into(const BnBwdArgs& b, double eps, double alpha, at::Tensor& sum_dz,
                     at::Tensor& sum_dzxh) {
  const BnShape& s = b.s;
  at::Tensor ws = workspace(b.x, s);
  check_launch(launch_bn_bwd_reduce(b.act, to_dtype(b.x.scalar_type()), b.g.const_data_ptr(),
                                    b.x.const_data_ptr(), ptr_or_null(b.y), b.mean.const_data_ptr(),
                                    b.var.const_data_ptr(), eps, alpha, s.outer, s.C, s.inner,
                                    sum_dz.mutable_data_ptr(), sum_dzxh.mutable_data_ptr(),
                                    ws.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()),
               "pydl bn_bwd_reduce");
}

// dz may be undefined (not wanted); sdz / sdx undefined: the eval backward.
void bwd_elemt_into(const BnBwdArgs& b, const at::Tensor& sdz, const at::Tensor& sdx, double eps,
                    double inv_count, double alpha, at::Tensor& dx, at::Tensor& dz) {
  const BnShape& s = b.s;
  check_launch(launch_bn_bwd_elemt(b.act, to_dtype(b.x.scalar_type()), b.g.const_data_ptr(),
                                   b.x.const_data_ptr(), ptr_or_null(b.y), b.mean.const_data_ptr(),
                                   b.var.const_data_ptr(), ptr_or_null(b.w), ptr_or_null(sdz),
                                   ptr_or_null(sdx), eps, inv_count, alpha,
                                   dx.mutable_data_ptr(), dz.defined() ? dz.mutable_data_ptr() : nullptr,
                                   s.outer, s.C, s.inner, c10::cuda::getCurrentCUDAStream()),
               "pydl bn_bwd_elemt");
}

std::tuple<at::Tensor, at::Tensor> bn_bwd_reduce(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& mean_in,
    const at::Tensor& var_in, const c10::optional<at::Tensor>& y_in, double eps,
    c10::string_view act, double alpha) {
  bn_check_input(x_in);
  c10::cuda::CUDAGuard guard(x_in.device());
  const BnBwdArgs b = bn_bwd_args(grad_in, x_in, mean_in, var_in, c10::nullopt, y_in, act);
  at::Tensor sum_dz = bn_empty_stats(b.x), sum_dzxh = bn_empty_stats(b.x);
  bwd_reduce_into(b, eps, alpha, sum_dz, sum_dzxh);
  return {sum_dz, sum_dzxh};
}

std::tuple<at::Tensor, at::Tensor> bn_bwd_elemt(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& mean_in,
    const at::Tensor& var_in, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& y_in, const c10::optional<at::Tensor>& sum_dz_in,
    const c10::optional<at::Tensor>& sum_dzxh_in, double eps, double inv_count,
    c10::string_view act, double alpha, bool want_dz) {
  bn_check_input(x_in);
  c10::cuda::CUDAGuard guard(x_in.device());
  const BnBwdArgs b = bn_bwd_args(grad_in, x_in, mean_in, var_in, weight, y_in, act);
  auto [sdz, sdx] = bn_bwd_sums(sum_dz_in, sum_dzxh_in, b.x);
  auto [dx, dz] = bn_bwd_outputs(b.x, want_dz);
  bwd_elemt_into(b, sdz, sdx, eps, inv_count, alpha, dx, dz);
  return {dx, bn_dz_result(dz, b.x)};
}

// The training backward in one call (one op call from Python instead of two): the
// reduction, then the elementwise pass with its sums, on the same stream.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_bwd(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& mean_in,
    const at::Tensor& var_in, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& y_in, double eps, c10::string_view act, double alpha,
    bool want_dz) {
  bn_check_input(x_in);
  c10::cuda::CUDAGuard guard(x_in.device());
  const BnBwdArgs b = bn_bwd_args(grad_in, x_in, mean_in, var_in, weight, y_in, act);
  bn_check_train_bwd(b.s);
  at::Tensor sum_dz = bn_empty_stats(b.x), sum_dzxh = bn_empty_stats(b.x);
  auto [dx, dz] = bn_bwd_outputs(b.x, want_dz);
  bwd_reduce_into(b, eps, alpha, sum_dz, sum_dzxh);
  bwd_elemt_into(b, sum_dz, sum_dzxh, eps, 1.0 / double(b.s.count()), alpha, dx, dz);
  return {dx, bn_dz_result(dz, b.x), sum_dz, sum_dzxh};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydl, CUDA, m) {
  m.impl("bn_stats", &bn_stats);
  m.impl("bn_fwd_train", &bn_fwd_train);
  m.impl("bn_fwd_eval", &bn_fwd_eval);
  m.impl("bn_bwd_reduce", &bn_bwd_reduce);
  m.impl("bn_bwd_elemt", &bn_bwd_elemt);
  m.impl("bn_bwd", &bn_bwd);
}

}  // namespace pydl

// CUDA glue for pooling: argument checks, the input made NCHW- or NHWC-contiguous in the
// memory format torch's pooling picks (suggest_memory_format), output allocation in that
// format, the launch on the current stream (kernels in pool_kernel.cu), and the
// TORCH_LIBRARY_IMPL(pydl, CUDA) registration. Same checks and layout rules as
// csrc/cpu/pool.cpp.
#include "common.h"
#include "cuda/pool_kernel.h"
#include "pool_math.h"

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

namespace pydl {
namespace {

void check_launch(int err, const char* what) {
  PYDL_CHECK(err == 0, what, " launch failed: ", cudaGetErrorString(cudaError_t(err)));
}

void check_pair(at::IntArrayRef v, const char* name, int64_t min_value) {
  PYDL_CHECK(v.size() == 2, name, " must have 2 elements, got ", v.size());
  PYDL_CHECK(v[0] >= min_value && v[1] >= min_value, name, " must be >= ", min_value,
             ", got ", v);
}

at::MemoryFormat format_of(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

at::Tensor prepare_input(const at::Tensor& x, bool* cl) {
  check_floating(x, "input");
  PYDL_CHECK(x.is_cuda(), "input must be a CUDA tensor");
  PYDL_CHECK(x.dim() == 4, "input must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  // (no channels is allowed here: the output is empty; pydl.ops.pool applies torch's
  // per-op rules, which allow that for adaptive average pooling only)
  PYDL_CHECK(x.size(2) > 0 && x.size(3) > 0, "input must have non-zero H and W, got ", x.sizes());
  const at::MemoryFormat fmt = x.suggest_memory_format();
  *cl = fmt == at::MemoryFormat::ChannelsLast;
  return x.contiguous(fmt);
}

// Sizes of a forward; the window arguments are filled in by the caller.
PoolParams fwd_params(const at::Tensor& x, at::IntArrayRef out) {
  PoolParams p{};
  p.N = x.size(0);
  p.C = x.size(1);
  p.IH = x.size(2);
  p.IW = x.size(3);
  p.OH = out[0];
  p.OW = out[1];
  p.kh = p.kw = p.sh = p.sw = p.dh = p.dw = 1;
  p.ph = p.pw = 0;
  p.count_include_pad = true;
  p.divisor_override = 0;
  return p;
}

PoolParams bwd_params(const at::Tensor& grad, at::IntArrayRef input_size) {
  check_floating(grad, "grad_output");
  PYDL_CHECK(grad.is_cuda(), "grad_output must be a CUDA tensor");
  PYDL_CHECK(grad.dim() == 4, "grad_output must be 4-D, got ", grad.dim(), "-D");
  check_pair(input_size, "input_size", 1);
  PoolParams p{};
  p.N = grad.size(0);
  p.C = grad.size(1);
  p.IH = input_size[0];
  p.IW = input_size[1];
  p.OH = grad.size(2);
  p.OW = grad.size(3);
  p.kh = p.kw = p.sh = p.sw = p.dh = p.dw = 1;
  p.ph = p.pw = 0;
  p.count_include_pad = true;
  p.divisor_override = 0;
  return p;
}

void set_window(PoolParams& p, at::IntArrayRef kernel, at::IntArrayRef stride,
                at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_pair(kernel, "kernel_size", 1);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  p.kh = kernel[0];
  p.kw = kernel[1];
  p.sh = stride[0];
  p.sw = stride[1];
  p.ph = padding[0];
  p.pw = padding[1];
  p.dh = dilation[0];
  p.dw = dilation[1];
}

std::tuple<at::Tensor, at::Tensor> fwd(PoolMode mode, const at::Tensor& x_in, PoolParams p,
                                       bool with_indices, const char* what) {
  c10::cuda::CUDAGuard guard(x_in.device());
  bool cl = false;
  at::Tensor x = prepare_input(x_in, &cl);
  at::Tensor y = at::empty({p.N, p.C, p.OH, p.OW}, x.options().memory_format(format_of(cl)));
  at::Tensor ind = with_indices
      ? at::empty({p.N, p.C, p.OH, p.OW}, x.options().dtype(at::kLong).memory_format(format_of(cl)))
      : at::empty({0}, x.options().dtype(at::kLong));
  check_launch(launch_pool_fwd(mode, to_dtype(x.scalar_type()), cl, x.const_data_ptr(),
                               y.mutable_data_ptr(),
                               with_indices ? ind.mutable_data_ptr<int64_t>() : nullptr, p,
                               c10::cuda::getCurrentCUDAStream()),
               what);
  return {y, ind};
}

at::Tensor bwd(PoolMode mode, const at::Tensor& grad_in, const at::Tensor* ind_in,
               const PoolParams& p, bool cl, const char* what) {
  c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor g = grad_in.contiguous(format_of(cl));
  at::Tensor ind;
  if (ind_in) {
    PYDL_CHECK(ind_in->scalar_type() == at::kLong, "indices must be int64, got ",
               ind_in->scalar_type());
    PYDL_CHECK(ind_in->device() == grad_in.device(), "indices must be on ", grad_in.device());
    check_same_shape(grad_in, "grad_output", *ind_in, "indices");
    ind = ind_in->contiguous(format_of(cl));
  }
  at::Tensor dx = at::empty({p.N, p.C, p.IH, p.IW}, g.options().memory_format(format_of(cl)));
  if (p.OH == 0 || p.OW == 0) return dx.zero_();  // an empty adaptive output
  check_launch(launch_pool_bwd(mode, to_dtype(g.scalar_type()), cl, g.const_data_ptr(),
                               ind_in ? ind.const_data_ptr<int64_t>() : nullptr,
                               dx.mutable_data_ptr(), p, c10::cuda::getCurrentCUDAStream()),
               what);
  return dx;
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_fwd(const at::Tensor& x, at::IntArrayRef kernel,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, at::IntArrayRef out_size,
                                                  bool with_indices) {
  check_pair(out_size, "output_size", 1);
  PYDL_CHECK(x.dim() == 4, "input must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  PoolParams p = fwd_params(x, out_size);
  set_window(p, kernel, stride, padding, dilation);
  return fwd(PoolMode::Max, x, p, with_indices, "pydl max_pool2d_fwd");
}

at::Tensor max_pool2d_bwd(const at::Tensor& grad, const at::Tensor& indices,
                          at::IntArrayRef input_size, at::IntArrayRef kernel,
                          at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, bool channels_last) {
  PoolParams p = bwd_params(grad, input_size);
  set_window(p, kernel, stride, padding, dilation);
  return bwd(PoolMode::Max, grad, &indices, p, channels_last, "pydl max_pool2d_bwd");
}

at::Tensor avg_pool2d_fwd(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef out_size,
                          bool count_include_pad, int64_t divisor_override) {
  check_pair(out_size, "output_size", 1);
  PYDL_CHECK(x.dim() == 4, "input must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  PoolParams p = fwd_params(x, out_size);
  set_window(p, kernel, stride, padding, {1, 1});
  p.count_include_pad = count_include_pad;
  p.divisor_override = divisor_override;
  return std::get<0>(fwd(PoolMode::Avg, x, p, false, "pydl avg_pool2d_fwd"));
}

at::Tensor avg_pool2d_bwd(const at::Tensor& grad, at::IntArrayRef input_size,
                          at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                          bool count_include_pad, int64_t divisor_override, bool channels_last) {
  PoolParams p = bwd_params(grad, input_size);
  set_window(p, kernel, stride, padding, {1, 1});
  p.count_include_pad = count_include_pad;
  p.divisor_override = divisor_override;
  return bwd(PoolMode::Avg, grad, nullptr, p, channels_last, "pydl avg_pool2d_bwd");
}

at::Tensor adaptive_avg_pool2d_fwd(const at::Tensor& x, at::IntArrayRef out_size) {
  check_pair(out_size, "output_size", 0);
  PYDL_CHECK(x.dim() == 4, "input must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  return std::get<0>(fwd(PoolMode::AdaptiveAvg, x, fwd_params(x, out_size), false,
                         "pydl adaptive_avg_pool2d_fwd"));
}

at::Tensor adaptive_avg_pool2d_bwd(const at::Tensor& grad, at::IntArrayRef input_size,
                                   bool channels_last) {
  return bwd(PoolMode::AdaptiveAvg, grad, nullptr, bwd_params(grad, input_size), channels_last,
             "pydl adaptive_avg_pool2d_bwd");
}

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d_fwd(const at::Tensor& x,
                                                           at::IntArrayRef out_size,
                                                           bool with_indices) {
  check_pair(out_size, "output_size", 0);
  PYDL_CHECK(x.dim() == 4, "input must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  return fwd(PoolMode::AdaptiveMax, x, fwd_params(x, out_size), with_indices,
             "pydl adaptive_max_pool2d_fwd");
}

at::Tensor adaptive_max_pool2d_bwd(const at::Tensor& grad, const at::Tensor& indices,
                                   at::IntArrayRef input_size, bool channels_last) {
  return bwd(PoolMode::AdaptiveMax, grad, &indices, bwd_params(grad, input_size), channels_last,
             "pydl adaptive_max_pool2d_bwd");
}

at::Tensor pool_gather(const at::Tensor& x_in, const at::Tensor& ind_in, bool channels_last) {
  check_floating(x_in, "input");
  PYDL_CHECK(x_in.is_cuda() && ind_in.device() == x_in.device(),
             "input and indices must be on the same CUDA device");
  PYDL_CHECK(x_in.dim() == 4 && ind_in.dim() == 4, "input and indices must be 4-D");
  PYDL_CHECK(ind_in.scalar_type() == at::kLong, "indices must be int64, got ", ind_in.scalar_type());
  PYDL_CHECK(x_in.size(0) == ind_in.size(0) && x_in.size(1) == ind_in.size(1),
             "input and indices must agree in N and C, got ", x_in.sizes(), " and ", ind_in.sizes());
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(format_of(channels_last));
  const at::Tensor ind = ind_in.contiguous(format_of(channels_last));
  at::Tensor out = at::empty(ind.sizes(), x.options().memory_format(format_of(channels_last)));
  check_launch(launch_pool_gather(to_dtype(x.scalar_type()), channels_last, x.const_data_ptr(),
                                  ind.const_data_ptr<int64_t>(), out.mutable_data_ptr(),
                                  x.size(0), x.size(1), x.size(2) * x.size(3),
                                  ind.size(2) * ind.size(3), c10::cuda::getCurrentCUDAStream()),
               "pydl pool_gather");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydl, CUDA, m) {
  m.impl("pool_gather", &pool_gather);
  m.impl("max_pool2d_fwd", &max_pool2d_fwd);
  m.impl("max_pool2d_bwd", &max_pool2d_bwd);
  m.impl("avg_pool2d_fwd", &avg_pool2d_fwd);
  m.impl("avg_pool2d_bwd", &avg_pool2d_bwd);
  m.impl("adaptive_avg_pool2d_fwd", &adaptive_avg_pool2d_fwd);
  m.impl("adaptive_avg_pool2d_bwd", &adaptive_avg_pool2d_bwd);
  m.impl("adaptive_max_pool2d_fwd", &adaptive_max_pool2d_fwd);
  m.impl("adaptive_max_pool2d_bwd", &adaptive_max_pool2d_bwd);
}

}  // namespace pydl

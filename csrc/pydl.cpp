// pydl._C: the operator schemas (one line per op, grouped by op family) and the
// pybind11 build information.
//
// Each backend file adds its kernels with TORCH_LIBRARY_IMPL(pydl, CPU|CUDA, m); the
// fake (meta) kernels and autograd formulas are registered from Python in pydl/ops/,
// the one place that also chooses the backend.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>

#include <string>
#include <vector>

TORCH_LIBRARY(pydl, m) {
  // Each family first names the module holding its Python registrations (fake
  // kernels, autograd), so torch can import it when an op is used before pydl is.

  m.set_python_module("pydl.ops.activation");
  // act is relu | leaky_relu | elu | sigmoid | tanh,
  // alpha is negative_slope (leaky_relu) or alpha (elu). `saved` is the output when
  // is_result, else the input.
  m.def("act_fwd(Tensor x, str act, float alpha) -> Tensor");
  m.def("act_fwd_(Tensor(a!) x, str act, float alpha) -> ()");
  m.def("act_bwd(Tensor grad, Tensor saved, str act, float alpha, bool is_result) -> Tensor");

  m.set_python_module("pydl.ops.optim");
  // Fused multi-tensor optimizer steps: each call updates every parameter of one
  // (device, dtype) group and its state in place. State lists that a configuration does
  // not use are empty. state_steps[i] is parameter i's step count (a float32 scalar
  // tensor on the parameters' device), read by the kernels and incremented by the op.
  // grad_scale divides the gradients (which are written back unscaled, as torch's fused
  // optimizers do; untouched without grad_scale); found_inf != 0 skips the whole step,
  // step counts included, decided on the device (no host synchronization).
  m.def("sgd_step(Tensor(a!)[] params, Tensor(g!)[] grads, Tensor(b!)[] momentum_buffers, "
        "float lr, float momentum, float dampening, float weight_decay, bool nesterov, "
        "bool maximize, bool first, Tensor? grad_scale, Tensor? found_inf) -> ()");
  m.def("adam_step(Tensor(a!)[] params, Tensor(g!)[] grads, Tensor(b!)[] exp_avgs, "
        "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] state_steps, "
        "float lr, float beta1, float beta2, float eps, float weight_decay, bool amsgrad, "
        "bool maximize, bool decoupled, Tensor? grad_scale, Tensor? found_inf) -> ()");
  m.def("rmsprop_step(Tensor(a!)[] params, Tensor(g!)[] grads, Tensor(b!)[] square_avgs, "
        "Tensor(c!)[] grad_avgs, Tensor(d!)[] momentum_buffers, Tensor(e!)[] state_steps, "
        "float lr, float alpha, float eps, float weight_decay, float momentum, bool centered, "
        "bool maximize, Tensor? grad_scale, Tensor? found_inf) -> ()");
  m.def("adagrad_step(Tensor(a!)[] params, Tensor(g!)[] grads, Tensor(b!)[] state_sums, "
        "Tensor(e!)[] state_steps, float lr, float lr_decay, float weight_decay, float eps, "
        "bool maximize, Tensor? grad_scale, Tensor? found_inf) -> ()");

  m.set_python_module("pydl.ops.batchnorm");
  // x is (N, C, *); per-channel tensors are (C,); statistics and sums come out in float32
  // (float64 for float64 x). act is none | relu | leaky_relu (alpha = negative_slope),
  // applied after the optional residual add. y is the saved output (needed unless
  // act == none). sum_dz/sum_dz_xhat None = eval backward; inv_count = 1 / values per
  // channel. The second output of bn_bwd_elemt is dz (for the residual) when want_dz,
  // else empty.
  m.def("bn_stats(Tensor x) -> (Tensor, Tensor)");
  m.def("bn_fwd_train(Tensor x, Tensor? weight, Tensor? bias, Tensor? residual, float eps, "
        "str act, float alpha) -> (Tensor, Tensor, Tensor)");
  m.def("bn_fwd_eval(Tensor x, Tensor mean, Tensor var, Tensor? weight, Tensor? bias, "
        "Tensor? residual, float eps, str act, float alpha) -> Tensor");
  m.def("bn_bwd_reduce(Tensor grad, Tensor x, Tensor mean, Tensor var, Tensor? y, float eps, "
        "str act, float alpha) -> (Tensor, Tensor)");
  m.def("bn_bwd_elemt(Tensor grad, Tensor x, Tensor mean, Tensor var, Tensor? weight, "
        "Tensor? y, Tensor? sum_dz, Tensor? sum_dz_xhat, float eps, float inv_count, str act, "
        "float alpha, bool want_dz) -> (Tensor, Tensor)");

  m.set_python_module("pydl.ops.pool");
  // 4-D input (N, C, H, W), NCHW or channels_last; outputs in the input's memory format
  // (torch's suggest_memory_format), backward outputs in the format named by
  // channels_last. Output sizes and argument validity are settled in pydl/ops/pool.py.
  // indices: int64 flat h*W + w into the input plane (an empty tensor when
  // with_indices is false); divisor_override 0 means none. Sizes that follow the
  // input's shape are SymInt, so torch.compile(dynamic=True) keeps H and W symbolic.
  m.def("max_pool2d_fwd(Tensor x, int[2] kernel, int[2] stride, int[2] padding, int[2] dilation, "
        "SymInt[2] out_size, bool with_indices) -> (Tensor, Tensor)");
  m.def("max_pool2d_bwd(Tensor grad, Tensor indices, SymInt[2] input_size, int[2] kernel, "
        "int[2] stride, int[2] padding, int[2] dilation, bool channels_last) -> Tensor");
  m.def("avg_pool2d_fwd(Tensor x, int[2] kernel, int[2] stride, int[2] padding, SymInt[2] out_size, "
        "bool count_include_pad, int divisor_override) -> Tensor");
  m.def("avg_pool2d_bwd(Tensor grad, SymInt[2] input_size, int[2] kernel, int[2] stride, "
        "int[2] padding, bool count_include_pad, int divisor_override, bool channels_last) -> Tensor");
  m.def("adaptive_avg_pool2d_fwd(Tensor x, SymInt[2] out_size) -> Tensor");
  m.def("adaptive_avg_pool2d_bwd(Tensor grad, SymInt[2] input_size, bool channels_last) -> Tensor");
  m.def("adaptive_max_pool2d_fwd(Tensor x, SymInt[2] out_size, bool with_indices) -> (Tensor, Tensor)");
  m.def("adaptive_max_pool2d_bwd(Tensor grad, Tensor indices, SymInt[2] input_size, "
        "bool channels_last) -> Tensor");
  // out[n, c, o] = x[n, c, indices[n, c, o]] (x's plane flattened): the derivative of the
  // max pools' backward with respect to its grad, i.e. their double backward.
  m.def("pool_gather(Tensor x, Tensor indices, bool channels_last) -> Tensor");

  m.set_python_module("pydl.ops.conv");
  // 2-D convolution. padding is [top, left, bottom, right] (bottom/right may exceed
  // top/left: padding='same' with an even kernel); act is none | relu (fused epilogue);
  // channels_last picks the memory format of the returned tensor.
  m.def("conv2d_fwd(Tensor x, Tensor w, Tensor? b, int[] stride, int[] padding, int[] dilation, "
        "int groups, str act, bool channels_last) -> Tensor");
  m.def("conv2d_bwd_input(Tensor grad, Tensor w, int[] input_size, int[] stride, int[] padding, "
        "int[] dilation, int groups, bool channels_last) -> Tensor");
  m.def("conv2d_bwd_weight(Tensor grad, Tensor x, int[] weight_size, int[] stride, int[] padding, "
        "int[] dilation, int groups, bool channels_last) -> Tensor");
  m.def("conv2d_bwd_bias(Tensor grad) -> Tensor");
}

namespace {

#ifndef PYDL_CUDA_ARCH_LIST
#define PYDL_CUDA_ARCH_LIST ""
#endif
#ifndef PYDL_CUDA_VERSION
#define PYDL_CUDA_VERSION ""
#endif

pybind11::dict build_info() {
  pybind11::dict d;
  std::vector<std::string> backends{"cpu"};
#ifdef PYDL_WITH_CUDA
  backends.push_back("cuda");
#endif
  d["compiled_backends"] = backends;
  d["cuda_arch_list"] = std::string(PYDL_CUDA_ARCH_LIST);
  d["cuda_version"] = std::string(PYDL_CUDA_VERSION);
  d["torch_version"] = std::string(TORCH_VERSION_BUILT);
  d["compiler"] = std::string(__VERSION__);
#ifdef NDEBUG
  d["debug"] = false;
#else
  d["debug"] = true;
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pydl C++/CUDA kernels (registered as torch.ops.pydl.*) and build info";
  m.def("build_info", &build_info,
        "What this build of pydl._C contains: compiled backends, CUDA arch list, versions.");
}

// pydl._C: the operator schemas (one line per op, grouped by op family), the pybind11
// build information, and pydl._C.eager: each op called through the dispatcher from C++.
//
// Each backend file adds its kernels with TORCH_LIBRARY_IMPL(pydl, CPU|CUDA, m); the
// fake (meta) kernels and autograd formulas are registered from Python in pydl/ops/,
// the one place that also chooses the backend.
#include <ATen/core/dispatch/Dispatcher.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>
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
  // The training backward in one op: bn_bwd_reduce, then bn_bwd_elemt with its sums and
  // inv_count = 1 / values per channel. Returns (dx, dz or empty, sum_dz, sum_dz_xhat).
  m.def("bn_bwd(Tensor grad, Tensor x, Tensor mean, Tensor var, Tensor? weight, Tensor? y, "
        "float eps, str act, float alpha, bool want_dz) -> (Tensor, Tensor, Tensor, Tensor)");

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

// ----------------------------------------------------------------- eager entry points
// pydl._C.eager.<op>(...) is torch.ops.pydl.<op>(...) without torch.ops' boxed Python
// calling convention. torch.ops turns every Python argument into an IValue by matching it
// against the schema, then unboxes them again for the kernel: ~3 us of host time a call on
// the development machine (a small max_pool2d: 5.2 us through torch.ops, 2.3 through this,
// torch's own max_pool2d 2.5). On a GPU that host time is the op's speed whenever its
// kernels are short. These functions convert with pybind11's casters and make the same
// dispatcher call from C++ (the unboxed path a torch function takes): the dispatch keys,
// CPU/CUDA kernels, Python dispatch modes and the profiler all see the same call. Each
// signature is checked against the schema above when the module loads (typed() throws
// on a mismatch, so a wrong line here fails `import pydl`, not a call).
// pydl/ops/_util.differentiable uses them in eager mode; torch.compile keeps torch.ops.
namespace {

template <class T> struct PyArg { using type = T; };
// pybind11 has no caster for at::TensorList (an ArrayRef); a vector converts to one.
template <> struct PyArg<at::TensorList> { using type = std::vector<at::Tensor>; };

template <class Sig> struct Eager;
template <class R, class... A> struct Eager<R(A...)> {
  static void bind(pybind11::module_& m, const char* name) {
    auto op = c10::Dispatcher::singleton()
                  .findSchemaOrThrow((std::string("pydl::") + name).c_str(), "")
                  .typed<R(A...)>();
    // The GIL is released around the call, as torch.ops does (a long CPU kernel must not
    // block other Python threads); a Python dispatch mode re-acquires it as it needs.
    m.def(name, [op](typename PyArg<A>::type... a) -> R { return op.call(a...); },
          pybind11::call_guard<pybind11::gil_scoped_release>());
  }
};

using at::IntArrayRef;
using at::Tensor;
using at::TensorList;
using c10::string_view;
using OptT = const std::optional<at::Tensor>&;
using T2 = std::tuple<Tensor, Tensor>;
using T3 = std::tuple<Tensor, Tensor, Tensor>;

void bind_eager(pybind11::module_& m) {
  // activation
  Eager<Tensor(const Tensor&, string_view, double)>::bind(m, "act_fwd");
  Eager<void(Tensor&, string_view, double)>::bind(m, "act_fwd_");
  Eager<Tensor(const Tensor&, const Tensor&, string_view, double, bool)>::bind(m, "act_bwd");
  // optim
  Eager<void(TensorList, TensorList, TensorList, double, double, double, double, bool, bool,
             bool, OptT, OptT)>::bind(m, "sgd_step");
  Eager<void(TensorList, TensorList, TensorList, TensorList, TensorList, TensorList, double,
             double, double, double, double, bool, bool, bool, OptT, OptT)>::bind(m, "adam_step");
  Eager<void(TensorList, TensorList, TensorList, TensorList, TensorList, TensorList, double,
             double, double, double, double, bool, bool, OptT, OptT)>::bind(m, "rmsprop_step");
  Eager<void(TensorList, TensorList, TensorList, TensorList, double, double, double, double,
             bool, OptT, OptT)>::bind(m, "adagrad_step");
  // batchnorm
  Eager<T2(const Tensor&)>::bind(m, "bn_stats");
  Eager<T3(const Tensor&, OptT, OptT, OptT, double, string_view, double)>::bind(m, "bn_fwd_train");
  Eager<Tensor(const Tensor&, const Tensor&, const Tensor&, OptT, OptT, OptT, double, string_view,
               double)>::bind(m, "bn_fwd_eval");
  Eager<T2(const Tensor&, const Tensor&, const Tensor&, const Tensor&, OptT, double, string_view,
           double)>::bind(m, "bn_bwd_reduce");
  Eager<T2(const Tensor&, const Tensor&, const Tensor&, const Tensor&, OptT, OptT, OptT, OptT,
           double, double, string_view, double, bool)>::bind(m, "bn_bwd_elemt");
  Eager<std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                   const Tensor&, OptT, OptT, double, string_view,
                                                   double, bool)>::bind(m, "bn_bwd");
  // pool
  Eager<T2(const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef,
           bool)>::bind(m, "max_pool2d_fwd");
  Eager<Tensor(const Tensor&, const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef,
               IntArrayRef, bool)>::bind(m, "max_pool2d_bwd");
  Eager<Tensor(const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef, bool,
               int64_t)>::bind(m, "avg_pool2d_fwd");
  Eager<Tensor(const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef, bool, int64_t,
               bool)>::bind(m, "avg_pool2d_bwd");
  Eager<Tensor(const Tensor&, IntArrayRef)>::bind(m, "adaptive_avg_pool2d_fwd");
  Eager<Tensor(const Tensor&, IntArrayRef, bool)>::bind(m, "adaptive_avg_pool2d_bwd");
  Eager<T2(const Tensor&, IntArrayRef, bool)>::bind(m, "adaptive_max_pool2d_fwd");
  Eager<Tensor(const Tensor&, const Tensor&, IntArrayRef, bool)>::bind(m, "adaptive_max_pool2d_bwd");
  Eager<Tensor(const Tensor&, const Tensor&, bool)>::bind(m, "pool_gather");
  // conv
  Eager<Tensor(const Tensor&, const Tensor&, OptT, IntArrayRef, IntArrayRef, IntArrayRef, int64_t,
               string_view, bool)>::bind(m, "conv2d_fwd");
  Eager<Tensor(const Tensor&, const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef,
               int64_t, bool)>::bind(m, "conv2d_bwd_input");
  Eager<Tensor(const Tensor&, const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef,
               int64_t, bool)>::bind(m, "conv2d_bwd_weight");
  Eager<Tensor(const Tensor&)>::bind(m, "conv2d_bwd_bias");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pydl C++/CUDA kernels (registered as torch.ops.pydl.*) and build info";
  m.def("build_info", &build_info,
        "What this build of pydl._C contains: compiled backends, CUDA arch list, versions.");
  auto eager = m.def_submodule(
      "eager", "torch.ops.pydl.* called through the dispatcher from C++ (eager mode's fast path)");
  bind_eager(eager);
}

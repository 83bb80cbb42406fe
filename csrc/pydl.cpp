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

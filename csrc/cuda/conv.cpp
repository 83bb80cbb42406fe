// CUDA glue for the convolution: argument checks (csrc/conv_common.h), output allocation in
// the requested memory format, the split-K workspace of the weight gradient, the launch on
// the current stream (kernels in conv_kernel.cu), and TORCH_LIBRARY_IMPL(pydl, CUDA).
//
// The kernels address every tensor through its strides, so no input is copied here.
// A CUDA grid holds at most 65535 blocks on its z axis, where the GEMM kernels put the
// groups: more groups (a grouped convolution under torch.vmap has batch x groups of them)
// are launched in chunks (for_group_chunks).
// float32 may use TF32 tensor cores exactly when torch's own (cuDNN) convolution may:
// at::globalContext().allowTF32CuDNN(CONV), i.e. torch.backends.cudnn.allow_tf32 /
// torch.backends.cudnn.conv.fp32_precision.
#include "common.h"
#include "conv_common.h"
#include "cuda/conv_kernel.h"

#include <algorithm>

#include <ATen/Context.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace pydl {
namespace {

void check_launch(int err, const char* what) {
  PYDL_CHECK(err == 0, what, " launch failed: ", cudaGetErrorString(cudaError_t(err)));
}

// One launch's share of the groups: its geometry (groups, C and OC of the chunk alone) and
// its first input and output channel.
struct GroupChunk {
  ConvShape s;
  int64_t c0, oc0;
};

constexpr int64_t kMaxLaunchGroups = 65535;  // gridDim.z

// f(chunk) for each chunk of at most kMaxLaunchGroups groups: each is a convolution of its
// own on channel slices of the same tensors (the pointers moved to the slice, the strides
// unchanged). One chunk, the whole problem, in the common case -- and for depthwise, whose
// kernels run on a 1-D grid.
template <typename F>
void for_group_chunks(const ConvShape& s, F&& f) {
  if (s.groups <= kMaxLaunchGroups || s.Cg() == 1) {
    f(GroupChunk{s, 0, 0});
    return;
  }
  for (int64_t g0 = 0; g0 < s.groups; g0 += kMaxLaunchGroups) {
    GroupChunk k{s, g0 * s.Cg(), g0 * s.OCg()};
    k.s.groups = std::min(kMaxLaunchGroups, s.groups - g0);
    k.s.C = k.s.groups * s.Cg();
    k.s.OC = k.s.groups * s.OCg();
    f(k);
  }
}

// t's data pointer moved by `elems` elements
const void* at_elem(const at::Tensor& t, int64_t elems) {
  return static_cast<const char*>(t.const_data_ptr()) + elems * int64_t(t.element_size());
}
void* at_elem_mut(at::Tensor& t, int64_t elems) {
  return static_cast<char*>(t.mutable_data_ptr()) + elems * int64_t(t.element_size());
}

bool tf32_for(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat && at::globalContext().allowTF32CuDNN(at::Float32Op::CONV);
}

at::Tensor conv2d_fwd(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b_in,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                      int64_t groups, c10::string_view act, bool channels_last) {
  const bool relu = check_fwd_args(x, w, b_in, stride, padding, dilation, groups, act);
  const bool has_b = b_in.has_value() && b_in->defined();
  const auto [OH, OW] = conv_out_size(x.sizes(), w.sizes(), stride, padding, dilation);
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor b = has_b ? b_in->contiguous() : at::Tensor();
  at::Tensor y = conv_alloc4({x.size(0), w.size(0), OH, OW}, x.options(), channels_last);
  const ConvShape s = make_shape(x.sizes(), w.sizes(), y.sizes(), stride, padding, dilation, groups);
  for_group_chunks(s, [&](const GroupChunk& k) {
    check_launch(launch_conv2d_fwd(to_dtype(x.scalar_type()), at_elem(x, k.c0 * x.stride(1)), strides_of(x),
                                   at_elem(w, k.oc0 * w.stride(0)), strides_of(w),
                                   has_b ? at_elem(b, k.oc0) : nullptr, at_elem_mut(y, k.oc0 * y.stride(1)),
                                   strides_of(y), k.s, relu, tf32_for(x), c10::cuda::getCurrentCUDAStream()),
                 "pydl conv2d_fwd");
  });
  return y;
}

at::Tensor conv2d_bwd_input(const at::Tensor& grad, const at::Tensor& w, at::IntArrayRef input_size,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                            int64_t groups, bool channels_last) {
  check_bwd_input_args(grad, w, input_size, stride, padding, dilation, groups);
  c10::cuda::CUDAGuard guard(grad.device());
  at::Tensor dx = conv_alloc4(input_size, grad.options(), channels_last);
  const ConvShape s = make_shape(input_size, w.sizes(), grad.sizes(), stride, padding, dilation, groups);
  for_group_chunks(s, [&](const GroupChunk& k) {
    check_launch(launch_conv2d_bwd_input(to_dtype(grad.scalar_type()), at_elem(grad, k.oc0 * grad.stride(1)),
                                         strides_of(grad), at_elem(w, k.oc0 * w.stride(0)), strides_of(w),
                                         at_elem_mut(dx, k.c0 * dx.stride(1)), strides_of(dx), k.s,
                                         tf32_for(grad), c10::cuda::getCurrentCUDAStream()),
                 "pydl conv2d_bwd_input");
  });
  return dx;
}

at::Tensor conv2d_bwd_weight(const at::Tensor& grad, const at::Tensor& x, at::IntArrayRef weight_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             int64_t groups, bool channels_last) {
  check_bwd_weight_args(grad, x, weight_size, stride, padding, dilation, groups);
  c10::cuda::CUDAGuard guard(grad.device());
  at::Tensor dw = conv_alloc4(weight_size, grad.options(), channels_last);
  const ConvShape s = make_shape(x.sizes(), weight_size, grad.sizes(), stride, padding, dilation, groups);
  const DType dt = to_dtype(grad.scalar_type());
  // split-K partial sums, in the accumulation type (float; double for float64): one
  // workspace for the largest chunk, reused by the next (launches on one stream run in order)
  int64_t work_elems = 0;
  for_group_chunks(s, [&](const GroupChunk& k) {
    work_elems = std::max(work_elems, conv2d_wgrad_splits(dt, k.s) * k.s.OC * k.s.Cg() * k.s.KH * k.s.KW);
  });
  at::Tensor work;
  if (work_elems > 0)
    work = at::empty({work_elems},
                     grad.options().dtype(grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  for_group_chunks(s, [&](const GroupChunk& k) {
    check_launch(launch_conv2d_bwd_weight(dt, at_elem(grad, k.oc0 * grad.stride(1)), strides_of(grad),
                                          at_elem(x, k.c0 * x.stride(1)), strides_of(x),
                                          at_elem_mut(dw, k.oc0 * dw.stride(0)), strides_of(dw),
                                          work.defined() ? work.mutable_data_ptr() : nullptr, k.s,
                                          tf32_for(grad), c10::cuda::getCurrentCUDAStream()),
                 "pydl conv2d_bwd_weight");
  });
  return dw;
}

at::Tensor conv2d_bwd_bias(const at::Tensor& grad) {
  check_floating(grad, "grad_output");
  PYDL_CHECK(grad.dim() == 4, "grad_output must be 4-D, got ", grad.dim(), "-D");
  c10::cuda::CUDAGuard guard(grad.device());
  at::Tensor db = at::empty({grad.size(1)}, grad.options());
  check_launch(launch_conv2d_bwd_bias(to_dtype(grad.scalar_type()), grad.const_data_ptr(), strides_of(grad),
                                      db.mutable_data_ptr(), grad.size(0), grad.size(1), grad.size(2),
                                      grad.size(3), c10::cuda::getCurrentCUDAStream()),
               "pydl conv2d_bwd_bias");
  return db;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydl, CUDA, m) {
  m.impl("conv2d_fwd", &conv2d_fwd);
  m.impl("conv2d_bwd_input", &conv2d_bwd_input);
  m.impl("conv2d_bwd_weight", &conv2d_bwd_weight);
  m.impl("conv2d_bwd_bias", &conv2d_bwd_bias);
}

}  // namespace pydl

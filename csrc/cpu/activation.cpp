// Activations on the CPU: y = f(x) and dx = g * f'(.) elementwise (formulas in
// csrc/activation_math.h, shared with the CUDA kernels).
//
// Algorithm: the tensors are dense (contiguous, channels_last or any permutation, see
// pydl::dense), so element i of every operand lives at data[i] and one linear loop
// covers the tensor in memory order. at::parallel_for splits [0, n) into chunks of at
// least GRAIN elements across the intra-op threads; each thread's loop is a straight
// pass the compiler vectorizes (csrc/cpu/activation_loops.h, compiled for AVX-512, AVX2
// and the baseline). float16 / bfloat16 are computed in float32 and rounded once on
// store; float64 in double.
#include "activation_math.h"
#include "common.h"
#include "simd.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

namespace pydl {
namespace {

constexpr int64_t GRAIN = 32768;  // below this a thread's work does not pay for its wake-up

// The loops, one copy per instruction set (csrc/cpu/activation_loops.h).
#define PYDL_SIMD_LOOPS "activation_loops.h"
#include "simd_copies.h"

// y may alias x (the in-place op).
void forward_into(const at::Tensor& x, at::Tensor& y, Act act, double alpha) {
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pydl_act_fwd", [&] {
    using C = at::opmath_type<scalar_t>;  // float for 16-bit types
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const C a = static_cast<C>(alpha);
    with_cpu_simd([&](auto loops) {
      with_act(act, [&](auto A) {
        at::parallel_for(0, n, GRAIN, [&](int64_t begin, int64_t end) {
          decltype(loops)::template act_fwd_run<decltype(A)::value>(xp + begin, yp + begin, end - begin, a);
        });
      });
    });
  });
}

at::Tensor act_fwd(const at::Tensor& x_in, c10::string_view act, double alpha) {
  check_floating(x_in, "input");
  const Act a = act_from_name(act);
  at::Tensor x = dense(x_in);
  at::Tensor y = at::empty_like(x);
  forward_into(x, y, a, alpha);
  return y;
}

void act_fwd_(at::Tensor& x, c10::string_view act, double alpha) {
  check_floating(x, "input");
  const Act a = act_from_name(act);
  at::Tensor t = dense(x);  // a strided view is computed on a dense copy and written back
  forward_into(t, t, a, alpha);
  if (!t.is_same(x)) x.copy_(t);
}

at::Tensor act_bwd(const at::Tensor& grad_in, const at::Tensor& saved_in, c10::string_view act,
                   double alpha, bool is_result) {
  check_floating(saved_in, "saved");
  check_same_device_dtype(grad_in, "grad_output", saved_in, "saved");
  check_same_shape(grad_in, "grad_output", saved_in, "saved");
  const Act a = act_from_name(act);
  at::Tensor saved = dense(saved_in);
  at::Tensor grad = like_layout(grad_in, saved);
  at::Tensor dx = at::empty_like(saved);
  const int64_t n = saved.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, saved.scalar_type(), "pydl_act_bwd", [&] {
    using C = at::opmath_type<scalar_t>;
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* sp = saved.const_data_ptr<scalar_t>();
    scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
    const C al = static_cast<C>(alpha);
    with_cpu_simd([&](auto loops) {
      with_act(a, [&](auto A) {
        at::parallel_for(0, n, GRAIN, [&](int64_t begin, int64_t end) {
          decltype(loops)::template act_bwd_run<decltype(A)::value>(gp + begin, sp + begin, dp + begin,
                                                                    end - begin, al, is_result);
        });
      });
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydl, CPU, m) {
  m.impl("act_fwd", &act_fwd);
  m.impl("act_fwd_", &act_fwd_);
  m.impl("act_bwd", &act_bwd);
}

}  // namespace pydl

// Fused multi-tensor optimizer steps on the CPU: SGD, Adam/AdamW, RMSprop, Adagrad. One
// op call updates every parameter of a list (one (device, dtype) group) and its state;
// the per-element formulas are in csrc/optim_math.h, shared with the CUDA kernels.
//
// Algorithm: the tensor lists are cut into chunks of at most CHUNK elements -- a chunk
// table of (tensor, begin, end) over ALL the tensors, the CPU twin of the CUDA
// multi-tensor-apply -- and at::parallel_for hands the chunks to the intra-op threads,
// so many small tensors and one huge tensor are both spread over every core. Inside a
// chunk one straight loop walks the elements of the parameter, its gradient and its
// state in lockstep (they all have the same dense strides, checked below), computing in
// float32 (float64 for float64 parameters) and storing once -- the loops of
// csrc/cpu/optim_loops.h, vectorized and compiled for AVX-512, AVX2 and the baseline.
//
// Dtypes: parameters and gradients float32/float16/bfloat16/float64; the state is
// float32 for 16-bit parameters (so the moments keep their precision), else the
// parameter's dtype. GradScaler: grad_scale (if given) divides every gradient element
// (and the unscaled gradient is written back, as torch's fused optimizers do),
// found_inf != 0 skips the whole step (both float32 scalars on the parameters' device).
// Step counts (state_steps: float32 scalars, here on the CPU) are incremented first and
// the step-dependent scalars computed from the new counts, per tensor, in double.
#include "common.h"
#include "optim_common.h"
#include "optim_math.h"
#include "simd.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <optional>
#include <vector>

namespace pydl {
namespace {

constexpr int64_t CHUNK = 32768;  // elements per task: big enough to amortize a thread wake-up

// The loops, one copy per instruction set (csrc/cpu/optim_loops.h).
#define PYDL_SIMD_LOOPS "optim_loops.h"
#include "simd_copies.h"

// Calls fn(std::bool_constant<b>{}): a runtime flag made a template argument.
template <typename Fn>
void with_flag(bool b, Fn&& fn) {
  if (b) fn(std::true_type{});
  else fn(std::false_type{});
}

struct Chunk {
  int64_t tensor, begin, end;
};

std::vector<Chunk> make_chunks(at::TensorList params) {
  std::vector<Chunk> chunks;
  for (int64_t t = 0; t < int64_t(params.size()); ++t) {
    const int64_t n = params[t].numel();
    for (int64_t b = 0; b < n; b += CHUNK) chunks.push_back({t, b, std::min(n, b + CHUNK)});
  }
  return chunks;
}

// GradScaler: returns the scale (1 when none), or nullopt when found_inf says this step
// is skipped (on the CPU reading them costs nothing).
std::optional<double> grad_unscale(const std::optional<at::Tensor>& scale,
                                   const std::optional<at::Tensor>& found_inf) {
  for (const auto* o : {&scale, &found_inf}) {
    if (!o->has_value()) continue;
    const at::Tensor& t = **o;
    PYDL_CHECK(t.numel() == 1 && t.scalar_type() == at::kFloat && t.device().is_cpu(),
               "grad_scale and found_inf must be one-element float32 CPU tensors");
  }
  if (found_inf.has_value() && found_inf->item<float>() != 0.f) return std::nullopt;
  return scale.has_value() ? double(scale->item<float>()) : 1.0;
}

// Increments every step count (CPU float32 scalars) and returns the new values.
std::vector<double> bump_steps(at::TensorList state_steps) {
  std::vector<double> out;
  for (const at::Tensor& s : state_steps) {
    float* v = static_cast<float*>(s.data_ptr());
    *v += 1.f;
    out.push_back(double(*v));
  }
  return out;
}

template <typename T>
T* data_or_null(at::TensorList list, size_t i) {
  return list.empty() ? nullptr : static_cast<T*>(list[i].data_ptr());
}

// Runs body(chunk, p, g, s0, s1, s2) over every chunk in parallel, with p/g of the
// parameter type and s* of the state type (null where a state list is empty).
template <typename T, typename S, typename Body>
void for_chunks(at::TensorList params, at::TensorList grads, at::TensorList s0,
                at::TensorList s1, at::TensorList s2, Body body) {
  const std::vector<Chunk> chunks = make_chunks(params);
  at::parallel_for(0, int64_t(chunks.size()), 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const Chunk& ch = chunks[c];
      const size_t t = size_t(ch.tensor);
      body(ch, static_cast<T*>(params[t].data_ptr()), static_cast<T*>(grads[t].data_ptr()),
           data_or_null<S>(s0, t), data_or_null<S>(s1, t), data_or_null<S>(s2, t));
    }
  });
}

#define PYDL_OPTIM_DISPATCH(dtype, NAME, ...)                                               \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, NAME, [&] {             \
    using T = scalar_t;                                                                   \
    using C = at::opmath_type<T>;                                                         \
    using S = C; /* state: float for 16-bit parameters, double for float64 */             \
    __VA_ARGS__();                                                                        \
  })

// ------------------------------------------------------------------------------- SGD
void sgd_step(at::TensorList params, at::TensorList grads, at::TensorList bufs, double lr,
              double momentum, double dampening, double weight_decay, bool nesterov,
              bool maximize, bool first, const std::optional<at::Tensor>& grad_scale,
              const std::optional<at::Tensor>& found_inf) {
  if (params.empty()) return;
  check_params(params, grads);
  const at::ScalarType sdt = state_dtype(params[0].scalar_type());
  check_list(params, bufs, "momentum_buffers", sdt, momentum == 0.0);
  PYDL_CHECK(momentum == 0.0 || !bufs.empty(), "momentum_buffers are needed when momentum != 0");
  const auto inv = grad_unscale(grad_scale, found_inf);
  if (!inv) return;
  PYDL_OPTIM_DISPATCH(params[0].scalar_type(), "pydl_sgd_step", [&] {
    const SgdHyper<C> h{C(lr), C(momentum), C(1.0 - dampening), C(weight_decay), nesterov,
                        maximize, first};
    const C gs = C(*inv);
    const bool scaled = grad_scale.has_value();
    const bool use_buf = momentum != 0.0;
    with_cpu_simd([&](auto loops) { with_flag(use_buf, [&](auto kBuf) { with_flag(scaled, [&](auto kScaled) {
      for_chunks<T, S>(params, grads, bufs, {}, {}, [&](const Chunk& ch, T* p, T* g, S* b, S*, S*) {
        decltype(loops)::template sgd_run<decltype(kBuf)::value, decltype(kScaled)::value>(p + ch.begin, g + ch.begin, kBuf ? b + ch.begin : nullptr,
                                                         ch.end - ch.begin, h, gs);
      });
    }); }); });
  });
}

// ------------------------------------------------------------------------ Adam / AdamW
void adam_step(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
               at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
               at::TensorList state_steps, double lr, double beta1, double beta2, double eps,
               double weight_decay, bool amsgrad, bool maximize, bool decoupled,
               const std::optional<at::Tensor>& grad_scale,
               const std::optional<at::Tensor>& found_inf) {
  if (params.empty()) return;
  check_params(params, grads);
  const at::ScalarType sdt = state_dtype(params[0].scalar_type());
  check_list(params, exp_avgs, "exp_avgs", sdt, false);
  check_list(params, exp_avg_sqs, "exp_avg_sqs", sdt, false);
  check_list(params, max_exp_avg_sqs, "max_exp_avg_sqs", sdt, !amsgrad);
  PYDL_CHECK(!amsgrad || !max_exp_avg_sqs.empty(), "max_exp_avg_sqs are needed with amsgrad");
  check_steps(params, state_steps);
  const auto inv = grad_unscale(grad_scale, found_inf);
  if (!inv) return;
  // per-tensor bias corrections from the new step counts, in double as torch computes
  // them in Python
  const std::vector<double> steps = bump_steps(state_steps);
  std::vector<double> step_size(steps.size()), bc2_sqrt(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    step_size[i] = lr / (1.0 - std::pow(beta1, steps[i]));
    bc2_sqrt[i] = std::sqrt(1.0 - std::pow(beta2, steps[i]));
  }
  PYDL_OPTIM_DISPATCH(params[0].scalar_type(), "pydl_adam_step", [&] {
    const AdamHyper<C> h{C(1.0 - beta1), C(beta2), C(1.0 - beta2), C(eps), C(weight_decay),
                         C(1.0 - lr * weight_decay), amsgrad, maximize, decoupled};
    const C gs = C(*inv);
    const bool scaled = grad_scale.has_value();
    with_cpu_simd([&](auto loops) { with_flag(amsgrad, [&](auto kAms) { with_flag(scaled, [&](auto kScaled) {
      for_chunks<T, S>(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                       [&](const Chunk& ch, T* p, T* g, S* m, S* v, S* vmax) {
        const int64_t b = ch.begin;
        decltype(loops)::template adam_run<decltype(kAms)::value, decltype(kScaled)::value>(
            p + b, g + b, m + b, v + b, kAms ? vmax + b : nullptr, ch.end - b, h, gs,
            C(step_size[ch.tensor]), C(bc2_sqrt[ch.tensor]));
      });
    }); }); });
  });
}

// ---------------------------------------------------------------------------- RMSprop
void rmsprop_step(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                  at::TensorList grad_avgs, at::TensorList bufs, at::TensorList state_steps,
                  double lr, double alpha,
                  double eps, double weight_decay, double momentum, bool centered,
                  bool maximize, const std::optional<at::Tensor>& grad_scale,
                  const std::optional<at::Tensor>& found_inf) {
  if (params.empty()) return;
  check_params(params, grads);
  const at::ScalarType sdt = state_dtype(params[0].scalar_type());
  check_list(params, square_avgs, "square_avgs", sdt, false);
  check_list(params, grad_avgs, "grad_avgs", sdt, !centered);
  check_list(params, bufs, "momentum_buffers", sdt, !(momentum > 0.0));
  PYDL_CHECK(!centered || !grad_avgs.empty(), "grad_avgs are needed when centered");
  PYDL_CHECK(!(momentum > 0.0) || !bufs.empty(), "momentum_buffers are needed when momentum > 0");
  check_steps(params, state_steps);
  const auto inv = grad_unscale(grad_scale, found_inf);
  if (!inv) return;
  bump_steps(state_steps);  // RMSprop's update does not depend on the step count
  PYDL_OPTIM_DISPATCH(params[0].scalar_type(), "pydl_rmsprop_step", [&] {
    const RmspropHyper<C> h{C(lr), C(alpha), C(1.0 - alpha), C(eps), C(weight_decay),
                            C(momentum), centered, maximize};
    const C gs = C(*inv);
    const bool scaled = grad_scale.has_value();
    const bool use_buf = momentum > 0.0;
    with_cpu_simd([&](auto loops) { with_flag(centered, [&](auto kCen) { with_flag(use_buf, [&](auto kBuf) {
      with_flag(scaled, [&](auto kScaled) {
        for_chunks<T, S>(params, grads, square_avgs, grad_avgs, bufs,
                         [&](const Chunk& ch, T* p, T* g, S* sq, S* ga, S* b) {
          const int64_t o = ch.begin;
          decltype(loops)::template rmsprop_run<decltype(kCen)::value, decltype(kBuf)::value,
                                                       decltype(kScaled)::value>(
              p + o, g + o, sq + o, kCen ? ga + o : nullptr, kBuf ? b + o : nullptr, ch.end - o, h, gs);
        });
      });
    }); }); });
  });
}

// ---------------------------------------------------------------------------- Adagrad
void adagrad_step(at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                  at::TensorList state_steps, double lr, double lr_decay, double weight_decay,
                  double eps, bool maximize, const std::optional<at::Tensor>& grad_scale,
                  const std::optional<at::Tensor>& found_inf) {
  if (params.empty()) return;
  check_params(params, grads);
  const at::ScalarType sdt = state_dtype(params[0].scalar_type());
  check_list(params, state_sums, "state_sums", sdt, false);
  check_steps(params, state_steps);
  const auto inv = grad_unscale(grad_scale, found_inf);
  if (!inv) return;
  const std::vector<double> steps = bump_steps(state_steps);
  std::vector<double> clr(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) clr[i] = lr / (1.0 + (steps[i] - 1.0) * lr_decay);
  PYDL_OPTIM_DISPATCH(params[0].scalar_type(), "pydl_adagrad_step", [&] {
    const AdagradHyper<C> h{C(eps), C(weight_decay), maximize};
    const C gs = C(*inv);
    const bool scaled = grad_scale.has_value();
    with_cpu_simd([&](auto loops) { with_flag(scaled, [&](auto kScaled) {
      for_chunks<T, S>(params, grads, state_sums, {}, {}, [&](const Chunk& ch, T* p, T* g, S* sum, S*, S*) {
        decltype(loops)::template adagrad_run<decltype(kScaled)::value>(p + ch.begin, g + ch.begin, sum + ch.begin,
                                                       ch.end - ch.begin, h, gs, C(clr[ch.tensor]));
      });
    }); });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(pydl, CPU, m) {
  m.impl("sgd_step", &sgd_step);
  m.impl("adam_step", &adam_step);
  m.impl("rmsprop_step", &rmsprop_step);
  m.impl("adagrad_step", &adagrad_step);
}

}  // namespace pydl

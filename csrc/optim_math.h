// The optimizer update formulas, written once for every C++ backend: included by the CPU
// kernels (csrc/cpu/optim.cpp) and the CUDA kernels (csrc/cuda/optim_kernel.cu), so the
// two cannot drift apart. No torch headers: nvcc compiles this in ~1 s.
//
// Each function updates ONE element of a parameter and its optimizer state, in the
// compute type C (float for float32/float16/bfloat16 parameters, double for float64),
// in exactly the order torch.optim's single-tensor implementations apply their ops, so
// the results agree with torch to the last few bits. g is the gradient element, already
// divided by the GradScaler scale where there is one (torch's fused optimizers do the
// same). The scalars that depend only on the step count (bias corrections, Adagrad's
// decayed lr) are computed once per tensor in double, as torch does in Python (on the
// host by the CPU kernels, once per block on the device by the CUDA kernels, which read
// the step counts from device memory), and passed in.
//
//   SGD      g = -g if maximize;  g += wd * p
//            buf = g (first step) | buf = momentum * buf + (1 - dampening) * g
//            g = g + momentum * buf (nesterov) | buf
//            p -= lr * g
//   Adam     g = -g if maximize;  p *= 1 - lr * wd (AdamW) | g += wd * p (Adam)
//            m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
//            vmax = max(vmax, v) (amsgrad)
//            p -= step_size * m / (sqrt(v or vmax) / bc2_sqrt + eps)
//              with step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t)
//   RMSprop  g = -g if maximize;  g += wd * p
//            sq = alpha * sq + (1 - alpha) * g * g
//            avg = sqrt(sq - ga * ga) with ga = lerp(ga, g, 1 - alpha) (centered) | sqrt(sq)
//            avg += eps
//            buf = momentum * buf + g / avg;  p -= lr * buf   (momentum > 0)
//            p -= lr * g / avg                                (momentum == 0)
//   Adagrad  g = -g if maximize;  g += wd * p
//            sum += g * g;  p -= clr * g / (sqrt(sum) + eps)
//              with clr = lr / (1 + (t - 1) * lr_decay)
#pragma once

#include <cmath>

#ifndef PYDL_HD
#if defined(__CUDACC__)
#define PYDL_HD __host__ __device__ __forceinline__
#else
#define PYDL_HD inline
#endif
#endif

namespace pydl {

// torch's lerp (ATen/native/Lerp.h): self + w * (end - self), written from the nearer
// end so that w = 1 gives `end` exactly.
template <typename C>
PYDL_HD C optim_lerp(C self, C end, C w) {
  return (w < C(0.5) && w > C(-0.5)) ? self + w * (end - self)
                                     : end - (end - self) * (C(1) - w);
}

// torch.maximum: NaN if either is NaN.
template <typename C>
PYDL_HD C optim_max(C a, C b) {
  return (a != a || a > b) ? a : b;
}

// ------------------------------------------------------------------------------- SGD
template <typename C>
struct SgdHyper {
  C lr, momentum, dampening_c, weight_decay;  // dampening_c = 1 - dampening
  bool nesterov, maximize, first;             // first: the buffers are new (buf = g)
};

// buf is ignored when momentum == 0.
template <typename C>
PYDL_HD void sgd_update(C& p, C g, C& buf, const SgdHyper<C>& h) {
  if (h.maximize) g = -g;
  if (h.weight_decay != C(0)) g = g + h.weight_decay * p;
  if (h.momentum != C(0)) {
    buf = h.first ? g : buf * h.momentum + h.dampening_c * g;
    g = h.nesterov ? g + h.momentum * buf : buf;
  }
  p = p - h.lr * g;
}

// ------------------------------------------------------------------------ Adam / AdamW
template <typename C>
struct AdamHyper {
  C beta1_c, beta2, beta2_c;  // beta1_c = 1 - beta1, beta2_c = 1 - beta2
  C eps, weight_decay;
  C decay;                    // AdamW: 1 - lr * weight_decay
  bool amsgrad, maximize, decoupled;
};

// step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t), per tensor.
// vmax is ignored unless amsgrad.
template <typename C>
PYDL_HD void adam_update(C& p, C g, C& m, C& v, C& vmax, const AdamHyper<C>& h, C step_size,
                         C bc2_sqrt) {
  if (h.maximize) g = -g;
  if (h.weight_decay != C(0)) {
    if (h.decoupled) p = p * h.decay;
    else g = g + h.weight_decay * p;
  }
  m = optim_lerp(m, g, h.beta1_c);
  v = v * h.beta2 + h.beta2_c * (g * g);
  C s = v;
  if (h.amsgrad) {
    vmax = optim_max(vmax, v);
    s = vmax;
  }
  using std::sqrt;
  const C denom = sqrt(s) / bc2_sqrt + h.eps;
  p = p - step_size * (m / denom);
}

// ---------------------------------------------------------------------------- RMSprop
template <typename C>
struct RmspropHyper {
  C lr, alpha, alpha_c, eps, weight_decay, momentum;  // alpha_c = 1 - alpha
  bool centered, maximize;
};

// ga is ignored unless centered, buf unless momentum > 0.
template <typename C>
PYDL_HD void rmsprop_update(C& p, C g, C& sq, C& ga, C& buf, const RmspropHyper<C>& h) {
  using std::sqrt;
  if (h.maximize) g = -g;
  if (h.weight_decay != C(0)) g = g + h.weight_decay * p;
  sq = sq * h.alpha + h.alpha_c * (g * g);
  C avg;
  if (h.centered) {
    ga = optim_lerp(ga, g, h.alpha_c);
    avg = sqrt(sq - ga * ga);
  } else {
    avg = sqrt(sq);
  }
  avg = avg + h.eps;
  if (h.momentum > C(0)) {
    buf = buf * h.momentum + g / avg;
    p = p - h.lr * buf;
  } else {
    p = p - h.lr * (g / avg);
  }
}

// ---------------------------------------------------------------------------- Adagrad
template <typename C>
struct AdagradHyper {
  C eps, weight_decay;
  bool maximize;
};

// clr = lr / (1 + (t - 1) * lr_decay), per tensor.
template <typename C>
PYDL_HD void adagrad_update(C& p, C g, C& sum, const AdagradHyper<C>& h, C clr) {
  using std::sqrt;
  if (h.maximize) g = -g;
  if (h.weight_decay != C(0)) g = g + h.weight_decay * p;
  sum = sum + g * g;
  const C std_ = sqrt(sum) + h.eps;
  p = p - clr * (g / std_);
}

}  // namespace pydl

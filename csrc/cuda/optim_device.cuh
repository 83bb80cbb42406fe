// Fused multi-tensor optimizer steps on the GPU -- the device code and the host-side
// launch planning: SGD, Adam/AdamW, RMSprop, Adagrad. The per-element formulas are in
// csrc/optim_math.h (shared with the CPU kernels).
//
// Algorithm: multi-tensor apply (as NVIDIA Apex's multi_tensor_apply.cuh). An optimizer
// step is pure streaming -- each element of the parameter, gradient and state is read
// once and written once -- but a network has hundreds of tensors, many of them tiny, so
// one launch per tensor (or several, as torch's for-loop optimizers do) is dominated by
// launch overhead. Here the host cuts every tensor of the group into CHUNK-element
// chunks and packs, into one by-value kernel argument block (TensorListMeta, < 4 KiB,
// so no device-side table and no host->device copy is needed):
//   * the data pointers of up to kMaxTensors tensors for each of the DEPTH lists
//     (params, grads, up to three state lists), their sizes and step-count pointers;
//   * a chunk table of up to kMaxChunks (tensor slot, chunk index) entries.
// One thread block per chunk-table entry walks its chunk; when either table fills, the
// launcher launches and starts a new block (a tensor cut across launches continues in
// slot 0 of the next), so a group takes about max(chunks / kMaxChunks, tensors /
// kMaxTensors) launches -- one for a small model, 5 for ResNet-50 (161 tensors, 25.6M
// parameters, 508 chunks).
//
// Inside a chunk each thread handles VEC consecutive elements at a time (VEC = 16 bytes
// of the parameter type: 4 floats, 8 halves) loaded as one vector per operand when
// every pointer of that tensor is aligned to its pack size (the caching allocator
// aligns to 512 bytes, so this is the normal case); otherwise element by element.
// Offsets are 64-bit; chunk starts are int64(chunk index) * CHUNK.
//
// Step counts stay on the device: each block reads its tensor's count t, computes the
// step-dependent scalars (Adam's bias corrections, Adagrad's decayed lr) from t + 1 in
// double, and after the update a last tiny kernel adds 1 to every count (it runs after
// all blocks have read them: same stream). GradScaler: found_inf != 0 makes every
// block, and the count update, return before touching memory -- the step is skipped
// without a host synchronization; grad_scale divides the gradient, which is written
// back unscaled, as torch's fused optimizers do.
//
// This header holds the kernels, the functors that adapt optim_math.h to them, and the
// planning of the launches (plan_multi_tensor / plan_step_bumps: which tensors and
// chunks go into which launch), which call back for each launch so that the same plan
// drives the GPU (optim_kernel.cu, `<<<...>>>`) and the host emulation
// (tests/optim_cuda_emulation.cpp, fibers standing in for CUDA threads, which checks
// these kernels on machines without a GPU). It needs, before it is included, the CUDA
// headers plus OpMath / to_c / from_c / Pack / vec_width (csrc/cuda/elementwise.cuh).
#pragma once

#include <cmath>
#include <cstdint>

#include "optim_kernel.h"  // OptimLists, and optim_math.h

namespace pydl {
namespace optim_detail {

constexpr int64_t kChunk = 65536;  // elements per block: ~64K iterations of work per SM slot
constexpr int kBlock = 512;
constexpr int kMaxTensors = 36;
constexpr int kMaxChunks = 256;

// The kernel-argument metadata block. sizeof(TensorListMeta<5>) = 3296 bytes, below the
// 4 KiB argument limit of every CUDA version together with the hyperparameters.
template <int DEPTH>
struct TensorListMeta {
  void* ptr[DEPTH][kMaxTensors];
  int64_t numel[kMaxTensors];
  float* step[kMaxTensors];  // null when the optimizer keeps no step count (SGD)
  unsigned char chunk_tensor[kMaxChunks];
  int32_t chunk_index[kMaxChunks];
};
static_assert(sizeof(TensorListMeta<5>) + 256 <= 4096, "kernel argument block too large");
static_assert(kMaxTensors <= 256, "chunk_tensor is one byte");

// The per-optimizer functors: scalars(t) gives the two step-dependent scalars for the new
// step count t (once per block, in double), and operator() one element update in compute
// type C, with the state elements s0..s2 (lists 2..4; unused ones are dummies).
template <typename C>
struct SgdOp {
  SgdHyper<C> h;
  __device__ __forceinline__ void scalars(double, C& a, C& b) const { a = b = C(0); }
  __device__ __forceinline__ void operator()(C& p, C g, C& s0, C&, C&, C, C) const {
    sgd_update<C>(p, g, s0, h);
  }
};
template <typename C>
struct AdamOp {
  AdamHyper<C> h;
  double lr, beta1, beta2;
  // torch: step_size = lr / (1 - beta1^t), bias_correction2_sqrt = sqrt(1 - beta2^t)
  __device__ __forceinline__ void scalars(double t, C& step_size, C& bc2_sqrt) const {
    step_size = C(lr / (1.0 - pow(beta1, t)));
    bc2_sqrt = C(sqrt(1.0 - pow(beta2, t)));
  }
  __device__ __forceinline__ void operator()(C& p, C g, C& m, C& v, C& vmax, C step_size,
                                             C bc2_sqrt) const {
    adam_update<C>(p, g, m, v, vmax, h, step_size, bc2_sqrt);
  }
};
template <typename C>
struct RmspropOp {
  RmspropHyper<C> h;
  __device__ __forceinline__ void scalars(double, C& a, C& b) const { a = b = C(0); }
  __device__ __forceinline__ void operator()(C& p, C g, C& sq, C& ga, C& buf, C, C) const {
    rmsprop_update<C>(p, g, sq, ga, buf, h);
  }
};
template <typename C>
struct AdagradOp {
  AdagradHyper<C> h;
  double lr, lr_decay;
  // torch: clr = lr / (1 + (t - 1) * lr_decay)
  __device__ __forceinline__ void scalars(double t, C& clr, C& b) const {
    clr = C(lr / (1.0 + (t - 1.0) * lr_decay));
    b = C(0);
  }
  __device__ __forceinline__ void operator()(C& p, C g, C& sum, C&, C&, C clr, C) const {
    adagrad_update<C>(p, g, sum, h, clr);
  }
};

// The functors from the launchers' double hyperparameters (rounded once to C here, so
// the kernels never convert per element).
template <typename C>
SgdOp<C> sgd_op(const SgdHyper<double>& h) {
  return {{C(h.lr), C(h.momentum), C(h.dampening_c), C(h.weight_decay), h.nesterov, h.maximize,
           h.first}};
}
template <typename C>
AdamOp<C> adam_op(const AdamHyper<double>& h, double lr, double beta1, double beta2) {
  return {{C(h.beta1_c), C(h.beta2), C(h.beta2_c), C(h.eps), C(h.weight_decay), C(h.decay),
           h.amsgrad, h.maximize, h.decoupled},
          lr, beta1, beta2};
}
template <typename C>
RmspropOp<C> rmsprop_op(const RmspropHyper<double>& h) {
  return {{C(h.lr), C(h.alpha), C(h.alpha_c), C(h.eps), C(h.weight_decay), C(h.momentum),
           h.centered, h.maximize}};
}
template <typename C>
AdagradOp<C> adagrad_op(const AdagradHyper<double>& h, double lr, double lr_decay) {
  return {{C(h.eps), C(h.weight_decay), h.maximize}, lr, lr_decay};
}

// The last launch of a step: every step count += 1, unless found_inf says the step was
// skipped. One thread per count; kMaxSteps counts per launch (the pointer list is a
// by-value argument too).
constexpr int kMaxSteps = 448;
struct StepList {
  float* p[kMaxSteps];
  int n;
};
static_assert(sizeof(StepList) + 64 <= 4096, "kernel argument block too large");

__global__ void bump_steps_kernel(StepList l, const float* __restrict__ found_inf) {
  if (found_inf != nullptr && *found_inf != 0.f) return;
  if (int(threadIdx.x) < l.n) *l.p[threadIdx.x] += 1.f;
}

template <typename P>
__device__ __forceinline__ bool aligned_to(const void* ptr) {
  return (reinterpret_cast<uintptr_t>(ptr) % sizeof(P)) == 0;
}

// T: parameter/gradient type, S: state type, C: compute type. `used` has bit k set for
// each state list k (2..4) the configuration uses. CHUNK is the planner's (kChunk; the
// emulation also runs a small one so that the tables fill with few elements).
template <typename T, typename S, int DEPTH, typename Op, int64_t CHUNK = kChunk>
__global__ void __launch_bounds__(kBlock)
    multi_tensor_kernel(TensorListMeta<DEPTH> meta, Op op, unsigned used,
                        const float* __restrict__ grad_scale,
                        const float* __restrict__ found_inf) {
  using C = typename OpMath<T>::type;
  constexpr int VEC = vec_width<T>();
  static_assert(CHUNK % VEC == 0, "a chunk must start on a whole pack");
  if (found_inf != nullptr && *found_inf != 0.f) return;  // GradScaler: skip this step

  const int slot = meta.chunk_tensor[blockIdx.x];
  const int64_t n = meta.numel[slot];
  const int64_t begin = int64_t(meta.chunk_index[blockIdx.x]) * CHUNK;
  const int64_t end = begin + CHUNK < n ? begin + CHUNK : n;
  T* __restrict__ p = static_cast<T*>(meta.ptr[0][slot]);
  T* __restrict__ g = static_cast<T*>(meta.ptr[1][slot]);
  S* s[3] = {nullptr, nullptr, nullptr};
#pragma unroll
  for (int k = 2; k < DEPTH; ++k)
    if (used & (1u << k)) s[k - 2] = static_cast<S*>(meta.ptr[k][slot]);
  C a, b;  // the tensor's step-dependent scalars, from its new step count
  op.scalars(meta.step[slot] != nullptr ? double(*meta.step[slot]) + 1.0 : 0.0, a, b);
  const bool scaled = grad_scale != nullptr;
  const C scale = scaled ? C(*grad_scale) : C(1);

  // one element, any path: load, update, store (unused state is a local dummy)
  auto element = [&](C& pv, T& gref, C& x0, C& x1, C& x2) {
    C gv = to_c(gref);
    if (scaled) {
      gv = gv / scale;
      gref = from_c<T>(gv);
    }
    op(pv, gv, x0, x1, x2, a, b);
  };

  bool vec_ok = aligned_to<Pack<T, VEC>>(p) && aligned_to<Pack<T, VEC>>(g);
#pragma unroll
  for (int k = 0; k < 3; ++k)
    if (s[k] != nullptr) vec_ok = vec_ok && aligned_to<Pack<S, VEC>>(s[k]);

  int64_t scalar_begin = begin;
  if (vec_ok) {
    // CHUNK is a multiple of VEC, so begin is too: whole packs from begin to vend
    const int64_t vend = begin + ((end - begin) / VEC) * VEC;
    for (int64_t i = begin + int64_t(threadIdx.x) * VEC; i < vend; i += int64_t(kBlock) * VEC) {
      Pack<T, VEC> pp = *reinterpret_cast<const Pack<T, VEC>*>(p + i);
      Pack<T, VEC> gp = *reinterpret_cast<const Pack<T, VEC>*>(g + i);
      Pack<S, VEC> sp[3];
#pragma unroll
      for (int k = 0; k < 3; ++k)
        if (s[k] != nullptr) sp[k] = *reinterpret_cast<const Pack<S, VEC>*>(s[k] + i);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        C pv = to_c(pp.v[j]);
        C x[3];
#pragma unroll
        for (int k = 0; k < 3; ++k) x[k] = s[k] != nullptr ? to_c(sp[k].v[j]) : C(0);
        element(pv, gp.v[j], x[0], x[1], x[2]);
        pp.v[j] = from_c<T>(pv);
#pragma unroll
        for (int k = 0; k < 3; ++k) sp[k].v[j] = from_c<S>(x[k]);
      }
      *reinterpret_cast<Pack<T, VEC>*>(p + i) = pp;
      if (scaled) *reinterpret_cast<Pack<T, VEC>*>(g + i) = gp;
#pragma unroll
      for (int k = 0; k < 3; ++k)
        if (s[k] != nullptr) *reinterpret_cast<Pack<S, VEC>*>(s[k] + i) = sp[k];
    }
    scalar_begin = vend;  // the < VEC-element tail of the tensor, below
  }
  for (int64_t i = scalar_begin + threadIdx.x; i < end; i += kBlock) {
    C pv = to_c(p[i]);
    C x[3];
#pragma unroll
    for (int k = 0; k < 3; ++k) x[k] = s[k] != nullptr ? to_c(s[k][i]) : C(0);
    T gv = g[i];
    element(pv, gv, x[0], x[1], x[2]);
    p[i] = from_c<T>(pv);
    if (scaled) g[i] = gv;
#pragma unroll
    for (int k = 0; k < 3; ++k)
      if (s[k] != nullptr) s[k][i] = from_c<S>(x[k]);
  }
}

// ------------------------------------------------------------------ launch planning
// (host code; the launch itself is the caller's, so the GPU and the emulation share it)

// The kernel's `used` mask: bit k for each state list k (2..4) that has pointers.
template <int DEPTH>
inline unsigned used_lists(const OptimLists& l) {
  unsigned used = 0;
  for (int k = 2; k < DEPTH; ++k)
    if (l.ptrs[k] != nullptr) used |= 1u << k;
  return used;
}

// Fills metadata blocks with the non-empty tensors of l and calls
// launch(const TensorListMeta<DEPTH>& meta, int chunks) -> int error for each, when its
// tensor or chunk table is full and once at the end (see the file comment). Returns the
// first non-zero error of a launch (and stops there), else 0.
template <int DEPTH, int64_t CHUNK = kChunk, typename Launch>
int plan_multi_tensor(const OptimLists& l, Launch&& launch) {
  TensorListMeta<DEPTH> meta;
  int nt = 0, nc = 0;
  for (int64_t t = 0; t < l.n; ++t) {
    const int64_t n = l.numels[t];
    if (n == 0) continue;
    for (int k = 0; k < DEPTH; ++k) meta.ptr[k][nt] = l.ptrs[k] != nullptr ? l.ptrs[k][t] : nullptr;
    meta.numel[nt] = n;
    meta.step[nt] = l.steps != nullptr ? l.steps[t] : nullptr;
    ++nt;
    const int64_t chunks = (n + CHUNK - 1) / CHUNK;
    for (int64_t c = 0; c < chunks; ++c) {
      meta.chunk_tensor[nc] = static_cast<unsigned char>(nt - 1);
      meta.chunk_index[nc] = static_cast<int32_t>(c);
      ++nc;
      const bool last_chunk = c == chunks - 1;
      if (nc == kMaxChunks || (nt == kMaxTensors && last_chunk)) {
        const int err = launch(meta, nc);
        if (err != 0) return err;
        nc = 0;
        if (last_chunk) {
          nt = 0;
        } else {  // this tensor goes on in the next launch, from slot 0
          for (int k = 0; k < DEPTH; ++k) meta.ptr[k][0] = meta.ptr[k][nt - 1];
          meta.numel[0] = meta.numel[nt - 1];
          meta.step[0] = meta.step[nt - 1];
          nt = 1;
        }
      }
    }
  }
  return nc > 0 ? launch(meta, nc) : 0;
}

// The step counts of every tensor (empty ones included, like torch) in lists of at most
// kMaxSteps: launch(const StepList&) -> int error for each. Returns the first error, else 0.
template <typename Launch>
int plan_step_bumps(const OptimLists& l, Launch&& launch) {
  if (l.steps == nullptr) return 0;
  StepList sl;
  for (int64_t t0 = 0; t0 < l.n; t0 += kMaxSteps) {
    sl.n = int(l.n - t0 < kMaxSteps ? l.n - t0 : kMaxSteps);
    for (int i = 0; i < sl.n; ++i) sl.p[i] = l.steps[t0 + i];
    const int err = launch(sl);
    if (err != 0) return err;
  }
  return 0;
}

}  // namespace optim_detail
}  // namespace pydl

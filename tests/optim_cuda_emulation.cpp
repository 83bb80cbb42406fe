// Host emulation of the CUDA fused optimizer kernels (csrc/cuda/optim_device.cuh), so that
// multi-tensor apply -- the launch plan (tensor and chunk tables filling, a tensor cut
// across launches continuing in slot 0, several launches of step-count bumps), the
// block -> (tensor, chunk) lookup, the 16-byte Pack path and its per-tensor alignment
// test, the scalar path and the < VEC tail, the device-side step counts, grad_scale
// and found_inf -- is checked on machines without a GPU (tests/test_optim.py compiles
// and runs this with g++).
//
// How: tests/cuda_emulation.h (each CUDA thread a fiber). The launches come from the
// launchers' own plan (plan_multi_tensor / plan_step_bumps) and the functors from the
// launchers' own conversion of the hyperparameters (sgd_op, adam_op, ...); the lists are
// built as csrc/cuda/optim.cpp builds them (a null list for unused state). Each list of a
// group lives in one buffer, every tensor between guard regions of 0xFE bytes (a huge
// negative finite value that any update changes, so an out-of-bounds read-modify-write
// shows -- a NaN would pass through the update bit for bit), some tensors at an odd
// element offset in some lists (so the kernel must take its scalar path for them; a
// vector access there would abort, as the GPU would fault), empty tensors as null
// pointers; step counts sit between guards (-7.25) too, and start different per tensor
// (a block that used another tensor's count would get other bias corrections).
// Each configuration runs four steps with fresh random gradients:
//   1. plain; 2. grad_scale = 3 and found_inf = 0 (the gradient is divided and written
//   back); 3. grad_scale = 3 and found_inf = 1 (skipped: every byte, the counts
//   included, must be unchanged); 4. found_inf = 0 again, no grad_scale.
// Before each step the float64 reference reads the current parameter, gradient, state
// and count values (so errors do not accumulate across steps) and applies torch.optim's
// single-tensor formulas, written here from torch's code, not from optim_math.h; every
// element of every list is compared, the guards must be untouched, and each count
// must have gone up by one.
// Groups of tensors: (a) the real kChunk = 65536: odd sizes, tensors of 2 and 3 chunks,
// 45 tensors (39 non-empty > kMaxTensors: two launches); (b) a small chunk (1000) with
// the same kernel and planner, so the chunk table fills mid-tensor (the tensor goes on
// in slot 0 of the next launch), exactly at a tensor's end, and together with the
// tensor table; (c) 460 tiny tensors, some empty (12 launches, two count launches);
// (d) one tensor of 256 * 65536 + 5 elements: the real chunk table overflows.
// Types: float32, float64, and bfloat16 parameters (the emulation's stand-in; float32
// state) -- float16 takes the same code with another conversion.
// What this cannot check: timing, coalescing, and for the bfloat16 stand-in the full
// alignment rule (its packs are checked for 16 bytes, see cuda_emulation.h).
//
// Exit status 0 = all passed; one line per check.
#include <memory>
#include <random>
#include <string>

#include "cuda_emulation.h"
#include "cuda/optim_device.cuh"

using namespace pydl;
using namespace pydl::optim_detail;

static std::mt19937 rng(5);
static void check(const std::string& what, bool ok) {
  std::printf("%-92s %s\n", what.c_str(), ok ? "ok" : "FAIL");
  g_fails += !ok;
}

template <typename T> const char* tname() {
  return sizeof(T) == 8 ? "f64" : std::is_same_v<T, BF16> ? "bf16" : "f32";
}

// ------------------------------------------------------------------------- configurations
enum Kind { kSgd, kAdam, kRmsprop, kAdagrad };
struct Cfg {
  Kind kind;
  const char* name;
  double lr = 1e-2, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false, maximize = false;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // Adam (eps: RMSprop and Adagrad too)
  bool amsgrad = false, decoupled = false;
  double alpha = 0.99;  // RMSprop
  bool centered = false;
  double lr_decay = 0;  // Adagrad
};

// The state lists (2..4) a configuration passes, as csrc/cuda/optim.cpp does.
bool uses(const Cfg& c, int k) {
  switch (c.kind) {
    case kSgd: return k == 2 && c.momentum != 0;
    case kAdam: return k == 2 || k == 3 || (k == 4 && c.amsgrad);
    case kRmsprop: return k == 2 || (k == 3 && c.centered) || (k == 4 && c.momentum > 0);
    case kAdagrad: return k == 2;
  }
  return false;
}
int depth(const Cfg& c) { return c.kind == kAdam || c.kind == kRmsprop ? 5 : 3; }
bool has_steps(const Cfg& c) { return c.kind != kSgd; }

// One element of torch.optim's single-tensor step (torch/optim/sgd.py, adam.py, ...) in
// float64. g arrives already divided by grad_scale; t is the new step count; `first`:
// SGD's momentum buffer is new (torch: buf = clone(d_p)).
void reference(const Cfg& c, double t, bool first, double& p, double g, double s[3]) {
  if (c.maximize) g = -g;
  switch (c.kind) {
    case kSgd: {
      if (c.weight_decay != 0) g += c.weight_decay * p;
      if (c.momentum != 0) {
        s[0] = first ? g : s[0] * c.momentum + (1 - c.dampening) * g;
        g = c.nesterov ? g + c.momentum * s[0] : s[0];
      }
      p -= c.lr * g;
      break;
    }
    case kAdam: {
      if (c.weight_decay != 0) {
        if (c.decoupled) p *= 1 - c.lr * c.weight_decay;  // AdamW
        else g += c.weight_decay * p;
      }
      s[0] += (1 - c.beta1) * (g - s[0]);  // exp_avg.lerp_(grad, 1 - beta1)
      s[1] = s[1] * c.beta2 + (1 - c.beta2) * g * g;
      const double step_size = c.lr / (1 - std::pow(c.beta1, t));
      const double bc2_sqrt = std::sqrt(1 - std::pow(c.beta2, t));
      double v = s[1];
      if (c.amsgrad) v = s[2] = std::max(s[2], s[1]);
      p -= step_size * s[0] / (std::sqrt(v) / bc2_sqrt + c.eps);
      break;
    }
    case kRmsprop: {
      if (c.weight_decay != 0) g += c.weight_decay * p;
      s[0] = s[0] * c.alpha + (1 - c.alpha) * g * g;
      double avg;
      if (c.centered) {
        s[1] += (1 - c.alpha) * (g - s[1]);
        avg = std::sqrt(s[0] - s[1] * s[1]);
      } else {
        avg = std::sqrt(s[0]);
      }
      avg += c.eps;
      if (c.momentum > 0) {
        s[2] = s[2] * c.momentum + g / avg;
        p -= c.lr * s[2];
      } else {
        p -= c.lr * g / avg;
      }
      break;
    }
    case kAdagrad: {
      if (c.weight_decay != 0) g += c.weight_decay * p;
      const double clr = c.lr / (1 + (t - 1) * c.lr_decay);
      s[0] += g * g;
      p -= clr * g / (std::sqrt(s[0]) + c.eps);
      break;
    }
  }
}

// ------------------------------------------------------------------------- buffers
constexpr int64_t kGuard = 16;  // guard elements around each tensor (>= a pack)
constexpr unsigned char kGuardByte = 0xFE;
constexpr float kStepGuard = -7.25f;
constexpr int64_t kAlign = 16;  // tensors start on 16-element boundaries (64+ bytes)

// One list of a group: every tensor in one buffer, between guards of kGuardByte.
struct Buffer {
  std::unique_ptr<unsigned char, decltype(&std::free)> mem{nullptr, &std::free};
  size_t bytes = 0, esize = 0;
  std::vector<int64_t> off;  // tensor i's first element
  void layout(const std::vector<int64_t>& numel, size_t elem_size, const std::vector<int>& mis) {
    esize = elem_size;
    off.assign(numel.size(), 0);
    int64_t cur = 0;
    for (size_t i = 0; i < numel.size(); ++i) {
      cur = (cur + kGuard + kAlign - 1) / kAlign * kAlign + mis[i];
      off[i] = cur;
      cur += numel[i];
    }
    bytes = size_t(cur + kGuard + kAlign) * esize;
    mem.reset(static_cast<unsigned char*>(std::aligned_alloc(128, (bytes + 127) / 128 * 128)));
    std::memset(mem.get(), kGuardByte, bytes);
  }
  template <typename V> V* at(size_t i) { return reinterpret_cast<V*>(mem.get()) + off[i]; }
};

// Which lists of tensor i start at an odd element (0/1 per list): all aligned, all
// odd, or only the parameter, the gradient, or one state list odd.
int misalign(size_t i, int k) {
  switch (i % 5) {
    case 1: return 1;
    case 2: return k == 0;
    case 3: return k == 1;
    case 4: return k == 2 + int(i / 5) % 3;
    default: return 0;
  }
}

struct Group {
  const char* name;
  std::vector<int64_t> numel;
  bool small_chunk;             // kSmallChunk instead of kChunk
  int min_launches;             // the plan must take at least this many kernel launches
  bool expect_carry = false;    // a tensor must go on in slot 0 of a later launch
  int min_bumps = 1;            // step-count launches (for optimizers with counts)
};
constexpr int64_t kSmallChunk = 1000;  // a multiple of every VEC (8 for 16-bit)

struct PlanStats {
  int launches = 0, bumps = 0;
  bool carried = false;
};

// Runs one step of (c, group) through the launchers' plan: the multi-tensor launches,
// then the step counts'. T: parameter type; S = C: state type.
template <typename T, int64_t CHUNK, int DEPTH, typename Op>
void emulated_step(const OptimLists& l, const Op& op, const float* gs, const float* fi,
                   PlanStats& st) {
  using C = typename OpMath<T>::type;
  const unsigned used = used_lists<DEPTH>(l);
  plan_multi_tensor<DEPTH, CHUNK>(l, [&](const TensorListMeta<DEPTH>& meta, int chunks) {
    launch(Dim3(unsigned(chunks)), kBlock,
           [&] { multi_tensor_kernel<T, C, DEPTH, Op, CHUNK>(meta, op, used, gs, fi); });
    ++st.launches;
    st.carried |= meta.chunk_index[0] != 0;
    return 0;
  });
  plan_step_bumps(l, [&](const StepList& sl) {
    launch(Dim3(1), kMaxSteps, [&] { bump_steps_kernel(sl, fi); });
    ++st.bumps;
    return 0;
  });
}

template <typename T, int64_t CHUNK>
void run(const Cfg& c, const Group& gr) {
  using C = typename OpMath<T>::type;
  const size_t nt = gr.numel.size();
  const std::vector<int64_t>& numel = gr.numel;
  // the lists: 0 params, 1 grads (T), 2..4 state (C), and the step counts
  Buffer buf[5];
  bool used[5] = {true, true, false, false, false};
  for (int k = 0; k < 5; ++k) {
    if (k >= 2) used[k] = k < depth(c) && uses(c, k);
    if (!used[k]) continue;
    std::vector<int> mis(nt);
    for (size_t i = 0; i < nt; ++i) mis[i] = misalign(i, k);
    buf[k].layout(numel, k < 2 ? sizeof(T) : sizeof(C), mis);
  }
  std::vector<float> steps(2 * nt + 1, kStepGuard);  // count i at 2i + 1, guards around
  std::vector<float*> step_ptrs(nt);
  std::vector<void*> ptrs[5];
  for (size_t i = 0; i < nt; ++i) {
    steps[2 * i + 1] = float((i * 7) % 11);  // counts differ per tensor
    step_ptrs[i] = &steps[2 * i + 1];
  }
  OptimLists l;
  l.n = int64_t(nt);
  l.numels = numel.data();
  if (has_steps(c)) l.steps = step_ptrs.data();
  for (int k = 0; k < 5; ++k) {
    if (!used[k]) continue;
    for (size_t i = 0; i < nt; ++i)
      ptrs[k].push_back(numel[i] ? buf[k].mem.get() + buf[k].off[i] * buf[k].esize : nullptr);
    l.ptrs[k] = ptrs[k].data();
  }
  // initial values (state consistent with a history: v >= 0, RMSprop sq >= ga^2)
  std::normal_distribution<double> nd;
  for (size_t i = 0; i < nt; ++i)
    for (int64_t j = 0; j < numel[i]; ++j) {
      buf[0].at<T>(i)[j] = from_c<T>(C(nd(rng)));
      double s[3] = {0.3 * nd(rng), 0.1 * nd(rng), 0};
      if (c.kind == kAdam) {
        s[1] = 1e-3 + 0.01 * std::fabs(s[1]);
        s[2] = s[1] * (0.5 + std::fabs(nd(rng)));  // vmax above and below v
      } else if (c.kind == kRmsprop) {
        s[2] = nd(rng);  // momentum buffer
        s[1] = 0.1 * nd(rng);  // grad_avg
        s[0] = s[1] * s[1] + 0.01 + 0.01 * std::fabs(nd(rng));  // (sq - ga^2 not tiny: float cancels)
      } else if (c.kind == kAdagrad) {
        s[0] = 0.1 * std::fabs(s[0]);
      }
      for (int k = 2; k < 5; ++k)
        if (used[k]) buf[k].at<C>(i)[j] = C(s[k - 2]);
    }

  // the four steps
  const float scale = 3.f, zero = 0.f, one = 1.f;
  struct Step { const char* what; const float* gs; const float* fi; };
  const Step plan[4] = {{"plain", nullptr, nullptr},
                        {"grad_scale", &scale, &zero},
                        {"found_inf (skipped)", &scale, &one},
                        {"after skip", nullptr, &zero}};
  const double tol_c = sizeof(C) == 8 ? 1e-12 : 1e-5;
  // one rounding to T: for bfloat16 up to half an ulp, 2^-8 relative, with a 2x margin
  const double tol_t = std::is_same_v<T, BF16> ? 1.0 / 128 : tol_c;
  char head[160];
  std::snprintf(head, sizeof head, "%-4s %-32s %-14s", tname<T>(), c.name, gr.name);
  PlanStats st;
  for (int s = 0; s < 4; ++s) {
    const bool first = s == 0;  // SGD: the momentum buffers are new on the first step
    if (first && c.kind == kSgd && used[2])  // (their memory is garbage then)
      for (size_t i = 0; i < nt; ++i)
        for (int64_t j = 0; j < numel[i]; ++j) buf[2].at<C>(i)[j] = C(1e3 * nd(rng));
    for (size_t i = 0; i < nt; ++i)
      for (int64_t j = 0; j < numel[i]; ++j) buf[1].at<T>(i)[j] = from_c<T>(C(nd(rng)));
    // snapshot and float64 reference
    const bool skip = plan[s].fi != nullptr && *plan[s].fi != 0.f;
    std::vector<unsigned char> before[5];
    for (int k = 0; k < 5; ++k)
      if (used[k] && skip) before[k].assign(buf[k].mem.get(), buf[k].mem.get() + buf[k].bytes);
    const std::vector<float> steps_before = steps;
    std::vector<std::vector<double>> ref[5];
    for (int k = 0; k < 5; ++k) ref[k].resize(nt);
    for (size_t i = 0; i < nt; ++i) {
      for (int k = 0; k < 5; ++k)
        if (used[k]) ref[k][i].resize(numel[i]);
      const double t = has_steps(c) ? double(steps[2 * i + 1]) + 1 : 0;
      for (int64_t j = 0; j < numel[i]; ++j) {
        double p = to_c(buf[0].at<T>(i)[j]), g = to_c(buf[1].at<T>(i)[j]);
        double x[3] = {0, 0, 0};
        for (int k = 2; k < 5; ++k)
          if (used[k]) x[k - 2] = to_c(buf[k].at<C>(i)[j]);
        if (plan[s].gs) g /= double(*plan[s].gs);
        reference(c, t, first, p, g, x);
        ref[0][i][j] = p;
        ref[1][i][j] = g;
        for (int k = 2; k < 5; ++k)
          if (used[k]) ref[k][i][j] = x[k - 2];
      }
    }

    // the kernels
    auto go = [&](auto op, auto depth_tag) {
      constexpr int D = decltype(depth_tag)::value;
      emulated_step<T, CHUNK, D>(l, op, plan[s].gs, plan[s].fi, st);
    };
    switch (c.kind) {
      case kSgd:
        go(sgd_op<C>(SgdHyper<double>{c.lr, c.momentum, 1.0 - c.dampening, c.weight_decay, c.nesterov,
                                      c.maximize, first}),
           std::integral_constant<int, 3>{});
        break;
      case kAdam:
        go(adam_op<C>(AdamHyper<double>{1.0 - c.beta1, c.beta2, 1.0 - c.beta2, c.eps, c.weight_decay,
                                         1.0 - c.lr * c.weight_decay, c.amsgrad, c.maximize, c.decoupled},
                      c.lr, c.beta1, c.beta2),
           std::integral_constant<int, 5>{});
        break;
      case kRmsprop:
        go(rmsprop_op<C>(RmspropHyper<double>{c.lr, c.alpha, 1.0 - c.alpha, c.eps, c.weight_decay, c.momentum,
                                               c.centered, c.maximize}),
           std::integral_constant<int, 5>{});
        break;
      case kAdagrad:
        go(adagrad_op<C>(AdagradHyper<double>{c.eps, c.weight_decay, c.maximize}, c.lr, c.lr_decay),
           std::integral_constant<int, 3>{});
        break;
    }

    // compare
    const std::string what = std::string(head) + " step " + std::to_string(s + 1) + " " + plan[s].what;
    bool guards = true;
    for (int k = 0; k < 5; ++k) {
      if (!used[k]) continue;
      // every byte outside the tensors (which lie in increasing order) is still a guard
      size_t b = 0;
      for (size_t i = 0; i <= nt; ++i) {
        const size_t gap_end = i < nt ? size_t(buf[k].off[i]) * buf[k].esize : buf[k].bytes;
        for (; b < gap_end; ++b) guards &= buf[k].mem.get()[b] == kGuardByte;
        if (i < nt) b = size_t(buf[k].off[i] + numel[i]) * buf[k].esize;
      }
    }
    for (size_t b = 0; b < steps.size(); b += 2) guards &= steps[b] == kStepGuard;
    bool counts = true;
    for (size_t i = 0; i < nt; ++i)
      counts &= steps[2 * i + 1] == steps_before[2 * i + 1] + (has_steps(c) && !skip ? 1.f : 0.f);
    if (skip) {
      bool same = true;
      for (int k = 0; k < 5; ++k)
        if (used[k]) same &= std::memcmp(before[k].data(), buf[k].mem.get(), buf[k].bytes) == 0;
      check(what + ": nothing written", same && guards && counts);
      continue;
    }
    // Largest |got - ref| / (|ref| + 1e-2 * max|ref|) over every element of a list.
    double worst = 0, worst_rel = 0;
    int worst_k = 0;
    for (int k = 0; k < 5; ++k) {
      if (!used[k]) continue;
      double scale_k = 1e-30;
      for (size_t i = 0; i < nt; ++i)
        for (double r : ref[k][i]) scale_k = std::max(scale_k, std::fabs(r));
      double e = 0;
      for (size_t i = 0; i < nt; ++i)
        for (int64_t j = 0; j < numel[i]; ++j) {
          const double got = k < 2 ? double(to_c(buf[k].at<T>(i)[j])) : double(buf[k].at<C>(i)[j]);
          const double r = ref[k][i][j];
          const double d = std::isnan(got) || std::isnan(r) ? INFINITY : std::fabs(got - r);
          e = std::max(e, d / (std::fabs(r) + 1e-2 * scale_k));
        }
      const double rel = e / (k < 2 ? tol_t : tol_c);  // against the list's tolerance
      if (rel >= worst_rel) worst_rel = rel, worst = e, worst_k = k;
    }
    static const char* lname[5] = {"param", "grad", "state0", "state1", "state2"};
    report(what + " (worst: " + lname[worst_k] + ")", worst, worst_k < 2 ? tol_t : tol_c);
    check(what + ": guards untouched, counts +1", guards && counts);
  }
  char plan_line[200];
  std::snprintf(plan_line, sizeof plan_line, "%s: %d kernel launches / 4 steps, %d count launches%s", head,
                st.launches, st.bumps, st.carried ? ", a tensor carried into slot 0" : "");
  // (3 steps launch; the skipped one launches too and returns at once)
  check(plan_line, st.launches >= 4 * gr.min_launches && (!gr.expect_carry || st.carried) &&
                       (!has_steps(c) || st.bumps >= 4 * gr.min_bumps));
}

template <typename T>
void run_group(const Cfg& c, const Group& g) {
  if (g.small_chunk) run<T, kSmallChunk>(c, g);
  else run<T, kChunk>(c, g);
}

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::vector<Cfg> cfgs = {
      {.kind = kSgd, .name = "sgd"},
      {.kind = kSgd, .name = "sgd wd maximize", .weight_decay = 1e-2, .maximize = true},
      {.kind = kSgd, .name = "sgd momentum dampening", .momentum = 0.9, .dampening = 0.1},
      {.kind = kSgd, .name = "sgd nesterov wd maximize", .momentum = 0.9, .weight_decay = 1e-2,
       .nesterov = true, .maximize = true},
      {.kind = kAdam, .name = "adam"},
      {.kind = kAdam, .name = "adam wd", .weight_decay = 1e-2},
      {.kind = kAdam, .name = "adamw wd", .weight_decay = 1e-2, .decoupled = true},
      {.kind = kAdam, .name = "adam amsgrad maximize", .maximize = true, .amsgrad = true},
      {.kind = kAdam, .name = "adamw amsgrad wd", .weight_decay = 1e-1, .amsgrad = true, .decoupled = true},
      {.kind = kRmsprop, .name = "rmsprop"},
      {.kind = kRmsprop, .name = "rmsprop centered", .centered = true},
      {.kind = kRmsprop, .name = "rmsprop momentum wd", .momentum = 0.9, .weight_decay = 1e-2},
      {.kind = kRmsprop, .name = "rmsprop centered momentum maximize", .momentum = 0.5, .maximize = true,
       .centered = true},
      {.kind = kAdagrad, .name = "adagrad"},
      {.kind = kAdagrad, .name = "adagrad lr_decay", .lr_decay = 0.1},
      {.kind = kAdagrad, .name = "adagrad lr_decay wd maximize", .weight_decay = 1e-2, .maximize = true,
       .lr_decay = 0.05},
  };
  // (a) the real chunk: odd sizes below, across and over a chunk (65537: 2 chunks,
  // 140001: 3), sizes under a pack (1, 3), empty tensors; 45 tensors, 39 non-empty
  std::vector<int64_t> real;
  const int64_t sizes_a[] = {7, 1, 97, 0, 1001, 3, 65537, 33, 4099, 2, 513, 5, 0, 11, 8};
  for (int i = 0; i < 45; ++i) real.push_back(i == 11 ? 140001 : sizes_a[i % 15]);
  const Group real_chunks{"chunk 65536", real, false, 2};
  // (b) chunk 1000: A takes chunks 0..200; B's 56th chunk fills the table (B goes on in
  // slot 0 of launch 2); C ends exactly at the table's end; then 35 tensors of 7 chunks
  // and a 36th of 11 fill both tables at once; then a short tail
  std::vector<int64_t> small = {200500, 60000, 250999};  // C: 251 chunks after B's last 5
  for (int i = 0; i < 35; ++i) small.push_back(6001 + 2 * i);
  small.push_back(10999);
  small.push_back(3);
  small.push_back(2001);
  const Group small_chunks{"chunk 1000", small, true, 4, true};
  // (c) 460 tiny tensors (0..12 elements): 13 launches by the tensor table, 2 count launches
  std::vector<int64_t> many;
  for (int i = 0; i < 460; ++i) many.push_back((i * 7) % 13);
  const Group many_tensors{"460 tensors", many, false, 12, false, 2};
  // (d) the real chunk table overflows: 257 chunks of 65536
  const Group big{"256*65536+5", {256 * kChunk + 5}, false, 2, true};

  for (const Cfg& c : cfgs) {
    run_group<float>(c, real_chunks);
    run_group<BF16>(c, real_chunks);
    run_group<double>(c, real_chunks);
  }
  // the planner's boundary cases: the configurations with the most state lists
  for (int i : {3, 8, 12, 15}) {
    run_group<float>(cfgs[i], small_chunks);
    if (i == 8) run_group<BF16>(cfgs[i], small_chunks);
  }
  for (int i : {3, 8, 15}) run_group<float>(cfgs[i], many_tensors);
  run_group<float>(cfgs[1], big);
  std::printf("%d failure(s)\n", g_fails);
  return g_fails ? 1 : 0;
}

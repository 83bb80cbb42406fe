// Host emulation of the CUDA activation kernels (csrc/cuda/activation_device.cuh), so that
// their indexing -- the grid-stride loop over 16-byte vectors (Pack), the scalar VEC = 1
// kernel the launchers fall back to for misaligned pointers, and the n % VEC tail taken
// by the first threads of the grid -- is checked on machines without a GPU
// (tests/test_activation.py compiles and runs this with g++).
//
// How: tests/cuda_emulation.h (each CUDA thread a fiber; a vector access at an address
// the GPU would fault on aborts). The launch is chosen as the launchers in
// activation_kernel.cu choose it: the VEC-wide kernel when every pointer is 16-byte
// aligned on the GPU (here: the element offset times the GPU's element size), else
// VEC = 1; the grid the launchers' (grid_for of elementwise.cuh: work / 256 blocks, at
// most 16 per SM of a 132-SM GPU) and a 2-block grid, so the grid-stride loops go round
// many times. Every operand lives in its own buffer, at element offset 0, 1 (misaligned)
// or 2 (8-byte aligned only, for float), between guard regions: 0xFE bytes around the
// inputs (a huge negative finite value, which every activation changes: a read and
// write out of bounds shows, where a NaN would pass through relu bit for bit), 0xFF
// around and in the output (a NaN no computation produces, so an element nobody writes
// fails). Any byte written outside fails. In-place forward (y = x) too. Sizes 1, 3 and
// 7 (under a vector: only the tail), multiples of VEC and not, up to 5001.
// Every activation, forward and backward; the backward from the saved output
// (is_result: relu, sigmoid, tanh, and in-place leaky_relu / elu) and from the saved
// input (leaky_relu, elu; negative slopes too). Inputs include NaN and +-inf.
// The float64 reference is written from torch's definitions (relu, leaky_relu, elu,
// sigmoid, tanh and their *_backward in ATen), not from activation_math.h.
// Types: float32, float64 and the bfloat16 stand-in.
// What this cannot check: timing, coalescing.
//
// Exit status 0 = all passed; one line per check.
#include <memory>
#include <random>
#include <string>

#include "cuda_emulation.h"
#include "cuda/activation_device.cuh"

using namespace pydl;
using namespace pydl::act_detail;

static std::mt19937 rng(3);
template <typename T> const char* tname() {
  return sizeof(T) == 8 ? "f64" : std::is_same_v<T, BF16> ? "bf16" : "f32";
}
// the element size on the GPU (the bfloat16 stand-in is a float here)
template <typename T> constexpr int64_t gpu_size() { return std::is_same_v<T, BF16> ? 2 : sizeof(T); }

// The launchers' grid: elementwise.cuh's grid_for.
unsigned grid_for(int64_t work) {
  const int64_t cap = int64_t(num_sms()) * 16;
  int64_t blocks = (work + kThreads - 1) / kThreads;
  if (blocks > cap) blocks = cap;
  return unsigned(blocks < 1 ? 1 : blocks);
}

// ------------------------------------------------------------------ float64 reference
// torch: relu = clamp_min(x, 0) (NaN stays NaN); leaky_relu = x > 0 ? x : x * slope;
// elu = x > 0 ? x : alpha * (exp(x) - 1) (evaluated as expm1); sigmoid = 1 / (1 + exp(-x)).
double ref_fwd(Act a, double x, double alpha) {
  switch (a) {
    case Act::ReLU: return std::isnan(x) ? x : std::max(x, 0.0);
    case Act::LeakyReLU: return x > 0 ? x : x * alpha;
    case Act::ELU: return x > 0 ? x : alpha * std::expm1(x);
    case Act::Sigmoid: return 1 / (1 + std::exp(-x));
    case Act::Tanh: return std::tanh(x);
  }
  return NAN;
}
// torch: threshold_backward(g, y, 0) = y <= 0 ? 0 : g; leaky_relu_backward = s > 0 ? g :
// g * slope; elu_backward: s <= 0 ? (is_result ? g * (y + alpha) : g * alpha * exp(x)) :
// g; sigmoid_backward = g * (1 - y) * y; tanh_backward = g * (1 - y * y).
double ref_bwd(Act a, double g, double s, double alpha, bool is_result) {
  switch (a) {
    case Act::ReLU: return s <= 0 ? 0 : g;
    case Act::LeakyReLU: return s > 0 ? g : g * alpha;
    case Act::ELU: return s <= 0 ? (is_result ? g * (s + alpha) : g * alpha * std::exp(s)) : g;
    case Act::Sigmoid: return g * (1 - s) * s;
    case Act::Tanh: return g * (1 - s * s);
  }
  return NAN;
}

// ------------------------------------------------------------------ buffers
constexpr int64_t kGuard = 32;  // guard elements each side (a multiple of 16: bases stay aligned)

// n elements of T at element offset `mis` from a 128-byte boundary, between guards of
// `fill` bytes (0xFE around inputs, 0xFF around outputs, see the top).
template <typename T>
struct Buf {
  std::unique_ptr<unsigned char, decltype(&std::free)> mem{nullptr, &std::free};
  int64_t n, off;
  size_t bytes;
  unsigned char fill;
  Buf(int64_t n_, int mis, unsigned char fill_)
      : n(n_), off(kGuard + mis), bytes(size_t(kGuard + mis + n_ + kGuard) * sizeof(T)), fill(fill_) {
    mem.reset(static_cast<unsigned char*>(std::aligned_alloc(128, (bytes + 127) / 128 * 128)));
    std::memset(mem.get(), fill, bytes);
  }
  T* data() { return reinterpret_cast<T*>(mem.get()) + off; }
  bool guards_ok() const {
    for (size_t b = 0; b < bytes; ++b)
      if ((b < off * sizeof(T) || b >= (off + n) * sizeof(T)) && mem.get()[b] != fill) return false;
    return true;
  }
  bool all_written() {  // no element still all 0xFF bytes
    for (int64_t i = 0; i < n; ++i) {
      const unsigned char* e = reinterpret_cast<const unsigned char*>(data() + i);
      if (std::all_of(e, e + sizeof(T), [](unsigned char c) { return c == 0xFF; })) return false;
    }
    return true;
  }
};

// Largest |got - ref| / (|ref| + 1e-2 * scale), scale = the largest finite |ref| or |input|
// (the operand's scale: tanh' = 1 - y*y cancels near |y| = 1, a float rounding error
// there is large next to the small result but not next to g); equal values (infinities
// included) and NaN against NaN count as exact; NaN against a number fails.
template <typename T>
double err(const T* got, const std::vector<double>& ref, const std::vector<T>& in) {
  double scale = 1e-30;
  for (double r : ref)
    if (std::isfinite(r)) scale = std::max(scale, std::fabs(r));
  for (const T& v : in)
    if (std::isfinite(double(to_c(v)))) scale = std::max(scale, std::fabs(double(to_c(v))));
  double e = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double v = to_c(got[i]), r = ref[i];
    if (std::isnan(v) || std::isnan(r)) {
      if (std::isnan(v) != std::isnan(r)) return INFINITY;
      continue;
    }
    if (v == r) continue;
    e = std::max(e, std::fabs(v - r) / (std::fabs(r) + 1e-2 * scale));
  }
  return e;
}

struct ActCfg {
  Act act;
  const char* name;
  double alpha;
  bool from_result, from_input;  // the backward's saved tensors to test
};

// Worst error and failures over the cases of one (type, activation, direction).
struct Tally {
  double worst = 0;
  int cases = 0;
  bool ok = true;  // guards, written outputs
  std::string first_bad;
};

template <typename T>
void run(const ActCfg& ac) {
  using C = typename OpMath<T>::type;
  constexpr int VEC = vec_width<T>();
  const double tol = std::is_same_v<T, BF16> ? 1.0 / 128 : sizeof(C) == 8 ? 1e-12 : 1e-5;
  const int64_t sizes[] = {1, 3, 7, 8, 9, 1000, 1003, 5001};
  const int offsets[][3] = {{0, 0, 0}, {1, 1, 1}, {0, 1, 0}, {1, 0, 0}, {0, 0, 1}, {2, 2, 2}};
  std::normal_distribution<double> nd;
  char head[96];
  std::snprintf(head, sizeof head, "%-4s %-10s alpha %-5g", tname<T>(), ac.name, ac.alpha);
  auto note = [&](Tally& t, double e, bool fine, const std::string& what) {
    ++t.cases;
    t.worst = std::max(t.worst, e);
    if ((e > tol || !fine) && t.ok) t.first_bad = what;
    t.ok &= e <= tol && fine;
  };
  // the launch the launchers would choose, on the launchers' grid or on 2 blocks
  auto pick = [](std::initializer_list<int> offs) {
    bool vec = true;
    for (int o : offs) vec &= (o * gpu_size<T>()) % 16 == 0;
    return vec;
  };
  Tally fwd, bwd[2];
  for (int64_t n : sizes)
    for (const auto& off : offsets)
      for (bool small_grid : {false, true}) {
        // inputs: x = 3 N(0,1) with NaN and +-inf sprinkled in, g = N(0,1)
        std::vector<T> X(n), G(n);
        for (int64_t i = 0; i < n; ++i) {
          const double x = i % 29 == 5 ? NAN : i % 31 == 7 ? INFINITY : i % 37 == 9 ? -INFINITY : 3 * nd(rng);
          X[i] = from_c<T>(C(x));
          G[i] = from_c<T>(C(nd(rng)));
        }
        char what[160];
        std::snprintf(what, sizeof what, "n %ld offsets %d,%d,%d %s", long(n), off[0], off[1], off[2],
                      small_grid ? "2 blocks" : "launcher grid");
        // ---- forward, out of place and in place (y = x; offsets of x)
        std::vector<double> yr(n);
        for (int64_t i = 0; i < n; ++i) yr[i] = ref_fwd(ac.act, to_c(X[i]), ac.alpha);
        for (bool in_place : {false, true}) {
          if (in_place && off[0] != off[1]) continue;
          Buf<T> x(n, off[0], 0xFE), y(n, off[1], 0xFF);
          std::copy(X.begin(), X.end(), x.data());
          T* out = in_place ? x.data() : y.data();
          const bool vec = pick({off[0], off[1]});
          const unsigned grid = small_grid ? 2 : grid_for(vec ? n / VEC + 1 : n);
          launch(Dim3(grid), kThreads, [&] {
            with_act(ac.act, [&](auto a) {
              constexpr Act A = decltype(a)::value;
              if (vec) act_fwd_kernel<A, T, VEC>(x.data(), out, n, C(ac.alpha));
              else act_fwd_kernel<A, T, 1>(x.data(), out, n, C(ac.alpha));
            });
          });
          const bool fine = x.guards_ok() && (in_place || (y.guards_ok() && y.all_written()));
          note(fwd, err(out, yr, X), fine,
               std::string(what) + (in_place ? " in place" : "") + (vec ? " vec" : " scalar"));
        }
        // ---- backward from the saved output (rounded to T, as stored) or input
        for (int from_x = 0; from_x < 2; ++from_x) {
          if (!(from_x ? ac.from_input : ac.from_result)) continue;
          std::vector<T> S(n);
          for (int64_t i = 0; i < n; ++i) S[i] = from_x ? X[i] : from_c<T>(C(yr[i]));
          std::vector<double> dxr(n);
          for (int64_t i = 0; i < n; ++i) dxr[i] = ref_bwd(ac.act, to_c(G[i]), to_c(S[i]), ac.alpha, !from_x);
          Buf<T> g(n, off[0], 0xFE), s(n, off[1], 0xFE), dx(n, off[2], 0xFF);
          std::copy(G.begin(), G.end(), g.data());
          std::copy(S.begin(), S.end(), s.data());
          const bool vec = pick({off[0], off[1], off[2]});
          const unsigned grid = small_grid ? 2 : grid_for(vec ? n / VEC + 1 : n);
          launch(Dim3(grid), kThreads, [&] {
            with_act(ac.act, [&](auto a) {
              constexpr Act A = decltype(a)::value;
              if (vec) act_bwd_kernel<A, T, VEC>(g.data(), s.data(), dx.data(), n, C(ac.alpha), !from_x);
              else act_bwd_kernel<A, T, 1>(g.data(), s.data(), dx.data(), n, C(ac.alpha), !from_x);
            });
          });
          const bool fine = g.guards_ok() && s.guards_ok() && dx.guards_ok() && dx.all_written();
          note(bwd[from_x], err(dx.data(), dxr, G), fine, std::string(what) + (vec ? " vec" : " scalar"));
        }
      }
  auto line = [&](const char* dir, const Tally& t) {
    if (t.cases == 0) return;
    std::string s = std::string(head) + " " + dir + ": " + std::to_string(t.cases) +
                    " cases (values, all written, guards)";
    if (!t.ok) s += " -- first bad: " + t.first_bad;
    report(s, t.ok ? t.worst : INFINITY, tol);
  };
  line("fwd", fwd);
  line("bwd from y", bwd[0]);
  line("bwd from x", bwd[1]);
}

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  // the backward's saved tensor as the ops save it: the output for relu, sigmoid, tanh
  // (and in-place leaky_relu / elu, positive alpha only), the input for leaky_relu / elu
  const ActCfg acts[] = {
      {Act::ReLU, "relu", 0, true, false},
      {Act::LeakyReLU, "leaky_relu", 0.2, true, true},
      {Act::LeakyReLU, "leaky_relu", -0.1, false, true},
      {Act::ELU, "elu", 1.0, true, true},
      {Act::ELU, "elu", 0.7, true, true},
      {Act::Sigmoid, "sigmoid", 0, true, false},
      {Act::Tanh, "tanh", 0, true, false},
  };
  for (const ActCfg& a : acts) {
    run<float>(a);
    run<BF16>(a);
    run<double>(a);
  }
  std::printf("%d failure(s)\n", g_fails);
  return g_fails ? 1 : 0;
}

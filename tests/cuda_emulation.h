// Host emulation of the CUDA execution model, shared by the kernel emulation tests
// (tests/*_cuda_emulation.cpp): it lets the device code of csrc/cuda/*_device.cuh compile
// with g++ and run on a machine without a GPU, so its indexing is checked there.
//
// How: the CUDA keywords become plain C++ (__shared__ -> static, so every emulated thread
// of a block sees the same array). Each CUDA thread of a block is a fiber (ucontext) with
// its own stack, all on one OS thread: a scheduler runs each fiber until it reaches a
// barrier -- __syncthreads() for the block, a warp shuffle or __syncwarp() for its warp --
// and releases the barrier once every thread concerned has reached it. For __syncthreads()
// a thread that has returned counts as arrived (as on the GPU); a full-mask shuffle needs
// all lanes of its warp, so a shuffle in a warp some of whose lanes have left fails. Warp
// shuffles exchange values through per-warp slots, so a shuffle by only some warps of a
// block (the others having left) works, and a block's partial last warp has fewer lanes.
// The runnable fibers are resumed in alternating forward / reverse order, so a phase
// missing its barrier tends to read data its neighbours have not written yet. Threads
// waiting at different barriers -- a deadlock or undefined behaviour on the GPU -- abort
// here with a message. Blocks run one after the other. (Fibers rather than OS threads:
// 256-thread blocks meeting at every barrier on a 2-core machine are a futex storm; a
// fiber switch costs well under a microsecond.)
// A float rounded to bfloat16 precision (BF16) stands in for __nv_bfloat16.
// Vector accesses (Pack) to memory must be aligned as on the GPU, where a misaligned one
// faults: a copy of a Pack from or to memory checks the address and aborts (see Pack).
// What this cannot check: timing, memory coalescing, true concurrency (races within a
// phase are not interleaved), and anything layout-specific to the hardware (WMMA
// fragments; the exact alignment of bfloat16 packs, see Pack).
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#define __device__
#define __host__
#define __forceinline__ inline
#define __global__
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct Dim3 {
  unsigned x, y, z;
  Dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using dim3 = Dim3;
// threadIdx is the running fiber's: the scheduler sets it before resuming one.
inline Dim3 threadIdx, blockIdx, gridDim, blockDim;

namespace emu {
enum class State { Ready, AtBlockBarrier, AtWarpBarrier, Done };
struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  Dim3 tid;
  State state = State::Ready;
};
constexpr size_t kStack = 256 * 1024;
inline ucontext_t g_sched;
inline std::vector<Fiber> g_fibers;
inline unsigned g_cur = 0;                    // the running fiber
inline const std::function<void()>* g_body = nullptr;  // set while a grid runs
// per warp: one value per lane, exchanged by the shuffles
struct alignas(8) WarpSlots { unsigned char v[32][8]; };
inline std::vector<WarpSlots> g_slots;

inline void trampoline() {
  (*g_body)();
  g_fibers[g_cur].state = State::Done;
  swapcontext(&g_fibers[g_cur].ctx, &g_sched);
}
// Parks the running fiber at a barrier until the scheduler releases it.
inline void wait(State s) {
  g_fibers[g_cur].state = s;
  swapcontext(&g_fibers[g_cur].ctx, &g_sched);
}
inline unsigned linear_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

// A vector access of `bytes` at p by the running thread: on the GPU a misaligned one is
// a fault, so here it aborts with a message. Checked only inside a grid and for memory
// off the thread's own stack (its local Packs are registers on the GPU); the required
// alignment is the pack's size up to 16 bytes -- the GPU's rule for float and double,
// and for the twice-as-wide bfloat16 stand-in what a GPU-aligned pack is sure to have.
inline void check_vector_access(const void* p, size_t bytes) {
  if (g_body == nullptr) return;
  const char* c = static_cast<const char*>(p);
  const char* stack = g_fibers[g_cur].stack.get();
  if (c >= stack && c < stack + kStack) return;
  const size_t align = bytes < 16 ? bytes : 16;
  if (reinterpret_cast<uintptr_t>(p) % align == 0) return;
  std::fprintf(stderr,
               "emulated CUDA misaligned address: a %zu-byte vector access at %p, block (%u,%u,%u) "
               "thread (%u,%u,%u)\n",
               bytes, p, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
  std::abort();
}

// Runs one block: resumes ready fibers until all are done, releasing barriers as they fill.
inline void run_block() {
  const unsigned n = unsigned(g_fibers.size());
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = g_fibers[i];
    f.state = State::Ready;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.get();
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, trampoline, 0);
  }
  for (bool forward = true;; forward = !forward) {
    bool ran = false;
    for (unsigned k = 0; k < n; ++k) {
      const unsigned i = forward ? k : n - 1 - k;
      if (g_fibers[i].state != State::Ready) continue;
      g_cur = i;
      threadIdx = g_fibers[i].tid;
      swapcontext(&g_sched, &g_fibers[i].ctx);
      ran = true;
    }
    if (ran) continue;
    // nothing runnable: release what has filled up
    bool released = false, all_done = true, all_block = true;
    for (unsigned w = 0; w * 32 < n; ++w) {
      bool any = false, full = true;
      for (unsigned i = w * 32; i < std::min(n, w * 32 + 32); ++i) {
        const State s = g_fibers[i].state;
        any |= s == State::AtWarpBarrier;
        full &= s == State::AtWarpBarrier;  // a lane that has left never arrives (below)
      }
      if (any && full) {
        for (unsigned i = w * 32; i < std::min(n, w * 32 + 32); ++i)
          if (g_fibers[i].state == State::AtWarpBarrier) g_fibers[i].state = State::Ready;
        released = true;
      }
    }
    if (released) continue;
    for (const Fiber& f : g_fibers) {
      all_done &= f.state == State::Done;
      all_block &= f.state == State::AtBlockBarrier || f.state == State::Done;
    }
    if (all_done) return;
    if (all_block) {
      for (Fiber& f : g_fibers)
        if (f.state == State::AtBlockBarrier) f.state = State::Ready;
      continue;
    }
    std::fprintf(stderr,
                 "emulated CUDA deadlock: block (%u,%u,%u): threads wait at different barriers, or a "
                 "warp shuffles with lanes that have left\n",
                 blockIdx.x, blockIdx.y, blockIdx.z);
    std::abort();
  }
}
}  // namespace emu

inline void __syncthreads() { emu::wait(emu::State::AtBlockBarrier); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::wait(emu::State::AtWarpBarrier); }

// ------------------------------------------------------------------------- warps
constexpr int warpSize = 32;
// Lane l gets lane src(l)'s v, or its own where src(l) is past the (partial) warp.
// Every lane of the warp must call it (a full mask is all these kernels use).
template <typename T, typename Src>
T emu_shuffle(T v, Src src) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
  const unsigned tid = emu::linear_tid(), lane = tid % 32, w = tid / 32;
  const unsigned lanes = std::min(32u, unsigned(emu::g_fibers.size()) - w * 32);
  std::memcpy(emu::g_slots[w].v[lane], &v, sizeof(T));
  __syncwarp();  // every lane has published its value
  T r = v;
  const unsigned s = src(lane);
  if (s < lanes) std::memcpy(&r, emu::g_slots[w].v[s], sizeof(T));
  __syncwarp();  // every lane has read before the slots are reused
  return r;
}
template <typename T>
T __shfl_down_sync(unsigned /*mask*/, T v, unsigned delta) {
  return emu_shuffle(v, [&](unsigned l) { return l + delta; });
}
template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T v, unsigned m) {
  return emu_shuffle(v, [&](unsigned l) { return l ^ m; });
}

namespace pydl {
using std::fma;
// bfloat16 stand-in: a float rounded to 8 significant bits (round to nearest even)
struct BF16 {
  float v;
};
inline BF16 to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u = (u + 0x7fff + ((u >> 16) & 1)) & 0xffff0000u;
  BF16 r;
  std::memcpy(&r.v, &u, 4);
  return r;
}
template <typename T> struct OpMath { using type = float; };
template <> struct OpMath<double> { using type = double; };
inline float to_c(float v) { return v; }
inline double to_c(double v) { return v; }
inline float to_c(BF16 v) { return v.v; }
template <typename T> inline T from_c(typename OpMath<T>::type v) { return T(v); }
template <> inline BF16 from_c<BF16>(float v) { return to_bf16(v); }
constexpr int kThreads = 256;
// N elements moved as one vector access. Its copies check the alignment of the memory
// they read or write (emu::check_vector_access), as the GPU would fault. (No alignas:
// the bfloat16 stand-in is twice as wide as the GPU's type, so a GPU-aligned pack is
// only sure to be 16-byte aligned here; alignas would let the compiler assume more.)
template <typename T, int N> struct Pack {
  T v[N];
  Pack() = default;
  Pack(const Pack& o) {
    emu::check_vector_access(&o, sizeof(Pack));
    emu::check_vector_access(this, sizeof(Pack));
    std::memcpy(v, o.v, sizeof v);
  }
  Pack& operator=(const Pack& o) {
    emu::check_vector_access(&o, sizeof(Pack));
    emu::check_vector_access(this, sizeof(Pack));
    std::memcpy(v, o.v, sizeof v);
    return *this;
  }
};
// csrc/cuda/elementwise.cuh's one-instruction 16-byte store: here a checked Pack copy.
template <typename T, int N> inline void store_pack16(T* dst, const Pack<T, N>& v) {
  *reinterpret_cast<Pack<T, N>*>(dst) = v;
}
// Elements per 16-byte vector on the GPU (the stand-in for bfloat16 is wider on the host).
template <typename T> constexpr int vec_width() { return std::is_same_v<T, BF16> ? 8 : 16 / int(sizeof(T)); }
// The multiprocessor count the launch geometry sees; tests set it to vary the grids.
inline int g_num_sms = 132;
inline int num_sms() { return g_num_sms; }
}  // namespace pydl

// Runs body() as a CUDA grid of `block`-shaped blocks, one block after the other, each
// block's threads as fibers (above).
template <typename F>
void launch(Dim3 grid, Dim3 block, F body) {
  gridDim = grid;
  blockDim = block;
  const unsigned threads = block.x * block.y * block.z;
  emu::g_fibers.resize(threads);
  for (unsigned t = 0; t < threads; ++t) {
    emu::Fiber& f = emu::g_fibers[t];
    if (!f.stack) f.stack.reset(new char[emu::kStack]);
    f.tid = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
  }
  emu::g_slots.resize((threads + 31) / 32);
  const std::function<void()> fn = body;
  emu::g_body = &fn;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = {x, y, z};
        emu::run_block();
      }
  emu::g_body = nullptr;
}
template <typename F>
void launch(Dim3 grid, unsigned threads, F body) {
  launch(grid, Dim3(threads), body);
}

// ------------------------------------------------------------------ test results
// Each check prints one line; a test's main() ends with printf("%d failure(s)\n", g_fails),
// which tests/conftest.py::run_cuda_emulation looks for.
inline int g_fails = 0;
inline void report(const std::string& what, double e, double tol) {
  const bool ok = e <= tol;
  std::printf("%-88s err %.1e %s\n", what.c_str(), e, ok ? "ok" : "FAIL");
  g_fails += !ok;
}

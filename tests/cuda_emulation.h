// Host emulation of the CUDA execution model, shared by the kernel emulation tests
// (tests/*_cuda_emulation.cpp): it lets the device code of csrc/cuda/*_device.cuh compile
// with g++ and run on a machine without a GPU, so its indexing is checked there.
//
// How: the CUDA keywords become plain C++ (__shared__ -> static, so every emulated thread
// of a block sees the same array); each CUDA thread of a block is a std::thread with its
// own threadIdx/blockIdx; __syncthreads() is a block-wide std::barrier; blocks run one
// after the other. Warp shuffles go through per-warp exchange slots guarded by a per-warp
// std::barrier (sized to the warp's real lane count, so a partial last warp works), so a
// shuffle executed by only some warps of a block -- legal on the GPU when the others have
// left -- does not wait on threads that will never arrive. A shuffle executed by only
// part of a warp (undefined on the GPU with a full mask) deadlocks here, which the
// caller's timeout turns into a failure. A 16-bit-in-spirit type with bfloat16 rounding
// (BF16) stands in for __nv_bfloat16.
// What this cannot check: timing, memory coalescing, races that a real GPU's schedule
// would expose but this one does not (a missing __syncthreads between two phases may still
// pass here), and anything layout-specific to the hardware (WMMA fragments, alignment).
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
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
thread_local Dim3 threadIdx, blockIdx;
Dim3 gridDim, blockDim;
std::barrier<>* g_barrier = nullptr;
inline void __syncthreads() { g_barrier->arrive_and_wait(); }

// ------------------------------------------------------------------------- warps
constexpr int warpSize = 32;
struct WarpState {
  explicit WarpState(unsigned lanes) : lanes(lanes), bar(lanes) {}
  unsigned lanes;               // 32, or fewer for a block's partial last warp
  std::barrier<> bar;
  alignas(8) unsigned char slot[32][8];  // one value per lane, exchanged by the shuffles
};
std::vector<std::unique_ptr<WarpState>> g_warps;

// Linear thread index within the block, as the hardware numbers threads into warps.
inline unsigned emu_linear_tid() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

// __shfl_down_sync(mask, v, d): lane l gets lane l + d's v, or its own v where l + d is
// past the warp (as the hardware does for the full-width form). Every lane of the warp
// must call it (a full mask is all these kernels use).
template <typename T>
T __shfl_down_sync(unsigned /*mask*/, T v, unsigned delta) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
  const unsigned tid = emu_linear_tid(), lane = tid % 32;
  WarpState& w = *g_warps[tid / 32];
  std::memcpy(w.slot[lane], &v, sizeof(T));
  w.bar.arrive_and_wait();  // every lane has published its value
  T r = v;
  if (lane + delta < w.lanes) std::memcpy(&r, w.slot[lane + delta], sizeof(T));
  w.bar.arrive_and_wait();  // every lane has read before the slots are reused
  return r;
}
template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T v, unsigned m) {
  const unsigned tid = emu_linear_tid(), lane = tid % 32;
  WarpState& w = *g_warps[tid / 32];
  std::memcpy(w.slot[lane], &v, sizeof(T));
  w.bar.arrive_and_wait();
  T r = v;
  if ((lane ^ m) < w.lanes) std::memcpy(&r, w.slot[lane ^ m], sizeof(T));
  w.bar.arrive_and_wait();
  return r;
}
inline void __syncwarp(unsigned = 0xffffffffu) { g_warps[emu_linear_tid() / 32]->bar.arrive_and_wait(); }

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
// (no alignas: the host stand-in types are wider than the GPU's; alignment is the
// launcher's check on the GPU)
template <typename T, int N> struct Pack { T v[N]; };
// Elements per 16-byte vector on the GPU (the stand-in for bfloat16 is wider on the host).
template <typename T> constexpr int vec_width() { return std::is_same_v<T, BF16> ? 8 : 16 / int(sizeof(T)); }
// The multiprocessor count the launch geometry sees; tests set it to vary the grids.
inline int g_num_sms = 132;
inline int num_sms() { return g_num_sms; }
}  // namespace pydl

// Runs body() as a CUDA grid of `block`-shaped blocks: one std::thread per CUDA thread of
// a block; the threads run the blocks one after the other, meeting at a barrier between
// blocks (as the blocks share the emulated shared memory).
template <typename F>
void launch(Dim3 grid, Dim3 block, F body) {
  gridDim = grid;
  blockDim = block;
  const unsigned threads = block.x * block.y * block.z;
  std::barrier<> bar(threads);
  g_barrier = &bar;
  g_warps.clear();
  for (unsigned w = 0; w * 32 < threads; ++w) g_warps.emplace_back(new WarpState(std::min(32u, threads - w * 32)));
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
      for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
          for (unsigned x = 0; x < grid.x; ++x) {
            blockIdx = {x, y, z};
            body();
            bar.arrive_and_wait();
          }
    });
  for (auto& t : ts) t.join();
}
template <typename F>
void launch(Dim3 grid, unsigned threads, F body) {
  launch(grid, Dim3(threads), body);
}

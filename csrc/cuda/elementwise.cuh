// Device-side helpers shared by the elementwise-style CUDA kernels: compute-type
// conversions for 16-bit types, 16-byte vector packs, and the launch geometry.
// CUDA runtime headers only (no torch), so files including this compile in seconds.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "dtype.h"

namespace pydl {

// Arithmetic runs in float for float/half/bfloat16 (one rounding, on store) and in
// double for double.
template <typename T> struct OpMath { using type = float; };
template <> struct OpMath<double> { using type = double; };

__device__ __forceinline__ float to_c(float v) { return v; }
__device__ __forceinline__ double to_c(double v) { return v; }
__device__ __forceinline__ float to_c(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_c(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_c(typename OpMath<T>::type v);
template <> __device__ __forceinline__ float from_c<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_c<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_c<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_c<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// N elements moved as one 16-byte (or smaller) load/store: a warp then reads whole
// 128-byte lines per instruction, the cheapest way through the memory system.
template <typename T, int N> struct alignas(sizeof(T) * N) Pack { T v[N]; };

template <typename T> constexpr int vec_width() { return 16 / int(sizeof(T)); }

// Stores a 16-byte Pack with one 16-byte instruction (st.global.cg.v4: cached in L2 only,
// right for an output nobody rereads soon). Assigning a Pack of 16-bit values built in
// registers can compile to eight 2-byte stores instead (nvcc 13.0, the conv epilogue).
// dst must be 16-byte aligned.
template <typename T, int N>
__device__ __forceinline__ void store_pack16(T* dst, const Pack<T, N>& v) {
  static_assert(sizeof(Pack<T, N>) == 16, "store_pack16 moves exactly 16 bytes");
  uint4 u;
  memcpy(&u, &v, sizeof u);
  __stcg(reinterpret_cast<uint4*>(dst), u);
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

constexpr int kThreads = 256;

// Multiprocessors of the current device, read once per device (the attribute query
// costs a driver call; launch geometry asks for it on every launch).
inline int num_sms() {
  static int sms[64] = {0};
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev < 0 || dev >= 64) dev = 0;
  if (sms[dev] == 0) cudaDeviceGetAttribute(&sms[dev], cudaDevAttrMultiProcessorCount, dev);
  return sms[dev] > 0 ? sms[dev] : 132;
}

// Grid for a grid-stride loop over `work` items: enough blocks to fill every SM several
// times over (so memory latency is hidden), never more than the work needs.
inline unsigned grid_for(int64_t work) {
  const int64_t cap = int64_t(num_sms()) * 16;
  int64_t blocks = (work + kThreads - 1) / kThreads;
  if (blocks > cap) blocks = cap;
  return unsigned(blocks < 1 ? 1 : blocks);
}

// Calls fn(T{}) with T the CUDA element type of `dtype`.
template <typename Fn>
inline void with_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::F32: fn(float{}); break;
    case DType::F16: fn(__half{}); break;
    case DType::BF16: fn(__nv_bfloat16{}); break;
    case DType::F64: fn(double{}); break;
  }
}

}  // namespace pydl

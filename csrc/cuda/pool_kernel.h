// Launchers for the pooling kernels (csrc/cuda/pool_kernel.cu). Raw pointers, sizes
// (pydl::PoolParams, csrc/pool_math.h) and stream only; `dtype` a pydl::DType.
// x/y/dx/g are device pointers to NCHW-contiguous storage, or NHWC (channels_last)
// when channels_last is true; ind points to int64 indices in the same layout as the
// pooled output (nullptr: a values-only max forward). Returns the launch's
// cudaError_t as an int (0 = success).
#pragma once

#include <cstdint>

#include "dtype.h"
#include "pool_math.h"

typedef struct CUstream_st* cudaStream_t;

namespace pydl {
int launch_pool_fwd(PoolMode mode, DType dtype, bool channels_last, const void* x, void* y,
                    int64_t* ind, const PoolParams& p, cudaStream_t stream);
int launch_pool_bwd(PoolMode mode, DType dtype, bool channels_last, const void* g,
                    const int64_t* ind, void* dx, const PoolParams& p, cudaStream_t stream);
// out[n, c, o] = x[n, c, ind[n, c, o]] over N*C*OHW outputs; x planes of HW elements.
int launch_pool_gather(DType dtype, bool channels_last, const void* x, const int64_t* ind,
                       void* out, int64_t N, int64_t C, int64_t HW, int64_t OHW,
                       cudaStream_t stream);
}  // namespace pydl

// Launchers for the activation kernels (csrc/cuda/activation_kernel.cu). Raw pointers,
// element count and stream only; `act` is a pydl::Act, `dtype` a pydl::DType.
// y may equal x (in place). Pointers must be device pointers to dense storage of n
// elements. Returns the launch's cudaError_t as an int (0 = success).
#pragma once

#include <cstdint>

#include "activation_math.h"
#include "dtype.h"

typedef struct CUstream_st* cudaStream_t;

namespace pydl {
int launch_act_fwd(Act act, DType dtype, const void* x, void* y, int64_t n, double alpha,
                   cudaStream_t stream);
int launch_act_bwd(Act act, DType dtype, const void* grad, const void* saved, void* dx,
                   int64_t n, double alpha, bool is_result, cudaStream_t stream);
}  // namespace pydl

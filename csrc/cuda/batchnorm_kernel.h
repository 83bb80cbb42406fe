// Launchers for the batch-norm kernels (csrc/cuda/batchnorm_kernel.cu). Raw pointers,
// sizes and a stream only; `dtype` is the element type of x / r / y / g / dx / dz, and
// every per-channel pointer (mean, var, w, b, sums) is of the compute type: float for
// F32/F16/BF16, double for F64. The tensors are dense as (outer, C, inner), element
// (o, c, i) at ((o * C) + c) * inner + i (csrc/batchnorm.h). Optional pointers may be
// null (w, b, r, y when act == None, sums in eval, dz). Each returns the launch's
// cudaError_t as an int (0 = success).
#pragma once

#include <cstdint>

#include "batchnorm_math.h"
#include "dtype.h"

typedef struct CUstream_st* cudaStream_t;

namespace pydl {

// Elements (of the compute type) of the scratch buffer the reductions need for their
// per-block partials; the caller allocates it on the device.
int64_t bn_workspace_elems(int64_t outer, int64_t C, int64_t inner);

// mean, var (biased) per channel.
int launch_bn_stats(DType dtype, const void* x, int64_t outer, int64_t C, int64_t inner,
                    void* mean, void* var, void* workspace, cudaStream_t stream);

// y = act((x - mean) * invstd * w + b [+ r]).
int launch_bn_normalize(BnAct act, DType dtype, const void* x, const void* r, void* y,
                        const void* mean, const void* var, const void* w, const void* b,
                        double eps, double alpha, int64_t outer, int64_t C, int64_t inner,
                        cudaStream_t stream);

// sum_dz = sum dz, sum_dzxh = invstd * sum dz * (x - mean), dz = g * act'(y).
int launch_bn_bwd_reduce(BnAct act, DType dtype, const void* g, const void* x, const void* y,
                         const void* mean, const void* var, double eps, double alpha,
                         int64_t outer, int64_t C, int64_t inner, void* sum_dz, void* sum_dzxh,
                         void* workspace, cudaStream_t stream);

// dx = w * invstd * (dz - k * (sum_dz + xhat * sum_dzxh)) (k = inv_count; the sums null in
// eval), and dz itself when dz is not null.
int launch_bn_bwd_elemt(BnAct act, DType dtype, const void* g, const void* x, const void* y,
                        const void* mean, const void* var, const void* w, const void* sum_dz,
                        const void* sum_dzxh, double eps, double inv_count, double alpha,
                        void* dx, void* dz, int64_t outer, int64_t C, int64_t inner,
                        cudaStream_t stream);

}  // namespace pydl

// Launchers for the convolution kernels (csrc/cuda/conv_kernel.cu). Raw device pointers,
// the geometry (csrc/conv_shape.h), element strides of every tensor and the stream only;
// no torch headers. `dtype` is a pydl::DType. Every launcher returns the launch's
// cudaError_t as an int (0 = success).
#pragma once

#include <cstdint>

#include "conv_shape.h"
#include "dtype.h"

typedef struct CUstream_st* cudaStream_t;

namespace pydl {

// tf32: float32 may run on TF32 tensor cores (torch's cuDNN conv setting); ignored for
// the other dtypes and for depthwise.

// y = act(conv(x, w) + b); b may be null. relu selects the fused ReLU epilogue.
int launch_conv2d_fwd(DType dtype, const void* x, Strides4 xs, const void* w, Strides4 ws,
                      const void* b, void* y, Strides4 ys, const ConvShape& s, bool relu,
                      bool tf32, cudaStream_t stream);

// dx = the input gradient (a transposed convolution of grad with w).
int launch_conv2d_bwd_input(DType dtype, const void* grad, Strides4 gs, const void* w, Strides4 ws,
                            void* dx, Strides4 xs, const ConvShape& s, bool tf32, cudaStream_t stream);

// The weight gradient is reduced over N*OH*OW, which is split across conv2d_wgrad_splits()
// slices so that enough blocks run (split-K). The caller provides a workspace of
// splits * OC * (C/groups) * KH * KW accumulators (float, or double for F64) when
// conv2d_wgrad_splits() > 0; the slices are then summed in a fixed order (deterministic).
int64_t conv2d_wgrad_splits(DType dtype, const ConvShape& s);
int launch_conv2d_bwd_weight(DType dtype, const void* grad, Strides4 gs, const void* x, Strides4 xs,
                             void* dw, Strides4 dws, void* workspace, const ConvShape& s, bool tf32,
                             cudaStream_t stream);

// db[oc] = sum of grad over n, oh, ow.
int launch_conv2d_bwd_bias(DType dtype, const void* grad, Strides4 gs, void* db, int64_t N, int64_t OC,
                           int64_t OH, int64_t OW, cudaStream_t stream);

}  // namespace pydl

// The element types the kernels support, as a plain enum: the CUDA launchers take one of
// these instead of an at::ScalarType so that .cu files need no torch headers (nvcc then
// compiles a kernel file in about a second instead of ~25-80 s).
#pragma once

namespace pydl {
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, F64 = 3 };
}  // namespace pydl

// The CPU's vector instruction set, for the kernel files whose innermost loops are
// compiled more than once (csrc/cpu/simd_copies.h). The extension is built for the
// baseline x86-64 target, where a vector is 4 floats; loops that stream over every value
// gain 2-4x from AVX-512's 16 (measured on this project's AVX-512 machine).
//
// PYDL_CPU_SIMD=avx2|default caps the choice (the tests run every copy on one machine);
// PYDL_CPU_GEMM does the same for the conv's GEMM micro-kernels (csrc/cpu/gemm.h).
#pragma once

#include <cstdlib>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PYDL_SIMD_X86 1
#else
#define PYDL_SIMD_X86 0
#endif

namespace pydl {

enum class CpuSimd { Default, Avx2, Avx512 };

// The widest instruction set this CPU has (capped by PYDL_CPU_SIMD), chosen once.
inline CpuSimd cpu_simd() {
  static const CpuSimd isa = [] {
#if PYDL_SIMD_X86
    const char* env = std::getenv("PYDL_CPU_SIMD");
    const std::string cap = env ? env : "";
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                      __builtin_cpu_supports("f16c");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                        __builtin_cpu_supports("avx512vl");
    if (cap != "avx2" && cap != "default" && avx512) return CpuSimd::Avx512;
    if (cap != "default" && avx2) return CpuSimd::Avx2;
#endif
    return CpuSimd::Default;
  }();
  return isa;
}

}  // namespace pydl

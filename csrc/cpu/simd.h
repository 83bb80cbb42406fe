// The CPU's vector instruction set, for the kernel files whose innermost loops are
// compiled more than once (csrc/cpu/simd_copies.h). The extension is built for the
// baseline x86-64 target, where a vector is 4 floats; loops that stream over every value
// gain 2-4x from AVX-512's 16 (measured on this project's AVX-512 machine).
//
// PYDL_CPU_SIMD=avx2|default caps the choice (the tests run every copy on one machine);
// PYDL_CPU_GEMM does the same for the conv's GEMM micro-kernels (csrc/cpu/gemm.h).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

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

// Element loads and stores for the loops files, converting to / from the compute type C:
// bfloat16 <-> float by bit operations the compiler can vectorize (c10's conversion to
// bfloat16 branches on NaN, which keeps a loop scalar): identical results -- the upper
// half of the float's bits, and round to nearest even with NaN made the quiet 0x7FC0 --
// as c10::BFloat16's; other types by their own conversions. (Defined for the baseline
// target, they are inlined into each copy of a loop and compiled for its target.)
template <class C, class T>
inline C simd_load(const T& v) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const uint32_t u = uint32_t(v.x) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);  // (a bit cast; compilers make it a register move)
    return static_cast<C>(f);
  } else {
    return static_cast<C>(v);
  }
}

template <class T, class C>
inline T simd_store(C v) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const float f = static_cast<float>(v);
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
    const uint16_t bits = nan ? uint16_t(0x7FC0) : uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    return T(bits, T::from_bits());
  } else {
    return static_cast<T>(v);
  }
}

}  // namespace pydl

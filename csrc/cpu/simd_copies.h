// One source, three instruction sets (see csrc/cpu/simd.h for why). Inside a kernel file's
// namespace, after including simd.h:
//     #define PYDL_SIMD_LOOPS "batchnorm_loops.h"
//     #include "simd_copies.h"
// defines the structs LoopsAvx512, LoopsAvx2 and LoopsDefault, whose static members are
// the loops file compiled under `#pragma GCC target` for that set -- the loops file sees
// PYDL_SIMD_VEC_BYTES = 64, 32 or 16, the vector width -- (only LoopsDefault on other
// machines and compilers), and
//     with_cpu_simd([&](auto loops) { kernel<decltype(loops)>(...); });
// which calls its argument with the struct for this CPU. A loops file has no include
// guard and includes nothing itself: it is read three times, inside a struct; what it
// uses must be declared before. No include guard here either: once per kernel file.

#if PYDL_SIMD_X86
// (-Wpsabi: GCC notes that functions passing 32/64-byte vectors have a different ABI
// with and without AVX; the loops inline them into their own target's code)
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
#define PYDL_SIMD_VEC_BYTES 64
struct LoopsAvx512 {
#include PYDL_SIMD_LOOPS
};
#undef PYDL_SIMD_VEC_BYTES
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define PYDL_SIMD_VEC_BYTES 32
struct LoopsAvx2 {
#include PYDL_SIMD_LOOPS
};
#undef PYDL_SIMD_VEC_BYTES
#pragma GCC pop_options
#endif
#define PYDL_SIMD_VEC_BYTES 16
struct LoopsDefault {
#include PYDL_SIMD_LOOPS
};
#undef PYDL_SIMD_VEC_BYTES

// Calls fn(Loops{}) with the loops struct for this CPU.
template <typename Fn>
void with_cpu_simd(Fn&& fn) {
  switch (cpu_simd()) {
#if PYDL_SIMD_X86
    case CpuSimd::Avx512: fn(LoopsAvx512{}); return;
    case CpuSimd::Avx2: fn(LoopsAvx2{}); return;
#endif
    default: fn(LoopsDefault{}); return;
  }
}

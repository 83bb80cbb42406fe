// A small cache- and register-blocked GEMM for the CPU convolution (csrc/cpu/conv.cpp):
// the micro-kernel, the packed operand layouts and the loop that tiles one block of C.
// Plain C++ (no BLAS, no ATen), float or double.
//
//   C[i, j] += sum_{d < depth} A[i, d] * B[d, j]        (C is M x N, row-major, ldc)
//
// Packed operands. The micro-kernel computes one MR x NR tile of C. It reads A and B in
// "panels", laid out in exactly the order it consumes them, so every load is contiguous
// and a panel streams through the cache without conflicts:
//   A panel p (rows p*MR .. p*MR+MR-1):    Ap[p * a_ps + d * MR + i]   (MR values per step d)
//   B panel q (columns q*NR .. q*NR+NR-1): Bp[q * b_ps + d * NR + j]   (NR values per step d)
// Rows/columns past the end of the matrix are packed as zeros, so the micro-kernel always
// works on a full tile; only the store of an edge tile is clipped. The packers (pack_*
// below) read the source through a `Strided2D` view: the column (or depth) index j runs
// over `ns` "samples" of `len` contiguous values each -- what a convolution's column
// matrix looks like when it spans several images of the batch. A may also be a
// row-major matrix read in place (OperandA::row_major): the micro-kernel broadcasts A
// one scalar at a time, so it can read MR rows directly with the same speed -- this
// spares the forward a transposing copy of the weight.
//
// Micro-kernel (micro_tile). The MR x NR tile of C lives in registers for the whole depth
// loop: per step d it loads NR/L vectors of B, broadcasts MR scalars of A and does
// MR * NR/L vector FMAs. MR*NR/L accumulators + NR/L B vectors + 1 broadcast must fit the
// register file (else the compiler spills and the speed halves), the FMAs per step must
// cover the FMA latency (~4 cycles x 2 pipes = 8 independent chains), and the loads per
// step (NR/L + MR broadcasts) must not outnumber what the load ports do while the FMA
// pipes work (2-3 per cycle, so about one per FMA at most). Per ISA:
//   AVX-512 (32 zmm): two kernels, chosen per GEMM by its shape (micro_kernel_for):
//                     12 x 32 floats / 12 x 16 doubles ("wide"): 24 accumulators, 2 B
//                     vectors, 14 loads per 24 FMAs -- ~178 GFLOP/s per Sapphire Rapids
//                     core (float; 200 is its FMA peak), also when A streams from L2;
//                     16 x 16 floats / 16 x 8 doubles: 16 accumulators, 1 B vector, 17
//                     loads per 16 FMAs -- ~145 GFLOP/s with A from L2 (one broadcast per
//                     FMA: the A stream is twice the wide kernel's per FMA), but its one
//                     vector of columns wastes little on the small-image layers with as
//                     few as 16 columns (batch 4 x 2 x 2), where 32 would waste half.
//   AVX2 (16 ymm):    6 x 16 floats / 6 x 8 doubles, 12 accumulators, 2 B vectors.
//   default (SSE2 on x86-64, NEON on aarch64, 16 x 128-bit): 6 x 8 floats / 6 x 4 doubles.
// The vectors are GCC/Clang vector extensions (`vector_size`), so the one template below
// becomes zmm, ymm or xmm code depending on the target it is compiled for.
//
// Runtime ISA choice. The extension is built for the baseline x86-64 target (SSE2), so
// the AVX2 and AVX-512 micro-kernels are compiled as separate functions with
// __attribute__((target(...))) and chosen once with __builtin_cpu_supports (only on
// x86-64 with GCC/Clang; elsewhere only the default kernel exists). The environment
// variable PYDL_CPU_GEMM=avx512|avx512-narrow|avx2|default caps the choice
// (avx512-narrow: the 16 x 16 kernel only; tests use it to check every kernel on one
// machine). Besides the micro-kernels, only the conv's row gathers are multi-versioned
// (AVX-512 gather instructions, csrc/cpu/conv.cpp); the packing loops are mostly loads and
// stores, where wider vectors gain little (their short loops get a compile-time trip
// count instead: for_lanes).
//
// Summation order. Within one call of micro_tile, each C element is ONE accumulator lane
// that adds its depth terms in order d = 0, 1, ..., then is added to C once. Callers
// split the depth into fixed chunks and call in chunk order, so the result depends only
// on the chunk size -- not on how M and N are tiled, nor on the number of threads, nor on
// which of the two AVX-512 kernels runs (both fuse each multiply-add; the ISAs differ there:
// SSE2 has no FMA).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#define PYDL_GEMM_X86 1
#else
#define PYDL_GEMM_X86 0
#endif

#if defined(__GNUC__)
#define PYDL_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define PYDL_ALWAYS_INLINE inline
#endif

namespace pydl {
namespace gemm {

constexpr int kMaxTile = 12 * 32;  // largest MR * NR of any kernel below (scratch for edge tiles)

// One MR x NR tile: c[i * ldc + j] += sum_{d < depth} A(i, d) * b[d * NR + j], where A is
// read in one of two forms:
//   "packed" (column-major): A(i, d) = a[d * lda + i] -- a packed panel (lda = MR), or MR
//            consecutive rows of a column-major matrix read in place (lda = its column
//            stride: the input gradient reads W^T so from the weight itself);
//   "row_major": A(i, d) = a[i * lda + d] -- rows of a row-major matrix read in place (the
//            forward reads the weight so).
// Read in place, the broadcast operand needs no copy: packing the weight would be a pass
// over all of it per call, as long as the GEMM itself on ResNet's 2x2 layers.
template <class C>
using MicroFn = void (*)(int64_t depth, const C* a, int64_t lda, const C* b, C* c, int64_t ldc);

template <class C>
struct MicroKernel {
  int mr, nr;
  MicroFn<C> packed, row_major;  // the two forms of A above
  const char* isa;
};

#if defined(__GNUC__)

// L values of type C in one SIMD register: a GCC/Clang vector type.
template <class C, int L>
struct VecOf {
  typedef C type __attribute__((vector_size(L * sizeof(C))));
};

// The micro-kernel body, inlined into one function per target ISA (below). MR rows, NV
// vectors of L lanes per row (NR = NV * L).
template <class C, int MR, int NV, int L, bool kRowMajorA>
PYDL_ALWAYS_INLINE void micro_tile(int64_t depth, const C* a, int64_t lda, const C* b, C* c, int64_t ldc) {
  using V = typename VecOf<C, L>::type;
  V acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = V{};
  for (int64_t d = 0; d < depth; ++d, a += kRowMajorA ? 1 : lda, b += NV * L) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&bv[v], b + v * L, sizeof(V));  // an unaligned load
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      const C ai = kRowMajorA ? a[i * lda] : a[i];  // vector * scalar: ai times every lane
      for (int v = 0; v < NV; ++v) acc[i][v] += bv[v] * ai;
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) {
      V cv;
      std::memcpy(&cv, c + i * ldc + v * L, sizeof(V));
      cv += acc[i][v];
      std::memcpy(c + i * ldc + v * L, &cv, sizeof(V));
    }
}

// default target: 16 x 128-bit registers (SSE2, NEON)
template <class C, bool kRowMajorA>
void micro_default(int64_t depth, const C* a, int64_t lda, const C* b, C* c, int64_t ldc) {
  micro_tile<C, 6, 2, 16 / sizeof(C), kRowMajorA>(depth, a, lda, b, c, ldc);
}
#if PYDL_GEMM_X86
template <class C, bool kRowMajorA>
__attribute__((target("avx2,fma"))) void micro_avx2(int64_t depth, const C* a, int64_t lda, const C* b,
                                                    C* c, int64_t ldc) {
  micro_tile<C, 6, 2, 32 / sizeof(C), kRowMajorA>(depth, a, lda, b, c, ldc);
}
template <class C, bool kRowMajorA>
__attribute__((target("avx512f,avx2,fma"))) void micro_avx512(int64_t depth, const C* a, int64_t lda,
                                                              const C* b, C* c, int64_t ldc) {
  micro_tile<C, 16, 1, 64 / sizeof(C), kRowMajorA>(depth, a, lda, b, c, ldc);
}
template <class C, bool kRowMajorA>
__attribute__((target("avx512f,avx2,fma"))) void micro_avx512_wide(int64_t depth, const C* a, int64_t lda,
                                                                   const C* b, C* c, int64_t ldc) {
  micro_tile<C, 12, 2, 64 / sizeof(C), kRowMajorA>(depth, a, lda, b, c, ldc);
}
#endif

#else  // not GCC/Clang: a plain scalar tile, the compiler may vectorize it
template <class C, bool kRowMajorA>
void micro_default(int64_t depth, const C* a, int64_t lda, const C* b, C* c, int64_t ldc) {
  constexpr int MR = 4, NR = 4;
  C acc[MR][NR] = {};
  for (int64_t d = 0; d < depth; ++d, a += kRowMajorA ? 1 : lda, b += NR)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] += (kRowMajorA ? a[i * lda] : a[i]) * b[j];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) c[i * ldc + j] += acc[i][j];
}
#endif

template <class C>
MicroKernel<C> pick_kernel(bool wide) {
#if defined(__GNUC__)
  const MicroKernel<C> fallback{6, int(2 * 16 / sizeof(C)), &micro_default<C, false>, &micro_default<C, true>,
                                "default"};
#else
  const MicroKernel<C> fallback{4, 4, &micro_default<C, false>, &micro_default<C, true>, "default"};
#endif
#if PYDL_GEMM_X86
  const char* env = std::getenv("PYDL_CPU_GEMM");
  const std::string cap = env ? env : "";
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (cap != "avx2" && cap != "default" && avx2 && __builtin_cpu_supports("avx512f")) {
    if (wide && cap != "avx512-narrow")
      return {12, int(2 * 64 / sizeof(C)), &micro_avx512_wide<C, false>, &micro_avx512_wide<C, true>, "avx512"};
    return {16, int(64 / sizeof(C)), &micro_avx512<C, false>, &micro_avx512<C, true>, "avx512"};
  }
  if (cap != "default" && avx2)
    return {6, int(2 * 32 / sizeof(C)), &micro_avx2<C, false>, &micro_avx2<C, true>, "avx2"};
#endif
  return fallback;
}

// The kernel for this machine, chosen on first use (the wide one: the same where no
// AVX-512 kernel runs).
template <class C>
const MicroKernel<C>& micro_kernel(bool wide = false) {
  static const MicroKernel<C> k = pick_kernel<C>(false), kw = pick_kernel<C>(true);
  return wide ? kw : k;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// The kernel for GEMMs of about `rows` x `cols` (C's size): the wide one where it is faster
// after the edge waste of its 12 x 32 tiles against the narrow one's 16 x 16 (its ~1.2x
// speed against the tile parts computed in vain: 64 rows fill 16-row panels but not 12-row
// ones; 16 columns fill half a 32-column panel), else the narrow one. Both add every C
// element's terms in the same order (one lane, depth in order), so the choice never
// changes a result.
template <class C>
const MicroKernel<C>& micro_kernel_for(int64_t rows, int64_t cols) {
  const MicroKernel<C>& narrow = micro_kernel<C>(false);
  const MicroKernel<C>& wide = micro_kernel<C>(true);
  if (wide.nr == narrow.nr) return narrow;
  const int64_t narrow_tiles = round_up(rows, narrow.mr) * round_up(cols, narrow.nr);
  const int64_t wide_tiles = round_up(rows, wide.mr) * round_up(cols, wide.nr);
  return wide_tiles * 5 <= narrow_tiles * 6 ? wide : narrow;
}

// ----------------------------------------------------------------------- the block loop
// The A operand of gemm(): column-major panels, panel p at p[p * ld] and its step d at
// [d * step] -- packed panels (see the top of the file: step 0, meaning MR, and zero rows
// past M), or a column-major matrix read in place (ld = MR, step = its column stride, not
// 0) -- or a row-major matrix read in place (row i at p[i * ld]). An in-place A's last
// panel is copied out when partial: its rows past M must not be read.
template <class C>
struct OperandA {
  const C* p;
  int64_t ld;
  bool row_major;
  int64_t step = 0;
};

// C (M x N, ldc) += A (M x depth) * B (depth x N), B packed (panels b_ps apart). Loop
// order: for each B panel (depth x NR, small enough to stay in L1 while it is reused),
// every A panel streams past it (the whole A block stays in L2 across the B panels).
template <class C>
void gemm(const MicroKernel<C>& uk, int64_t M, int64_t N, int64_t depth, const OperandA<C>& A, const C* Bp,
          int64_t b_ps, C* c, int64_t ldc) {
  const int mr = uk.mr, nr = uk.nr;
  const int64_t step = A.step ? A.step : mr;  // the column form's stride between steps
  const bool in_place = A.row_major || A.step != 0;
  std::vector<C> edge;  // an in-place A's last, partial panel, packed with zero rows
  for (int64_t q = 0; q * nr < N; ++q) {
    const int64_t n = std::min<int64_t>(nr, N - q * nr);
    const C* b = Bp + q * b_ps;
    for (int64_t p = 0; p * mr < M; ++p) {
      const int64_t m = std::min<int64_t>(mr, M - p * mr);
      MicroFn<C> fn = A.row_major ? uk.row_major : uk.packed;
      const C* a = A.row_major ? A.p + p * mr * A.ld : A.p + p * A.ld;
      int64_t lda = A.row_major ? A.ld : step;
      if (in_place && m < mr) {  // rows past M do not exist: never read them
        if (edge.empty()) {
          edge.assign(mr * depth, C(0));
          for (int64_t i = 0; i < m; ++i)
            for (int64_t d = 0; d < depth; ++d) edge[d * mr + i] = A.row_major ? a[i * lda + d] : a[d * lda + i];
        }
        fn = uk.packed;
        a = edge.data();
        lda = mr;
      }
      C* ct = c + p * mr * ldc + q * nr;
      if (m == mr && n == nr) {
        fn(depth, a, lda, b, ct, ldc);
      } else {  // an edge tile: compute the full tile aside, add the part inside C
        C tmp[kMaxTile] = {};
        fn(depth, a, lda, b, tmp, nr);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j) ct[i * ldc + j] += tmp[i * nr + j];
      }
    }
  }
}

// ----------------------------------------------------------------------------- packing
// A read-only 2-D view: element (r, j) with j = s * len + t (s < ns, t < len) is
// p[r * rs + s * ss + t] -- each row is `ns` contiguous runs of `len` values.
template <class Src>
struct Strided2D {
  const Src* p;
  int64_t rs, ss, len, ns;
  int64_t cols() const { return ns * len; }
};

// Calls body(l) for l < lanes. The lane counts of the kernels above get a compile-time
// trip count, so the loop is unrolled and vectorized: with a run-time count of ~16 the
// compiler would turn a copy into a call to memmove, which costs more than the copy.
template <class F>
PYDL_ALWAYS_INLINE void for_lanes(int lanes, F&& body) {
  switch (lanes) {
    case 32: for (int l = 0; l < 32; ++l) body(l); return;
    case 16: for (int l = 0; l < 16; ++l) body(l); return;
    case 12: for (int l = 0; l < 12; ++l) body(l); return;
    case 8: for (int l = 0; l < 8; ++l) body(l); return;
    case 6: for (int l = 0; l < 6; ++l) body(l); return;
    case 4: for (int l = 0; l < 4; ++l) body(l); return;
    default: for (int l = 0; l < lanes; ++l) body(l);
  }
}

// Lanes along the columns (the B layout, also A = W^T): the depth runs over rows
// [r0, r0 + depth) of src, the `lanes` lanes of a panel over consecutive columns.
//   dst[q * ps + d * lanes + l] = src(r0 + d, q * lanes + l), zero past the last column,
// with panel stride ps = depth * lanes unless given (to fill a slice of longer panels).
template <class C, class Src>
void pack_col_lanes(const Strided2D<Src>& src, int64_t r0, int64_t depth, int lanes, C* dst, int64_t ps = 0) {
  const int64_t cols = src.cols();
  if (ps == 0) ps = depth * lanes;
  int64_t off[64];  // lanes <= 64: the source offset of each lane's column within a row
  for (int64_t q = 0; q * lanes < cols; ++q, dst += ps) {
    const int64_t j0 = q * lanes, n = std::min<int64_t>(lanes, cols - j0);
    for (int64_t l = 0; l < n; ++l) off[l] = (j0 + l) / src.len * src.ss + (j0 + l) % src.len;
    if (n == lanes && off[lanes - 1] - off[0] == lanes - 1) {  // the common case: one contiguous run
      for (int64_t d = 0; d < depth; ++d) {
        const Src* r = src.p + (r0 + d) * src.rs + off[0];
        C* o = dst + d * lanes;
        for_lanes(lanes, [&](int l) { o[l] = static_cast<C>(r[l]); });
      }
      continue;
    }
    for (int64_t d = 0; d < depth; ++d) {
      const Src* row = src.p + (r0 + d) * src.rs;
      C* o = dst + d * lanes;
      for (int64_t l = 0; l < n; ++l) o[l] = static_cast<C>(row[off[l]]);
      for (int64_t l = n; l < lanes; ++l) o[l] = C(0);
    }
  }
}

// Lanes along the rows (the A layout, also B = col^T): the depth runs over all columns of
// src, the `lanes` lanes of a panel over consecutive rows of [r0, r0 + rows).
//   dst[p * cols * lanes + j * lanes + l] = src(r0 + p * lanes + l, j), zero past the last row.
template <class C, class Src>
void pack_row_lanes(const Strided2D<Src>& src, int64_t r0, int64_t rows, int lanes, C* dst) {
  // A transpose: each lane's row is written with stride `lanes`. Done in blocks of
  // kBlock columns so the block of dst being filled (kBlock x lanes) stays in L1 while
  // all the lanes pass over it.
  constexpr int64_t kBlock = 64;
  const int64_t cols = src.cols();
  for (int64_t p = 0; p * lanes < rows; ++p, dst += cols * lanes) {
    const int64_t n = std::min<int64_t>(lanes, rows - p * lanes);  // rows in this panel
    for (int64_t s = 0; s < src.ns; ++s)
      for (int64_t t0 = 0; t0 < src.len; t0 += kBlock) {
        const int64_t t1 = std::min(src.len, t0 + kBlock);
        C* o = dst + (s * src.len) * lanes;
        for (int64_t l = 0; l < n; ++l) {
          const Src* row = src.p + (r0 + p * lanes + l) * src.rs + s * src.ss;
          for (int64_t t = t0; t < t1; ++t) o[t * lanes + l] = static_cast<C>(row[t]);
        }
        for (int64_t l = n; l < lanes; ++l)
          for (int64_t t = t0; t < t1; ++t) o[t * lanes + l] = C(0);
      }
  }
}

}  // namespace gemm
}  // namespace pydl

// The innermost loops of the CPU batch norm (csrc/cpu/batchnorm.cpp), written once and
// compiled for AVX-512, AVX2 + FMA and the baseline x86-64 (SSE2) by csrc/cpu/simd_copies.h,
// which includes this file three times, inside a struct each time; the widest the CPU has
// runs (csrc/cpu/simd.h). No include guard, on purpose, and no includes: everything it
// uses (c10::BFloat16, bn_act, bn_act_grad, simd_load, simd_store, <cstring>,
// <type_traits>) comes before.
//
// Why: the extension is built for the baseline target, where a vector is 2 doubles or 4
// floats; the same source under AVX-512 makes 8-double / 16-float instructions. Every
// loop here streams over all values doing a few adds and multiplies each, so the vector
// width is most of its speed (measured: 2-4x over the baseline copy on this project's
// AVX-512 machine).
//
// Two walks, as in batchnorm.cpp (x seen as (outer, C, inner)):
//   *_planes  NCHW: `rows` runs of `n` contiguous values of ONE channel, `stride` apart.
//             The reductions are written with GCC vector types (explicit lanes: the
//             compiler's own vectorizer made poor code of them) and keep two vectors per
//             sum, i.e. 2 x lanes independent add chains; the lanes are added up in a
//             fixed order at the end.
//   *_rows    channels-last: `rows` rows of all C channels, contiguous; the loop over the
//             channels is the vector loop (left to the compiler: unit stride, no
//             dependence between channels), with per-channel arrays -- coefficients, or
//             each channel's running sums.
// Reductions add in float for float/half/bfloat16 input, in blocks of at most kBlock
// values per lane, and add the blocks into double totals (see acc_t below). Every order of
// addition is fixed by the shape and the instruction set alone: the same bits run to run,
// for any number of threads.
// Element types: T is the stored type (float, double, c10::Half, c10::BFloat16), C the
// elementwise compute type (float; double for double input).

// Vectors of PYDL_SIMD_VEC_BYTES bytes (defined before each inclusion: 64 for AVX-512, 32 for
// AVX2, 16 for SSE2), as GCC vector extensions: vec<double> holds DL doubles, vec<float>
// DL floats, and arithmetic on them is one instruction per vector (or a few, narrowed).
static constexpr int DL = PYDL_SIMD_VEC_BYTES / 8;
template <class E>
struct VecOf {
  typedef E type __attribute__((vector_size(DL * sizeof(E))));
};
template <class E>
using vec = typename VecOf<E>::type;

static inline double vsum(vec<double> v) {
  double s = 0;
  for (int l = 0; l < DL; ++l) s += v[l];
  return s;
}

// ------------------------------------------------------------------ reduction helpers
// The reductions add in S -- float for float/half/bfloat16 input, double for double -- in
// blocks of at most kBlock values per lane, and add each block's sums to double totals:
// float lanes are twice as many per vector as double ones and need no conversion, and a
// float sum of <= 32 terms errs by at most ~32 float ulps of the block's magnitude, errors
// the double totals then do not compound (each block starts at 0; torch's CPU kernels sum
// a whole channel plane in float before going to double).
template <class T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;
static constexpr int kBlock = 32;
// A full vector of S (16 floats or 8 doubles with AVX-512).
template <class S>
struct WideOf {
  typedef S type __attribute__((vector_size(PYDL_SIMD_VEC_BYTES)));
};
template <class S>
using wide = typename WideOf<S>::type;
template <class S>
static constexpr int kLanes = PYDL_SIMD_VEC_BYTES / sizeof(S);

// 2 * kLanes<S> consecutive values of p as two vectors of S. bfloat16 is the upper half of
// a float: one vector of 32-bit words holds 2 * kLanes values, the even ones in the low
// halves (shifted up: a float) and the odd ones in the high halves (masked: a float), so
// the pair holds the even and the odd values -- an order the sums do not care about, and
// no shuffles (widening 16-bit values in order costs several per vector). The same split
// is applied to every array a loop reads, so value j of one is paired with value j of the
// others.
template <class S, class T>
static inline void load2(const T* p, wide<S>& a, wide<S>& b) {
  if constexpr (std::is_same_v<T, S>) {
    std::memcpy(&a, p, sizeof a);
    std::memcpy(&b, p + kLanes<S>, sizeof b);
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    typedef uint32_t words __attribute__((vector_size(PYDL_SIMD_VEC_BYTES)));
    words u;
    std::memcpy(&u, p, sizeof u);
    a = (wide<S>)(u << 16);
    b = (wide<S>)(u & 0xFFFF0000u);
  } else {  // float into double sums, or c10::Half: lane by lane
    a = b = wide<S>{};
    for (int l = 0; l < kLanes<S>; ++l) {
      a[l] = simd_load<S>(p[l]);
      b[l] = simd_load<S>(p[kLanes<S> + l]);
    }
  }
}

// total += s, lane by lane in double.
template <class S>
static inline void flush(vec<double>& total, wide<S> s) {
  if constexpr (std::is_same_v<S, double>) {
    total += s;
  } else {
    vec<float> lo, hi;
    std::memcpy(&lo, &s, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&s) + sizeof lo, sizeof hi);
    total += __builtin_convertvector(lo, vec<double>);
    total += __builtin_convertvector(hi, vec<double>);
  }
}

// bn_act_grad (csrc/batchnorm_math.h) on a vector: the same selects, lane by lane.
template <BnAct A, class V, class S>
static inline V act_grad(V g, V y, S alpha) {
  if constexpr (A == BnAct::ReLU) {
    return y <= S(0) ? V{} : g;
  } else if constexpr (A == BnAct::LeakyReLU) {
    return y > S(0) ? g : g * alpha;
  } else {
    return g;
  }
}

// ----------------------------------------------------------------------------- statistics
// out = {sum (x - k), sum (x - k)^2} over the runs (k: the channel's shift, see
// stats_kernel; a value of x, so exact in S).
template <class T>
static void stats_planes(const T* __restrict x, int64_t rows, int64_t stride, int64_t n, double k,
                         double* out) {
  using S = acc_t<T>;
  constexpr int SL = kLanes<S>;
  const S ks = static_cast<S>(k);
  wide<S> s1a{}, s1b{}, s2a{}, s2b{};  // the block's sums, two vectors each: two add chains
  vec<double> d1{}, d2{};              // the totals
  double t1 = 0, t2 = 0;               // the runs' last n % (2 SL) values
  int blk = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict p = x + r * stride;
    int64_t i = 0;
    for (; i + 2 * SL <= n; i += 2 * SL) {
      wide<S> va, vb;
      load2<S>(p + i, va, vb);
      va -= ks;
      vb -= ks;
      s1a += va;
      s2a += va * va;
      s1b += vb;
      s2b += vb * vb;
      if (++blk == kBlock) {
        flush<S>(d1, s1a + s1b);
        flush<S>(d2, s2a + s2b);
        s1a = s1b = s2a = s2b = wide<S>{};
        blk = 0;
      }
    }
    for (; i < n; ++i) {
      const double v = simd_load<double>(p[i]) - k;
      t1 += v;
      t2 += v * v;
    }
  }
  flush<S>(d1, s1a + s1b);
  flush<S>(d2, s2a + s2b);
  out[0] = vsum(d1) + t1;
  out[1] = vsum(d2) + t2;
}

// Two per-channel sums over `rows` channels-last rows, for strips of up to kStrip
// channels: blocks of kBlock rows summed in S (f1, f2, zeroed per block), then added to
// the double totals t1, t2. row(r, c0, cn, sh, f1, f2) adds row r's channels [c0, c0 + cn)
// -- one straight loop over them, the vector loop -- with sh the strip's `shift` in S.
// (Inlined into each caller, so the row loop is compiled as the caller's own.)
static constexpr int64_t kStrip = 256;
template <class S, class Row>
__attribute__((always_inline)) static inline void strip_sums(int64_t rows, int64_t C,
                                                             const double* __restrict shift,
                                                             double* __restrict t1,
                                                             double* __restrict t2, Row&& row) {
  for (int64_t c0 = 0; c0 < C; c0 += kStrip) {
    const int64_t cn = std::min(kStrip, C - c0);
    S sh[kStrip], f1[kStrip], f2[kStrip];
    for (int64_t c = 0; c < cn; ++c) sh[c] = static_cast<S>(shift[c0 + c]);
    for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
      const int64_t r1 = std::min(rows, r0 + kBlock);
      for (int64_t c = 0; c < cn; ++c) f1[c] = f2[c] = S(0);
      for (int64_t r = r0; r < r1; ++r) row(r, c0, cn, sh, f1, f2);
      for (int64_t c = 0; c < cn; ++c) {
        t1[c0 + c] += f1[c];
        t2[c0 + c] += f2[c];
      }
    }
  }
}

// s1[c] += sum (x - k[c]), s2[c] += sum (x - k[c])^2 over the rows.
template <class T>
static void stats_rows(const T* __restrict x, int64_t rows, int64_t C, const double* __restrict k,
                       double* __restrict s1, double* __restrict s2) {
  using S = acc_t<T>;
  strip_sums<S>(rows, C, k, s1, s2,
                [&](int64_t r, int64_t c0, int64_t cn, const S* __restrict ks, S* __restrict f1,
                    S* __restrict f2) {
                  const T* __restrict p = x + r * C + c0;
                  for (int64_t c = 0; c < cn; ++c) {
                    const S v = simd_load<S>(p[c]) - ks[c];
                    f1[c] += v;
                    f2[c] += v * v;
                  }
                });
}

// ------------------------------------------------------------------- forward (normalize)
// y = act((x - m) * s + b [+ r]) for n values of one channel (r may be null).
template <BnAct A, class T, class C>
static void normalize_plane(const T* __restrict x, const T* __restrict r, T* __restrict y, int64_t n,
                            C m, C s, C b, C alpha) {
  if (r) {
    for (int64_t i = 0; i < n; ++i)
      y[i] = simd_store<T>(bn_act<A, C>((simd_load<C>(x[i]) - m) * s + b + simd_load<C>(r[i]), alpha));
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = simd_store<T>(bn_act<A, C>((simd_load<C>(x[i]) - m) * s + b, alpha));
  }
}

// The same for rows of all C channels, per-channel m, s, b.
template <BnAct A, class T, class C>
static void normalize_rows(const T* __restrict x, const T* __restrict r, T* __restrict y, int64_t rows,
                           int64_t Cn, const C* __restrict m, const C* __restrict s,
                           const C* __restrict b, C alpha) {
  for (int64_t o = 0; o < rows; ++o) {
    const T* __restrict xo = x + o * Cn;
    T* __restrict yo = y + o * Cn;
    if (r) {
      const T* __restrict ro = r + o * Cn;
      for (int64_t c = 0; c < Cn; ++c)
        yo[c] = simd_store<T>(bn_act<A, C>((simd_load<C>(xo[c]) - m[c]) * s[c] + b[c] + simd_load<C>(ro[c]), alpha));
    } else {
      for (int64_t c = 0; c < Cn; ++c)
        yo[c] = simd_store<T>(bn_act<A, C>((simd_load<C>(xo[c]) - m[c]) * s[c] + b[c], alpha));
    }
  }
}

// ----------------------------------------------------------------- backward reduction
// dz = g * act'(y); out = {sum dz, sum dz * (x - m)} over the runs (m: the mean, a value
// of the compute type C, so exact in S).
template <BnAct A, class T, class C>
static void reduce_planes(const T* __restrict g, const T* __restrict x, const T* __restrict y,
                          int64_t rows, int64_t stride, int64_t n, double m, C alpha, double* out) {
  using S = acc_t<T>;
  constexpr int SL = kLanes<S>;
  const S ms = static_cast<S>(m);
  wide<S> da{}, db{}, xa{}, xb{};  // the block's sums (two vectors each)
  vec<double> dt{}, xt{};          // the totals
  double td = 0, tx = 0;           // the runs' last n % (2 SL) values
  int blk = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = r * stride;
    int64_t i = 0;
    for (; i + 2 * SL <= n; i += 2 * SL) {
      wide<S> ga, gb, ya, yb, va, vb;
      load2<S>(g + base + i, ga, gb);
      if constexpr (A != BnAct::None) load2<S>(y + base + i, ya, yb);  // y only when needed
      else ya = ga, yb = gb;
      load2<S>(x + base + i, va, vb);
      const wide<S> za = act_grad<A>(ga, ya, S(alpha)), zb = act_grad<A>(gb, yb, S(alpha));
      da += za;
      xa += za * (va - ms);
      db += zb;
      xb += zb * (vb - ms);
      if (++blk == kBlock) {
        flush<S>(dt, da + db);
        flush<S>(xt, xa + xb);
        da = db = xa = xb = wide<S>{};
        blk = 0;
      }
    }
    for (; i < n; ++i) {
      const int64_t j = base + i;
      const double dz = bn_act_grad<A, C>(simd_load<C>(g[j]), A == BnAct::None ? C(0) : simd_load<C>(y[j]), alpha);
      td += dz;
      tx += dz * (simd_load<double>(x[j]) - m);
    }
  }
  flush<S>(dt, da + db);
  flush<S>(xt, xa + xb);
  out[0] = vsum(dt) + td;
  out[1] = vsum(xt) + tx;
}

// d[c] += sum dz, dx[c] += sum dz * (x - m[c]) over the rows.
template <BnAct A, class T, class C>
static void reduce_rows(const T* __restrict g, const T* __restrict x, const T* __restrict y, int64_t rows,
                        int64_t Cn, const double* __restrict m, C alpha, double* __restrict d,
                        double* __restrict dx) {
  using S = acc_t<T>;
  strip_sums<S>(rows, Cn, m, d, dx,
                [&](int64_t r, int64_t c0, int64_t cn, const S* __restrict ms, S* __restrict fd,
                    S* __restrict fx) {
                  const int64_t base = r * Cn + c0;
                  for (int64_t c = 0; c < cn; ++c) {
                    const S dz = bn_act_grad<A, S>(simd_load<S>(g[base + c]),
                                                   A == BnAct::None ? S(0) : simd_load<S>(y[base + c]),
                                                   S(alpha));
                    fd[c] += dz;
                    fx[c] += dz * (simd_load<S>(x[base + c]) - ms[c]);
                  }
                });
}

// -------------------------------------------------------------- backward elementwise
// dx = (dz - a - (x - m) * b) * s, dz = g * act'(y) also stored to dzo when it is given.
template <BnAct A, class T, class C>
static void elemt_plane(const T* __restrict g, const T* __restrict x, const T* __restrict y,
                        T* __restrict dx, T* __restrict dzo, int64_t n, C m, C s, C a, C b, C alpha) {
  for (int64_t i = 0; i < n; ++i) {
    const C dz = bn_act_grad<A, C>(simd_load<C>(g[i]), A == BnAct::None ? C(0) : simd_load<C>(y[i]), alpha);
    if (dzo) dzo[i] = simd_store<T>(dz);
    dx[i] = simd_store<T>((dz - a - (simd_load<C>(x[i]) - m) * b) * s);
  }
}

template <BnAct A, class T, class C>
static void elemt_rows(const T* __restrict g, const T* __restrict x, const T* __restrict y,
                       T* __restrict dx, T* __restrict dzo, int64_t rows, int64_t Cn,
                       const C* __restrict m, const C* __restrict s, const C* __restrict a,
                       const C* __restrict b, C alpha) {
  for (int64_t o = 0; o < rows; ++o)
    for (int64_t c = 0; c < Cn; ++c) {
      const int64_t i = o * Cn + c;
      const C dz = bn_act_grad<A, C>(simd_load<C>(g[i]), A == BnAct::None ? C(0) : simd_load<C>(y[i]), alpha);
      if (dzo) dzo[i] = simd_store<T>(dz);
      dx[i] = simd_store<T>((dz - a[c] - (simd_load<C>(x[i]) - m[c]) * b[c]) * s[c]);
    }
}

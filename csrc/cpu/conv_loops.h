// The tap loops of the CPU convolution's direct kernels (csrc/cpu/conv.cpp: depthwise and
// other thin convolutions) for a unit stride along W, compiled for AVX-512, AVX2 + FMA and
// the baseline x86-64 (SSE2) by csrc/cpu/simd_copies.h, which includes this file three
// times, inside a struct each time; the widest the CPU has runs (csrc/cpu/simd.h). No
// include guard, on purpose, and no includes: what it uses (ConvShape, Range, tap_range,
// simd_load, kDirectLanes) comes before.
//
// With a unit W stride, each tap (kh, kw) touches a rectangle of the output whose rows
// are contiguous runs in the input too: the innermost loop streams along a row and the
// compiler vectorizes it (16 floats an instruction under AVX-512; the general strided loops
// in conv.cpp stay scalar). The whole tap loop of a plane is here, not only the row, so
// that it is compiled for the copy's instruction set -- a row of a 28-wide map is too short
// to pay for a call into it. Every output element gets its terms in the same order as
// the strided loops give them (the copies with FMA may fuse a multiply and its add: the
// last bits can differ between machines, never between runs on one).

// Every tap of one plane pair, out += w[kh, kw] * in, where a tap pairs output row oh
// (offset yo in an OH x OW plane) with input row oh * sh - ph + kh * dh shifted by
// kw * dw - pw (offset xo in an H x W plane):
//   forward (kScatter = false): acc = the output plane, in = the input plane x: acc[yo..] +=
//     w * x[xo..] -- a gather;
//   input gradient (kScatter = true): acc = the dx plane, in = the dY plane: acc[xo..] +=
//     w * dy[yo..] -- the same pairs, the transposed direction: a scatter.
template <bool kScatter, typename T, typename C>
static void taps(C* __restrict acc, const T* __restrict in, const T* __restrict wp,
                 const ConvShape& s) {
  for (int64_t kh = 0; kh < s.KH; ++kh) {
    const Range rh = tap_range(s.H, s.OH, s.sh, s.ph, kh * s.dh);
    for (int64_t kw = 0; kw < s.KW; ++kw) {
      const Range rw = tap_range(s.W, s.OW, 1, s.pw, kw * s.dw);
      const C wv = simd_load<C>(wp[kh * s.KW + kw]);
      const int64_t n = rw.hi - rw.lo;
      for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
        const int64_t xo = (oh * s.sh - s.ph + kh * s.dh) * s.W - s.pw + kw * s.dw + rw.lo;
        const int64_t yo = oh * s.OW + rw.lo;
        C* __restrict a = acc + (kScatter ? xo : yo);
        const T* __restrict v = in + (kScatter ? yo : xo);
        for (int64_t i = 0; i < n; ++i) a[i] += wv * simd_load<C>(v[i]);
      }
    }
  }
}

// out[kh * KW + kw] = the weight gradient of one (output channel, input channel) pair:
// the sum over the batch (planes gp + n * g_step of dY, xp + n * x_step of x) and the
// output positions of dy * x, each tap in kDirectLanes partial sums (value ow - rw.lo of a
// row goes to lane (ow - rw.lo) % kDirectLanes while a whole group of lanes remains) and a
// scalar tail, added together at the end.
template <typename T, typename C>
static void bwd_weight_taps(C* __restrict out, const T* __restrict gp, int64_t g_step,
                            const T* __restrict xp, int64_t x_step, const ConvShape& s) {
  for (int64_t kh = 0; kh < s.KH; ++kh) {
    const Range rh = tap_range(s.H, s.OH, s.sh, s.ph, kh * s.dh);
    for (int64_t kw = 0; kw < s.KW; ++kw) {
      const Range rw = tap_range(s.W, s.OW, 1, s.pw, kw * s.dw);
      const int64_t n = rw.hi - rw.lo;
      C part[kDirectLanes] = {};
      C acc = 0;
      for (int64_t b = 0; b < s.N; ++b) {
        for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
          const T* __restrict g = gp + b * g_step + oh * s.OW + rw.lo;
          const T* __restrict x = xp + b * x_step + (oh * s.sh - s.ph + kh * s.dh) * s.W - s.pw + kw * s.dw + rw.lo;
          int64_t i = 0;
          for (; i + kDirectLanes <= n; i += kDirectLanes)
            for (int j = 0; j < kDirectLanes; ++j) part[j] += simd_load<C>(g[i + j]) * simd_load<C>(x[i + j]);
          for (; i < n; ++i) acc += simd_load<C>(g[i]) * simd_load<C>(x[i]);
        }
      }
      for (int j = 0; j < kDirectLanes; ++j) acc += part[j];
      out[kh * s.KW + kw] = acc;
    }
  }
}

// The innermost loops of the CPU pooling (csrc/cpu/pool.cpp), compiled for AVX-512, AVX2 +
// FMA and the baseline x86-64 (SSE2) by csrc/cpu/simd_copies.h, which includes this file
// three times, inside a struct each time; the widest the CPU has runs (csrc/cpu/simd.h).
// No include guard, on purpose, and no includes: what it uses (AxisWin, max_takes, CHUNK,
// at::opmath_type) comes before.
//
// Each is a loop over contiguous values with no dependence between iterations but a
// select or an add -- what the compiler vectorizes, 4 floats at a time on the baseline,
// 16 with AVX-512 -- and each is called for a whole window, so that one call does enough
// work (a window's taps x up to CHUNK channels) to pay for not being inlined.

// Sum of row[b], row[b + 1], ..., row[e - 1] (a contiguous run: global average pooling's
// whole plane). Parts independent partial sums, value i going to part i % Parts, added in
// a fixed tree: the compiler turns them into vector adds -- for kParts = 32, two 16-float
// vectors with AVX-512, two add chains (one accumulator would be a serial chain it may not
// reorder) --, and the order, the same for every instruction set (no multiply-adds
// involved), gives the same bits on every run and every machine. The values past the last
// whole group go to a scalar of their own: adding them to part[j] at a run-time j made the
// compiler keep the parts in memory, and every step of the tree then waited on a vector
// store (store forwarding) -- for ResNet's 7x7 maps that was most of the time.
// A short run (a plane of fewer than 2 x kParts values, such as those 7x7 maps) takes
// kSmallParts: with 32, a 49-value plane would be one group, a tail of 17 and a 31-add
// tree; with 8 it is six 8-value vector adds, one scalar and a 7-add tree.
static constexpr int kParts = 32, kSmallParts = 8;
template <int Parts = kParts, typename T>
static at::opmath_type<T> run_sum(const T* __restrict row, int64_t b, int64_t e) {
  using C = at::opmath_type<T>;
  C part[Parts] = {};
  int64_t i = b;
  for (; i + Parts <= e; i += Parts)
    for (int j = 0; j < Parts; ++j) part[j] += static_cast<C>(row[i + j]);
  C tail = 0;
  for (; i < e; ++i) tail += static_cast<C>(row[i]);
  for (int w = Parts / 2; w > 0; w /= 2)
    for (int j = 0; j < w; ++j) part[j] += part[j + w];
  return part[0] + tail;
}

// Global average pooling of n contiguous planes of hw values each: y[p] = sum / dv.
template <typename T>
static void plane_means(const T* __restrict x, T* __restrict y, int64_t n, int64_t hw, at::opmath_type<T> dv) {
  if (hw < 2 * kParts) {
    for (int64_t p = 0; p < n; ++p) y[p] = static_cast<T>(run_sum<kSmallParts>(x + p * hw, 0, hw) / dv);
    return;
  }
  for (int64_t p = 0; p < n; ++p) y[p] = static_cast<T>(run_sum(x + p * hw, 0, hw) / dv);
}

// NHWC forward of one output site, channels [c0, c0 + nc) (nc <= CHUNK): the window's taps
// in order, each a straight loop over the channels (x_site(ih, iw) = xn + (ih*IW + iw)*ld),
// then y (max, or sum / dv) and, WITH_IDX, the flat input index of each channel's maximum.
// I: int32_t where the plane's indices fit -- its lanes are the floats' width, so the
// index select vectorizes too.
template <bool MAX, bool WITH_IDX, typename T, typename I>
static void nhwc_window(const T* __restrict xn, int64_t ld, int64_t IW, AxisWin hw, AxisWin ww,
                        int64_t nc, at::opmath_type<T> dv, T* __restrict yp, int64_t* __restrict ip) {
  using C = at::opmath_type<T>;
  C acc[CHUNK];
  I idx[CHUNK];
  for (int64_t j = 0; j < nc; ++j) {
    acc[j] = MAX ? -std::numeric_limits<C>::infinity() : C(0);
    idx[j] = static_cast<I>(hw.b * IW + ww.b);  // torch's index when no tap beats -inf
  }
  for (int64_t ih = hw.b; ih < hw.e; ih += hw.step)
    for (int64_t iw = ww.b; iw < ww.e; iw += ww.step) {
      const T* __restrict xp = xn + (ih * IW + iw) * ld;
      if constexpr (MAX) {
        const I flat = static_cast<I>(ih * IW + iw);
        for (int64_t j = 0; j < nc; ++j) {
          const C v = static_cast<C>(xp[j]);
          const bool take = max_takes(v, acc[j]);
          acc[j] = take ? v : acc[j];
          idx[j] = take ? flat : idx[j];
        }
      } else {
        for (int64_t j = 0; j < nc; ++j) acc[j] += static_cast<C>(xp[j]);
      }
    }
  if constexpr (MAX) {
    for (int64_t j = 0; j < nc; ++j) yp[j] = static_cast<T>(acc[j]);
    if constexpr (WITH_IDX)
      for (int64_t j = 0; j < nc; ++j) ip[j] = idx[j];
  } else {
    for (int64_t j = 0; j < nc; ++j) yp[j] = static_cast<T>(acc[j] / dv);
  }
}

// NHWC avg backward of one output: v (cn channels) added to every tap of its window,
// acc(ih, iw) = acc + (ih*IW + iw)*ld.
template <typename C>
static void nhwc_add_window(C* __restrict acc, int64_t ld, int64_t IW, AxisWin hw, AxisWin ww,
                            const C* __restrict v, int64_t cn) {
  for (int64_t ih = hw.b; ih < hw.e; ih += hw.step)
    for (int64_t iw = ww.b; iw < ww.e; iw += ww.step) {
      C* __restrict a = acc + (ih * IW + iw) * ld;
      for (int64_t j = 0; j < cn; ++j) a[j] += v[j];
    }
}

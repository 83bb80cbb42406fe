// Pooling on the CPU: max_pool2d, avg_pool2d, adaptive_avg_pool2d, adaptive_max_pool2d,
// forward and backward (window arithmetic in csrc/pool_math.h, shared with CUDA).
//
//   max:  y[n,c,oh,ow] = max over the window's taps of x[n,c,ih,iw]   (NaN wins, torch's
//         rule), ind = ih*IW + iw of the chosen tap (flat index into the input plane)
//   avg:  y[n,c,oh,ow] = sum over the window of x / divisor(oh, ow)
//   backward (a scatter, one output at a time, onto a zeroed dx):
//         max: dx[n,c,ind[n,c,oh,ow]] += g[n,c,oh,ow]
//         avg: dx[n,c,ih,iw] += g[n,c,oh,ow] / divisor(oh, ow) for every tap of the window
//
// Algorithm and decomposition. The tensors are NCHW-contiguous or channels_last (NHWC)
// -- the glue makes them so, and allocates outputs in the same memory format, which is
// the one torch gives. Every output's window and divisor are computed once per call
// (Windows), not per output.
//   NCHW forward: at::parallel_for over output rows (n, c, h); a thread walks a row's w
//         and, for each element, its window -- reads stay in one plane.
//   NHWC forward: at::parallel_for over spatial sites (n, h, w); a thread processes the
//         channel vector of a site CHUNK channels at a time: for every tap of the window,
//         one straight loop over the chunk's contiguous channels (which vectorizes), with
//         the running results in small stack arrays.
//   Backward: at::parallel_for over planes (NCHW) or (image, channel block) pairs (NHWC);
//         a task visits its outputs in increasing (oh, ow) order, so every dx element
//         receives its terms in that order from one thread: the same bits on every run,
//         no atomics, no races. Average pooling with disjoint windows (stride >= kernel,
//         global pooling) stores each value straight instead.
// pool_gather (out[n,c,o] = x[n,c,ind[n,c,o]], the max pools' double backward) is one
// parallel pass over the indices.
// float16/bfloat16 are computed in float32 and rounded once on store; float64 in double.
#include "common.h"
#include "pool_math.h"
#include "simd.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>
#include <tuple>

namespace pydl {
namespace {

constexpr int64_t CHUNK = 64;  // channels per stack-array pass in the NHWC kernels
constexpr int64_t GRAIN_WORK = 16384;  // inner-loop iterations that pay for a thread

// grain (in rows/sites) so that each parallel chunk does at least GRAIN_WORK work
int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, GRAIN_WORK / std::max<int64_t>(1, work_per_item));
}

struct Dims {
  int64_t N, C, IH, IW, OH, OW;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The taps of a typical window along one axis (the middle output's): the work per output.
template <class Axis>
int64_t taps_of(const Axis& a) {
  if (a.O <= 0) return 1;
  const AxisWin w = a.win(a.O / 2);
  return std::max<int64_t>(1, ceil_div(std::max<int64_t>(0, w.e - w.b), w.step));
}

// The innermost loops, one copy per instruction set (csrc/cpu/pool_loops.h): the kernels
// below take the loops struct as a template argument, the glue picks it.
#define PYDL_SIMD_LOOPS "pool_loops.h"
#include "simd_copies.h"

// The taps of every output row and column, and every output's divisor (in the compute
// type C; 1 for max), computed once per call rather than once per output (the integer
// arithmetic costs about as much as a small window's taps).
template <typename C>
struct Windows {
  std::vector<AxisWin> h, w;
  std::vector<C> div;  // (oh, ow) -> divisor, row-major
  template <class Axis, class Div>
  Windows(const Dims& d, const Axis& ah, const Axis& aw, const Div& dv)
      : h(d.OH), w(d.OW), div(d.OH * d.OW) {
    for (int64_t oh = 0; oh < d.OH; ++oh) h[oh] = ah.win(oh);
    for (int64_t ow = 0; ow < d.OW; ++ow) w[ow] = aw.win(ow);
    for (int64_t oh = 0; oh < d.OH; ++oh)
      for (int64_t ow = 0; ow < d.OW; ++ow) div[oh * d.OW + ow] = static_cast<C>(dv(oh, ow));
  }
};

// The NCHW max pool's forward, four outputs side by side (float or bfloat16 input, stride
// 1 or 2). One output's taps form a dependency chain -- compare, select, compare... --, ~8
// cycles a tap; as the lanes of a vector, four chains advance in the same instructions. A
// tap of the four outputs is four values `stride` apart: one load (stride 1) or two loads
// and a shuffle keeping the even ones (stride 2; for bfloat16 a load of 8 values as 4
// words, whose low halves are the even ones). Each lane sees its output's taps in window
// order with the scalar loop's rule (max_takes), so values and indices are the same:
// measured 2.5x faster than the scalar loop (and torch's) on a ResNet stem's 3x3/2 pool.
typedef float f32x4 __attribute__((vector_size(16)));
typedef int32_t i32x4 __attribute__((vector_size(16)));
typedef uint32_t u32x4 __attribute__((vector_size(16)));
typedef uint16_t u16x4 __attribute__((vector_size(8)));

// One past the last output o whose window lies inside the row, with the s - 1 values after
// it that a load of four lanes reads: o*s - p + (k-1)*d + s - 1 <= I - 1. The vector path
// takes outputs from ceil(p / s) (the first unclipped window) to this; 0 for strides other
// than 1 and 2.
inline int64_t max_vec_end(const FixedAxis& a) {
  if (a.s != 1 && a.s != 2) return 0;
  const int64_t last = a.I - a.s - (a.k - 1) * a.d + a.p;
  return last < 0 ? 0 : std::min(a.O, last / a.s + 1);
}

template <typename T>  // float or c10::BFloat16
void max_fwd_4(const T* xp, int64_t IW, const AxisWin& hw, const FixedAxis& aw, int64_t ow, T* y,
               int64_t* ind) {
  const int32_t s = static_cast<int32_t>(aw.s);
  const i32x4 lane = i32x4{0, 1, 2, 3} * s;
  f32x4 best = f32x4{} - std::numeric_limits<float>::infinity();
  const int64_t w0 = ow * aw.s - aw.p;  // the first tap of output ow (inside: ow >= p / s)
  i32x4 bi = lane + static_cast<int32_t>(hw.b * IW + w0);
  for (int64_t ih = hw.b; ih < hw.e; ih += hw.step)
    for (int64_t kw = 0; kw < aw.k; ++kw) {
      const int64_t base = ih * IW + w0 + kw * aw.d;
      f32x4 v;
      if constexpr (std::is_same_v<T, float>) {
        if (s == 1) {
          std::memcpy(&v, xp + base, sizeof v);
        } else {
          f32x4 a, b;
          std::memcpy(&a, xp + base, sizeof a);
          std::memcpy(&b, xp + base + 4, sizeof b);
#if defined(__clang__)
          v = __builtin_shufflevector(a, b, 0, 2, 4, 6);
#else  // (GCC has __builtin_shufflevector only from 12)
          v = __builtin_shuffle(a, b, i32x4{0, 2, 4, 6});
#endif
        }
      } else {  // bfloat16: the upper half of a float
        u32x4 w;
        if (s == 1) {
          u16x4 h;
          std::memcpy(&h, xp + base, sizeof h);
          w = __builtin_convertvector(h, u32x4) << 16;
        } else {  // 8 values as 4 words: the even ones are the words' low halves
          std::memcpy(&w, xp + base, sizeof w);
          w <<= 16;
        }
        v = (f32x4)w;
      }
      const i32x4 take = (v > best) | (v != v);  // max_takes, lane by lane
      best = take ? v : best;
      bi = take ? lane + static_cast<int32_t>(base) : bi;
    }
  for (int l = 0; l < 4; ++l) {
    y[ow + l] = static_cast<T>(best[l]);  // (exact: an input value, or -inf)
    if (ind) ind[ow + l] = bi[l];
  }
}

// ------------------------------------------------------------------- forward kernels
// Sum of row[ww.b], row[ww.b + step], ... < row[ww.e]: contiguous runs of 16 or more (as
// in global average pooling) by the vectorized run_sum, the rest one by one.
template <class L, typename T>
at::opmath_type<T> row_sum(const T* row, const AxisWin& ww) {
  using C = at::opmath_type<T>;
  if (ww.step == 1 && ww.e - ww.b >= 16) return L::run_sum(row, ww.b, ww.e);
  C s = 0;
  for (int64_t iw = ww.b; iw < ww.e; iw += ww.step) s += static_cast<C>(row[iw]);
  return s;
}

// MAX: max with indices (WITH_IDX) or values only; else sum / div(oh, ow).
template <class L, typename T, bool MAX, bool WITH_IDX, class Axis, class Div>
void pool_fwd(const T* x, T* y, int64_t* ind, const Dims& d, bool cl, const Axis& ah,
              const Axis& aw, const Div& div) {
  using C = at::opmath_type<T>;
  const Windows<C> win(d, ah, aw, div);
  const C neg_inf = -std::numeric_limits<C>::infinity();
  if (!cl) {
    if constexpr (!MAX) {
      const AxisWin h0 = win.h[0], w0 = win.w[0];
      if (d.OH == 1 && d.OW == 1 && h0.b == 0 && h0.e == d.IH && w0.b == 0 && w0.e == d.IW && h0.step == 1 &&
          w0.step == 1) {  // global pooling: a plane's mean, the plane one contiguous run
        const int64_t hw = d.IH * d.IW;
        at::parallel_for(0, d.N * d.C, grain_for(hw), [&](int64_t p0, int64_t p1) {
          L::plane_means(x + p0 * hw, y + p0, p1 - p0, hw, win.div[0]);
        });
        return;
      }
    }
    const int64_t rows = d.N * d.C * d.OH;
    at::parallel_for(0, rows, grain_for(d.OW * taps_of(ah) * taps_of(aw)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t plane = r / d.OH, oh = r % d.OH;
        const T* xp = x + plane * d.IH * d.IW;
        const AxisWin hw = win.h[oh];
        int64_t vlo = 0, vhi = 0;  // outputs [vlo, vhi) take the vector path
        if constexpr (MAX && (std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16>) &&
                      std::is_same_v<Axis, FixedAxis>) {
          if (d.IH * d.IW <= std::numeric_limits<int32_t>::max()) {  // int32 lane indices
            vlo = ceil_div(aw.p, aw.s);
            vhi = max_vec_end(aw);
            for (int64_t ow = vlo; ow + 4 <= vhi; ow += 4)
              max_fwd_4(xp, d.IW, hw, aw, ow, y + r * d.OW, WITH_IDX ? ind + r * d.OW : nullptr);
            vhi = vlo + std::max<int64_t>(0, vhi - vlo) / 4 * 4;
          }
        }
        for (int64_t ow = 0; ow < d.OW; ++ow) {
          if (ow == vlo && vhi > vlo) {
            ow = vhi - 1;
            continue;
          }
          const AxisWin ww = win.w[ow];
          const int64_t o = r * d.OW + ow;
          if constexpr (MAX) {
            C best = neg_inf;
            int64_t bi = hw.b * d.IW + ww.b;  // torch's index when no tap beats -inf
            for (int64_t ih = hw.b; ih < hw.e; ih += hw.step)
              for (int64_t iw = ww.b; iw < ww.e; iw += ww.step) {
                const C v = static_cast<C>(xp[ih * d.IW + iw]);
                const bool take = max_takes(v, best);
                best = take ? v : best;
                bi = take ? ih * d.IW + iw : bi;
              }
            y[o] = static_cast<T>(best);
            if constexpr (WITH_IDX) ind[o] = bi;
          } else {
            C sum = 0;
            if (ww.b == 0 && ww.e == d.IW && hw.step == 1)  // whole rows: one contiguous run
              sum = row_sum<L>(xp, AxisWin{hw.b * d.IW, hw.e * d.IW, 1});
            else
              for (int64_t ih = hw.b; ih < hw.e; ih += hw.step)
                sum += row_sum<L>(xp + ih * d.IW, ww);
            y[o] = static_cast<T>(sum / win.div[oh * d.OW + ow]);
          }
        }
      }
    });
    return;
  }
  // The running indices are int32 where a plane's indices fit (always, in practice): with
  // the float values' 32-bit lanes the selects vectorize (64-bit ones do not, on the
  // baseline x86-64 target: the max pool's forward ran 10x slower with indices).
  const int64_t sites = d.N * d.OH * d.OW;
  auto nhwc = [&](auto idx_type) {
    using I = decltype(idx_type);
    at::parallel_for(0, sites, grain_for(d.C * taps_of(ah) * taps_of(aw)), [&](int64_t s0, int64_t s1) {
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t n = s / (d.OH * d.OW), oh = (s / d.OW) % d.OH, ow = s % d.OW;
        const T* xn = x + n * d.IH * d.IW * d.C;
        for (int64_t c0 = 0; c0 < d.C; c0 += CHUNK)
          L::template nhwc_window<MAX, WITH_IDX, T, I>(
              xn + c0, d.C, d.IW, win.h[oh], win.w[ow], std::min(CHUNK, d.C - c0),
              win.div[oh * d.OW + ow], y + s * d.C + c0, WITH_IDX ? ind + s * d.C + c0 : nullptr);
      }
    });
  };
  if (d.IH * d.IW <= std::numeric_limits<int32_t>::max()) nhwc(int32_t{});
  else nhwc(int64_t{});
}

// ------------------------------------------------------------------ backward kernels
// True when no two windows along the axis share an input coordinate (stride >= kernel,
// global pooling, adaptive pooling with O dividing I, ...).
template <class Axis>
bool disjoint_windows(const Axis& a) {
  for (int64_t o = 0; o + 1 < a.O; ++o)
    if (a.win(o).e > a.win(o + 1).b) return false;
  return true;
}

// True when the windows along the axis cover every input coordinate.
template <class Axis>
bool windows_cover(const Axis& a) {
  if (a.O == 0 || a.win(0).b != 0 || a.win(a.O - 1).e < a.I) return false;
  for (int64_t o = 0; o + 1 < a.O; ++o)
    if (a.win(o).e < a.win(o + 1).b) return false;
  return true;
}

// std::fill for the element types here; float16/bfloat16 as their 16-bit patterns, which
// the compiler turns into vector stores (c10's 16-bit classes it fills one at a time).
template <typename T>
void fill_n(T* p, int64_t n, T v) {
  if constexpr (sizeof(T) == 2) {
    uint16_t bits;
    std::memcpy(&bits, &v, 2);
    std::fill_n(reinterpret_cast<uint16_t*>(p), n, bits);
  } else {
    std::fill_n(p, n, v);
  }
}

// avg backward where every input element is in at most one window: dx = 0 + g / divisor
// of its window (0 outside all windows), stored straight -- no accumulation, no buffer.
// (0 + v, not v: the same bits as the general scatter, which starts from +0.)
template <typename T, class Axis, class Div>
void avg_bwd_disjoint(const T* g, T* dx, const Dims& d, bool cl, const Axis& ah, const Axis& aw,
                      const Div& div) {
  using C = at::opmath_type<T>;
  const Windows<C> win(d, ah, aw, div);
  const int64_t IHW = d.IH * d.IW, OHW = d.OH * d.OW;
  const int64_t per_image = cl ? d.C : 1, images = cl ? d.N : d.N * d.C;  // NCHW: planes
  const bool cover = windows_cover(ah) && windows_cover(aw);  // every element gets a value
  at::parallel_for(0, images, grain_for((IHW + OHW) * per_image), [&](int64_t p0, int64_t p1) {
    std::vector<T> val(per_image);  // the window's value, per channel (NHWC)
    for (int64_t p = p0; p < p1; ++p) {
      T* dp = dx + p * IHW * per_image;
      if (!cover) fill_n(dp, IHW * per_image, T(0));
      for (int64_t oh = 0; oh < d.OH; ++oh) {
        const AxisWin hw = win.h[oh];
        for (int64_t ow = 0; ow < d.OW; ++ow) {
          const AxisWin ww = win.w[ow];
          const C dv = win.div[oh * d.OW + ow];
          const T* gp = g + (p * OHW + oh * d.OW + ow) * per_image;
          for (int64_t j = 0; j < per_image; ++j) val[j] = static_cast<T>(C(0) + static_cast<C>(gp[j]) / dv);
          for (int64_t ih = hw.b; ih < hw.e; ih += hw.step) {
            T* row = dp + ih * d.IW * per_image;
            if (!cl) {  // a run of the row (avg windows have step 1)
              fill_n(row + ww.b, ww.e - ww.b, val[0]);
            } else {
              for (int64_t iw = ww.b; iw < ww.e; ++iw) std::copy(val.begin(), val.end(), row + iw * d.C);
            }
          }
        }
      }
    }
  });
}

// A scatter: dx = 0, then each output adds its gradient to the input elements it came
// from -- max: the one at its saved index; avg: every tap of its window, g / divisor.
// A task owns whole planes (NCHW) or a block of channels of one image (NHWC) and visits
// its outputs in increasing (oh, ow) order, so every dx element receives its terms in
// that order, one thread adding them: the same bits on every run and for any thread
// count. (The work is one visit per output -- per window tap for avg --, where gathering
// per input element would search the outputs whose windows might hold it.)
// float/double accumulate in dx itself; float16/bfloat16 in a float buffer, stored once.
template <class L, typename T, bool MAX, class Axis, class Div>
void pool_bwd(const T* g, const int64_t* ind, T* dx, const Dims& d, bool cl, const Axis& ah,
              const Axis& aw, const Div& div) {
  using C = at::opmath_type<T>;
  if constexpr (!MAX) {
    if (disjoint_windows(ah) && disjoint_windows(aw)) return avg_bwd_disjoint(g, dx, d, cl, ah, aw, div);
  }
  const Windows<C> win(d, ah, aw, div);
  constexpr bool direct = std::is_same_v<T, C>;
  const int64_t IHW = d.IH * d.IW, OHW = d.OH * d.OW;
  const int64_t taps = MAX ? 1 : taps_of(ah) * taps_of(aw);
  if (!cl) {
    at::parallel_for(0, d.N * d.C, grain_for(OHW * taps + IHW), [&](int64_t p0, int64_t p1) {
      std::vector<C> buf(direct ? 0 : IHW);
      for (int64_t p = p0; p < p1; ++p) {
        C* acc;
        if constexpr (direct) acc = dx + p * IHW; else acc = buf.data();
        std::fill(acc, acc + IHW, C(0));
        const T* gp = g + p * OHW;
        if constexpr (MAX) {
          const int64_t* ip = ind + p * OHW;
          for (int64_t o = 0; o < OHW; ++o) {
            const int64_t k = ip[o];
            if (k >= 0 && k < IHW) acc[k] += static_cast<C>(gp[o]);  // (a stray index adds nothing)
          }
        } else {
          for (int64_t oh = 0; oh < d.OH; ++oh) {
            const AxisWin hw = win.h[oh];
            for (int64_t ow = 0; ow < d.OW; ++ow) {
              const AxisWin ww = win.w[ow];
              const C v = static_cast<C>(gp[oh * d.OW + ow]) / win.div[oh * d.OW + ow];
              for (int64_t ih = hw.b; ih < hw.e; ih += hw.step)
                for (int64_t iw = ww.b; iw < ww.e; iw += ww.step) acc[ih * d.IW + iw] += v;
            }
          }
        }
        if constexpr (!direct)
          for (int64_t i = 0; i < IHW; ++i) dx[p * IHW + i] = static_cast<T>(acc[i]);
      }
    });
    return;
  }
  // NHWC: tasks are (image, block of cb channels); a block's accumulators are dx itself
  // (stride C between sites) or a buffer of IHW x cb floats (stride cb), <= 1 MiB.
  int64_t cb = ceil_div(d.C, std::clamp<int64_t>(ceil_div(2 * at::get_num_threads(), d.N), 1,
                                                 ceil_div(d.C, 16)));
  if (!direct) cb = std::clamp<int64_t>((int64_t(1) << 18) / IHW, 1, cb);
  const int64_t nblk = ceil_div(d.C, cb);
  at::parallel_for(0, d.N * nblk, 1, [&](int64_t t0, int64_t t1) {
    std::vector<C> buf(direct ? 0 : IHW * cb), v(cb);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / nblk, c0 = (t % nblk) * cb, cn = std::min(cb, d.C - c0);
      C* acc;
      int64_t ld;
      if constexpr (direct) {
        acc = dx + n * IHW * d.C + c0;
        ld = d.C;
      } else {
        acc = buf.data();
        ld = cn;
      }
      for (int64_t i = 0; i < IHW; ++i) std::fill(acc + i * ld, acc + i * ld + cn, C(0));
      for (int64_t oh = 0; oh < d.OH; ++oh)
        for (int64_t ow = 0; ow < d.OW; ++ow) {
          const int64_t o = ((n * d.OH + oh) * d.OW + ow) * d.C + c0;
          const T* gp = g + o;
          if constexpr (MAX) {
            const int64_t* ip = ind + o;
            for (int64_t j = 0; j < cn; ++j) {
              const int64_t k = ip[j];
              if (k >= 0 && k < IHW) acc[k * ld + j] += static_cast<C>(gp[j]);
            }
          } else {
            const AxisWin hw = win.h[oh], ww = win.w[ow];
            const C dv = win.div[oh * d.OW + ow];
            for (int64_t j = 0; j < cn; ++j) v[j] = static_cast<C>(gp[j]) / dv;
            L::nhwc_add_window(acc, ld, d.IW, hw, ww, v.data(), cn);
          }
        }
      if constexpr (!direct)
        for (int64_t i = 0; i < IHW; ++i)
          for (int64_t j = 0; j < cn; ++j)
            dx[(n * IHW + i) * d.C + c0 + j] = static_cast<T>(acc[i * cn + j]);
    }
  });
}

// ------------------------------------------------------------------------ torch glue
void check_pair(at::IntArrayRef v, const char* name, int64_t min_value) {
  PYDL_CHECK(v.size() == 2, name, " must have 2 elements, got ", v.size());
  PYDL_CHECK(v[0] >= min_value && v[1] >= min_value, name, " must be >= ", min_value,
             ", got ", v);
}

at::MemoryFormat format_of(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// The input made NCHW- or NHWC-contiguous in the memory format torch's pooling picks
// (suggest_memory_format), which is also the output's.
at::Tensor prepare_input(const at::Tensor& x, bool* cl) {
  check_floating(x, "input");
  PYDL_CHECK(x.dim() == 4, "input must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  // (no channels is allowed here: the output is empty; pydl.ops.pool applies torch's
  // per-op rules, which allow that for adaptive average pooling only)
  PYDL_CHECK(x.size(2) > 0 && x.size(3) > 0, "input must have non-zero H and W, got ", x.sizes());
  const at::MemoryFormat fmt = x.suggest_memory_format();
  *cl = fmt == at::MemoryFormat::ChannelsLast;
  return x.contiguous(fmt);
}

Dims dims_of(const at::Tensor& x, at::IntArrayRef out) {
  return {x.size(0), x.size(1), x.size(2), x.size(3), out[0], out[1]};
}

// The gradient and indices for a backward, in the layout of the forward's input.
Dims prepare_grad(const at::Tensor& grad, at::IntArrayRef input_size) {
  check_floating(grad, "grad_output");
  PYDL_CHECK(grad.dim() == 4, "grad_output must be 4-D, got ", grad.dim(), "-D");
  check_pair(input_size, "input_size", 1);
  return {grad.size(0), grad.size(1), input_size[0], input_size[1], grad.size(2), grad.size(3)};
}

// Calls fn(T{}) with T the element type of t (float, double, at::Half, at::BFloat16).
template <class Fn>
void dispatch_float(at::ScalarType t, Fn&& fn) {
  switch (t) {
    case at::kFloat: fn(float{}); break;
    case at::kDouble: fn(double{}); break;
    case at::kHalf: fn(at::Half{}); break;
    case at::kBFloat16: fn(at::BFloat16{}); break;
    default: PYDL_CHECK(false, "unsupported dtype ", t);
  }
}

// dispatch_float with the loops struct for this CPU: fn(Loops{}, T{}).
template <class Fn>
void dispatch_loops(at::ScalarType t, Fn&& fn) {
  with_cpu_simd([&](auto loops) { dispatch_float(t, [&](auto tag) { fn(loops, tag); }); });
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_fwd(const at::Tensor& x_in, at::IntArrayRef kernel,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, at::IntArrayRef out_size,
                                                  bool with_indices) {
  check_pair(kernel, "kernel_size", 1);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  check_pair(out_size, "output_size", 1);
  bool cl = false;
  at::Tensor x = prepare_input(x_in, &cl);
  const Dims d = dims_of(x, out_size);
  const FixedAxis ah{d.IH, d.OH, kernel[0], stride[0], padding[0], dilation[0]};
  const FixedAxis aw{d.IW, d.OW, kernel[1], stride[1], padding[1], dilation[1]};
  at::Tensor y = at::empty({d.N, d.C, d.OH, d.OW}, x.options().memory_format(format_of(cl)));
  at::Tensor ind = with_indices
      ? at::empty({d.N, d.C, d.OH, d.OW}, x.options().dtype(at::kLong).memory_format(format_of(cl)))
      : at::empty({0}, x.options().dtype(at::kLong));
  dispatch_loops(x.scalar_type(), [&](auto loops, auto tag) {
    using L = decltype(loops);
    using T = decltype(tag);
    if (with_indices)
      pool_fwd<L, T, true, true>(x.const_data_ptr<T>(), y.mutable_data_ptr<T>(),
                              ind.mutable_data_ptr<int64_t>(), d, cl, ah, aw, NoDivisor{});
    else
      pool_fwd<L, T, true, false>(x.const_data_ptr<T>(), y.mutable_data_ptr<T>(), nullptr, d, cl,
                               ah, aw, NoDivisor{});
  });
  return {y, ind};
}

// (make_axes(d) -> the pair of axes: fixed or adaptive.)
template <class MakeAxes>
at::Tensor max_bwd_common(const at::Tensor& grad_in, const at::Tensor& ind_in,
                          at::IntArrayRef input_size, bool cl, const MakeAxes& make_axes) {
  const Dims d = prepare_grad(grad_in, input_size);
  PYDL_CHECK(ind_in.scalar_type() == at::kLong, "indices must be int64, got ", ind_in.scalar_type());
  check_same_shape(grad_in, "grad_output", ind_in, "indices");
  const auto [ah, aw] = make_axes(d);
  const at::Tensor g = grad_in.contiguous(format_of(cl));
  const at::Tensor ind = ind_in.contiguous(format_of(cl));
  at::Tensor dx = at::empty({d.N, d.C, d.IH, d.IW}, g.options().memory_format(format_of(cl)));
  dispatch_loops(g.scalar_type(), [&](auto loops, auto tag) {
    using L = decltype(loops);
    using T = decltype(tag);
    pool_bwd<L, T, true>(g.const_data_ptr<T>(), ind.const_data_ptr<int64_t>(),
                      dx.mutable_data_ptr<T>(), d, cl, ah, aw, NoDivisor{});
  });
  return dx;
}

at::Tensor max_pool2d_bwd(const at::Tensor& grad, const at::Tensor& indices,
                          at::IntArrayRef input_size, at::IntArrayRef kernel,
                          at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, bool channels_last) {
  check_pair(kernel, "kernel_size", 1);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  return max_bwd_common(grad, indices, input_size, channels_last,
                        [&](const Dims& d) {
                          return std::pair{
                              FixedAxis{d.IH, d.OH, kernel[0], stride[0], padding[0], dilation[0]},
                              FixedAxis{d.IW, d.OW, kernel[1], stride[1], padding[1], dilation[1]}};
                        });
}

at::Tensor avg_pool2d_fwd(const at::Tensor& x_in, at::IntArrayRef kernel, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef out_size,
                          bool count_include_pad, int64_t divisor_override) {
  check_pair(kernel, "kernel_size", 1);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(out_size, "output_size", 1);
  bool cl = false;
  at::Tensor x = prepare_input(x_in, &cl);
  const Dims d = dims_of(x, out_size);
  const FixedAxis ah{d.IH, d.OH, kernel[0], stride[0], padding[0], 1};
  const FixedAxis aw{d.IW, d.OW, kernel[1], stride[1], padding[1], 1};
  const AvgDivisor div{ah, aw, count_include_pad, divisor_override};
  at::Tensor y = at::empty({d.N, d.C, d.OH, d.OW}, x.options().memory_format(format_of(cl)));
  dispatch_loops(x.scalar_type(), [&](auto loops, auto tag) {
    using L = decltype(loops);
    using T = decltype(tag);
    pool_fwd<L, T, false, false>(x.const_data_ptr<T>(), y.mutable_data_ptr<T>(), nullptr, d, cl, ah,
                              aw, div);
  });
  return y;
}

at::Tensor avg_pool2d_bwd(const at::Tensor& grad_in, at::IntArrayRef input_size,
                          at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                          bool count_include_pad, int64_t divisor_override, bool channels_last) {
  check_pair(kernel, "kernel_size", 1);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  const Dims d = prepare_grad(grad_in, input_size);
  const FixedAxis ah{d.IH, d.OH, kernel[0], stride[0], padding[0], 1};
  const FixedAxis aw{d.IW, d.OW, kernel[1], stride[1], padding[1], 1};
  const AvgDivisor div{ah, aw, count_include_pad, divisor_override};
  const at::Tensor g = grad_in.contiguous(format_of(channels_last));
  at::Tensor dx = at::empty({d.N, d.C, d.IH, d.IW}, g.options().memory_format(format_of(channels_last)));
  dispatch_loops(g.scalar_type(), [&](auto loops, auto tag) {
    using L = decltype(loops);
    using T = decltype(tag);
    pool_bwd<L, T, false>(g.const_data_ptr<T>(), nullptr, dx.mutable_data_ptr<T>(), d,
                       channels_last, ah, aw, div);
  });
  return dx;
}

at::Tensor adaptive_avg_pool2d_fwd(const at::Tensor& x_in, at::IntArrayRef out_size) {
  check_pair(out_size, "output_size", 0);
  bool cl = false;
  at::Tensor x = prepare_input(x_in, &cl);
  const Dims d = dims_of(x, out_size);
  const AdaptiveAxis ah{d.IH, d.OH}, aw{d.IW, d.OW};
  at::Tensor y = at::empty({d.N, d.C, d.OH, d.OW}, x.options().memory_format(format_of(cl)));
  if (y.numel() == 0) return y;
  dispatch_loops(x.scalar_type(), [&](auto loops, auto tag) {
    using L = decltype(loops);
    using T = decltype(tag);
    pool_fwd<L, T, false, false>(x.const_data_ptr<T>(), y.mutable_data_ptr<T>(), nullptr, d, cl, ah,
                              aw, AdaptiveDivisor{ah, aw});
  });
  return y;
}

at::Tensor adaptive_avg_pool2d_bwd(const at::Tensor& grad_in, at::IntArrayRef input_size,
                                   bool channels_last) {
  const Dims d = prepare_grad(grad_in, input_size);
  const AdaptiveAxis ah{d.IH, d.OH}, aw{d.IW, d.OW};
  const at::Tensor g = grad_in.contiguous(format_of(channels_last));
  at::Tensor dx = at::empty({d.N, d.C, d.IH, d.IW}, g.options().memory_format(format_of(channels_last)));
  if (d.OH == 0 || d.OW == 0) return dx.zero_();
  dispatch_loops(g.scalar_type(), [&](auto loops, auto tag) {
    using L = decltype(loops);
    using T = decltype(tag);
    pool_bwd<L, T, false>(g.const_data_ptr<T>(), nullptr, dx.mutable_data_ptr<T>(), d,
                       channels_last, ah, aw, AdaptiveDivisor{ah, aw});
  });
  return dx;
}

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d_fwd(const at::Tensor& x_in,
                                                           at::IntArrayRef out_size,
                                                           bool with_indices) {
  check_pair(out_size, "output_size", 0);
  bool cl = false;
  at::Tensor x = prepare_input(x_in, &cl);
  const Dims d = dims_of(x, out_size);
  const AdaptiveAxis ah{d.IH, d.OH}, aw{d.IW, d.OW};
  at::Tensor y = at::empty({d.N, d.C, d.OH, d.OW}, x.options().memory_format(format_of(cl)));
  at::Tensor ind = with_indices
      ? at::empty({d.N, d.C, d.OH, d.OW}, x.options().dtype(at::kLong).memory_format(format_of(cl)))
      : at::empty({0}, x.options().dtype(at::kLong));
  if (y.numel() == 0) return {y, ind};
  dispatch_loops(x.scalar_type(), [&](auto loops, auto tag) {
    using L = decltype(loops);
    using T = decltype(tag);
    if (with_indices)
      pool_fwd<L, T, true, true>(x.const_data_ptr<T>(), y.mutable_data_ptr<T>(),
                              ind.mutable_data_ptr<int64_t>(), d, cl, ah, aw, NoDivisor{});
    else
      pool_fwd<L, T, true, false>(x.const_data_ptr<T>(), y.mutable_data_ptr<T>(), nullptr, d, cl,
                               ah, aw, NoDivisor{});
  });
  return {y, ind};
}

at::Tensor adaptive_max_pool2d_bwd(const at::Tensor& grad, const at::Tensor& indices,
                                   at::IntArrayRef input_size, bool channels_last) {
  return max_bwd_common(grad, indices, input_size, channels_last,
                        [](const Dims& d) {
                          return std::pair{AdaptiveAxis{d.IH, d.OH}, AdaptiveAxis{d.IW, d.OW}};
                        });
}

// out[n, c, o] = x[n, c, ind[n, c, o]]: one pass over the indices in memory order.
at::Tensor pool_gather(const at::Tensor& x_in, const at::Tensor& ind_in, bool channels_last) {
  check_floating(x_in, "input");
  PYDL_CHECK(x_in.dim() == 4 && ind_in.dim() == 4, "input and indices must be 4-D");
  PYDL_CHECK(ind_in.scalar_type() == at::kLong, "indices must be int64, got ", ind_in.scalar_type());
  PYDL_CHECK(x_in.size(0) == ind_in.size(0) && x_in.size(1) == ind_in.size(1),
             "input and indices must agree in N and C, got ", x_in.sizes(), " and ", ind_in.sizes());
  const at::Tensor x = x_in.contiguous(format_of(channels_last));
  const at::Tensor ind = ind_in.contiguous(format_of(channels_last));
  at::Tensor out = at::empty(ind.sizes(), x.options().memory_format(format_of(channels_last)));
  const int64_t C = x.size(1), HW = x.size(2) * x.size(3), OHW = ind.size(2) * ind.size(3);
  const int64_t n_out = out.numel();
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.const_data_ptr<T>();
    const int64_t* ip = ind.const_data_ptr<int64_t>();
    T* op = out.mutable_data_ptr<T>();
    at::parallel_for(0, n_out, 32768, [&](int64_t b, int64_t e) {
      for (int64_t o = b; o < e; ++o) {
        const int64_t k = ip[o];
        if (k < 0 || k >= HW) {  // a window with no tap inside the input: it depends on nothing
          op[o] = T(0);
        } else if (channels_last) {  // o = (n*OHW + site)*C + c
          const int64_t c = o % C, n = o / (C * OHW);
          op[o] = xp[(n * HW + k) * C + c];
        } else {  // o = (n*C + c)*OHW + site
          op[o] = xp[(o / OHW) * HW + k];
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydl, CPU, m) {
  m.impl("pool_gather", &pool_gather);
  m.impl("max_pool2d_fwd", &max_pool2d_fwd);
  m.impl("max_pool2d_bwd", &max_pool2d_bwd);
  m.impl("avg_pool2d_fwd", &avg_pool2d_fwd);
  m.impl("avg_pool2d_bwd", &avg_pool2d_bwd);
  m.impl("adaptive_avg_pool2d_fwd", &adaptive_avg_pool2d_fwd);
  m.impl("adaptive_avg_pool2d_bwd", &adaptive_avg_pool2d_bwd);
  m.impl("adaptive_max_pool2d_fwd", &adaptive_max_pool2d_fwd);
  m.impl("adaptive_max_pool2d_bwd", &adaptive_max_pool2d_bwd);
}

}  // namespace pydl

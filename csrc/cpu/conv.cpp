// 2-D convolution on the CPU: forward (with an optional fused bias + ReLU epilogue), the
// gradient with respect to the input, the weight and the bias.
//
//   y [n, oc, oh, ow] = act(b[oc] + sum_{c, kh, kw} x[n, g*Cg+c, ih, iw] * w[oc, c, kh, kw])
//   dx[n, ic, ih, iw] = sum_{oc in group of ic, kh, kw} dy[n, oc, oh, ow] * w[oc, ic%Cg, kh, kw]
//   dw[oc, c, kh, kw] = sum_{n, oh, ow} dy[n, oc, oh, ow] * x[n, g*Cg+c, ih, iw]
//   db[oc]            = sum_{n, oh, ow} dy[n, oc, oh, ow]
//   where ih = oh*sh - ph + kh*dh, iw = ow*sw - pw + kw*dw (geometry in csrc/conv_shape.h),
//   and terms with (ih, iw) outside the input are zero (zero padding).
//
// Algorithm: GEMM on column matrices. For one group g, let K = Cg*KH*KW, P = OH*OW, and
// col(x[n, g]) the K x P "column matrix" with col[(c, kh, kw), (oh, ow)] = x[n, g*Cg+c, ih, iw]
// (0 in the padding). Putting the samples side by side (column j = (n, p)), the three
// products are matrix products:
//   forward:      Y[g]  (OCg x N*P) = W[g] (OCg x K) * col(x[g]) (K x N*P)
//   input grad:   dcol  (K x N*P)   = W[g]^T (K x OCg) * dY[g] (OCg x N*P),  dx = col2im(dcol)
//   weight grad:  dW[g] (OCg x K)   = dY[g] (OCg x N*P) * col(x[g])^T (N*P x K)
// col2im is the transpose of im2col: it adds each dcol element to the input pixel it was
// read from. A direct convolution (the previous version of this file) spends its time in
// a loop over ow with one weight held in a register: with few output pixels and many
// channels (ResNet's late layers: 2x2 maps, 512 channels) that loop is a few iterations
// long and the machine idles. As a GEMM, every value brought into a register is reused
// MR or NR times, whatever the spatial size.
//
// The GEMM (csrc/cpu/gemm.h) is the classic Goto/BLIS one: the micro-kernel keeps an
// MR x NR tile of the result in registers (12 x 32 or 16 x 16 floats with AVX-512 by the
// GEMM's width, 6 x 16 with AVX2, chosen at run time; gemm.h says why these shapes) while
// it runs through one chunk of the depth, kDepth = 256 steps: its B panel (256 x NR
// values) stays in the 48 KiB L1 while the A panels stream past from L2. How the operands
// reach it:
//   forward:     A = W[g], read in place as a row-major matrix (A is the operand the
//                micro-kernel broadcasts, so it needs no transposition, and copying the
//                weight would cost as much as the GEMM on the 2x2 layers);
//                B = col(x), gathered straight into panels of NR columns.
//   input grad:  A = W[g]^T, packed once per call into panels of MR rows -- or, when the
//                maps are small, read in place (W[g] is W^T column-major); B = dY[g].
//   weight grad: A = dY[g] and B = col(x)^T, both packed per depth chunk; the depth is
//                the samples x positions.
// The column matrix is never built whole: a task gathers kDepth rows x one tile of about
// kColTile = 256 output columns at a time (bounded scratch per thread), through a table
// of where each (tap, column) of the tile reads x, built once per tile and shared by all
// channels (tap_table). Its cost per element does not depend on the map size -- copying
// row segments instead is mostly per-segment overhead on 2x2 and 4x4 maps. A 1x1,
// stride-1, unpadded convolution's column matrix is x itself: it is packed from x.
// With AVX-512, a row of the column matrix is read with masked gathers (8 table entries
// an instruction, the padding masked off) and col2im adds with gather + scatter
// (gather_run_avx512, scatter_add_run_avx512): ~3x the scalar loops' speed.
// float16/bfloat16 operands are converted to float when packed (the forward's weight once
// per call); sums are float (double for double) and round once to the output.
//
// Parallel decomposition (at::parallel_for over tasks; every task writes its own outputs,
// so there are no atomics and no races):
//   forward:     task = (group, column tile, block of output channels) -> those y values.
//                With few tiles (small maps) the blocks of a tile share its column matrix,
//                gathered once by all threads first (else each block would gather it).
//   input grad:  task = (group, set of whole samples, block of input channels) -> those
//                dx planes. Channel blocks start on a (c, kh, kw) row that begins an A
//                panel, and a dx channel only receives dcol rows of its own channel, so
//                the col2im scatter of one task never touches another task's pixels.
//   weight grad: task = (slice, group, block of output channels, block of K) -> that tile
//                of the slice's partial dW. A slice is a run of consecutive depth chunks
//                (split-K); the partials are added in slice order at the end. Without
//                slices, tiling dW is the only parallelism and every tile re-packs dY and
//                re-gathers x for the whole depth.
// Determinism: every output element is a sum in a fixed order, independent of the number
// of threads: the depth is cut into chunks and the chunks into slices, both sized from the
// shapes only; the micro-kernel adds the terms of a chunk in order in one lane and adds
// that to the result once per chunk, in chunk order; the slices' partial sums are added in
// slice order; the col2im adds of a dx pixel come in the order of the (shape-only) column
// tiles and rows. Only the split into tasks (how many channel blocks, how big the dW
// tiles) follows the thread count, and no element's sum crosses that split.
//
// Small cases use a direct convolution instead (use_direct): one input channel per group
// (depthwise), fewer than 4 output channels per group or K < 16. Their GEMMs would have a
// dimension of 1 to 3 -- most of a 16 x 16 register tile wasted -- or a depth too short
// to pay for loading and storing the tile.
//
// Layout: the kernels read NCHW-contiguous activations (a channels_last x or dY is made
// contiguous first -- a copy, no arithmetic) and write the output through its strides, in
// its memory order, so the output may be NCHW or channels_last as the caller asks
// (pydl/ops/conv.py decides, following torch's rule). A channels_last weight is read in
// place: the GEMM paths then run the reduction K in tap-major order (kh, kw, c), which is
// its memory order (RowIter, tap_major_weight), and write a channels_last dW the same way.
#include "common.h"
#include "conv_common.h"
#include "cpu/gemm.h"
#include "cpu/simd.h"

#include <ATen/Parallel.h>
#if PYDL_GEMM_X86
#include <immintrin.h>
#endif
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

namespace pydl {
namespace {

using gemm::ceil_div;
using gemm::round_up;
using gemm::Strided2D;

constexpr int64_t kDepth = 256;    // depth chunk of one micro-kernel call (see above)
constexpr int64_t kColTile = 256;  // output columns (samples x positions) per task
constexpr int64_t kPackWeightCols = 64;        // input grad: pack W^T from this many tile columns
constexpr int64_t kSharedColMin = 1 << 16;     // forward: gather a tile once for all its blocks from here
constexpr int64_t kMaxSlices = 16;             // weight gradient: most partial sums of dW...
constexpr int64_t kSliceBudget = int64_t(1) << 22;  // ...and their most values in all (16 MiB of float)

// Output positions o in [lo, hi) whose input coordinate i = o*s - p + k*d lies in [0, L).
struct Range {
  int64_t lo, hi;
};
inline Range tap_range(int64_t L, int64_t O, int64_t s, int64_t p, int64_t off /* k*d */) {
  const int64_t t = p - off;  // need o*s >= t
  const int64_t lo = t <= 0 ? 0 : (t + s - 1) / s;
  const int64_t u = L - 1 + p - off;  // need o*s <= u
  const int64_t hi = u < 0 ? 0 : std::min(O, u / s + 1);
  return {lo, std::max(lo, hi)};
}

// ------------------------------------------------------------------------ column tiles
// A run of output positions in one output row: (oh, ow) for ow in [owa, owb), which are
// columns q, q+1, ... of each sample in the tile.
struct RowSeg {
  int64_t oh, owa, owb, q;
};

// A tile of columns of the column matrix: positions [p0, p0 + len) of the samples
// [n0, n0 + ns). Column s*len + q of the tile is position p0 + q of sample n0 + s.
// `rows` are those positions cut at output-row boundaries, computed once per tile for the
// loops that need (oh, ow) (tap_table, the forward's epilogue) -- without a division each.
struct ColTile {
  int64_t n0, ns, p0, len;
  std::vector<RowSeg> rows;
  int64_t cols() const { return ns * len; }
};

// The N*P columns cut into tiles of about `target` columns: a large sample is cut into
// equal pieces (a multiple of 16 columns, so B panels are full), small samples are
// grouped whole. Depends on the shapes only (the summation order depends on it).
std::vector<ColTile> col_tiles(int64_t N, int64_t P, int64_t OW, int64_t target) {
  std::vector<ColTile> tiles;
  if (P >= target) {
    const int64_t len = round_up(ceil_div(P, ceil_div(P, target)), 16);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t p0 = 0; p0 < P; p0 += len) tiles.push_back({n, 1, p0, std::min(len, P - p0), {}});
  } else {
    const int64_t per = target / P;
    for (int64_t n0 = 0; n0 < N; n0 += per) tiles.push_back({n0, std::min(per, N - n0), 0, P, {}});
  }
  for (ColTile& t : tiles)
    for (int64_t p = t.p0, end = t.p0 + t.len; p < end;) {
      const int64_t oh = p / OW, owa = p - oh * OW, owb = std::min(OW, end - oh * OW);
      t.rows.push_back({oh, owa, owb, p - t.p0});
      p = oh * OW + owb;
    }
  return tiles;
}

// Where each column of tile t reads x, per tap: tab[(kh*KW + kw) * t.cols() + j] is
// si * sample_stride + ih * W + iw for column j = (sample si, position (oh, ow)), or -1
// where (ih, iw) falls in the padding. Row k = (c, kh, kw) of the column matrix is then
// col(k, j) = x_c[tab[tap * cols + j]] with x_c the plane of channel c of the tile's
// first sample: one table serves every channel. Gathering through it costs the same
// per element whatever the stride, dilation, padding and map size -- unlike copying
// row segments, whose per-segment overhead dominates on 2x2 or 4x4 maps.
void tap_table(const ConvShape& s, const ColTile& t, int64_t sample_stride, std::vector<int64_t>& tab) {
  const int64_t cols = t.cols();
  tab.resize(s.KH * s.KW * cols);
  for (int64_t kh = 0; kh < s.KH; ++kh) {
    const Range rh = tap_range(s.H, s.OH, s.sh, s.ph, kh * s.dh);
    for (int64_t kw = 0; kw < s.KW; ++kw) {
      const Range rw = tap_range(s.W, s.OW, s.sw, s.pw, kw * s.dw);
      for (int64_t si = 0; si < t.ns; ++si)
        for (const RowSeg& r : t.rows) {
          int64_t* o = tab.data() + (kh * s.KW + kw) * cols + si * t.len + r.q;  // o[ow - owa]
          // inside the input for ow in [lo, hi) of this row (none if the row ih is outside)
          const bool row_in = r.oh >= rh.lo && r.oh < rh.hi;
          const int64_t lo = row_in ? std::clamp(rw.lo, r.owa, r.owb) : r.owb;
          const int64_t hi = row_in ? std::clamp(rw.hi, lo, r.owb) : r.owb;
          const int64_t base = si * sample_stride + (r.oh * s.sh - s.ph + kh * s.dh) * s.W - s.pw + kw * s.dw;
          for (int64_t ow = r.owa; ow < lo; ++ow) o[ow - r.owa] = -1;
          for (int64_t ow = lo; ow < hi; ++ow) o[ow - r.owa] = base + ow * s.sw;
          for (int64_t ow = hi; ow < r.owb; ++ow) o[ow - r.owa] = -1;
        }
    }
  }
}

// Steps row k of the column matrix, which is (c, kh, kw) -- the order of an NCHW weight's
// K values -- or, in tap-major order, (kh, kw, c) -- a channels_last weight's (then the
// kernels read that weight in place, and a channels_last dW is written in place). Cn: the
// channels the rows run over. No divisions per step.
struct RowIter {
  int64_t c, kh, kw, tap, KH, KW, Cn;
  bool tap_major;
  RowIter(int64_t k, int64_t KH_, int64_t KW_, int64_t Cn_, bool tap_major_)
      : c(tap_major_ ? k % Cn_ : k / (KH_ * KW_)), tap(tap_major_ ? k / Cn_ : k % (KH_ * KW_)), KH(KH_), KW(KW_),
        Cn(Cn_), tap_major(tap_major_) {
    kh = tap / KW;
    kw = tap % KW;
  }
  void next() {
    if (tap_major) {
      if (++c < Cn) return;
      c = 0;
    }
    ++tap;
    if (++kw == KW) {
      kw = 0;
      if (++kh == KH) kh = 0, tap = 0, ++c;  // (tap-major rows end before this wraps)
    }
  }
};

// One row of the column matrix through its tap's table row: col[j] = src[e[j]], 0 where
// e[j] < 0 (padding), for j < n, written in panels of `lanes` values `ps` apart:
// o[(j / lanes) * ps + j % lanes] (a contiguous row: lanes = ps = n). The gathers below
// spend most of their time here.
template <class T, class C>
void gather_run(const T* src, const int64_t* e, C* o, int64_t n, int64_t lanes, int64_t ps) {
  for (int64_t j0 = 0; j0 < n; j0 += lanes, o += ps)
    for (int64_t j = j0; j < std::min(n, j0 + lanes); ++j)
      o[j - j0] = e[j] < 0 ? C(0) : static_cast<C>(src[e[j]]);
}
#if PYDL_GEMM_X86
// The same with AVX-512 masked gathers, 8 values an instruction: the padding lanes are
// masked off (never read, so an index of -1 is harmless) and come out 0. About 3x the
// scalar loop's speed on data in L1 (0.19 against 0.56 ns a value on one Sapphire Rapids
// core); compilers do not turn the scalar loop into gathers by themselves.
template <class C>
__attribute__((target("avx512f"))) void gather_run_avx512(const C* src, const int64_t* e, C* o, int64_t n,
                                                          int64_t lanes, int64_t ps) {
  for (int64_t j0 = 0; j0 < n; j0 += lanes, o += ps) {  // panel by panel: no division per value
    const int64_t end = std::min(n, j0 + lanes);
    int64_t j = j0;
    for (; j + 8 <= end; j += 8) {
      const __m512i idx = _mm512_loadu_si512(e + j);
      const __mmask8 in = _mm512_cmpge_epi64_mask(idx, _mm512_setzero_si512());
      if constexpr (std::is_same_v<C, float>) {
        _mm256_storeu_ps(o + (j - j0), _mm512_mask_i64gather_ps(_mm256_setzero_ps(), in, idx, src, 4));
      } else {
        _mm512_storeu_pd(o + (j - j0), _mm512_mask_i64gather_pd(_mm512_setzero_pd(), in, idx, src, 8));
      }
    }
    for (; j < end; ++j) o[j - j0] = e[j] < 0 ? C(0) : src[e[j]];
  }
}
#endif

template <class T, class C>
using GatherFn = void (*)(const T*, const int64_t*, C*, int64_t, int64_t, int64_t);

// The AVX-512 gathers run where the GEMM runs AVX-512 (the same choice, under the same
// PYDL_CPU_GEMM cap).
template <class C>
bool avx512_gathers() {
  static const bool yes = std::string(gemm::micro_kernel<C>().isa) == "avx512";
  return yes;
}

// The row gather for this machine: the AVX-512 one where those run and the source needs
// no conversion, else the loop.
template <class T, class C>
GatherFn<T, C> row_gather() {
#if PYDL_GEMM_X86
  if constexpr (std::is_same_v<T, C>)
    if (avx512_gathers<C>()) return &gather_run_avx512<C>;
#endif
  return &gather_run<T, C>;
}

// im2col fused with packing, for the B operand of the forward: rows [k0, k0 + depth) of
// the tile's column matrix as panels of NR columns,
//   dst[q * ps + kk * nr + l] = col(k0 + kk, q * nr + l),   0 past the last column,
// with panel stride ps = depth * nr unless given; rows in tap-major order when asked
// (RowIter). xg is x[n0, g*Cg] (the tile's first sample, the group's first channel).
template <class T, class C>
void gather_col_lanes(const T* xg, const ConvShape& s, const std::vector<int64_t>& tab, int64_t cols,
                      int64_t k0, int64_t depth, int nr, C* dst, int64_t ps, bool tap_major) {
  const GatherFn<T, C> gather = row_gather<T, C>();
  if (ps == 0) ps = depth * nr;  // panel stride: a slice of longer panels when given
  RowIter k(k0, s.KH, s.KW, s.Cg(), tap_major);
  for (int64_t kk = 0; kk < depth; ++kk, k.next()) {
    gather(xg + k.c * s.H * s.W, tab.data() + k.tap * cols, dst + kk * nr, cols, nr, ps);
    if (cols % nr != 0) {  // the last panel's lanes past the last column
      C* o = dst + cols / nr * ps + kk * nr;
      for (int64_t l = cols % nr; l < nr; ++l) o[l] = C(0);
    }
  }
}

// The same for the weight gradient's B = col^T: rows [k0, k0 + rows) of the column matrix
// become the NR lanes of each panel, the tile's columns its depth,
//   dst[p * cols * nr + j * nr + l] = col(k0 + p * nr + l, j),   0 past the last row.
// A transpose, done lane by lane: one lane's row (its channel plane and tap table row in
// registers) is read along the columns and written with stride NR, in blocks of kBlock
// columns so the block of dst being filled stays in L1 while all the lanes pass over it
// (column by column, each value would cost two more loads: its lane's plane and table row).
template <class T, class C>
void gather_row_lanes(const T* xg, const ConvShape& s, const std::vector<int64_t>& tab, int64_t cols,
                      int64_t k0, int64_t rows, int nr, C* dst, bool tap_major) {
  constexpr int64_t kBlock = 64;
  RowIter k(k0, s.KH, s.KW, s.Cg(), tap_major);
  for (int64_t p = 0; p * nr < rows; ++p, dst += cols * nr) {
    const int64_t n = std::min<int64_t>(nr, rows - p * nr);
    const RowIter first = k;  // the panel's first lane
    for (int64_t j0 = 0; j0 < cols; j0 += kBlock) {
      const int64_t j1 = std::min(cols, j0 + kBlock);
      k = first;
      for (int64_t l = 0; l < n; ++l, k.next()) {
        const T* xc = xg + k.c * s.H * s.W;
        const int64_t* tr = tab.data() + k.tap * cols;
        for (int64_t j = j0; j < j1; ++j) dst[j * nr + l] = tr[j] < 0 ? C(0) : static_cast<C>(xc[tr[j]]);
      }
      for (int64_t l = n; l < nr; ++l)
        for (int64_t j = j0; j < j1; ++j) dst[j * nr + l] = C(0);
    }
  }
}

// The transpose of a row gather: a[e[j]] += in[j] where e[j] >= 0, for j < n. Within one
// row (one tap) no two columns read the same pixel, so the adds of a row never collide.
template <class C>
void scatter_add_run(C* a, const int64_t* e, const C* in, int64_t n) {
  for (int64_t j = 0; j < n; ++j)
    if (e[j] >= 0) a[e[j]] += in[j];
}
#if PYDL_GEMM_X86
// The same 8 columns at a time: masked gather of the 8 pixels, add, masked scatter back --
// correct only because the 8 indices of a row are distinct (see above).
template <class C>
__attribute__((target("avx512f"))) void scatter_add_run_avx512(C* a, const int64_t* e, const C* in, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m512i idx = _mm512_loadu_si512(e + j);
    const __mmask8 in_range = _mm512_cmpge_epi64_mask(idx, _mm512_setzero_si512());
    if constexpr (std::is_same_v<C, float>) {
      const __m256 v = _mm512_mask_i64gather_ps(_mm256_setzero_ps(), in_range, idx, a, 4);
      _mm512_mask_i64scatter_ps(a, in_range, idx, _mm256_add_ps(v, _mm256_loadu_ps(in + j)), 4);
    } else {
      const __m512d v = _mm512_mask_i64gather_pd(_mm512_setzero_pd(), in_range, idx, a, 8);
      _mm512_mask_i64scatter_pd(a, in_range, idx, _mm512_add_pd(v, _mm512_loadu_pd(in + j)), 8);
    }
  }
  scatter_add_run(a, e + j, in + j, n - j);
}
#endif

// The transpose of im2col for the rows of `nch` channels from c0 (dcol is nch*KH*KW x
// cols, row kk = (c0 + c, tap), or (tap, c0 + c) tap-major): adds each entry to the pixel
// it was read from. acc is [t.ns][nch][H][W], and tab was built with sample_stride =
// nch * H * W to match. Each pixel's adds come in row order, whichever form of the row
// add runs.
template <class C>
void col2im_add(const C* dcol, const ConvShape& s, int64_t nch, bool tap_major, int64_t cols,
                const std::vector<int64_t>& tab, C* acc) {
  const int64_t rows = nch * s.KH * s.KW;
  void (*add_row)(C*, const int64_t*, const C*, int64_t) = &scatter_add_run<C>;
#if PYDL_GEMM_X86
  if (avx512_gathers<C>()) add_row = &scatter_add_run_avx512<C>;
#endif
  const int64_t plane = s.H * s.W;
  RowIter k(0, s.KH, s.KW, nch, tap_major);
  for (int64_t kk = 0; kk < rows; ++kk, k.next())
    add_row(acc + k.c * plane, tab.data() + k.tap * cols, dcol + kk * cols, cols);
}

// A 1x1, stride-1 convolution without padding reads x as its own column matrix.
inline bool col_is_x(const ConvShape& s) {
  return s.KH == 1 && s.KW == 1 && s.sh == 1 && s.sw == 1 && s.ph == 0 && s.pw == 0 && s.OH == s.H &&
         s.OW == s.W;
}

// The view of a [N, channels, positions] tensor's rows [group's first channel + r] over
// the columns of tile t (rows `plane` apart, samples `channels * plane` apart).
template <class S>
Strided2D<S> rows_view(const S* base, int64_t channels, int64_t plane, int64_t first_channel,
                       const ColTile& t) {
  return {base + (t.n0 * channels + first_channel) * plane + t.p0, plane, channels * plane, t.len, t.ns};
}

// Enough tasks to keep every thread busy, with some slack for uneven tasks.
inline int64_t task_target() { return 2 * static_cast<int64_t>(at::get_num_threads()); }

// --------------------------------------------------------------------- direct kernels
// For depthwise-like convolutions (see the top of the file): one output plane per task,
// an inner loop over ow (the previous version of this file, kept for these cases). With a
// unit stride along W, a tap's rows are contiguous in x and in the output, and a plane's
// tap loops are csrc/cpu/conv_loops.h's, compiled per instruction set; other strides
// gather (the plain loops here, the same sums in the same order).
inline bool use_direct(const ConvShape& s) {
  return s.Cg() == 1 || s.OCg() < 4 || s.Cg() * s.KH * s.KW < 16;
}

// The weight gradient's partial sums per tap (see bwd_weight_direct).
constexpr int kDirectLanes = 8;

#define PYDL_SIMD_LOOPS "conv_loops.h"
#include "simd_copies.h"

template <class L, typename T>
void fwd_direct(const T* x, const T* w, const T* b, T* y, const ConvShape s, const Strides4 ys, bool relu) {
  using C = at::opmath_type<T>;
  const int64_t Cg = s.Cg(), OCg = s.OCg(), plane = s.OH * s.OW;
  at::parallel_for(0, s.N * s.OC, 1, [&](int64_t begin, int64_t end) {
    std::vector<C> acc(plane);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / s.OC, oc = task % s.OC, g = oc / OCg;
      std::fill(acc.begin(), acc.end(), C(0));
      for (int64_t c = 0; c < Cg; ++c) {
        const T* xp = x + ((n * s.C + g * Cg + c) * s.H) * s.W;
        const T* wp = w + (oc * Cg + c) * s.KH * s.KW;
        if (s.sw == 1) {
          L::template taps<false>(acc.data(), xp, wp, s);
          continue;
        }
        for (int64_t kh = 0; kh < s.KH; ++kh) {
          const Range rh = tap_range(s.H, s.OH, s.sh, s.ph, kh * s.dh);
          for (int64_t kw = 0; kw < s.KW; ++kw) {
            const Range rw = tap_range(s.W, s.OW, s.sw, s.pw, kw * s.dw);
            const C wv = static_cast<C>(wp[kh * s.KW + kw]);
            for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
              const int64_t row = (oh * s.sh - s.ph + kh * s.dh) * s.W - s.pw + kw * s.dw;
              C* a = acc.data() + oh * s.OW;
              for (int64_t ow = rw.lo; ow < rw.hi; ++ow) a[ow] += wv * static_cast<C>(xp[row + ow * s.sw]);
            }
          }
        }
      }
      const C bv = b ? static_cast<C>(b[oc]) : C(0);
      T* yp = y + n * ys.n + oc * ys.c;
      for (int64_t oh = 0; oh < s.OH; ++oh)
        for (int64_t ow = 0; ow < s.OW; ++ow) {
          C v = acc[oh * s.OW + ow] + bv;
          if (relu && v < C(0)) v = C(0);  // NaN stays NaN, as torch's relu
          yp[oh * ys.h + ow * ys.w] = static_cast<T>(v);
        }
    }
  });
}

template <class L, typename T>
void bwd_input_direct(const T* dy, const T* w, T* dx, const ConvShape s, const Strides4 xs) {
  using C = at::opmath_type<T>;
  const int64_t Cg = s.Cg(), OCg = s.OCg(), plane = s.H * s.W;
  at::parallel_for(0, s.N * s.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<C> acc(plane);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / s.C, ic = task % s.C, g = ic / Cg, c = ic % Cg;
      std::fill(acc.begin(), acc.end(), C(0));
      for (int64_t j = 0; j < OCg; ++j) {
        const int64_t oc = g * OCg + j;
        const T* gp = dy + (n * s.OC + oc) * s.OH * s.OW;
        const T* wp = w + (oc * Cg + c) * s.KH * s.KW;
        if (s.sw == 1) {
          L::template taps<true>(acc.data(), gp, wp, s);
          continue;
        }
        for (int64_t kh = 0; kh < s.KH; ++kh) {
          const Range rh = tap_range(s.H, s.OH, s.sh, s.ph, kh * s.dh);
          for (int64_t kw = 0; kw < s.KW; ++kw) {
            const Range rw = tap_range(s.W, s.OW, s.sw, s.pw, kw * s.dw);
            const C wv = static_cast<C>(wp[kh * s.KW + kw]);
            for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
              // the transpose of the forward's gather: scatter one dy row into one dx row
              const int64_t row = (oh * s.sh - s.ph + kh * s.dh) * s.W - s.pw + kw * s.dw;
              const T* g_row = gp + oh * s.OW;
              C* a = acc.data();
              for (int64_t ow = rw.lo; ow < rw.hi; ++ow) a[row + ow * s.sw] += wv * static_cast<C>(g_row[ow]);
            }
          }
        }
      }
      T* xp = dx + n * xs.n + ic * xs.c;
      for (int64_t h = 0; h < s.H; ++h)
        for (int64_t x = 0; x < s.W; ++x) xp[h * xs.h + x * xs.w] = static_cast<T>(acc[h * s.W + x]);
    }
  });
}

template <class L, typename T>
void bwd_weight_direct(const T* dy, const T* x, T* dw, const ConvShape s, const Strides4 wst) {
  using C = at::opmath_type<T>;
  const int64_t Cg = s.Cg(), OCg = s.OCg();
  at::parallel_for(0, s.OC * Cg, 1, [&](int64_t begin, int64_t end) {
    std::vector<C> dw_taps(s.KH * s.KW);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t oc = task / Cg, c = task % Cg, ic = (oc / OCg) * Cg + c;
      if (s.sw == 1) {
        L::bwd_weight_taps(dw_taps.data(), dy + oc * s.OH * s.OW, s.OC * s.OH * s.OW, x + ic * s.H * s.W,
                           s.C * s.H * s.W, s);
        for (int64_t kh = 0; kh < s.KH; ++kh)
          for (int64_t kw = 0; kw < s.KW; ++kw)
            dw[oc * wst.n + c * wst.c + kh * wst.h + kw * wst.w] = static_cast<T>(dw_taps[kh * s.KW + kw]);
        continue;
      }
      for (int64_t kh = 0; kh < s.KH; ++kh) {
        const Range rh = tap_range(s.H, s.OH, s.sh, s.ph, kh * s.dh);
        for (int64_t kw = 0; kw < s.KW; ++kw) {
          const Range rw = tap_range(s.W, s.OW, s.sw, s.pw, kw * s.dw);
          // kDirectLanes independent partial sums: a single running sum would be one long
          // dependency chain the compiler may not vectorize (float addition is not
          // associative); lanes j, j+kDirectLanes, ... form a SIMD-friendly pattern.
          C part[kDirectLanes] = {};
          C acc = 0;
          for (int64_t n = 0; n < s.N; ++n) {
            const T* gp = dy + (n * s.OC + oc) * s.OH * s.OW;
            const T* xp = x + (n * s.C + ic) * s.H * s.W;
            for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
              const int64_t row = (oh * s.sh - s.ph + kh * s.dh) * s.W - s.pw + kw * s.dw;
              const T* g_row = gp + oh * s.OW;
              int64_t ow = rw.lo;
              for (; ow + kDirectLanes <= rw.hi; ow += kDirectLanes)
                for (int j = 0; j < kDirectLanes; ++j)
                  part[j] += static_cast<C>(g_row[ow + j]) * static_cast<C>(xp[row + (ow + j) * s.sw]);
              for (; ow < rw.hi; ++ow) acc += static_cast<C>(g_row[ow]) * static_cast<C>(xp[row + ow * s.sw]);
            }
          }
          for (int j = 0; j < kDirectLanes; ++j) acc += part[j];
          dw[oc * wst.n + c * wst.c + kh * wst.h + kw * wst.w] = static_cast<T>(acc);
        }
      }
    }
  });
}

// A channels_last weight [OC, Cg, kH, kW] is, in memory, [OC][kH][kW][Cg]: a row-major
// OC x K matrix with K in tap-major order (RowIter), which the GEMM paths read in place
// instead of an NCHW copy per call (in a channels_last model every weight is so). When
// Cg, or kH x kW, is 1, both orders are one, and the NCHW view is used.
inline bool tap_major_weight(const at::Tensor& w) {
  return w.is_contiguous(at::MemoryFormat::ChannelsLast) && !w.is_contiguous();
}

// ------------------------------------------------------------------------------ forward
template <typename T>
void fwd_gemm(const T* x, const T* w, const T* b, T* y, const ConvShape s, const Strides4 ys, bool relu,
              bool tap_major) {
  using C = at::opmath_type<T>;
  const int64_t G = s.groups, Cg = s.Cg(), OCg = s.OCg(), KK = s.KH * s.KW, K = Cg * KK;
  const int64_t P = s.OH * s.OW, plane = s.H * s.W;
  const std::vector<ColTile> tiles = col_tiles(s.N, P, s.OW, kColTile);
  const auto& uk = gemm::micro_kernel_for<C>(OCg, tiles.front().cols());  // C: channels x a tile
  const int64_t mr = uk.mr, nr = uk.nr;

  // A = W[g] (OCg x K), read in place as a row-major matrix -- K in tap-major order for a
  // channels_last weight, and the column matrix's rows in the same order; a 16-bit weight
  // is converted to C once.
  const C* wc = nullptr;
  std::unique_ptr<C[]> wconv;
  if constexpr (std::is_same_v<T, C>) {
    wc = w;
  } else {
    wconv.reset(new C[s.OC * K]);
    at::parallel_for(0, s.OC, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin * K; i < end * K; ++i) wconv[i] = static_cast<C>(w[i]);
    });
    wc = wconv.get();
  }

  // Tasks: (group, column tile, block of output channels). Blocks of channels only when
  // groups x tiles alone are too few tasks (the small maps of late layers: one or two
  // tiles); then the blocks share their tile's column matrix, gathered once, by all
  // threads, before they multiply -- each block gathering it for itself would do the
  // gather (as long as the GEMM on a 3x3 layer) once per block.
  const int64_t ntiles = tiles.size(), mpanels = ceil_div(OCg, mr);
  const int64_t nblocks = std::clamp<int64_t>(ceil_div(task_target(), G * ntiles), 1, mpanels);
  const int64_t block_rows = ceil_div(mpanels, nblocks) * mr;
  const bool direct_col = col_is_x(s);

  // rows [k0, k0 + kc) of tile t's column matrix (group g) as B panels, ps apart
  auto gather_b = [&](int64_t g, const ColTile& t, const std::vector<int64_t>& tab, int64_t k0, int64_t kc,
                      C* dst, int64_t ps) {
    if (direct_col) {
      gemm::pack_col_lanes(rows_view(x, s.C, P, g * Cg, t), k0, kc, nr, dst, ps);
    } else {
      gather_col_lanes(x + (t.n0 * s.C + g * Cg) * plane, s, tab, t.cols(), k0, kc, nr, dst, ps, tap_major);
    }
  };
  // y[rows m0.., tile t] = W[g] rows * col, depth chunk by chunk; bpanels(k0) are the B
  // panels of the chunk at k0, ps apart
  auto multiply = [&](int64_t g, const ColTile& t, int64_t m0, int64_t rows, auto&& bpanels, int64_t ps,
                      std::vector<C>& acc) {
    const int64_t cols = t.cols();
    acc.assign(rows * cols, C(0));
    for (int64_t k0 = 0; k0 < K; k0 += kDepth) {
      const int64_t kc = std::min(kDepth, K - k0);
      const gemm::OperandA<C> A{wc + (g * OCg + m0) * K + k0, K, /*row_major=*/true};
      gemm::gemm(uk, rows, cols, kc, A, bpanels(k0, kc), ps ? ps : kc * nr, acc.data(), cols);
    }
    // epilogue: bias, ReLU, one rounding to T, stored through y's strides -- in the order
    // of y's memory: along the pixels of each channel (NCHW), or along the channels of each
    // pixel when they are adjacent (channels_last; by channel, each store would touch
    // another cache line, and each line would be written once per channel)
    auto out = [&](int64_t i, int64_t col) {
      C v = acc[i * cols + col] + (b ? static_cast<C>(b[g * OCg + m0 + i]) : C(0));
      if (relu && v < C(0)) v = C(0);  // NaN stays NaN, as torch's relu
      return static_cast<T>(v);
    };
    for (int64_t si = 0; si < t.ns; ++si) {
      T* yp = y + (t.n0 + si) * ys.n + (g * OCg + m0) * ys.c;
      for (const RowSeg& r : t.rows) {
        const int64_t col0 = si * t.len + r.q - r.owa;  // the column of (r.oh, ow) is col0 + ow
        T* yr = yp + r.oh * ys.h;
        if (ys.c == 1) {
          for (int64_t ow = r.owa; ow < r.owb; ++ow)
            for (int64_t i = 0; i < rows; ++i) yr[ow * ys.w + i] = out(i, col0 + ow);
        } else {
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t ow = r.owa; ow < r.owb; ++ow) yr[i * ys.c + ow * ys.w] = out(i, col0 + ow);
        }
      }
    }
  };

  if (nblocks == 1 || K * tiles.front().cols() < kSharedColMin) {
    // a task per (group, tile, block), gathering its columns chunk by chunk (a small
    // gather done once per block costs less than two more parallel regions)
    at::parallel_for(0, G * ntiles * nblocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> tab;
      std::vector<C> bpack, acc;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t g = task / (ntiles * nblocks), bi = task % nblocks, m0 = bi * block_rows;
        const ColTile& t = tiles[task / nblocks % ntiles];
        if (m0 >= OCg) continue;
        if (!direct_col) tap_table(s, t, s.C * plane, tab);
        bpack.resize(round_up(t.cols(), nr) * std::min(kDepth, K));
        auto chunk = [&](int64_t k0, int64_t kc) {
          gather_b(g, t, tab, k0, kc, bpack.data(), 0);
          return bpack.data();
        };
        multiply(g, t, m0, std::min(OCg, m0 + block_rows) - m0, chunk, 0, acc);
      }
    });
    return;
  }
  // few tiles: per tile, all threads gather its whole column matrix (B panels over all
  // of K, ps = K * nr apart), then all multiply, a block of output channels each
  std::vector<int64_t> tab;
  std::vector<C> bfull;
  for (int64_t gt = 0; gt < G * ntiles; ++gt) {
    const int64_t g = gt / ntiles;
    const ColTile& t = tiles[gt % ntiles];
    if (!direct_col) tap_table(s, t, s.C * plane, tab);
    const int64_t ps = K * nr;
    bfull.resize(round_up(t.cols(), nr) * K);
    at::parallel_for(0, ceil_div(K, kDepth), 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c)
        gather_b(g, t, tab, c * kDepth, std::min(kDepth, K - c * kDepth), bfull.data() + c * kDepth * nr, ps);
    });
    at::parallel_for(0, nblocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<C> acc;
      for (int64_t bi = begin; bi < end; ++bi) {
        const int64_t m0 = bi * block_rows;
        if (m0 >= OCg) continue;
        auto chunk = [&](int64_t k0, int64_t) { return bfull.data() + k0 * nr; };
        multiply(g, t, m0, std::min(OCg, m0 + block_rows) - m0, chunk, ps, acc);
      }
    });
  }
}

at::Tensor conv2d_fwd(const at::Tensor& x_in, const at::Tensor& w_in, const std::optional<at::Tensor>& b_in,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                      int64_t groups, c10::string_view act, bool channels_last) {
  const bool relu = check_fwd_args(x_in, w_in, b_in, stride, padding, dilation, groups, act);
  const bool has_b = b_in.has_value() && b_in->defined();
  const auto [OH, OW] = conv_out_size(x_in.sizes(), w_in.sizes(), stride, padding, dilation);
  at::Tensor x = x_in.contiguous();
  at::Tensor b = has_b ? b_in->contiguous() : at::Tensor();
  at::Tensor y = conv_alloc4({x.size(0), w_in.size(0), OH, OW}, x.options(), channels_last);
  if (y.numel() == 0) return y;
  const ConvShape s = make_shape(x.sizes(), w_in.sizes(), y.sizes(), stride, padding, dilation, groups);
  const bool direct = use_direct(s), w_cl = !direct && tap_major_weight(w_in);
  at::Tensor w = w_cl ? w_in : w_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pydl_conv2d_fwd", [&] {
    const scalar_t* bp = has_b ? b.const_data_ptr<scalar_t>() : nullptr;
    if (direct) {
      with_cpu_simd([&](auto loops) {
        fwd_direct<decltype(loops)>(x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bp,
                                    y.mutable_data_ptr<scalar_t>(), s, strides_of(y), relu);
      });
    } else {
      fwd_gemm(x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bp, y.mutable_data_ptr<scalar_t>(), s,
               strides_of(y), relu, w_cl);
    }
  });
  return y;
}

// --------------------------------------------------------------------------- input grad
template <typename T>
void bwd_input_gemm(const T* dy, const T* w, T* dx, const ConvShape s, const Strides4 xs, bool tap_major) {
  using C = at::opmath_type<T>;
  const int64_t G = s.groups, Cg = s.Cg(), OCg = s.OCg(), KK = s.KH * s.KW, K = Cg * KK;
  const int64_t P = s.OH * s.OW, plane = s.H * s.W;
  const std::vector<ColTile> tiles = col_tiles(s.N, P, s.OW, kColTile);
  const auto& uk = gemm::micro_kernel_for<C>(K, tiles.front().cols());  // C: col rows x a tile
  const int64_t mr = uk.mr, nr = uk.nr;

  // A = W[g]^T (K x OCg): W[g] is W^T stored column-major (MR consecutive rows of W^T at
  // depth step d are MR consecutive values of W's row d). With many output columns it is
  // packed once into panels of MR rows (c, kh, kw) over the depth OCg -- contiguous streams,
  // reused by every B panel; the columns of W[g] become the lanes, 16 rows of W at a time,
  // so W is read row by row. With few (small maps), it is read in place, K values between
  // steps: each weight value then serves one or two B panels, and the transposing copy of
  // all of W would cost as much as the GEMM (on ResNet's 2x2 layers at batch 4, 9 MB per
  // call). A 16-bit weight is always packed (converted to C on the way).
  // A channels_last weight (tap_major) has a channel block's rows (tap, c) apart in K: each
  // task packs its own block's panels instead (see below).
  const C* w_in_place = nullptr;
  if constexpr (std::is_same_v<T, C>)
    if (!tap_major && tiles.front().cols() < kPackWeightCols) w_in_place = w;
  const int64_t kpanels = ceil_div(K, mr), a_ps = OCg * mr, dblocks = ceil_div(OCg, 16);
  const bool pack_all = !w_in_place && !tap_major;
  std::unique_ptr<C[]> wpack(pack_all ? new C[G * kpanels * a_ps] : nullptr);  // every entry is written
  if (pack_all) {
    at::parallel_for(0, G * dblocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t g = i / dblocks, d0 = i % dblocks * 16;
        gemm::pack_col_lanes(Strided2D<T>{w + g * OCg * K, K, 0, K, 1}, d0, std::min<int64_t>(16, OCg - d0), mr,
                             wpack.get() + g * kpanels * a_ps + d0 * mr, a_ps);
      }
    });
  }

  // Tasks: (group, sample set, block of input channels). A sample set is one tile of
  // whole samples, or all the tiles of one large sample (done in order by one task).
  std::vector<int64_t> set_begin;  // the first tile of each sample set
  for (int64_t i = 0; i < static_cast<int64_t>(tiles.size()); ++i)
    if (tiles[i].p0 == 0) set_begin.push_back(i);
  set_begin.push_back(tiles.size());
  const int64_t nsets = set_begin.size() - 1;
  // Channel blocks start on a panel boundary: a multiple of MR / gcd(KK, MR) channels.
  // At most ~2048 rows each, which bounds the dcol scratch.
  const int64_t step = mr / std::gcd(KK, mr);
  int64_t nblocks = std::clamp<int64_t>(ceil_div(task_target(), G * nsets), 1, ceil_div(Cg, step));
  nblocks = std::max(nblocks, ceil_div(K, 2048));
  const int64_t block_ch = round_up(ceil_div(Cg, nblocks), step);

  at::parallel_for(0, G * nsets * nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> tab;
    std::vector<C> bpack, dcol, acc, tpack;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / (nsets * nblocks), si = task / nblocks % nsets, bi = task % nblocks;
      const int64_t c0 = bi * block_ch;
      if (c0 >= Cg) continue;
      const int64_t nch = std::min(Cg, c0 + block_ch) - c0, rows = nch * KK;
      const ColTile& first = tiles[set_begin[si]];
      acc.assign(first.ns * nch * plane, C(0));  // dx of the task: [samples][nch][H][W]
      if (tap_major) {  // the block's rows of W^T, (tap, c0 + c): KK runs of nch values Cg apart in W's rows
        tpack.resize(ceil_div(rows, mr) * a_ps);
        gemm::pack_col_lanes(Strided2D<T>{w + g * OCg * K + c0, K, Cg, nch, KK}, 0, OCg, mr, tpack.data(), a_ps);
      }
      // the block's rows of W^T (from row c0 * KK, a panel boundary, of W^T or of wpack; the
      // whole of tpack); Ad below: from depth step o0 on
      const gemm::OperandA<C> A =
          tap_major    ? gemm::OperandA<C>{tpack.data(), a_ps, false}
          : w_in_place ? gemm::OperandA<C>{w_in_place + g * OCg * K + c0 * KK, mr, false, K}
                       : gemm::OperandA<C>{wpack.get() + (g * kpanels + c0 * KK / mr) * a_ps, a_ps, false};
      for (int64_t ti = set_begin[si]; ti < set_begin[si + 1]; ++ti) {
        const ColTile& t = tiles[ti];
        const int64_t cols = t.cols();
        dcol.assign(rows * cols, C(0));
        bpack.resize(round_up(cols, nr) * std::min(kDepth, OCg));
        for (int64_t o0 = 0; o0 < OCg; o0 += kDepth) {
          const int64_t oc = std::min(kDepth, OCg - o0);
          gemm::pack_col_lanes(rows_view(dy, s.OC, P, g * OCg, t), o0, oc, nr, bpack.data());
          const gemm::OperandA<C> Ad{A.p + o0 * (w_in_place ? K : mr), A.ld, false, A.step};
          gemm::gemm(uk, rows, cols, oc, Ad, bpack.data(), oc * nr, dcol.data(), cols);
        }
        tap_table(s, t, nch * plane, tab);
        col2im_add(dcol.data(), s, nch, tap_major, cols, tab, acc.data());
      }
      // dx of the task, in the order of dx's memory (as the forward's epilogue)
      for (int64_t sn = 0; sn < first.ns; ++sn) {
        T* xp = dx + (first.n0 + sn) * xs.n + (g * Cg + c0) * xs.c;
        const C* a = acc.data() + sn * nch * plane;
        if (xs.c == 1) {
          for (int64_t h = 0; h < s.H; ++h)
            for (int64_t x = 0; x < s.W; ++x)
              for (int64_t c = 0; c < nch; ++c) xp[h * xs.h + x * xs.w + c] = static_cast<T>(a[c * plane + h * s.W + x]);
        } else {
          for (int64_t c = 0; c < nch; ++c)
            for (int64_t h = 0; h < s.H; ++h)
              for (int64_t x = 0; x < s.W; ++x)
                xp[c * xs.c + h * xs.h + x * xs.w] = static_cast<T>(a[c * plane + h * s.W + x]);
        }
      }
    }
  });
}

at::Tensor conv2d_bwd_input(const at::Tensor& grad_in, const at::Tensor& w_in, at::IntArrayRef input_size,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                            int64_t groups, bool channels_last) {
  check_bwd_input_args(grad_in, w_in, input_size, stride, padding, dilation, groups);
  at::Tensor dy = grad_in.contiguous();
  at::Tensor dx = conv_alloc4(input_size, dy.options(), channels_last);
  if (dx.numel() == 0) return dx;
  const ConvShape s = make_shape(input_size, w_in.sizes(), dy.sizes(), stride, padding, dilation, groups);
  const bool direct = use_direct(s), w_cl = !direct && tap_major_weight(w_in);
  at::Tensor w = w_cl ? w_in : w_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "pydl_conv2d_bwd_input", [&] {
    if (direct) {
      with_cpu_simd([&](auto loops) {
        bwd_input_direct<decltype(loops)>(dy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                          dx.mutable_data_ptr<scalar_t>(), s, strides_of(dx));
      });
    } else {
      bwd_input_gemm(dy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(),
                     s, strides_of(dx), w_cl);
    }
  });
  return dx;
}

// -------------------------------------------------------------------------- weight grad
template <typename T>
void bwd_weight_gemm(const T* dy, const T* x, T* dw, const ConvShape s, const Strides4 wst, bool tap_major) {
  using C = at::opmath_type<T>;
  const int64_t G = s.groups, Cg = s.Cg(), OCg = s.OCg(), KK = s.KH * s.KW, K = Cg * KK;
  const auto& uk = gemm::micro_kernel_for<C>(OCg, std::min<int64_t>(K, 256));  // C: channels x a block of K
  const int64_t mr = uk.mr, nr = uk.nr;
  const int64_t P = s.OH * s.OW, plane = s.H * s.W;

  // The depth (all samples and positions) in fixed chunks: the summation order.
  const std::vector<ColTile> chunks = col_tiles(s.N, P, s.OW, kDepth);
  const int64_t nchunks = chunks.size();
  // Split-K by slices: consecutive chunks whose sums go to a partial dW of their own,
  // added slice by slice at the end. Their number depends on the shapes only (one chunk
  // each, at most kMaxSlices, partials within kSliceBudget values), so the summation order
  // does not depend on the threads. Without it, the only parallelism is tiling dW, and every
  // tile packs dY and builds the tap tables for every chunk again (the stem at batch 4: dW
  // 64 x 147, 16 chunks, cut into 4 tiles for 2 threads).
  const int64_t dw_size = G * OCg * K;
  // (An empty batch has no chunks: one slice of none, and dW is zeros.)
  const int64_t nslices = std::clamp<int64_t>(kSliceBudget / std::max<int64_t>(dw_size, 1), 1,
                                              std::clamp<int64_t>(nchunks, 1, kMaxSlices));
  const int64_t per_slice = std::max<int64_t>(1, ceil_div(nchunks, nslices));
  const int64_t slices = std::max<int64_t>(1, ceil_div(nchunks, per_slice));
  // Tasks: (slice, group, block of output channels, block of K), a tile of a partial dW
  // each. Tiles of up to ~256 x 256: the B operand, gathered per tile, is shared by all its
  // rows, so the output channels are cut into as few equal blocks as that allows (every
  // block gathers x again); made smaller when there are too few tiles for the threads.
  int64_t mt = round_up(ceil_div(OCg, ceil_div(OCg, 256)), mr);
  int64_t kt = std::min(round_up(K, nr), std::max<int64_t>(nr, 256 / nr * nr));
  auto ntasks = [&] { return slices * G * ceil_div(OCg, mt) * ceil_div(K, kt); };
  while (ntasks() < task_target() && (kt > nr || mt > mr)) {
    if (kt > nr) kt = round_up(kt / 2, nr);
    else mt = round_up(mt / 2, mr);
  }
  const int64_t mblocks = ceil_div(OCg, mt), kblocks = ceil_div(K, kt);
  const bool direct_col = col_is_x(s);
  // the partial dW of every slice after the first, [slices - 1][G * OCg][K]; the first
  // slice's tiles stay in their task's accumulator until the end
  std::unique_ptr<C[]> part(slices > 1 ? new C[(slices - 1) * dw_size] : nullptr);

  // dW row (g, oc) over k in [k0, k0 + kn) from `a`: contiguous when K's order is dW's
  // memory order -- (c, kh, kw) for an NCHW dW, tap-major (kh, kw, c) for a channels_last
  // one, which this call then runs (tap_major) -- else through its strides, k stepped
  // without divisions
  const bool k_order = tap_major ? wst.c == 1 && wst.w == Cg && wst.h == s.KW * Cg
                                 : wst.w == 1 && wst.h == s.KW && wst.c == KK;
  auto store_row = [&](int64_t oc, int64_t k0, int64_t kn, const C* a) {
    T* out = dw + oc * wst.n;
    if (k_order) {
      for (int64_t j = 0; j < kn; ++j) out[k0 + j] = static_cast<T>(a[j]);
      return;
    }
    RowIter k(k0, s.KH, s.KW, Cg, tap_major);
    for (int64_t j = 0; j < kn; ++j, k.next()) out[k.c * wst.c + k.kh * wst.h + k.kw * wst.w] = static_cast<T>(a[j]);
  };

  const int64_t tiles_per_slice = G * mblocks * kblocks;
  // the first slice's tiles, kept for the final sum (slices > 1)
  std::vector<std::vector<C>> first(slices > 1 ? tiles_per_slice : 0);
  at::parallel_for(0, slices * tiles_per_slice, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> tab;
    std::vector<C> apack, bpack, acc;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t sl = task / tiles_per_slice, tile = task % tiles_per_slice;
      const int64_t g = tile / (mblocks * kblocks), mi = tile / kblocks % mblocks, ki = tile % kblocks;
      const int64_t m0 = mi * mt, rows = std::min(mt, OCg - m0), k0 = ki * kt, kn = std::min(kt, K - k0);
      std::vector<C>& out = slices > 1 && sl == 0 ? first[tile] : acc;
      out.assign(rows * kn, C(0));
      for (int64_t ci = sl * per_slice; ci < std::min(nchunks, (sl + 1) * per_slice); ++ci) {
        const ColTile& t = chunks[ci];
        const int64_t depth = t.cols();
        apack.resize(round_up(rows, mr) * depth);
        bpack.resize(round_up(kn, nr) * depth);
        gemm::pack_row_lanes(rows_view(dy, s.OC, P, g * OCg, t), m0, rows, mr, apack.data());
        if (direct_col) {
          gemm::pack_row_lanes(rows_view(x, s.C, P, g * Cg, t), k0, kn, nr, bpack.data());
        } else {
          tap_table(s, t, s.C * plane, tab);
          gather_row_lanes(x + (t.n0 * s.C + g * Cg) * plane, s, tab, depth, k0, kn, nr, bpack.data(), tap_major);
        }
        gemm::gemm(uk, rows, kn, depth, gemm::OperandA<C>{apack.data(), depth * mr, false}, bpack.data(),
                   depth * nr, out.data(), kn);
      }
      if (slices == 1) {
        for (int64_t i = 0; i < rows; ++i) store_row(g * OCg + m0 + i, k0, kn, out.data() + i * kn);
      } else if (sl > 0) {
        C* dst = part.get() + (sl - 1) * dw_size + (g * OCg + m0) * K + k0;
        for (int64_t i = 0; i < rows; ++i) std::copy_n(out.data() + i * kn, kn, dst + i * K);
      }
    }
  });
  if (slices == 1) return;
  // dW = slice 0 + slice 1 + ... in this order, tile by tile of slice 0's layout
  at::parallel_for(0, tiles_per_slice, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t g = tile / (mblocks * kblocks), mi = tile / kblocks % mblocks, ki = tile % kblocks;
      const int64_t m0 = mi * mt, rows = std::min(mt, OCg - m0), k0 = ki * kt, kn = std::min(kt, K - k0);
      std::vector<C>& sum = first[tile];
      for (int64_t sl = 1; sl < slices; ++sl) {
        const C* src = part.get() + (sl - 1) * dw_size + (g * OCg + m0) * K + k0;
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t j = 0; j < kn; ++j) sum[i * kn + j] += src[i * K + j];
      }
      for (int64_t i = 0; i < rows; ++i) store_row(g * OCg + m0 + i, k0, kn, sum.data() + i * kn);
    }
  });
}

at::Tensor conv2d_bwd_weight(const at::Tensor& grad_in, const at::Tensor& x_in, at::IntArrayRef weight_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             int64_t groups, bool channels_last) {
  check_bwd_weight_args(grad_in, x_in, weight_size, stride, padding, dilation, groups);
  at::Tensor dy = grad_in.contiguous(), x = x_in.contiguous();
  at::Tensor dw = conv_alloc4(weight_size, dy.options(), channels_last);
  if (dw.numel() == 0) return dw;
  const ConvShape s = make_shape(x.sizes(), weight_size, dy.sizes(), stride, padding, dilation, groups);
  // a channels_last dW is computed with K tap-major, its memory order (tap_major_weight)
  const bool direct = use_direct(s), dw_cl = !direct && tap_major_weight(dw);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "pydl_conv2d_bwd_weight", [&] {
    if (direct) {
      with_cpu_simd([&](auto loops) {
        bwd_weight_direct<decltype(loops)>(dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                           dw.mutable_data_ptr<scalar_t>(), s, strides_of(dw));
      });
    } else {
      bwd_weight_gemm(dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), dw.mutable_data_ptr<scalar_t>(),
                      s, strides_of(dw), dw_cl);
    }
  });
  return dw;
}

// ---------------------------------------------------------------------------- bias grad
at::Tensor conv2d_bwd_bias(const at::Tensor& grad_in) {
  check_floating(grad_in, "grad_output");
  PYDL_CHECK(grad_in.dim() == 4, "grad_output must be 4-D, got ", grad_in.dim(), "-D");
  at::Tensor dy = grad_in.contiguous();
  const int64_t N = dy.size(0), OC = dy.size(1), plane = dy.size(2) * dy.size(3);
  at::Tensor db = at::empty({OC}, dy.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "pydl_conv2d_bwd_bias", [&] {
    using C = at::opmath_type<scalar_t>;
    const scalar_t* gp = dy.const_data_ptr<scalar_t>();
    scalar_t* out = db.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, OC, 1, [&](int64_t begin, int64_t end) {
      for (int64_t oc = begin; oc < end; ++oc) {
        C acc = 0;
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t* p = gp + (n * OC + oc) * plane;
          for (int64_t i = 0; i < plane; ++i) acc += static_cast<C>(p[i]);
        }
        out[oc] = static_cast<scalar_t>(acc);
      }
    });
  });
  return db;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydl, CPU, m) {
  m.impl("conv2d_fwd", &conv2d_fwd);
  m.impl("conv2d_bwd_input", &conv2d_bwd_input);
  m.impl("conv2d_bwd_weight", &conv2d_bwd_weight);
  m.impl("conv2d_bwd_bias", &conv2d_bwd_bias);
}

}  // namespace pydl

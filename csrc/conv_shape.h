// The geometry of one 2-D convolution, shared by the CPU kernels (csrc/cpu/conv.cpp)
// and the CUDA launchers (csrc/cuda/conv_kernel.*). Plain C++, no torch headers.
//
//   y[n, oc, oh, ow] = b[oc] + sum_{c < Cg, kh < KH, kw < KW}
//                      x[n, g*Cg + c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw] * w[oc, c, kh, kw]
//   with g = oc / OCg, Cg = C / groups, OCg = OC / groups, and x read as 0 outside
//   [0, H) x [0, W) (zero padding). ph/pw are the padding on the top/left; the padding
//   on the bottom/right only shows through OH/OW (it may differ: padding='same' with an
//   even kernel pads one more on the bottom/right, as torch does).
//
// Strides are in elements, so one struct describes NCHW and channels_last tensors alike.
// The members are constexpr so the CUDA kernels can call them (--expt-relaxed-constexpr).
#pragma once

#include <cstdint>

namespace pydl {

struct ConvShape {
  int64_t N, C, H, W;       // input
  int64_t OC, KH, KW;       // weight [OC, C/groups, KH, KW]
  int64_t OH, OW;           // output
  int64_t sh, sw, ph, pw, dh, dw, groups;
  constexpr int64_t Cg() const { return C / groups; }
  constexpr int64_t OCg() const { return OC / groups; }
};

// Element strides of a 4-D tensor (n, c, h, w order whatever the memory order is).
struct Strides4 {
  int64_t n, c, h, w;
};

}  // namespace pydl

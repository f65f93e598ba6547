#pragma once
// Convolution vectorized across channels: the general path (any stride), and grad_weight when
// few input channels leave a channels-last product no full vector.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "../shape_checks.h"
#include "conv2d_common.h"
#include "micro_gemm.h"
#include "parallel.h"
#include "scratch.h"
#include "simd.h"

namespace lenetx::cpu::LENETX_ISA {

// Channel block width: the vector the kernels accumulate in.
inline int channel_block(int64_t channels) { return channels <= 8 ? 8 : channels <= 16 ? 16 : 32; }
// Weights as [group][out block][in channel][kh][kw][out lane], zero-padded past out_channels.
template <typename T>
Scratch<T> pack_weight_by_output(const T* w, const Conv2dShape& s, int block) {
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t taps = s.kernel_h * s.kernel_w, nblocks = blocks_of(ocg, block);
  Scratch<T> packed(s.groups * nblocks * icg * taps * block, T(0));
  for (int64_t oc = 0; oc < s.out_channels; ++oc) {
    const int64_t g = oc / ocg, b = oc % ocg / block, lane = oc % ocg % block;
    for (int64_t ic = 0; ic < icg; ++ic)
      for (int64_t t = 0; t < taps; ++t)
        packed[(((g * nblocks + b) * icg + ic) * taps + t) * block + lane] = w[(oc * icg + ic) * taps + t];
  }
  return packed;
}

// Weights as [group][in block][out channel][kh][kw][in lane], zero-padded past in_channels.
template <typename T>
Scratch<T> pack_weight_by_input(const T* w, const Conv2dShape& s, int block) {
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t taps = s.kernel_h * s.kernel_w, nblocks = blocks_of(icg, block);
  Scratch<T> packed(s.groups * nblocks * ocg * taps * block, T(0));
  for (int64_t oc = 0; oc < s.out_channels; ++oc) {
    const int64_t g = oc / ocg, o = oc % ocg;
    for (int64_t ic = 0; ic < icg; ++ic)
      for (int64_t t = 0; t < taps; ++t)
        packed[(((g * nblocks + ic / block) * ocg + o) * taps + t) * block + ic % block] =
            w[(oc * icg + ic) * taps + t];
  }
  return packed;
}
// One output row (image n, row oh) for a block of B output channels, PW pixels at a time.
template <typename T, int B, int PW>
void forward_row(const T* __restrict input, const T* __restrict packed,
                 const T* bias, T* __restrict output, int64_t oh,
                 int64_t channels, const Conv2dShape& s) {
  const int64_t icg = s.in_channels_per_group(), taps = s.kernel_h * s.kernel_w;
  const int64_t out_plane = s.out_h * s.out_w, in_plane = s.in_h * s.in_w;
  for (int64_t ow0 = 0; ow0 < s.out_w; ow0 += PW) {
    // Every tap of every pixel of the tile inside the row: no bounds checks needed.
    const bool interior = ow0 * s.stride_w - s.pad_w >= 0 &&
                          (ow0 + PW - 1) * s.stride_w - s.pad_w + (s.kernel_w - 1) * s.dilation_w < s.in_w;
    T acc[PW][B];
    for (int p = 0; p < PW; ++p)
#pragma omp simd
      for (int c = 0; c < B; ++c) acc[p][c] = (bias && c < channels) ? bias[c] : T(0);
    for (int64_t ic = 0; ic < icg; ++ic) {
      const T* in = input + ic * in_plane;
      for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
        const int64_t ih = oh * s.stride_h - s.pad_h + kh * s.dilation_h;
        if (ih < 0 || ih >= s.in_h) continue;
        const T* in_row = in + ih * s.in_w;
        const T* w = packed + (ic * taps + kh * s.kernel_w) * B;
        for (int64_t kw = 0; kw < s.kernel_w; ++kw, w += B) {
          const int64_t iw0 = ow0 * s.stride_w - s.pad_w + kw * s.dilation_w;
          if (interior) {
            for (int p = 0; p < PW; ++p) {
              const T v = in_row[iw0 + p * s.stride_w];
#pragma omp simd
              for (int c = 0; c < B; ++c) acc[p][c] += v * w[c];
            }
          } else {
            // Outside the input nothing is added (a zero times an infinite weight would be NaN).
            for (int p = 0; p < PW; ++p) {
              const int64_t iw = iw0 + p * s.stride_w;
              if (iw < 0 || iw >= s.in_w) continue;
              const T v = in_row[iw];
#pragma omp simd
              for (int c = 0; c < B; ++c) acc[p][c] += v * w[c];
            }
          }
        }
      }
    }
    const int pixels = static_cast<int>(std::min<int64_t>(PW, s.out_w - ow0));
    for (int64_t c = 0; c < channels; ++c)
      for (int p = 0; p < pixels; ++p) output[c * out_plane + oh * s.out_w + ow0 + p] = acc[p][c];
  }
}

// One grad_input row (image n, row ih) for a block of B input channels: the forward's gather
// read backwards, each input pixel collecting the outputs its taps fed.
template <typename T, int B, int PW>
void grad_input_row(const T* __restrict grad_output, const T* __restrict packed,
                    T* __restrict grad_input, int64_t ih, int64_t channels,
                    const Conv2dShape& s) {
  const int64_t ocg = s.out_channels_per_group(), taps = s.kernel_h * s.kernel_w;
  const int64_t out_plane = s.out_h * s.out_w, in_plane = s.in_h * s.in_w;
  for (int64_t iw0 = 0; iw0 < s.in_w; iw0 += PW) {
    T acc[PW][B] = {};
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      const int64_t t = ih + s.pad_h - kh * s.dilation_h;
      if (t < 0 || t % s.stride_h != 0 || t / s.stride_h >= s.out_h) continue;
      const int64_t oh = t / s.stride_h;
      for (int64_t oc = 0; oc < ocg; ++oc) {
        const T* go_row = grad_output + oc * out_plane + oh * s.out_w;
        const T* w = packed + (oc * taps + kh * s.kernel_w) * B;
        for (int64_t kw = 0; kw < s.kernel_w; ++kw, w += B) {
          const int64_t u0 = iw0 + s.pad_w - kw * s.dilation_w;
          if (s.stride_w == 1 && u0 >= 0 && u0 + PW <= s.out_w) {
            for (int p = 0; p < PW; ++p) {
              const T v = go_row[u0 + p];
#pragma omp simd
              for (int c = 0; c < B; ++c) acc[p][c] += v * w[c];
            }
          } else if (s.stride_w == 1) {
            for (int p = 0; p < PW; ++p) {
              const int64_t u = u0 + p;
              if (u < 0 || u >= s.out_w) continue;
              const T v = go_row[u];
#pragma omp simd
              for (int c = 0; c < B; ++c) acc[p][c] += v * w[c];
            }
          } else {
            for (int p = 0; p < PW; ++p) {
              const int64_t u = u0 + p;
              if (u < 0 || u % s.stride_w != 0 || u / s.stride_w >= s.out_w) continue;
              const T v = go_row[u / s.stride_w];
#pragma omp simd
              for (int c = 0; c < B; ++c) acc[p][c] += v * w[c];
            }
          }
        }
      }
    }
    const int pixels = static_cast<int>(std::min<int64_t>(PW, s.in_w - iw0));
    for (int64_t c = 0; c < channels; ++c)
      for (int p = 0; p < pixels; ++p) grad_input[c * in_plane + ih * s.in_w + iw0 + p] = acc[p][c];
  }
}

// grad_output of a few images repacked as [image][oh][ow][out lane] for one block of NV vectors
// of channels, lanes past `channels` zero. Written pixel by pixel, so that stores are contiguous.
template <typename T, int NV>
void pack_grad_output(const T* __restrict grad_output, T* __restrict packed,
                      int64_t images, int64_t first_channel, int64_t channels,
                      const Conv2dShape& s) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes, B = NV * L;
  const int64_t out_plane = s.out_h * s.out_w;
  for (int64_t n = 0; n < images; ++n) {
    const T* go = grad_output + (n * s.out_channels + first_channel) * out_plane;
    T* dst = packed + n * out_plane * B;
    for (int64_t i = 0; i < out_plane; ++i, dst += B) {
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) store_vec(dst + v * L, V{});
      for (int64_t c = 0; c < channels; ++c) dst[c] = go[c * out_plane + i];
    }
  }
}

template <typename T, int B, int PW>
void conv2d_forward_impl(const T* in, const T* w, const T* bias, T* out, const Conv2dShape& s) {
  const Scratch<T> packed = pack_weight_by_output(w, s, B);
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t nblocks = blocks_of(ocg, B), taps = s.kernel_h * s.kernel_w;
  const int64_t in_plane = s.in_h * s.in_w, out_plane = s.out_h * s.out_w;
  parallel_for(s.batch * s.groups * nblocks * s.out_h, s.out_w * icg * taps * B, [&](int64_t item) {
    const int64_t oh = item % s.out_h, b = item / s.out_h % nblocks;
    const int64_t g = item / (s.out_h * nblocks) % s.groups, n = item / (s.out_h * nblocks * s.groups);
    const int64_t oc = g * ocg + b * B;
    forward_row<T, B, PW>(in + (n * s.in_channels + g * icg) * in_plane,
                          packed.data() + (g * nblocks + b) * icg * taps * B,
                          bias ? bias + oc : nullptr, out + (n * s.out_channels + oc) * out_plane,
                          oh, std::min<int64_t>(B, ocg - b * B), s);
  });
}

template <typename T, int B, int PW>
void conv2d_grad_input_impl(const T* go, const T* w, T* gi, const Conv2dShape& s) {
  const Scratch<T> packed = pack_weight_by_input(w, s, B);
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t nblocks = blocks_of(icg, B), taps = s.kernel_h * s.kernel_w;
  const int64_t in_plane = s.in_h * s.in_w, out_plane = s.out_h * s.out_w;
  parallel_for(s.batch * s.groups * nblocks * s.in_h, s.in_w * ocg * taps * B, [&](int64_t item) {
    const int64_t ih = item % s.in_h, b = item / s.in_h % nblocks;
    const int64_t g = item / (s.in_h * nblocks) % s.groups, n = item / (s.in_h * nblocks * s.groups);
    grad_input_row<T, B, PW>(go + (n * s.out_channels + g * ocg) * out_plane,
                             packed.data() + (g * nblocks + b) * ocg * taps * B,
                             gi + (n * s.in_channels + g * icg + b * B) * in_plane, ih,
                             std::min<int64_t>(B, icg - b * B), s);
  });
}

// Partial grad_weight of one input channel, one block of NV vectors of output channels and a few
// images, for TW taps of one kernel row: the TW accumulators are independent, which hides the
// latency of each multiply-add. `input` is the image's zero-padded plane, so every tap of every
// output pixel reads inside it.
template <typename T, int NV, int TW>
void grad_weight_taps(const T* __restrict input, int64_t image_stride,
                      const PaddedPlanes<T>& x, const T* __restrict packed_go,
                      T* __restrict taps, int64_t images, int64_t kh,
                      int64_t kw0, const Conv2dShape& s) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes, B = NV * L;
  // Even and odd pixels accumulate apart: twice the independent chains of multiply-adds.
  V acc[2][TW][NV];
#pragma GCC unroll 2
  for (int e = 0; e < 2; ++e)
#pragma GCC unroll 8
    for (int t = 0; t < TW; ++t)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[e][t][v] = V{};
  const auto accumulate = [&](V(&sum)[TW][NV], const T* go, const T* in) __attribute__((always_inline)) {
    V g[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) load_vec(g[v], go + v * L);
#pragma GCC unroll 8
    for (int t = 0; t < TW; ++t) {
      const T value = in[t * s.dilation_w];
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) sum[t][v] += value * g[v];
    }
  };
  const int64_t out_plane = s.out_h * s.out_w;
  for (int64_t n = 0; n < images; ++n) {
    for (int64_t oh = 0; oh < s.out_h; ++oh) {
      const T* row = input + n * image_stride + (oh * s.stride_h + kh * s.dilation_h) * x.w +
                     kw0 * s.dilation_w;
      const T* go = packed_go + (n * out_plane + oh * s.out_w) * B;
      int64_t ow = 0;
      for (; ow + 1 < s.out_w; ow += 2) {
        accumulate(acc[0], go + ow * B, row + ow * s.stride_w);
        accumulate(acc[1], go + (ow + 1) * B, row + (ow + 1) * s.stride_w);
      }
      if (ow < s.out_w) accumulate(acc[0], go + ow * B, row + ow * s.stride_w);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < TW; ++t)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v)
      store_vec(taps + (kh * s.kernel_w + kw0 + t) * B + v * L, acc[0][t][v] + acc[1][t][v]);
}

// Up to this many taps of a kernel row share one pass over the pixels.
constexpr int64_t kTapsPerPass = 5;

template <typename T, int NV>
void grad_weight_partial(const T* input, int64_t image_stride, const PaddedPlanes<T>& x,
                         const T* packed_go, T* taps, int64_t images, const Conv2dShape& s) {
  for (int64_t kh = 0; kh < s.kernel_h; ++kh)
    for (int64_t kw0 = 0; kw0 < s.kernel_w; kw0 += kTapsPerPass) {
      const auto pass = [&]<int TW>() {
        grad_weight_taps<T, NV, TW>(input, image_stride, x, packed_go, taps, images, kh, kw0, s);
      };
      switch (std::min(kTapsPerPass, s.kernel_w - kw0)) {
        case 1: pass.template operator()<1>(); break;
        case 2: pass.template operator()<2>(); break;
        case 3: pass.template operator()<3>(); break;
        case 4: pass.template operator()<4>(); break;
        default: pass.template operator()<5>(); break;
      }
    }
}

template <typename T, int NV>
void conv2d_grad_weight_impl(const T* go, const T* in, T* gw, const Conv2dShape& s) {
  using acc_t = at::acc_type<T, /*is_cuda=*/false>;
  constexpr int B = NV * Vec<T>::kLanes;
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t nblocks = blocks_of(ocg, B), taps = s.kernel_h * s.kernel_w;
  const int64_t chunks = blocks_of(s.batch, kImagesPerPartial);
  const int64_t out_plane = s.out_h * s.out_w;
  const PaddedPlanes<T> x = pad_planes(in, s.batch * s.in_channels, s.in_h, s.in_w, s.pad_h, s.pad_w, 0);
  // partial[chunk][group][block][ic][tap][lane]
  const int64_t per_chunk = s.groups * nblocks * icg * taps * B;
  const Scratch<T> partial = chunk_partials<T>(chunks * per_chunk);
  parallel_for(chunks * s.groups * nblocks, kImagesPerPartial * out_plane * icg * taps * B, [&](int64_t item) {
    const int64_t b = item % nblocks, g = item / nblocks % s.groups, chunk = item / (nblocks * s.groups);
    const int64_t first = chunk * kImagesPerPartial;
    const int64_t images = std::min(kImagesPerPartial, s.batch - first);
    const int64_t oc = g * ocg + b * B;
    const Scratch<T> packed_go(images * out_plane * B);  // all written by the packing
    pack_grad_output<T, NV>(go + first * s.out_channels * out_plane, packed_go.data(), images, oc,
                            std::min<int64_t>(B, ocg - b * B), s);
    for (int64_t ic = 0; ic < icg; ++ic) {
      grad_weight_partial<T, NV>(x.data + (first * s.in_channels + g * icg + ic) * x.plane,
                                 s.in_channels * x.plane, x, packed_go.data(),
                                 partial.data() + chunk * per_chunk + ((g * nblocks + b) * icg + ic) * taps * B,
                                 images, s);
    }
  });
  parallel_for(s.out_channels, icg * taps * chunks, [&](int64_t oc) {
    const int64_t g = oc / ocg, b = oc % ocg / B, lane = oc % ocg % B;
    for (int64_t ic = 0; ic < icg; ++ic)
      for (int64_t t = 0; t < taps; ++t) {
        acc_t sum = 0;
        for (int64_t chunk = 0; chunk < chunks; ++chunk)
          sum += partial[chunk * per_chunk + (((g * nblocks + b) * icg + ic) * taps + t) * B + lane];
        gw[(oc * icg + ic) * taps + t] = static_cast<T>(sum);
      }
  });
}

}  // namespace lenetx::cpu::LENETX_ISA

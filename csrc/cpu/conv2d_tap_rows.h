#pragma once
// grad_weight of a 3- or 5-wide kernel with output channels along the vector lanes: grad_output
// channels-last is B, and each row of A is one weight tap (ic, kh, kw), read out of a zero-padded
// copy of the input at the position each output pixel reads through that tap.
#include <ATen/ATen.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "../shape_checks.h"
#include "conv2d_common.h"
#include "micro_gemm.h"
#include "parallel.h"
#include "scratch.h"

namespace lenetx::cpu::LENETX_ISA {

// A's rows for one tile: R rows of the padded input (one (ic, kh) each), each read at KW taps
// side by side, so that the tile's R * KW rows need R pointers, each with constant displacements
// (WindowRows' pointer per row ran short of registers).
template <typename T, int R, int KW>
struct TapRows {
  const T* row[R];
  const int64_t* offsets;
  T operator()(int m, int64_t k) const { return row[m / KW][offsets[k] + m % KW]; }
};

// Kernel rows per tile: as many as fit the registers beside the tile's vectors of output
// channels (two where one would not hold them all).
constexpr int tap_rows_per_tile(int64_t kernel_w, int vectors) {
  if (kVectorRegisters == 32) return kernel_w == 3 ? (vectors == 2 ? 4 : 5) : (vectors == 2 ? 2 : 3);
  return kernel_w == 3 ? (vectors == 2 ? 2 : 4) : (vectors == 2 ? 1 : 2);
}

template <typename T>
int tap_vectors(const Conv2dShape& s) {
  return s.out_channels_per_group() > Vec<T>::kLanes ? 2 : 1;
}

// A 3x3 kernel over one input channel (the improved LeNet's conv1) is three kernel rows: one tile
// of exactly those, beside one vector of output channels.
inline bool three_kernel_rows(const Conv2dShape& s, int vectors) {
  return s.kernel_w == 3 && vectors == 1 && s.in_channels_per_group() * s.kernel_h == 3;
}

// Gapless 3- or 5-wide kernel rows, at least a vector of output channels (each broadcast feeds a
// full vector's multiply-adds), and either three kernel rows (ic, kh) in all or enough that the
// tiles' blocks of them waste at most a quarter: the improved LeNet's conv1 in tiles of 5 rows ran
// 0.77x as fast as the channel-vector kernel, in one tile of its 3 rows 1.45x (benchmarks/NOTES.md,
// sections 10 and 12).
template <typename T>
bool worth_tap_rows(const Conv2dShape& s) {
  if (s.out_channels_per_group() < Vec<T>::kLanes || s.dilation_w != 1 || (s.kernel_w != 3 && s.kernel_w != 5))
    return false;
  if (three_kernel_rows(s, tap_vectors<T>(s))) return true;
  const int64_t rows = s.in_channels_per_group() * s.kernel_h, per_tile = tap_rows_per_tile(s.kernel_w, tap_vectors<T>(s));
  return 4 * blocks_of(rows, per_tile) * per_tile <= 5 * rows;
}

// grad_weight[oc][ic][kh][kw] = sum over images and output pixels of grad_output[oc][pixel] times
// the padded input of channel ic at the pixel's position shifted by (kh, kw). Images are summed
// in chunks of kImagesPerPartial, whose partials are added in a fixed order. A thread copies the
// chunk it works on: the input padded, grad_output channels-last for one panel of N channels.
template <typename T, int R, int KW, int NV>
void grad_weight_tap_rows(const T* grad_output, const T* input, T* grad_weight, const Conv2dShape& s) {
  constexpr int64_t N = NV * Vec<T>::kLanes, MB = R * KW;
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t depth = icg * s.kernel_h * KW, kernel_rows = icg * s.kernel_h;
  const int64_t padded_w = s.in_w + 2 * s.pad_w, plane = (s.in_h + 2 * s.pad_h) * padded_w;
  const int64_t out_plane = s.out_h * s.out_w, steps = kImagesPerPartial * out_plane;
  const int64_t chunks = blocks_of(s.batch, kImagesPerPartial), blocks = blocks_of(kernel_rows, R);
  const int64_t panels = blocks_of(ocg, N);
  // Where output pixel (image i, oh, ow) of a chunk reads through tap (0, 0).
  std::vector<int64_t> offsets(steps);
  for (int64_t i = 0; i < kImagesPerPartial; ++i)
    for (int64_t oh = 0; oh < s.out_h; ++oh)
      for (int64_t ow = 0; ow < s.out_w; ++ow)
        offsets[(i * s.out_h + oh) * s.out_w + ow] = i * icg * plane + oh * s.stride_h * padded_w + ow * s.stride_w;
  const std::vector<int64_t> b_rows = evenly_spaced(steps, N);
  // partial[chunk][oc][ic, kh, kw]
  const ChunkPartials<T> partials(chunks, s.out_channels * depth, grad_weight);
  T* partial = partials.data();
  // Kernel-row blocks vary fastest: the copies of one (chunk, group, panel) serve them all.
  parallel_for_ranges(chunks * s.groups * panels * blocks, steps * MB * N, [&](int64_t first, int64_t last) {
    const Scratch<T> x(kImagesPerPartial * icg * plane);
    const Scratch<T> go(steps * N);
    int64_t padded = -1, packed = -1;
    alignas(64) T tile[MB * N];
    for (int64_t item = first; item < last; ++item) {
      const int64_t b = item % blocks, panel = item / blocks % panels;
      const int64_t g = item / (blocks * panels) % s.groups, chunk = item / (blocks * panels * s.groups);
      const int64_t n0 = chunk * kImagesPerPartial, images = std::min(kImagesPerPartial, s.batch - n0);
      if (chunk * s.groups + g != padded) {
        for (int64_t i = 0; i < images; ++i)
          for (int64_t ic = 0; ic < icg; ++ic)
            pad_plane(input + ((n0 + i) * s.in_channels + g * icg + ic) * s.in_h * s.in_w, s.in_h, s.in_w, s.pad_h,
                      s.pad_w, x.data() + (i * icg + ic) * plane);
        padded = chunk * s.groups + g;
      }
      const int64_t channels = std::min<int64_t>(N, ocg - panel * N), oc0 = g * ocg + panel * N;
      if ((chunk * s.groups + g) * panels + panel != packed) {
        for (int64_t i = 0; i < images; ++i)
          transpose_planes(grad_output + ((n0 + i) * s.out_channels + oc0) * out_plane, out_plane, channels, N,
                           go.data() + i * out_plane * N);
        packed = (chunk * s.groups + g) * panels + panel;
      }
      // Rows past the last kernel row repeat it and are dropped.
      TapRows<T, R, KW> a;
      a.offsets = offsets.data();
      for (int r = 0; r < R; ++r) {
        const int64_t kr = std::min(b * R + r, kernel_rows - 1), ic = kr / s.kernel_h, kh = kr % s.kernel_h;
        a.row[r] = x.data() + ic * plane + kh * s.dilation_h * padded_w;
      }
      gemm_tile<T, MB, NV>(a, go.data(), b_rows.data(), images * out_plane, tile);
      for (int64_t m = 0; m < std::min<int64_t>(MB, depth - b * MB); ++m)
        for (int64_t n = 0; n < channels; ++n)
          partial[(chunk * s.out_channels + oc0 + n) * depth + b * MB + m] = tile[m * N + n];
    }
  });
  partials.sum();
}

template <typename T>
void conv2d_grad_weight_tap_rows(const T* grad_output, const T* input, T* grad_weight, const Conv2dShape& s) {
  if (three_kernel_rows(s, tap_vectors<T>(s)))
    grad_weight_tap_rows<T, 3, 3, 1>(grad_output, input, grad_weight, s);
  else if (s.kernel_w == 3)
    tap_vectors<T>(s) == 2 ? grad_weight_tap_rows<T, tap_rows_per_tile(3, 2), 3, 2>(grad_output, input, grad_weight, s)
                           : grad_weight_tap_rows<T, tap_rows_per_tile(3, 1), 3, 1>(grad_output, input, grad_weight, s);
  else
    tap_vectors<T>(s) == 2 ? grad_weight_tap_rows<T, tap_rows_per_tile(5, 2), 5, 2>(grad_output, input, grad_weight, s)
                           : grad_weight_tap_rows<T, tap_rows_per_tile(5, 1), 5, 1>(grad_output, input, grad_weight, s);
}

}  // namespace lenetx::cpu::LENETX_ISA

#pragma once
// Stride-1 convolution over padded rows: forward (also the grad_input of a stride-1 layer, a
// correlation), and grad_weight as dot products along the rows.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <utility>
#include <vector>

#include "../shape_checks.h"
#include "conv2d_channel_vector.h"
#include "conv2d_common.h"
#include "micro_gemm.h"
#include "parallel.h"

namespace lenetx::cpu::LENETX_ISA {

// Stride-1 convolution over padded rows. Output position p = oh * padded_w + ow reads tap
// (kh, kw) of input channel ic at p + ic * plane + kh * dilation_h * padded_w + kw * dilation_w:
// the same offset for every position, so a run of positions is a contiguous load. Columns
// ow >= out_w of that numbering are computed and dropped.
template <typename T, int MB, int NV>
void correlate_padded_rows(const T* input, const T* weight, const T* bias, T* output,
                           const Conv2dShape& s) {
  constexpr int64_t N = NV * Vec<T>::kLanes;
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t taps = s.kernel_h * s.kernel_w, depth = icg * taps;
  const int64_t padded_w = s.in_w + 2 * s.pad_w, plane = (s.in_h + 2 * s.pad_h) * padded_w;
  const int64_t blocks = blocks_of(ocg, MB), out_plane = s.out_h * s.out_w;
  // Weights as [group][block][ic, kh, kw][MB output channels], zero past ocg.
  std::vector<T> packed(s.groups * blocks * depth * MB, T(0));
  for (int64_t oc = 0; oc < s.out_channels; ++oc) {
    const int64_t g = oc / ocg, o = oc % ocg;
    for (int64_t k = 0; k < depth; ++k)
      packed[((g * blocks + o / MB) * depth + k) * MB + o % MB] = weight[oc * depth + k];
  }
  const std::vector<int64_t> taps_at = tap_offsets(plane, padded_w, icg, s);
  // Work items are RowBands of the (image, group, block of output channels) planes. A band's
  // tiles run along its padded rows into a buffer laid out as those rows, copied out a row at a
  // time: copied out of each tile, whose positions straddle rows, they took more time than the
  // tiles themselves in the improved LeNet's conv1 (benchmarks/NOTES.md, section 16).
  const RowBands bands(s.batch * s.groups * blocks, s.out_h, 1);
  const int64_t band_tiles = blocks_of(bands.rows * padded_w, N);
  // The last tile of the last band reads up to N positions and kernel_w columns past the planes.
  const int64_t slack = N + s.kernel_w * s.dilation_w;
  parallel_for_ranges(s.batch * s.groups * blocks * bands.count, band_tiles * depth * MB * N,
                      [&](int64_t first, int64_t last) {
    // The padded planes of the (image, group) this thread works on, copied here so that they are
    // in cache when its tiles read them (a padded copy of the whole batch was not: NOTES, section 6).
    const std::unique_ptr<T[]> x(new T[icg * plane + slack]);
    std::fill_n(x.get() + icg * plane, slack, T(0));
    const int64_t rows_n = band_tiles * N;
    const std::unique_ptr<T[]> rows(new T[MB * rows_n]);
    int64_t padded = -1;
    for (int64_t item = first; item < last; ++item) {
      const int64_t band = item % bands.count, b = item / bands.count % blocks;
      const int64_t g = item / (bands.count * blocks) % s.groups, n = item / (bands.count * blocks * s.groups);
      if (n * s.groups + g != padded) {
        for (int64_t ic = 0; ic < icg; ++ic)
          pad_plane(input + ((n * s.in_channels + g * icg + ic) * s.in_h) * s.in_w, s.in_h, s.in_w, s.pad_h,
                    s.pad_w, x.get() + ic * plane);
        padded = n * s.groups + g;
      }
      const int64_t first_row = bands.first_row(band), end_row = bands.end_row(band);
      if (first_row >= end_row) continue;
      const T* a = packed.data() + (g * blocks + b) * depth * MB;
      const T* band_input = x.get() + first_row * padded_w;
      for (int64_t p = 0; p < (end_row - first_row) * padded_w; p += N)
        gemm_tile<T, MB, NV>(PackedRows<T, MB>{a}, band_input + p, taps_at.data(), depth, rows.get() + p, rows_n);
      const int64_t channels = std::min<int64_t>(MB, ocg - b * MB);
      for (int64_t m = 0; m < channels; ++m) {
        const int64_t oc = g * ocg + b * MB + m;
        const T shift = bias ? bias[oc] : T(0);
        T* out = output + (n * s.out_channels + oc) * out_plane;
        for (int64_t oh = first_row; oh < end_row; ++oh)
          map_row(rows.get() + m * rows_n + (oh - first_row) * padded_w, s.out_w, out + oh * s.out_w,
                  [shift](auto& v) __attribute__((always_inline)) { v += shift; });
      }
    }
  });
}

template <typename T>
void conv2d_padded_rows(const T* input, const T* weight, const T* bias, T* output,
                        const Conv2dShape& s) {
  with_tile<T>(s.out_channels_per_group(), s.out_h * (s.in_w + 2 * s.pad_w), [&]<int MB, int NV>() {
    correlate_padded_rows<T, MB, NV>(input, weight, bias, output, s);
  });
}

// grad_weight of a stride-1 layer with fewer input channels than a vector (the LeNets' conv1s),
// as dot products along the padded rows of worth_padded_rows: grad_output is laid out on the same
// rows, with zeros in the columns past out_w, so that every tap is a dot product of two contiguous
// runs. For any number of output channels: at 16 and 32, the channel-vector kernel took 1.1-1.15x
// as long (benchmarks/NOTES.md, section 16). Those zeros meet real input values, which is exact
// only for finite input: an input with an infinity or NaN goes to the channel-vector kernel
// instead.
template <typename T>
void conv2d_grad_weight_by_rows(const T* grad_output, const T* input, T* grad_weight,
                                const Conv2dShape& s) {
  // MB output channels by TB taps of accumulators, beside MB rows of grad_output and a vector of
  // input. On AVX2 those are all 16 registers: 3 x 4 ran LeNet-5's fused conv1 backward in 329-343
  // us against 377-426 for 3 x 3 (benchmarks/NOTES.md, section 24).
  constexpr int MB = kVectorRegisters == 32 ? 6 : 3, TB = 4;
  constexpr int64_t L = Vec<T>::kLanes;
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t taps = s.kernel_h * s.kernel_w, depth = icg * taps;
  bool finite = true;
  const PaddedPlanes<T> x = pad_planes(input, s.batch * s.in_channels, s.in_h, s.in_w, s.pad_h,
                                       s.pad_w, (s.kernel_w - 1) * s.dilation_w + L, &finite);
  if (!finite) return conv2d_grad_weight_impl<T, 1>(grad_output, input, grad_weight, s);
  const int64_t positions = s.out_h * x.w, len = blocks_of(positions, L) * L;
  const std::vector<int64_t> taps_at = tap_offsets(x.plane, x.w, icg, s);
  const int64_t chunks = blocks_of(s.batch, kImagesPerPartial), blocks = blocks_of(ocg, MB);
  // Blocks of at most TB taps, as even as they come: a block of one tap would load MB rows of
  // grad_output per MB multiply-adds.
  const int64_t tap_blocks = blocks_of(depth, TB);
  // partial[chunk][oc][k]
  const ChunkPartials<T> partials(chunks, s.out_channels * depth, grad_weight);
  T* partial = partials.data();
  parallel_for_ranges(chunks * s.groups * blocks, kImagesPerPartial * len * MB * depth, [&](int64_t first, int64_t last) {
    using V = typename Vec<T>::type;
    // One image's grad_output for one block of channels, as [MB][len] (zero past the block's
    // channels), packed here so that it stays in L1 for every tap block. Zeroed once: the
    // copies write only the first out_w columns of each row, so the columns after them and the
    // positions past the rows stay zero.
    const std::unique_ptr<T[]> go(new T[MB * len]());
    // Each tap block's MB x TB vectors of sums over the chunk's images.
    const std::unique_ptr<V[]> sums(new V[tap_blocks * MB * TB]);
    for (int64_t item = first; item < last; ++item) {
      const int64_t b = item % blocks, g = item / blocks % s.groups, chunk = item / (blocks * s.groups);
      const int64_t oc0 = g * ocg + b * MB, channels = std::min<int64_t>(MB, ocg - b * MB);
      const int64_t n0 = chunk * kImagesPerPartial, images = std::min(kImagesPerPartial, s.batch - n0);
      std::fill_n(go.get() + channels * len, (MB - channels) * len, T(0));
      std::fill_n(sums.get(), tap_blocks * MB * TB, V{});
      const auto block = [&](int64_t j) { return std::pair{j * depth / tap_blocks, (j + 1) * depth / tap_blocks}; };
      for (int64_t i = 0; i < images; ++i) {
        for (int64_t m = 0; m < channels; ++m) {
          const T* src = grad_output + ((n0 + i) * s.out_channels + oc0 + m) * s.out_h * s.out_w;
          for (int64_t oh = 0; oh < s.out_h; ++oh) copy_row(src + oh * s.out_w, s.out_w, go.get() + m * len + oh * x.w);
        }
        const T* in = x.data + ((n0 + i) * s.in_channels + g * icg) * x.plane;
        for (int64_t j = 0; j < tap_blocks; ++j) {
          const auto [k0, k1] = block(j);
          V* block_sums = sums.get() + j * MB * TB;
          const auto dots = [&]<int TW>() { dot_tile<T, MB, TW>(go.get(), len, in, taps_at.data() + k0, len, block_sums); };
          switch (k1 - k0) {
            case 1: dots.template operator()<1>(); break;
            case 2: dots.template operator()<2>(); break;
            case 3: dots.template operator()<3>(); break;
            default: dots.template operator()<TB>(); break;
          }
        }
      }
      for (int64_t j = 0; j < tap_blocks; ++j) {
        const auto [k0, k1] = block(j);
        const V* block_sums = sums.get() + j * MB * TB;
        for (int64_t m = 0; m < channels; ++m)
          for (int64_t t = 0; t < k1 - k0; ++t) {
            T total = 0;
            for (int l = 0; l < L; ++l) total += block_sums[m * (k1 - k0) + t][l];
            partial[(chunk * s.out_channels + oc0 + m) * depth + k0 + t] = total;
          }
      }
    }
  });
  partials.sum();
}

}  // namespace lenetx::cpu::LENETX_ISA

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

// A band of a convolution's output over padded rows, as the register tiles leave it: `channels`
// output channels from oc0 of image `image`, without the bias; channel m's output rows
// [first_row, end_row) from rows + m * channel_step on, row_step apart, each row's first out_w
// values its outputs.
template <typename T>
struct PaddedRowsBand {
  const T* rows;
  int64_t channel_step, row_step, image, oc0, channels, first_row, end_row;
};

// Stride-1 convolution over padded rows. Output position p = oh * padded_w + ow reads tap
// (kh, kw) of input channel ic at p + ic * plane + kh * dilation_h * padded_w + kw * dilation_w:
// the same offset for every position, so a run of positions is a contiguous load. Columns
// ow >= out_w of that numbering are computed and dropped. Each band, of a multiple of band_unit
// rows but the plane's last, goes to store_band(const PaddedRowsBand<T>&) while it is in cache.
template <typename T, int MB, int NV, typename StoreBand>
void correlate_padded_rows(const T* input, const T* weight, int64_t band_unit, const Conv2dShape& s,
                           const StoreBand& store_band) {
  constexpr int64_t N = NV * Vec<T>::kLanes;
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t taps = s.kernel_h * s.kernel_w, depth = icg * taps;
  const int64_t padded_w = s.in_w + 2 * s.pad_w, plane = (s.in_h + 2 * s.pad_h) * padded_w;
  const int64_t blocks = blocks_of(ocg, MB);
  // Weights as [group][block][ic, kh, kw][MB output channels], zero past ocg.
  std::vector<T> packed(s.groups * blocks * depth * MB, T(0));
  for (int64_t oc = 0; oc < s.out_channels; ++oc) {
    const int64_t g = oc / ocg, o = oc % ocg;
    for (int64_t k = 0; k < depth; ++k)
      packed[((g * blocks + o / MB) * depth + k) * MB + o % MB] = weight[oc * depth + k];
  }
  const std::vector<int64_t> taps_at = tap_offsets(plane, padded_w, icg, s);
  // Work items are RowBands of the (image, group, block of output channels) planes. A band's
  // tiles run along its padded rows into a buffer laid out as those rows, stored from there:
  // copied out of each tile, whose positions straddle rows, they took more time than the tiles
  // themselves in the improved LeNet's conv1 (benchmarks/NOTES.md, section 16).
  const RowBands bands(s.batch * s.groups * blocks, s.out_h, band_unit);
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
      store_band(PaddedRowsBand<T>{rows.get(), rows_n, padded_w, n, g * ocg + b * MB,
                                   std::min<int64_t>(MB, ocg - b * MB), first_row, end_row});
    }
  });
}

// correlate_padded_rows in the register tile with_tile picks.
template <typename T, typename StoreBand>
void conv2d_padded_row_bands(const T* input, const T* weight, int64_t band_unit, const Conv2dShape& s,
                             const StoreBand& store_band) {
  with_tile<T>(s.out_channels_per_group(), s.out_h * (s.in_w + 2 * s.pad_w), [&]<int MB, int NV>() {
    correlate_padded_rows<T, MB, NV>(input, weight, band_unit, s, store_band);
  });
}

template <typename T>
void conv2d_padded_rows(const T* input, const T* weight, const T* bias, T* output, const Conv2dShape& s) {
  const int64_t out_plane = s.out_h * s.out_w;
  conv2d_padded_row_bands<T>(input, weight, 1, s, [&](const PaddedRowsBand<T>& band) {
    for (int64_t m = 0; m < band.channels; ++m) {
      const int64_t oc = band.oc0 + m;
      const T shift = bias ? bias[oc] : T(0);
      T* out = output + (band.image * s.out_channels + oc) * out_plane;
      for (int64_t oh = band.first_row; oh < band.end_row; ++oh)
        map_row(band.rows + m * band.channel_step + (oh - band.first_row) * band.row_step, s.out_w,
                out + oh * s.out_w, [shift](auto& v) __attribute__((always_inline)) { v += shift; });
    }
  });
}

// grad_weight of a stride-1 layer with fewer input channels than a vector (the LeNets' conv1s),
// as dot products along the padded rows of worth_padded_rows: grad_output is laid out on the same
// rows, with zeros in the columns past out_w, so that every tap is a dot product of two contiguous
// runs. For any number of output channels: at 16 and 32, the channel-vector kernel took 1.1-1.15x
// as long (benchmarks/NOTES.md, section 16). Those zeros meet real input values, which is exact
// only for finite input: an input with an infinity or NaN returns false, having done nothing.
// grad_output's rows come from load_rows(image, oc0, channels, rows, channel_step, row_step),
// which writes the out_w values of each of the out_h rows of `channels` output channels from oc0
// of that image (of this batch), channel m's row oh at rows + m * channel_step + oh * row_step,
// and leaves the rest of the buffer as it is (zero).
template <typename T, typename LoadRows>
bool grad_weight_by_rows(const LoadRows& load_rows, const T* input, T* grad_weight, const Conv2dShape& s) {
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
  if (!finite) return false;
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
    // channels), packed here so that it stays in L1 for every tap block. Zeroed once: load_rows
    // writes only the first out_w columns of each row, so the columns after them and the
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
        load_rows(n0 + i, oc0, channels, go.get(), len, x.w);
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
  return true;
}

template <typename T>
void conv2d_grad_weight_by_rows(const T* grad_output, const T* input, T* grad_weight, const Conv2dShape& s) {
  const auto copy_rows = [&](int64_t n, int64_t oc0, int64_t channels, T* rows, int64_t channel_step,
                             int64_t row_step) {
    for (int64_t m = 0; m < channels; ++m) {
      const T* src = grad_output + (n * s.out_channels + oc0 + m) * s.out_h * s.out_w;
      for (int64_t oh = 0; oh < s.out_h; ++oh)
        copy_row(src + oh * s.out_w, s.out_w, rows + m * channel_step + oh * row_step);
    }
  };
  if (!grad_weight_by_rows<T>(copy_rows, input, grad_weight, s))
    conv2d_grad_weight_impl<T, 1>(grad_output, input, grad_weight, s);
}

}  // namespace lenetx::cpu::LENETX_ISA

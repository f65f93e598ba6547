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
#include "scratch.h"

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

// The weight as [group][block of MB output channels][ic, kh, kw][MB], zero past each group's
// output channels: a block's MB weights of one tap side by side, as the register tiles read them.
template <typename T, int MB>
Scratch<T> pack_output_channel_blocks(const T* weight, const Conv2dShape& s) {
  const int64_t ocg = s.out_channels_per_group(), depth = s.in_channels_per_group() * s.kernel_h * s.kernel_w;
  const int64_t blocks = blocks_of(ocg, MB);
  Scratch<T> packed(s.groups * blocks * depth * MB, T(0));
  for (int64_t oc = 0; oc < s.out_channels; ++oc) {
    const int64_t g = oc / ocg, o = oc % ocg;
    for (int64_t k = 0; k < depth; ++k)
      packed[((g * blocks + o / MB) * depth + k) * MB + o % MB] = weight[oc * depth + k];
  }
  return packed;
}

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
  const Scratch<T> packed = pack_output_channel_blocks<T, MB>(weight, s);
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
    const Scratch<T> x(icg * plane + slack);
    std::fill_n(x.data() + icg * plane, slack, T(0));
    const int64_t rows_n = band_tiles * N;
    const Scratch<T> rows(MB * rows_n);
    int64_t padded = -1;
    for (int64_t item = first; item < last; ++item) {
      const int64_t band = item % bands.count, b = item / bands.count % blocks;
      const int64_t g = item / (bands.count * blocks) % s.groups, n = item / (bands.count * blocks * s.groups);
      if (n * s.groups + g != padded) {
        for (int64_t ic = 0; ic < icg; ++ic)
          pad_plane(input + ((n * s.in_channels + g * icg + ic) * s.in_h) * s.in_w, s.in_h, s.in_w, s.pad_h,
                    s.pad_w, x.data() + ic * plane);
        padded = n * s.groups + g;
      }
      const int64_t first_row = bands.first_row(band), end_row = bands.end_row(band);
      if (first_row >= end_row) continue;
      const T* a = packed.data() + (g * blocks + b) * depth * MB;
      const T* band_input = x.data() + first_row * padded_w;
      for (int64_t p = 0; p < (end_row - first_row) * padded_w; p += N)
        gemm_tile<T, MB, NV>(PackedRows<T, MB>{a}, band_input + p, taps_at.data(), depth, rows.data() + p, rows_n);
      store_band(PaddedRowsBand<T>{rows.data(), rows_n, padded_w, n, g * ocg + b * MB,
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

// A register tile of conv2d_row_vectors: MB output channels by R output rows by V vectors along
// each row, the last vector at column last_col, so that it overlaps the one before where out_w is
// not a multiple of the vector. Stored in place with the channels' shifts added (past `channels`,
// nothing). Sums over k in order, starting from the first products, as gemm_tile's: the same bits
// as the tiles along the padded rows.
template <typename T, int MB, int R, int V>
void row_vectors_tile(const T* __restrict a, const T* __restrict in, const int64_t* __restrict taps_at, int64_t depth,
                      int64_t in_row, int64_t last_col, const T* shift, int64_t channels, T* __restrict out,
                      int64_t out_plane, int64_t out_w) {
  using Vt = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  const auto column = [last_col](int v) __attribute__((always_inline)) {
    return v + 1 == V ? last_col : int64_t{v} * L;
  };
  Vt acc[MB][R][V];
  const auto step = [&](int64_t k, auto accumulate) __attribute__((always_inline)) {
    const T* at = in + taps_at[k];
    Vt x[R][V];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) load_vec(x[r][v], at + r * in_row + column(v));
#pragma GCC unroll 16
    for (int m = 0; m < MB; ++m) {
      const T scale = a[k * MB + m];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < V; ++v) accumulate(acc[m][r][v], scale * x[r][v]);
    }
  };
  step(0, [](Vt& sum, const Vt& product) __attribute__((always_inline)) { sum = product; });
  for (int64_t k = 1; k < depth; ++k)
    step(k, [](Vt& sum, const Vt& product) __attribute__((always_inline)) { sum += product; });
#pragma GCC unroll 16
  for (int m = 0; m < MB; ++m) {
    if (m == channels) break;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) store_vec(out + m * out_plane + r * out_w + column(v), acc[m][r][v] + shift[m]);
  }
}

// Stride-1 convolution whose output rows are one or two vectors long, or a little less: each row
// as whole vectors loaded from a padded plane at each tap's offset and stored in place, the last
// one overlapping the one before (the columns between computed twice, to the same bits), and the
// plane's last block of rows overlapping the block before the same way. Along the padded rows,
// the tiles' positions straddle rows and go through a buffer and a copy onto the planes: the
// improved LeNet's conv1 took 1.3-1.6x as long that way (benchmarks/NOTES.md, section 30).
template <typename T, int MB, int R, int V>
void conv2d_row_vectors(const T* input, const T* weight, const T* bias, T* output, const Conv2dShape& s) {
  const int64_t depth = s.in_channels * s.kernel_h * s.kernel_w;
  const int64_t padded_w = s.in_w + 2 * s.pad_w, plane = (s.in_h + 2 * s.pad_h) * padded_w;
  const int64_t blocks = blocks_of(s.out_channels, MB), row_blocks = blocks_of(s.out_h, R);
  const Scratch<T> packed = pack_output_channel_blocks<T, MB>(weight, s);
  // The bias as [block][MB], zero past out_channels.
  Scratch<T> shifts(blocks * MB, T(0));
  if (bias) std::copy_n(bias, s.out_channels, shifts.data());
  const std::vector<int64_t> taps_at = tap_offsets(plane, padded_w, s.in_channels, s);
  const int64_t out_plane = s.out_h * s.out_w, last_col = s.out_w - Vec<T>::kLanes;
  // Work items are the (image, block of output channels, block of rows) tiles, in that order.
  parallel_for_ranges(s.batch * blocks * row_blocks, MB * R * V * Vec<T>::kLanes * depth,
                      [&](int64_t first, int64_t last) {
    const Scratch<T> x(s.in_channels * plane);
    int64_t row_block = first % row_blocks, b = first / row_blocks % blocks, n = first / (row_blocks * blocks);
    int64_t padded = -1;
    for (int64_t item = first; item < last; ++item) {
      if (n != padded) {
        for (int64_t ic = 0; ic < s.in_channels; ++ic)
          pad_plane(input + (n * s.in_channels + ic) * s.in_h * s.in_w, s.in_h, s.in_w, s.pad_h, s.pad_w,
                    x.data() + ic * plane);
        padded = n;
      }
      const int64_t row0 = std::min(row_block * R, s.out_h - R);
      row_vectors_tile<T, MB, R, V>(packed.data() + b * depth * MB, x.data() + row0 * padded_w, taps_at.data(), depth,
                                    padded_w, last_col, shifts.data() + b * MB,
                                    std::min<int64_t>(MB, s.out_channels - b * MB),
                                    output + (n * s.out_channels + b * MB) * out_plane + row0 * s.out_w, out_plane,
                                    s.out_w);
      // The next item by counting rather than by dividing its index: three 64-bit divisions an
      // item against a tile of 144 to 216 multiply-adds on the LeNets' conv1s.
      if (++row_block == row_blocks) {
        row_block = 0;
        if (++b == blocks) b = 0, ++n;
      }
    }
  });
}

// conv2d_row_vectors' tile for a shape, as fn.template operator()<MB, R, V>(): rows of one or two
// vectors on AVX-512, whose 32 registers hold 24 accumulators beside the loaded vectors. Of two
// shapes, the one that computes fewer padding channels (LeNet-5's conv1, 6 channels, at batch 64:
// 156 us in 6 x 2 x 2 tiles, 212 in 4 x 3 x 2, 201 on the padded rows). Returns false, having called
// nothing, for other shapes, where the tile has more rows than the output, and without input
// channels (the tile starts its sums from the first products).
template <typename T, typename Fn>
bool with_row_vectors_tile(const Conv2dShape& s, const Fn& fn) {
  if constexpr (kVectorRegisters == 32) {
    constexpr int64_t L = Vec<T>::kLanes;
    if (s.groups != 1 || s.in_channels == 0 || s.out_w < L || s.out_w > 2 * L) return false;
    const auto channel_waste = [&](int64_t mb) { return blocks_of(s.out_channels, mb) * mb - s.out_channels; };
    const auto pick = [&]<int V, int M1, int R1, int M2, int R2>() {
      if (channel_waste(M2) < channel_waste(M1)) {
        if (s.out_h < R2) return false;
        fn.template operator()<M2, R2, V>();
      } else {
        if (s.out_h < R1) return false;
        fn.template operator()<M1, R1, V>();
      }
      return true;
    };
    return s.out_w > L ? pick.template operator()<2, 4, 3, 6, 2>() : pick.template operator()<1, 8, 3, 6, 4>();
  } else {
    return false;
  }
}

template <typename T>
void conv2d_padded_rows(const T* input, const T* weight, const T* bias, T* output, const Conv2dShape& s) {
  const auto row_vectors = [&]<int MB, int R, int V>() {
    conv2d_row_vectors<T, MB, R, V>(input, weight, bias, output, s);
  };
  if (with_row_vectors_tile<T>(s, row_vectors)) return;
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
    const Scratch<T> go(MB * len, T(0));
    // Each tap block's MB x TB vectors of sums over the chunk's images.
    const std::unique_ptr<V[]> sums(new V[tap_blocks * MB * TB]);
    for (int64_t item = first; item < last; ++item) {
      const int64_t b = item % blocks, g = item / blocks % s.groups, chunk = item / (blocks * s.groups);
      const int64_t oc0 = g * ocg + b * MB, channels = std::min<int64_t>(MB, ocg - b * MB);
      const int64_t n0 = chunk * kImagesPerPartial, images = std::min(kImagesPerPartial, s.batch - n0);
      std::fill_n(go.data() + channels * len, (MB - channels) * len, T(0));
      std::fill_n(sums.get(), tap_blocks * MB * TB, V{});
      const auto block = [&](int64_t j) { return std::pair{j * depth / tap_blocks, (j + 1) * depth / tap_blocks}; };
      for (int64_t i = 0; i < images; ++i) {
        load_rows(n0 + i, oc0, channels, go.data(), len, x.w);
        const T* in = x.data + ((n0 + i) * s.in_channels + g * icg) * x.plane;
        for (int64_t j = 0; j < tap_blocks; ++j) {
          const auto [k0, k1] = block(j);
          V* block_sums = sums.get() + j * MB * TB;
          const auto dots = [&]<int TW>() { dot_tile<T, MB, TW>(go.data(), len, in, taps_at.data() + k0, len, block_sums); };
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

#pragma once
// Stride-1 correlation with 5x5 kernels and few input channels (LeNet-5's conv2: 6 of them, too
// few for conv2d_winograd.h's tiles) by Winograd's F(M, 5) along the rows only. Each output row
// is cut into segments of M pixels; per input channel and kernel row, a segment's M x 5
// multiply-adds become M + 4 products of the transformed input segment (B^T d, M + 4 values) by
// the transformed kernel row (G g):
//   output segment = A^T [ sum over input channels and kernel rows of (G g) * (B^T d) ],
// on the 8x8 tiles' interpolation points (conv2d_winograd.h) for M = 4, 2.5x fewer multiply-adds,
// and on those and -1/4 for M = 5, 2.8x fewer, whose rounding is about four times as large (3-5e-6
// of the largest output against 0.7-1.3e-6 on five such shapes; benchmarks/NOTES.md, section 31).
// Down the columns it stays a direct correlation: for each transformed tap, a 5-tall kernel slid
// down a column of transformed segments, each broadcast value feeding 5 output rows, as the row
// tiles feed 5 columns (conv2d_row_tiles.h). The direct path ran LeNet-5's conv2 forward at about
// 80 % of the cores' multiply-add peak, short of the target over oneDNN (section 29). A row's
// transforms mix its values, so a weight that is not finite takes the direct paths, and an image
// whose output comes out not finite is computed again by them.
#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "../shape_checks.h"
#include "conv2d_common.h"
#include "conv2d_row_tiles.h"
#include "conv2d_winograd.h"
#include "micro_gemm.h"
#include "parallel.h"
#include "scratch.h"

namespace lenetx::cpu::LENETX_ISA {

constexpr int kWinogradRowsKernel = 5;

// y = A^T m for the 8 products m of a segment's 4 outputs, through the sums and differences of
// the products at paired points (1 and -1, 1/2 and -1/2, 2 and -2): 16 additions and
// multiply-adds instead of 26.
template <typename X, typename Scalar>
__attribute__((always_inline)) constexpr void winograd_output_rows(const X (&m)[8], X (&y)[4]) {
  const X sum1 = m[1] + m[2], difference1 = m[1] - m[2];
  const X sum_half = m[3] + m[6], difference_half = m[3] - m[6];
  const X sum2 = m[5] + m[4], difference2 = m[5] - m[4];
  y[0] = ((m[0] + sum1) + sum_half) + sum2;
  y[1] = (difference1 + difference_half * Scalar(0.5)) + difference2 * Scalar(2);
  y[2] = (sum1 + sum_half * Scalar(0.25)) + sum2 * Scalar(4);
  y[3] = ((difference1 + difference_half * Scalar(0.125)) + difference2 * Scalar(8)) + m[7];
}

// The same for the 9 products of a segment of 5 outputs (-1/4 the eighth finite point): 23
// additions and multiply-adds where the matrix has 37 terms.
template <typename X, typename Scalar>
__attribute__((always_inline)) constexpr void winograd_output_rows(const X (&m)[9], X (&y)[5]) {
  static_assert(kWinogradPoints[7] == -0.25);
  const X sum1 = m[1] + m[2], difference1 = m[1] - m[2];
  const X sum_half = m[3] + m[6], difference_half = m[3] - m[6];
  const X sum2 = m[5] + m[4], difference2 = m[5] - m[4];
  y[0] = (((m[0] + sum1) + sum_half) + sum2) + m[7];
  y[1] = ((difference1 + difference_half * Scalar(0.5)) + difference2 * Scalar(2)) - m[7] * Scalar(0.25);
  y[2] = ((sum1 + sum_half * Scalar(0.25)) + sum2 * Scalar(4)) + m[7] * Scalar(0.0625);
  y[3] = ((difference1 + difference_half * Scalar(0.125)) + difference2 * Scalar(8)) - m[7] * Scalar(0.015625);
  y[4] = (((sum1 + sum_half * Scalar(0.0625)) + sum2 * Scalar(16)) + m[7] * Scalar(0.00390625)) + m[8];
}

// winograd_output_rows is kWinogradOutput: equal on each unit vector, and linear.
template <int Tile, int M>
constexpr bool winograd_output_rows_are_the_matrix() {
  for (int k = 0; k < Tile; ++k) {
    double m[Tile] = {}, y[M] = {};
    m[k] = 1;
    winograd_output_rows<double, double>(m, y);
    for (int i = 0; i < M; ++i)
      if (y[i] != kWinogradOutput<Tile, M>[i][k]) return false;
  }
  return true;
}
static_assert(winograd_output_rows_are_the_matrix<8, 4>() && winograd_output_rows_are_the_matrix<9, 5>());

// A segment of M outputs reads M + 4 input values (the kernel's 5 taps).
template <int M>
constexpr int kWinogradRowsTile = M + kWinogradRowsKernel - 1;

// Where the row transforms pay (benchmarks/NOTES.md, section 29): 5x5 stride-1 kernels with fewer
// input channels than conv2d_winograd.h takes, output channels that fill their vectors more than
// half (they run along the lanes), outputs of two segments or more per row, and padded rows that
// fit one vector (winograd_rows_input): float rows of up to 16 under AVX-512, never under AVX2.
template <typename T>
bool worth_winograd_rows(const Conv2dShape& s) {
  const int64_t vectors = blocks_of(s.out_channels, Vec<T>::kLanes);
  return s.kernel_h == kWinogradRowsKernel && s.kernel_w == kWinogradRowsKernel && s.stride_h == 1 &&
         s.stride_w == 1 && s.dilation_h == 1 && s.dilation_w == 1 && s.groups == 1 && s.in_channels < 8 &&
         2 * s.out_channels > vectors * Vec<T>::kLanes && s.out_w >= 8 && s.in_w + 2 * s.pad_w <= Vec<T>::kLanes;
}

// The register tile, conv2d_row_tiles.h's row_tile turned down the columns: for one transformed
// tap, output rows (its pixels) by segments (its rows) of one vector of output channels, the
// input channels' columns of transformed segments slid past a kernel column's 5 transformed
// weights. Segments of 4: 5 rows by 3 segments, 15 accumulators, each taking a multiply-add
// every 15, which covers the multiply-adds' latency. Segments of 5 (2 per row): 10 rows by 2,
// 20 accumulators and 5 weights of AVX-512's 32 registers, the only ISA that takes this path;
// LeNet-5's conv2 forward ran faster than with 5 rows or 7 (section 31).
template <int M>
constexpr int kWinogradRowsTileRows = M == 4 ? 5 : 10;
template <int M>
constexpr int kWinogradRowsTileSegments = M == 4 ? 3 : 2;

// v = `count` values from src after `left` zeros: loaded straight where no zeros come first and
// the vector stays inside the input, which ends at `end` (its lanes past the values are then the
// next row's), else through a zeroed copy, zero past them.
template <typename V, typename T>
__attribute__((always_inline)) inline void load_padded_row(V& v, const T* src, int64_t count, int64_t left,
                                                           const T* end) {
  constexpr int64_t L = Vec<T>::kLanes;
  if (left == 0 && src + L <= end) {
    load_vec(v, src);
  } else {
    T row[L] = {};
    std::copy_n(src, count, row + left);
    load_vec(v, row);
  }
}

// Whether every lane of zero_if_finite, a sum of values each times zero, is zero: whether every
// value was finite (x * 0 is NaN for an infinite or NaN x).
template <typename T, typename V>
bool lanes_zero(const V& zero_if_finite) {
  bool zero = true;
  for (int l = 0; l < Vec<T>::kLanes; ++l) zero = zero && zero_if_finite[l] == T(0);
  return zero;
}

// The indices whose flag is set: the images or groups a path leaves for another to compute again.
inline std::vector<int64_t> flagged(const std::vector<uint8_t>& flags) {
  std::vector<int64_t> indices;
  for (int64_t i = 0; i < static_cast<int64_t>(flags.size()); ++i)
    if (flags[i]) indices.push_back(i);
  return indices;
}

// transformed[(segment * (M + 4) + tap) * rows + q] = (B^T d)[tap] for the M + 4 values d from
// column segment * M of padded row q, whose values lie in the image from row_offsets[q] (negative:
// a row of zeros, padding or past the channels) inside pad_w zero columns on its left. A vector of
// rows at a time, transposed in registers; a padded row fits one vector (worth_winograd_rows),
// loaded straight from the image where the vector stays inside the input (which ends at `end`), its
// columns past the row (read from the next) cleared once transposed. Copied into padded rows first,
// then transposed through memory, the input took 0.6 times as long as the products
// (benchmarks/NOTES.md, section 29).
template <typename T, int M>
void winograd_rows_input(const T* image, const T* end, const int64_t* row_offsets, const Conv2dShape& s, int64_t rows,
                         int64_t segments, T* __restrict transformed) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes, Tile = kWinogradRowsTile<M>;
  const int64_t row_end = s.pad_w + s.in_w;
  for (int64_t row0 = 0; row0 < rows; row0 += L) {
    V square[L];
#pragma GCC unroll 16
    for (int m = 0; m < L; ++m) {
      square[m] = V{};
      const int64_t offset = row_offsets[row0 + m];
      if (offset < 0) continue;
      load_padded_row(square[m], image + offset, s.in_w, s.pad_w, end);
    }
    transpose_square<T>(square);
#pragma GCC unroll 16
    for (int x = 0; x < L; ++x)
      if (x >= row_end) square[x] = V{};
    T* tap_row = transformed + row0;
#pragma GCC unroll 4
    for (int segment = 0; segment < (L - Tile) / M + 1; ++segment)
      if (segment < segments) {
        V taps[Tile];
        winograd_input_rows<V, T>(reinterpret_cast<const V(&)[Tile]>(square[segment * M]), taps);
#pragma GCC unroll 8
        for (int tap = 0; tap < Tile; ++tap) {
          store_vec(tap_row, taps[tap]);
          step_opaque(tap_row, rows);
        }
      }
  }
}

// Where padded row q of winograd_rows_input's rows (channel_rows per input channel, `rows` in
// all) lies in an image: -1 for rows of zeros (padding, or past the channels).
inline std::vector<int64_t> winograd_rows_offsets(const Conv2dShape& s, int64_t channel_rows, int64_t rows) {
  std::vector<int64_t> row_offsets(rows, -1);
  for (int64_t ic = 0; ic < s.in_channels; ++ic)
    for (int64_t r = 0; r < s.in_h; ++r) row_offsets[ic * channel_rows + s.pad_h + r] = (ic * s.in_h + r) * s.in_w;
  return row_offsets;
}

// gathered[(y * out_w + x) * L] = output pixel (y, x) of a vector of output channels, from its
// segments' products[((tap * segments + segment) * out_h + y) * L] by A^T; false where one is not
// finite. Every transformed value and product feeds some output with a coefficient that is not
// zero, so an input that is not finite always makes one.
template <typename T, int M>
bool winograd_rows_outputs(const T* __restrict products, int64_t out_h, int64_t out_w, int64_t segments,
                           T* __restrict gathered) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::kLanes, Tile = kWinogradRowsTile<M>;
  V zero_if_finite{};
  for (int64_t y = 0; y < out_h; ++y)
    for (int64_t segment = 0; segment < segments; ++segment) {
      V m[Tile], out[M];
#pragma GCC unroll 8
      for (int tap = 0; tap < Tile; ++tap) load_vec(m[tap], products + ((tap * segments + segment) * out_h + y) * L);
      winograd_output_rows<V, T>(m, out);
      V sum = out[0];
#pragma GCC unroll 8
      for (int i = 1; i < M; ++i) sum += out[i];
      zero_if_finite += sum * T(0);
      T* pixels = gathered + (y * out_w + segment * M) * L;
      if (segment * M + M <= out_w) {
#pragma GCC unroll 4
        for (int i = 0; i < M; ++i) store_vec(pixels + i * L, out[i]);
      } else {
        for (int64_t i = 0; i < out_w - segment * M; ++i) store_vec(pixels + i * L, out[i]);
      }
    }
  return lanes_zero<T>(zero_if_finite);
}

// conv2d_forward's path for worth_winograd_rows, for a weight it found finite. Returns the images
// whose output came out not finite (an input value not finite, or an overflow in the transforms),
// left for the direct paths to compute again.
template <typename T, int M>
std::vector<int64_t> winograd_rows_correlate(const T* input, const T* weight, const T* bias, T* output,
                                             const Conv2dShape& s) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::kLanes, R = kWinogradRowsKernel, Tile = kWinogradRowsTile<M>;
  constexpr int RB = kWinogradRowsTileRows<M>, SB = kWinogradRowsTileSegments<M>;
  const int64_t ic_n = s.in_channels, oc_n = s.out_channels, vectors = blocks_of(oc_n, L);
  const int64_t segments = blocks_of(s.out_w, M), row_blocks = blocks_of(s.out_h, RB);
  // Each channel's padded rows, then zero rows down to the last row block's last kernel row, then
  // zero rows up to a whole vector of rows: the transform runs across L rows at a time.
  const int64_t channel_rows = std::max(s.in_h + 2 * s.pad_h, row_blocks * RB + R - 1);
  const int64_t rows = blocks_of(ic_n * channel_rows, L) * L;
  const std::vector<int64_t> row_offsets = winograd_rows_offsets(s, channel_rows, rows);
  const int64_t in_plane = s.in_h * s.in_w, out_plane = s.out_h * s.out_w;

  // u[vector][tap][ic][kh][L] = (G g)[tap] for g the kernel row weight[oc][ic][kh], zero past
  // oc_n: the kernel row gathered with the output channels innermost, so that the sums run in
  // vectors across them.
  constexpr const auto& g = kWinogradFilter<Tile, R>;
  Scratch<T> u(vectors * Tile * ic_n * R * L, T(0)), kernel_rows(R * vectors * L, T(0));  // [k][oc]
  for (int64_t ic = 0; ic < ic_n; ++ic)
    for (int64_t kh = 0; kh < R; ++kh) {
      for (int64_t oc = 0; oc < oc_n; ++oc)
        for (int64_t k = 0; k < R; ++k) kernel_rows[k * vectors * L + oc] = weight[((oc * ic_n + ic) * R + kh) * R + k];
      for (int64_t oc0 = 0; oc0 < oc_n; oc0 += L)
        for (int64_t tap = 0; tap < Tile; ++tap) {
          V sum{};
          for (int64_t k = 0; k < R; ++k) {
            V taps;
            load_vec(taps, kernel_rows.data() + k * vectors * L + oc0);
            sum += static_cast<T>(g[tap][k]) * taps;
          }
          store_vec(u.data() + (((oc0 / L * Tile + tap) * ic_n + ic) * R + kh) * L, sum);
        }
    }

  std::vector<uint8_t> not_finite(s.batch, 0);
  parallel_for_ranges(s.batch, oc_n * out_plane * ic_n * R * R, [&](int64_t first, int64_t last) {
    // The transformed segments as [segment][tap][padded row]; one vector of output channels'
    // products as [tap][segment][output row][L]; its outputs channels-last.
    Scratch<T> transformed(Tile * segments * rows, T(0)), products(s.out_h * segments * Tile * L, T(0));
    Scratch<T> gathered(out_plane * L, T(0));
    for (int64_t n = first; n < last; ++n) {
      const T* image = input + n * ic_n * in_plane;
      T* image_output = output + n * oc_n * out_plane;
      winograd_rows_input<T, M>(image, input + s.batch * ic_n * in_plane, row_offsets.data(), s, rows, segments,
                                transformed.data());
      for (int64_t vector = 0; vector < vectors; ++vector) {
        for (int64_t tap = 0; tap < Tile; ++tap)
          for (int64_t block = 0; block < row_blocks; ++block)
            for (int64_t segment0 = 0; segment0 < segments; segment0 += SB)
              with_count<SB>(std::min<int64_t>(SB, segments - segment0), [&]<int Segments>() {
                // A row tile whose pixels are output rows, whose rows are segments and whose one
                // kernel row is the kernel column of this tap's transformed weights, u's [ic][kh].
                const T* column = transformed.data() + (segment0 * Tile + tap) * rows + block * RB;
                const T* weights = u.data() + (vector * Tile + tap) * ic_n * R * L;
                T* tap_products = products.data() + ((tap * segments + segment0) * s.out_h + block * RB) * L;
                row_tile<T, RB, R, Segments>(column, channel_rows, 0, Tile * rows, weights, 1, ic_n, Segments,
                                             std::min<int64_t>(RB, s.out_h - block * RB), tap_products, s.out_h * L);
              });
        if (!winograd_rows_outputs<T, M>(products.data(), s.out_h, s.out_w, segments, gathered.data()))
          not_finite[n] = 1;
        const int64_t oc0 = vector * L;
        store_channels_last_pixels(gathered.data(), out_plane, std::min<int64_t>(L, oc_n - oc0),
                                   bias ? bias + oc0 : nullptr, image_output + oc0 * out_plane, out_plane);
      }
    }
  });
  return flagged(not_finite);
}

// Segments of 5 outputs where a row is 9 or 10 long (LeNet-5's conv2) and a vector holds their 9
// values (float under AVX-512): 2 segments of 9 transformed values instead of 3 of 8, 25 % fewer
// products. Longer rows would need a third segment, which reads past the padded row's vector.
template <typename T>
bool winograd_rows_in_fives(const Conv2dShape& s) {
  return Vec<T>::kLanes >= kWinogradRowsTile<5> && (s.out_w == 9 || s.out_w == 10);
}

template <typename T>
std::vector<int64_t> conv2d_winograd_rows(const T* input, const T* weight, const T* bias, T* output,
                                          const Conv2dShape& s) {
  if constexpr (Vec<T>::kLanes >= kWinogradRowsTile<5>)
    if (winograd_rows_in_fives<T>(s)) return winograd_rows_correlate<T, 5>(input, weight, bias, output, s);
  return winograd_rows_correlate<T, kWinogradOutputs>(input, weight, bias, output, s);
}

// The shapes whose grad_weight runs by F(5, 5) along the rows: those whose forward takes segments
// of 5.
template <typename T>
bool worth_winograd_rows_grad_weight(const Conv2dShape& s) {
  return worth_winograd_rows<T>(s) && winograd_rows_in_fives<T>(s) && s.in_channels > 0;
}

// sums[tap][kh][ic][L] += sum over rows y and segments of column[(segment * Tile + tap) * rows +
// ic * channel_rows + y + kh] * filters[((segment * Tile + tap) * out_h + y) * L] for the ICB input
// channels from ic0, one tap: a register tile of 5 kernel rows by ICB channels, each product a
// broadcast value times the segment's transformed grad_output.
template <typename T, int Tile, int ICB>
void winograd_rows_weight_tile(const T* __restrict column, const T* __restrict filters, int64_t rows,
                               int64_t channel_rows, int64_t out_h, int64_t segments, int64_t tap, int64_t ic0,
                               int64_t ic_n, T* __restrict sums) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes, R = kWinogradRowsKernel;
  V acc[R][ICB] = {};
  for (int64_t segment = 0; segment < segments; ++segment) {
    const T* values = column + (segment * Tile + tap) * rows + ic0 * channel_rows;
    const T* filter = filters + (segment * Tile + tap) * out_h * L;
    for (int64_t y = 0; y < out_h; ++y) {
      V g;
      load_vec(g, filter + y * L);
#pragma GCC unroll 8
      for (int kh = 0; kh < R; ++kh)
#pragma GCC unroll 8
        for (int i = 0; i < ICB; ++i) acc[kh][i] += values[i * channel_rows + y + kh] * g;
    }
  }
#pragma GCC unroll 8
  for (int kh = 0; kh < R; ++kh)
#pragma GCC unroll 8
    for (int i = 0; i < ICB; ++i) {
      T* sum = sums + ((tap * R + kh) * ic_n + ic0 + i) * L;
      V total;
      load_vec(total, sum);
      store_vec(sum, total + acc[kh][i]);
    }
}

// grad_weight by F(5, 5) along the rows: per output row y, segment and kernel row kh, the 5 taps
// kw of the sum over the segment's x of grad_output[y][x] * input[y + kh][x + kw] are a
// correlation of its 9 input values d with its 5 grad_output values g, so that per transformed
// tap t the sums over images, rows and segments are of (G g)[t] * (B^T d)[t], and A^T turns the 9
// sums of each (oc, ic, kh) into its 5 weights: 9 x 2 products per row instead of 5 x 10. The
// input's transform is the forward's (winograd_rows_input). Images are summed in chunks of
// kImagesPerPartial, as by the other grad_weight paths. LeNet-5's conv2 grad_weight took 0.65 of
// the time of the tap rows (conv2d_tap_rows.h), its rounding 3e-6 of the largest weight gradient
// against 6e-7 (oneDNN's 3e-6; benchmarks/NOTES.md, section 31). False where a weight comes out
// not finite (an input or grad_output value not finite, or an overflow in the transforms): the
// direct paths compute them again.
template <typename T>
bool winograd_rows_grad_weight(const T* grad_output, const T* input, T* grad_weight, const Conv2dShape& s) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::kLanes, R = kWinogradRowsKernel, M = 5, Tile = kWinogradRowsTile<M>;
  const int64_t ic_n = s.in_channels, oc_n = s.out_channels, vectors = blocks_of(oc_n, L);
  const int64_t segments = blocks_of(s.out_w, M), channel_rows = s.in_h + 2 * s.pad_h;
  const int64_t rows = blocks_of(ic_n * channel_rows, L) * L;
  const std::vector<int64_t> row_offsets = winograd_rows_offsets(s, channel_rows, rows);
  const int64_t in_plane = s.in_h * s.in_w, out_plane = s.out_h * s.out_w, weights = oc_n * ic_n * R * R;
  // Input channels in blocks of up to 5: 5 x 5 accumulators at most.
  const int64_t ic_blocks = blocks_of(ic_n, 5), icb = blocks_of(ic_n, ic_blocks);
  const int64_t chunks = blocks_of(s.batch, kImagesPerPartial);
  constexpr const auto& g = kWinogradFilter<Tile, R>;
  const ChunkPartials<T> partials(chunks, weights, grad_weight);
  parallel_for_ranges(chunks, kImagesPerPartial * oc_n * out_plane * ic_n * R * R, [&](int64_t first, int64_t last) {
    Scratch<T> transformed(Tile * segments * rows, T(0)), go(out_plane * L, T(0));
    Scratch<T> filters(segments * Tile * s.out_h * L, T(0)), sums(vectors * Tile * R * ic_n * L);
    for (int64_t chunk = first; chunk < last; ++chunk) {
      std::fill_n(sums.data(), vectors * Tile * R * ic_n * L, T(0));
      for (int64_t n = chunk * kImagesPerPartial; n < std::min(s.batch, (chunk + 1) * kImagesPerPartial); ++n) {
        winograd_rows_input<T, M>(input + n * ic_n * in_plane, input + s.batch * ic_n * in_plane, row_offsets.data(),
                                  s, rows, segments, transformed.data());
        for (int64_t vector = 0; vector < vectors; ++vector) {
          const int64_t oc0 = vector * L;
          transpose_planes(grad_output + (n * oc_n + oc0) * out_plane, out_plane, std::min<int64_t>(L, oc_n - oc0), L,
                           go.data());
          for (int64_t y = 0; y < s.out_h; ++y)
            for (int64_t segment = 0; segment < segments; ++segment) {
              // The segment's grad_output, zero past the row, is the filter of this correlation.
              V filter[R], taps[Tile];
              for (int k = 0; k < R; ++k) {
                const int64_t x = segment * M + k;
                if (x < s.out_w)
                  load_vec(filter[k], go.data() + (y * s.out_w + x) * L);
                else
                  filter[k] = V{};
              }
              multiply_constant<Tile, R, 1, V>(
                  g, [&](int k, int) -> const V& { return filter[k]; }, [&](int i, int, const V& v) { taps[i] = v; });
              for (int tap = 0; tap < Tile; ++tap)
                store_vec(filters.data() + ((segment * Tile + tap) * s.out_h + y) * L, taps[tap]);
            }
          for (int64_t tap = 0; tap < Tile; ++tap)
            for (int64_t ic0 = 0; ic0 < ic_n; ic0 += icb)
              with_count<5>(std::min(icb, ic_n - ic0), [&]<int ICB>() {
                winograd_rows_weight_tile<T, Tile, ICB>(transformed.data(), filters.data(), rows, channel_rows, s.out_h,
                                                        segments, tap, ic0, ic_n,
                                                        sums.data() + vector * Tile * R * ic_n * L);
              });
        }
      }
      T* partial = partials.data() + chunk * weights;
      for (int64_t vector = 0; vector < vectors; ++vector)
        for (int64_t ic = 0; ic < ic_n; ++ic)
          for (int64_t kh = 0; kh < R; ++kh) {
            V m[Tile], w[R];
            for (int tap = 0; tap < Tile; ++tap)
              load_vec(m[tap], sums.data() + (((vector * Tile + tap) * R + kh) * ic_n + ic) * L);
            winograd_output_rows<V, T>(m, w);
            alignas(64) T lanes_of[R][L];
            for (int kw = 0; kw < R; ++kw) store_vec(lanes_of[kw], w[kw]);
            for (int64_t l = 0; l < std::min<int64_t>(L, oc_n - vector * L); ++l)
              for (int kw = 0; kw < R; ++kw)
                partial[(((vector * L + l) * ic_n + ic) * R + kh) * R + kw] = lanes_of[kw][l];
          }
    }
  });
  partials.sum();
  return values_finite(grad_weight, weights);
}

template <typename T>
bool conv2d_grad_weight_winograd_rows(const T* grad_output, const T* input, T* grad_weight, const Conv2dShape& s) {
  if constexpr (Vec<T>::kLanes >= kWinogradRowsTile<5>)
    return winograd_rows_grad_weight<T>(grad_output, input, grad_weight, s);
  return false;
}

// grad_input by F(5, 5) along the rows: the correlation of grad_output, zero-padded by 4 -
// padding, with the flipped kernel, each grad_input row cut into segments of 5 as in the
// forward, but with a vector's lanes holding two rows of kWinogradRowsImages images where the
// forward's hold output channels. Here the sums run over the output channels, which in the lanes
// would need sums across them, and the lanes would be less than half full with LeNet-5's 6 input
// channels. A pair of grad_input rows takes only the kernel rows that reach a row of grad_output:
// 27 of the 35 per transformed tap in LeNet-5's conv2, whose 14 rows read 10. The products are
// 9 x 3 segments per row, kernel row and channel pair, against 5 x 10 for the transposed
// convolution (conv2d_transposed.h), which also folds its products back. A pair of vectors of 8
// images' rows, transposed in registers, gives a vector per column: the transform's inputs.
template <typename T>
constexpr int64_t kWinogradRowsImages = Vec<T>::kLanes / 2;

// Where it applies: 5x5 stride-1 kernels, padding of at most 4, grad_output rows that fit a vector
// and grad_input rows of at most 3 segments, float under AVX-512 (a vector of 16: two rows of a
// group of 8 images); conv2d_paths.h takes it where the transposed convolution would apply.
template <typename T>
bool worth_winograd_rows_grad_input(const Conv2dShape& s) {
  constexpr int64_t L = Vec<T>::kLanes;
  return L == 16 && s.kernel_h == kWinogradRowsKernel && s.kernel_w == kWinogradRowsKernel && s.stride_h == 1 &&
         s.stride_w == 1 && s.dilation_h == 1 && s.dilation_w == 1 && s.groups == 1 &&
         s.pad_h < kWinogradRowsKernel && s.pad_w < kWinogradRowsKernel && s.out_w <= L && s.in_w <= 3 * 5;
}

// u[((tap * out_channels + oc) * 5 + kh) * in_channels + ic] = (G f)[tap] for f the kernel row
// weight[oc][ic][4 - kh] flipped, f[k] = weight[oc][ic][4 - kh][4 - k]: made once per operator
// call, input channels innermost for the register tile's broadcasts.
template <typename T>
Scratch<T> winograd_rows_grad_input_filters(const T* weight, const Conv2dShape& s) {
  constexpr int64_t R = kWinogradRowsKernel, Tile = kWinogradRowsTile<5>;
  constexpr const auto& g = kWinogradFilter<Tile, R>;
  const int64_t ic_n = s.in_channels, oc_n = s.out_channels;
  Scratch<T> u(Tile * oc_n * R * ic_n);
  for (int64_t oc = 0; oc < oc_n; ++oc)
    for (int64_t ic = 0; ic < ic_n; ++ic)
      for (int64_t kh = 0; kh < R; ++kh) {
        const T* row = weight + ((oc * ic_n + ic) * R + R - 1 - kh) * R;
        for (int64_t tap = 0; tap < Tile; ++tap) {
          T sum = 0;
          for (int64_t k = 0; k < R; ++k) sum += static_cast<T>(g[tap][k]) * row[R - 1 - k];
          u[((tap * oc_n + oc) * R + kh) * ic_n + ic] = sum;
        }
      }
  return u;
}

// products[((ic0 + i) * SB + j) * Tile + tap][L] = the sum over output channels and kernel rows
// [kh0, kh1] of u's broadcast weight times segment j's transformed column at padded row kh (a
// vector: that row and the next, of each image), for ICB input channels by the row's SB
// segments: 6 x 3 accumulators, their 3 columns loaded once for 6 broadcasts.
template <typename T, int ICB, int SB>
void winograd_rows_grad_input_tile(const T* __restrict columns, const T* __restrict u, int64_t column_step,
                                   int64_t oc_n, int64_t ic_n, int64_t kh0, int64_t kh1, int64_t tap, int64_t ic0,
                                   T* __restrict products) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::kLanes, I = kWinogradRowsImages<T>, R = kWinogradRowsKernel,
                    Tile = kWinogradRowsTile<5>;
  V acc[ICB][SB] = {};
  for (int64_t oc = 0; oc < oc_n; ++oc) {
    const T* column = columns + (oc * SB * Tile + tap) * column_step;
    const T* weights = u + ((tap * oc_n + oc) * R) * ic_n + ic0;
    for (int64_t kh = kh0; kh <= kh1; ++kh) {
      V v[SB];
#pragma GCC unroll 4
      for (int j = 0; j < SB; ++j) load_vec(v[j], column + j * Tile * column_step + kh * I);
#pragma GCC unroll 8
      for (int i = 0; i < ICB; ++i) {
        const T w = weights[kh * ic_n + i];
#pragma GCC unroll 4
        for (int j = 0; j < SB; ++j) acc[i][j] += w * v[j];
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < ICB; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < SB; ++j) store_vec(products + (((ic0 + i) * SB + j) * Tile + tap) * L, acc[i][j]);
}

// conv2d_grad_input_paths' path for worth_winograd_rows_grad_input, with u from
// winograd_rows_grad_input_filters. Returns the groups of kWinogradRowsImages images (from image
// group * kWinogradRowsImages) whose grad_input came out not finite, left for the transposed
// convolution to compute again.
template <typename T>
std::vector<int64_t> winograd_rows_grad_input(const T* grad_output, const T* u, T* grad_input, const Conv2dShape& s) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::kLanes, I = kWinogradRowsImages<T>, R = kWinogradRowsKernel, M = 5,
                    Tile = kWinogradRowsTile<M>;
  const int64_t ic_n = s.in_channels, oc_n = s.out_channels;
  const int64_t pad_top = R - 1 - s.pad_h, pad_left = R - 1 - s.pad_w;
  const int64_t segments = blocks_of(s.in_w, M), pairs = blocks_of(s.in_h, 2);
  // Padded grad_output rows: every row a pair's kernel rows read, and the one after the last, the
  // second row of a vector loaded at it.
  const int64_t padded_rows = 2 * pairs + R;
  const int64_t out_plane = s.out_h * s.out_w, in_plane = s.in_h * s.in_w;
  const int64_t groups = blocks_of(s.batch, I);
  const T* grad_output_end = grad_output + s.batch * oc_n * out_plane;
  std::vector<uint8_t> not_finite(groups, 0);
  parallel_for_ranges(groups, I * oc_n * out_plane * ic_n * R * R, [&](int64_t first, int64_t last) {
    // columns[oc][segment][tap][padded row][I]: the transformed segments, a vector at any row
    // holding it and the next. Of the padding's rows the products read only the one before
    // grad_output's and the one after, set to zero below; zeroing them all took 7 % of LeNet-5's
    // fused conv2 backward. products[ic][segment][tap][L] for one pair of rows.
    const int64_t column_step = padded_rows * I, rows_end = pad_top + s.out_h;
    Scratch<T> columns(oc_n * segments * Tile * column_step), products(ic_n * segments * Tile * L);
    for (int64_t column = 0; column < oc_n * segments * Tile; ++column) {
      if (pad_top > 0) std::fill_n(columns.data() + column * column_step + (pad_top - 1) * I, I, T(0));
      std::fill_n(columns.data() + column * column_step + rows_end * I, I, T(0));
    }
    for (int64_t group = first; group < last; ++group) {
      const int64_t n0 = group * I, images = std::min(I, s.batch - n0);
      for (int64_t oc = 0; oc < oc_n; ++oc)
        for (int64_t r = 0; r < s.out_h; r += 2) {
          // square[h * I + i] = grad_output row r + h of image n0 + i; transposed, square[x] =
          // column x of the 2 x I rows.
          V square[L];
#pragma GCC unroll 16
          for (int64_t lane = 0; lane < L; ++lane) {
            const int64_t i = lane % I, row = r + lane / I;
            square[lane] = V{};
            if (i >= images || row >= s.out_h) continue;
            load_padded_row(square[lane], grad_output + ((n0 + i) * oc_n + oc) * out_plane + row * s.out_w, s.out_w,
                            0, grad_output_end);
          }
          transpose_square<T>(square);
          for (int64_t segment = 0; segment < segments; ++segment) {
            V d[Tile], taps[Tile];
#pragma GCC unroll 16
            for (int j = 0; j < Tile; ++j) {
              const int64_t x = segment * M + j - pad_left;
              d[j] = x >= 0 && x < s.out_w ? square[x] : V{};
            }
            winograd_input_rows<V, T>(d, taps);
            T* column = columns.data() + (oc * segments + segment) * Tile * column_step + (pad_top + r) * I;
#pragma GCC unroll 16
            for (int tap = 0; tap < Tile; ++tap) store_vec(column + tap * column_step, taps[tap]);
          }
        }
      V zero_if_finite{};
      for (int64_t pair = 0; pair < pairs; ++pair) {
        // The kernel rows for which row 2 * pair or the next reads a grad_output row.
        const int64_t kh0 = std::max<int64_t>(0, pad_top - 1 - 2 * pair);
        const int64_t kh1 = std::min<int64_t>(R - 1, pad_top + s.out_h - 1 - 2 * pair);
        const T* pair_columns = columns.data() + 2 * pair * I;
        for (int64_t tap = 0; tap < Tile; ++tap)
          for (int64_t ic0 = 0; ic0 < ic_n; ic0 += 6)
            with_count<6>(std::min<int64_t>(6, ic_n - ic0), [&]<int ICB>() {
              with_count<3>(segments, [&]<int SB>() {
                winograd_rows_grad_input_tile<T, ICB, SB>(pair_columns, u, column_step, oc_n, ic_n, kh0, kh1, tap, ic0,
                                                          products.data());
              });
            });
        for (int64_t ic = 0; ic < ic_n; ++ic) {
          // square[x] = grad_input column x of the pair's rows; transposed, square[h * I + i] =
          // row 2 * pair + h of image n0 + i.
          V square[L];
#pragma GCC unroll 16
          for (int x = 0; x < L; ++x) square[x] = V{};
          for (int64_t segment = 0; segment < segments; ++segment) {
            V m[Tile], out[M];
#pragma GCC unroll 16
            for (int tap = 0; tap < Tile; ++tap)
              load_vec(m[tap], products.data() + ((ic * segments + segment) * Tile + tap) * L);
            winograd_output_rows<V, T>(m, out);
#pragma GCC unroll 8
            for (int o = 0; o < M; ++o)
              if (segment * M + o < s.in_w) {
                square[segment * M + o] = out[o];
                zero_if_finite += out[o] * T(0);
              }
          }
          transpose_square<T>(square);
          for (int64_t lane = 0; lane < L; ++lane) {
            const int64_t i = lane % I, row = 2 * pair + lane / I;
            if (i >= images || row >= s.in_h) continue;
            T* destination = grad_input + ((n0 + i) * ic_n + ic) * in_plane + row * s.in_w;
            // A whole vector where it ends inside the plane: past the row, it writes rows of the plane
            // below it, which are written after it (the pair's second row, or later pairs'). Through
            // memory, a copy of the row's values took 14 % of this path's samples, its loads waiting
            // on the vector's store. Past the plane it would write another channel's or image's rows,
            // some written before it, or past grad_input's end.
            if (row * s.in_w + L <= in_plane) {
              store_vec(destination, square[lane]);
            } else {
              alignas(64) T values[L];
              store_vec(values, square[lane]);
              copy_row(values, s.in_w, destination);
            }
          }
        }
      }
      if (!lanes_zero<T>(zero_if_finite)) not_finite[group] = 1;
    }
  });
  return flagged(not_finite);
}

}  // namespace lenetx::cpu::LENETX_ISA

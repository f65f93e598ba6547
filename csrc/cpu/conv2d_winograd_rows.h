#pragma once
// Stride-1 correlation with 5x5 kernels and few input channels (LeNet-5's conv2: 6 of them, too
// few for conv2d_winograd.h's tiles) by Winograd's F(4, 5) along the rows only. Each output row
// is cut into segments of 4 pixels; per input channel and kernel row, a segment's 4 x 5
// multiply-adds become 8 products of the transformed input segment (B^T d, 8 values) by the
// transformed kernel row (G g):
//   output segment = A^T [ sum over input channels and kernel rows of (G g) * (B^T d) ],
// 2.5x fewer multiply-adds, on the 8x8 tiles' interpolation points (conv2d_winograd.h). Down the
// columns it stays a direct correlation: for each of the 8 transformed taps, a 5-tall kernel slid
// down a column of transformed segments, each broadcast value feeding 5 output rows, as the row
// tiles feed 5 columns (conv2d_row_tiles.h). The direct path ran LeNet-5's conv2 forward at about
// 80 % of the cores' multiply-add peak, short of the target over oneDNN (benchmarks/NOTES.md,
// section 29). A row's transforms mix its values, so a weight that is not finite takes the
// direct paths, and an image whose output comes out not finite is computed again by them.
#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "../shape_checks.h"
#include "conv2d_common.h"
#include "conv2d_row_tiles.h"
#include "conv2d_winograd.h"
#include "micro_gemm.h"
#include "parallel.h"

namespace lenetx::cpu::LENETX_ISA {

constexpr int kWinogradRowsKernel = 5, kWinogradRowsTile = kWinogradTile<kWinogradRowsKernel>;

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

// winograd_output_rows is kWinogradOutput: equal on each unit vector, and linear.
constexpr bool winograd_output_rows_are_the_matrix() {
  for (int k = 0; k < 8; ++k) {
    double m[8] = {}, y[4] = {};
    m[k] = 1;
    winograd_output_rows<double, double>(m, y);
    for (int i = 0; i < 4; ++i)
      if (y[i] != kWinogradOutput<8, 4>[i][k]) return false;
  }
  return true;
}
static_assert(winograd_output_rows_are_the_matrix());

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
// tap, 5 output rows (its pixels) by 3 segments (its rows; LeNet-5's 10 outputs per row) of one
// vector of output channels, the input channels' columns of transformed segments slid past a
// kernel column's 5 transformed weights. With 3 broadcast values beside them, 23 of AVX-512's 32
// registers, the only ISA that takes this path. A segment's accumulator takes a multiply-add
// every 15, which covers the multiply-adds' latency.
constexpr int kWinogradRowsTileRows = 5, kWinogradRowsTileSegments = 3;

// transformed[(segment * 8 + tap) * rows + q] = (B^T d)[tap] for the 8 values d from column
// segment * 4 of padded row q, whose values lie in the image from row_offsets[q] (negative: a
// row of zeros, padding or past the channels) inside pad_w zero columns on its left. A vector of
// rows at a time, transposed in registers; a padded row fits one vector (worth_winograd_rows),
// loaded straight from the image where the vector stays inside the input (which ends at `end`),
// its columns past the row (read from the next) cleared once transposed. Copied into padded rows
// first, then transposed through memory, the input took 0.6 times as long as the products
// (benchmarks/NOTES.md, section 29).
template <typename T>
void winograd_rows_input(const T* image, const T* end, const int64_t* row_offsets, const Conv2dShape& s, int64_t rows,
                         int64_t segments, T* __restrict transformed) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes, Tile = kWinogradRowsTile, M = kWinogradOutputs;
  const int64_t row_end = s.pad_w + s.in_w;
  for (int64_t row0 = 0; row0 < rows; row0 += L) {
    V square[L];
#pragma GCC unroll 16
    for (int m = 0; m < L; ++m) {
      square[m] = V{};
      const int64_t offset = row_offsets[row0 + m];
      if (offset < 0) continue;
      const T* src = image + offset;
      if (s.pad_w == 0 && src + L <= end) {
        load_vec(square[m], src);
      } else {
        T row[L] = {};
        std::copy_n(src, s.in_w, row + s.pad_w);
        load_vec(square[m], row);
      }
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

// gathered[(y * out_w + x) * L] = output pixel (y, x) of a vector of output channels, from its
// segments' products[((tap * segments + segment) * out_h + y) * L] by A^T; false where one is not
// finite. Every transformed value and product feeds some output with a coefficient that is not
// zero, so an input that is not finite always makes one.
template <typename T>
bool winograd_rows_outputs(const T* __restrict products, int64_t out_h, int64_t out_w, int64_t segments,
                           T* __restrict gathered) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::kLanes, Tile = kWinogradRowsTile, M = kWinogradOutputs;
  V zero_if_finite{};  // x * 0 is NaN for an infinite or NaN x
  for (int64_t y = 0; y < out_h; ++y)
    for (int64_t segment = 0; segment < segments; ++segment) {
      V m[Tile], out[M];
#pragma GCC unroll 8
      for (int tap = 0; tap < Tile; ++tap) load_vec(m[tap], products + ((tap * segments + segment) * out_h + y) * L);
      winograd_output_rows<V, T>(m, out);
      zero_if_finite += ((out[0] + out[1]) + (out[2] + out[3])) * T(0);
      T* pixels = gathered + (y * out_w + segment * M) * L;
      if (segment * M + M <= out_w) {
#pragma GCC unroll 4
        for (int i = 0; i < M; ++i) store_vec(pixels + i * L, out[i]);
      } else {
        for (int64_t i = 0; i < out_w - segment * M; ++i) store_vec(pixels + i * L, out[i]);
      }
    }
  bool finite = true;
  for (int l = 0; l < L; ++l) finite = finite && zero_if_finite[l] == T(0);
  return finite;
}

// conv2d_forward's path for worth_winograd_rows, for a weight it found finite. Returns the images
// whose output came out not finite (an input value not finite, or an overflow in the transforms),
// left for the direct paths to compute again.
template <typename T>
std::vector<int64_t> conv2d_winograd_rows(const T* input, const T* weight, const T* bias, T* output,
                                          const Conv2dShape& s) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = Vec<T>::kLanes, R = kWinogradRowsKernel, Tile = kWinogradRowsTile, M = kWinogradOutputs;
  constexpr int RB = kWinogradRowsTileRows, SB = kWinogradRowsTileSegments;
  const int64_t ic_n = s.in_channels, oc_n = s.out_channels, vectors = blocks_of(oc_n, L);
  const int64_t segments = blocks_of(s.out_w, M), row_blocks = blocks_of(s.out_h, RB);
  // Each channel's padded rows, then zero rows down to the last row block's last kernel row, then
  // zero rows up to a whole vector of rows: the transform runs across L rows at a time.
  const int64_t channel_rows = std::max(s.in_h + 2 * s.pad_h, row_blocks * RB + R - 1);
  const int64_t rows = blocks_of(ic_n * channel_rows, L) * L;
  std::vector<int64_t> row_offsets(rows, -1);
  for (int64_t ic = 0; ic < ic_n; ++ic)
    for (int64_t r = 0; r < s.in_h; ++r) row_offsets[ic * channel_rows + s.pad_h + r] = (ic * s.in_h + r) * s.in_w;
  const int64_t in_plane = s.in_h * s.in_w, out_plane = s.out_h * s.out_w;

  // u[vector][tap][ic][kh][L] = (G g)[tap] for g the kernel row weight[oc][ic][kh], zero past
  // oc_n: the kernel row gathered with the output channels innermost, so that the sums run in
  // vectors across them.
  constexpr const auto& g = kWinogradFilter<Tile, R>;
  std::vector<T> u(vectors * Tile * ic_n * R * L), kernel_rows(R * vectors * L, T(0));  // [k][oc]
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
    std::vector<T> transformed(Tile * segments * rows), products(s.out_h * segments * Tile * L);
    std::vector<T> gathered(out_plane * L);
    for (int64_t n = first; n < last; ++n) {
      const T* image = input + n * ic_n * in_plane;
      T* image_output = output + n * oc_n * out_plane;
      winograd_rows_input(image, input + s.batch * ic_n * in_plane, row_offsets.data(), s, rows, segments,
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
        if (!winograd_rows_outputs(products.data(), s.out_h, s.out_w, segments, gathered.data())) not_finite[n] = 1;
        const int64_t oc0 = vector * L;
        store_channels_last_pixels(gathered.data(), out_plane, std::min<int64_t>(L, oc_n - oc0),
                                   bias ? bias + oc0 : nullptr, image_output + oc0 * out_plane, out_plane);
      }
    }
  });
  std::vector<int64_t> redo;
  for (int64_t n = 0; n < s.batch; ++n)
    if (not_finite[n]) redo.push_back(n);
  return redo;
}

}  // namespace lenetx::cpu::LENETX_ISA

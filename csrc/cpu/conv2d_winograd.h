#pragma once
// Stride-1 correlation with 3x3 and 5x5 kernels by Winograd's minimal filtering (Lavin and Gray,
// "Fast Algorithms for Convolutional Neural Networks", 2015): 4x4 outputs per tile, F(4x4, 3x3)
// on 6x6 input tiles and F(4x4, 5x5) on 8x8. Per tile
//   output = A^T [ sum over input channels of (G g G^T) * (B^T d B) ] A,
// where * is elementwise: the Tile x Tile transformed taps are independent matrix products
// (tiles x input channels) times (input channels x output channels), with 36 multiply-adds per
// tile where the direct correlation does 16 * 9 (3x3 kernels, 4x fewer), or 64 where it does
// 16 * 25 (5x5, 6.25x fewer).
//
// The interpolation points are 0, 1, -1, 1/2, -2 (6x6 tiles), then 2 and -1/2 (8x8), and
// infinity: in float32, the 6x6 tiles' rounding error was half that of Lavin's 0, 1, -1, 2, -2
// (benchmarks/NOTES.md, section 11), a few units in the 6th digit of the output's largest value;
// the 8x8 tiles' is about three times that (section 18). conv2d_winograd_rows.h's segments of 9
// values take -1/4 as their eighth finite point (section 31). The transforms mix every value of a
// tile, so an infinite or NaN input or weight would spread NaN over outputs that never read it:
// those take the direct paths instead.
#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <vector>

#include "../shape_checks.h"
#include "conv2d_common.h"
#include "gemm.h"
#include "micro_gemm.h"
#include "parallel.h"
#include "scratch.h"
#include "simd.h"

namespace lenetx::cpu::LENETX_ISA {

// The input tile of an R x R kernel's algorithm: 4 outputs per tile row.
template <int R>
constexpr int kWinogradTile = R + 3;
template <int Tile>
constexpr int kWinogradTaps = Tile * Tile;

// The finite interpolation points, the first Tile - 1 of them; the last point is infinity.
constexpr double kWinogradPoints[] = {0, 1, -1, 0.5, -2, 2, -0.5, -0.25};

template <int Rows, int Columns>
using ConstantMatrix = std::array<std::array<double, Columns>, Rows>;

// B^T of every algorithm on a tile's points (it depends only on them): for finite point j the
// coefficients of the product of x - q over the other finite points q, for infinity over all.
template <int Tile>
constexpr ConstantMatrix<Tile, Tile> winograd_input_matrix() {
  ConstantMatrix<Tile, Tile> m{};
  for (int j = 0; j < Tile; ++j) {
    std::array<double, Tile> poly{};
    poly[0] = 1;
    for (int q = 0; q < Tile - 1; ++q) {
      if (q == j) continue;
      for (int e = Tile - 1; e >= 0; --e) poly[e] = (e > 0 ? poly[e - 1] : 0) - kWinogradPoints[q] * poly[e];
    }
    m[j] = poly;
  }
  return m;
}

// A^T of an algorithm with `Outputs` outputs per tile row: p^i at the finite points, and
// infinity's term only in the last output.
template <int Tile, int Outputs>
constexpr ConstantMatrix<Outputs, Tile> winograd_output_matrix() {
  ConstantMatrix<Outputs, Tile> m{};
  for (int i = 0; i < Outputs; ++i) {
    for (int j = 0; j < Tile - 1; ++j) {
      m[i][j] = 1;
      for (int e = 0; e < i; ++e) m[i][j] *= kWinogradPoints[j];
    }
    m[i][Tile - 1] = i == Outputs - 1 ? 1 : 0;
  }
  return m;
}

// G of a filter of `Taps` taps: p^k over the product of p - q for the other finite points q, and
// for infinity the last tap alone.
template <int Tile, int Taps>
constexpr ConstantMatrix<Tile, Taps> winograd_filter_matrix() {
  ConstantMatrix<Tile, Taps> m{};
  for (int j = 0; j < Tile - 1; ++j) {
    double scale = 1;
    for (int q = 0; q < Tile - 1; ++q)
      if (q != j) scale *= kWinogradPoints[j] - kWinogradPoints[q];
    for (int k = 0; k < Taps; ++k) {
      m[j][k] = 1 / scale;
      for (int e = 0; e < k; ++e) m[j][k] *= kWinogradPoints[j];
    }
  }
  m[Tile - 1][Taps - 1] = 1;
  return m;
}

template <int Tile>
constexpr auto kWinogradInput = winograd_input_matrix<Tile>();
template <int Tile, int Outputs>
constexpr auto kWinogradOutput = winograd_output_matrix<Tile, Outputs>();
template <int Tile, int Taps>
constexpr auto kWinogradFilter = winograd_filter_matrix<Tile, Taps>();

// out(i, j) = sum over k of matrix[i][k] * in(k, j) for i < Rows, j < Columns (K terms). The
// loops unroll completely, so the zero coefficients (half of B^T's) cost nothing and the
// others are constants.
template <int Rows, int K, int Columns, typename V, typename In, typename Out>
__attribute__((always_inline)) inline void multiply_constant(const ConstantMatrix<Rows, K>& matrix, const In& in,
                                                             const Out& out) {
#pragma GCC unroll 8
  for (int i = 0; i < Rows; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < Columns; ++j) {
      V sum{};
      bool first = true;
#pragma GCC unroll 8
      for (int k = 0; k < K; ++k) {
        if (matrix[i][k] == 0) continue;
        const V term = in(k, j) * static_cast<decltype(sum[0] + 0)>(matrix[i][k]);
        sum = first ? term : sum + term;
        first = false;
      }
      out(i, j, sum);
    }
}

// y = B^T x for a column x of a 6x6 input tile, with the sums that the rows share computed once:
// with p = x4 - x2 and q = x3 - x1, rows 3 and 4 are p + 2q and p - q / 2, rows 1 and 2 p + q
// and p - q plus 1.5 (x2 + x3) and 1.5 (x3 - x2), rows 0 and 5 the same five coefficients one
// column apart. 17 additions and multiply-adds instead of the rows' 26 terms: this transform was
// the largest part of the improved LeNet's conv2 after the products (benchmarks/NOTES.md,
// section 13).
template <typename X, typename Scalar>
__attribute__((always_inline)) constexpr void winograd_input_rows(const X (&x)[6], X (&y)[6]) {
  const X p = x[4] - x[2], q = x[3] - x[1];
  y[0] = (x[0] + p - x[2]) + q * Scalar(1.5);
  y[1] = (p + q) + (x[2] + x[3]) * Scalar(1.5);
  y[2] = (p - q) + (x[3] - x[2]) * Scalar(1.5);
  y[3] = p + q * Scalar(2);
  y[4] = p - q * Scalar(0.5);
  y[5] = (x[1] + (x[5] - x[3]) - x[3]) + p * Scalar(1.5);
}

// The same for an 8x8 tile, whose points come in pairs p, -p (1 and -1 in rows 1 and 2, 1/2 and
// -1/2 in rows 3 and 6, -2 and 2 in rows 4 and 5): a pair's rows are the sum and the difference
// of the even columns' terms and the odd columns'. 26 additions and multiply-adds instead of 48.
template <typename X, typename Scalar>
__attribute__((always_inline)) constexpr void winograd_input_rows(const X (&x)[8], X (&y)[8]) {
  const X even1 = x[2] + x[6] - x[4] * Scalar(4.25), odd1 = x[1] + x[5] - x[3] * Scalar(4.25);
  const X even3 = x[6] + x[2] * Scalar(4) - x[4] * Scalar(5), odd3 = x[1] * Scalar(2) + x[5] * Scalar(0.5) - x[3] * Scalar(2.5);
  const X even4 = x[6] + x[2] * Scalar(0.25) - x[4] * Scalar(1.25), odd4 = x[5] * Scalar(2) + x[1] * Scalar(0.5) - x[3] * Scalar(2.5);
  y[0] = (x[6] - x[0]) + (x[2] - x[4]) * Scalar(5.25);
  y[1] = even1 + odd1;
  y[2] = even1 - odd1;
  y[3] = even3 + odd3;
  y[6] = even3 - odd3;
  y[5] = even4 + odd4;
  y[4] = even4 - odd4;
  y[7] = (x[7] - x[1]) + (x[3] - x[5]) * Scalar(5.25);
}

// The same for the 9 values of conv2d_winograd_rows.h's segments of 5 outputs, whose finite
// points are the 8x8 tile's and -1/4: a finite point's row is its row of the 8x8 tile's B^T
// times x + 1/4 (as polynomials), which is that row applied to x'_m = x_{m+1} + x_m / 4; -1/4's
// row is the 8x8 tile's infinity row, and infinity's that row times x + 1/4. 37 additions and
// multiply-adds where the matrix has 62 terms.
template <typename X, typename Scalar>
__attribute__((always_inline)) constexpr void winograd_input_rows(const X (&x)[9], X (&y)[9]) {
  static_assert(kWinogradPoints[7] == -0.25);
  X shifted[8], rows[8];
#pragma GCC unroll 8
  for (int m = 0; m < 8; ++m) shifted[m] = x[m + 1] + x[m] * Scalar(0.25);
  winograd_input_rows<X, Scalar>(shifted, rows);
#pragma GCC unroll 8
  for (int j = 0; j < 7; ++j) y[j] = rows[j];
  y[7] = (x[7] - x[1]) + (x[3] - x[5]) * Scalar(5.25);
  y[8] = rows[7];
}

// winograd_input_rows is kWinogradInput: equal on each unit column, and linear.
template <int Tile>
constexpr bool winograd_input_rows_are_the_matrix() {
  for (int k = 0; k < Tile; ++k) {
    double x[Tile] = {}, y[Tile] = {};
    x[k] = 1;
    winograd_input_rows<double, double>(x, y);
    for (int i = 0; i < Tile; ++i)
      if (y[i] != kWinogradInput<Tile>[i][k]) return false;
  }
  return true;
}
static_assert(winograd_input_rows_are_the_matrix<6>());
static_assert(winograd_input_rows_are_the_matrix<8>());
static_assert(winograd_input_rows_are_the_matrix<9>());

// The 3x3 and 5x5 stride-1 correlations that Winograd's algorithm computes faster than the
// direct paths (benchmarks/NOTES.md, section 11): enough channels to fill the products, and
// outputs larger than one tile.
template <typename T>
bool worth_winograd(const Conv2dShape& s) {
  const bool kernel = (s.kernel_h == 3 && s.kernel_w == 3) || (s.kernel_h == 5 && s.kernel_w == 5);
  return kernel && s.stride_h == 1 && s.stride_w == 1 && s.dilation_h == 1 && s.dilation_w == 1 &&
         s.groups == 1 && s.in_channels >= 8 && s.out_channels >= Vec<T>::kLanes && s.out_h >= 8 && s.out_w >= 8;
}

// Outputs per tile row of the forward algorithms; the block of grad_output that is the filter of
// grad_weight's.
constexpr int kWinogradOutputs = 4;

// The transform of a Size x Size tile: B^T for Tile x Tile input tiles, G for the smaller tiles
// of grad_output (the filter of grad_weight's algorithm).
template <int Tile, int Size>
constexpr const ConstantMatrix<Tile, Size>& winograd_tile_matrix() {
  if constexpr (Size == Tile)
    return kWinogradInput<Tile>;
  else
    return kWinogradFilter<Tile, Size>;
}

// A pointer the compiler must treat as unknown after each step: a transform's 64 loads and 64
// stores at runtime strides otherwise each got an offset of its own, hoisted out of the loops
// and spilled: moving those offsets between the stack and registers took 56 % of the 8x8 input
// transform's samples (benchmarks/NOTES.md, section 26).
template <typename P>
__attribute__((always_inline)) inline void step_opaque(P*& pointer, int64_t step) {
  pointer += step;
  asm("" : "+r"(pointer));
}

// transformed[tap][t][c] = (X d X^T)[tap], X = winograd_tile_matrix<Tile, Size>(), for the Size x Size
// tile d of tile t < tiles, whose top left corner is at row t / tiles_w * step, column
// t % tiles_w * step of `band`, channels-last rows of `row_width` pixels of `channels` values;
// `tile_stride` tiles per tap. B^T goes through winograd_input_rows; G is a constant here, so
// that its zeros cost nothing. A column of d at a time into X d, then a row of X d at a time
// into the taps, in order.
template <typename T, int Tile, int Size>
void winograd_tile_transform(const T* band, int64_t row_width, int64_t channels, int64_t step,
                             int64_t tiles, int64_t tiles_w, int64_t tile_stride, T* transformed) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  const int64_t row_stride = row_width * channels, tap_stride = tile_stride * channels;
  const auto transform = [](const V (&in)[Size], V (&out)[Tile]) __attribute__((always_inline)) {
    if constexpr (Size == Tile) {
      winograd_input_rows<V, T>(in, out);
    } else {
      multiply_constant<Tile, Size, 1, V>(
          winograd_tile_matrix<Tile, Size>(), [&](int k, int) -> const V& { return in[k]; },
          [&](int i, int, const V& v) { out[i] = v; });
    }
  };
  for (int64_t t = 0; t < tiles; ++t) {
    const T* corner = band + ((t / tiles_w) * step * row_width + (t % tiles_w) * step) * channels;
    for (int64_t c = 0; c < channels; c += L) {
      V xd[Tile][Size];
      const T* column = corner + c;
#pragma GCC unroll 8
      for (int j = 0; j < Size; ++j) {
        V d[Size], x_column[Tile];
        const T* value = column;
#pragma GCC unroll 8
        for (int k = 0; k < Size; ++k) {
          load_vec(d[k], value);
          if (k + 1 < Size) step_opaque(value, row_stride);
        }
        transform(d, x_column);
#pragma GCC unroll 8
        for (int i = 0; i < Tile; ++i) xd[i][j] = x_column[i];
        step_opaque(column, channels);
      }
      T* tap = transformed + t * channels + c;
#pragma GCC unroll 8
      for (int j = 0; j < Tile; ++j) {
        V taps[Tile];
        transform(xd[j], taps);
#pragma GCC unroll 8
        for (int i = 0; i < Tile; ++i) {
          store_vec(tap, taps[i]);
          step_opaque(tap, tap_stride);
        }
      }
    }
  }
}

// U[tap][ic][oc] = (G g G^T)[tap] for the kernel g = weight[oc][ic] of input channel ic: the
// kernels of ic as one R x R tile channels-last over the output channels (zero past
// out_channels, up to `oc_stride`), transformed like a tile of grad_output.
template <typename T, int R>
void winograd_kernel_transform(const T* weight, int64_t ic, const Conv2dShape& s, int64_t oc_stride, T* u) {
  constexpr int taps = R * R;
  Scratch<T> kernels(taps * oc_stride, T(0));
  for (int64_t oc = 0; oc < s.out_channels; ++oc)
    for (int tap = 0; tap < taps; ++tap) kernels[tap * oc_stride + oc] = weight[(oc * s.in_channels + ic) * taps + tap];
  winograd_tile_transform<T, kWinogradTile<R>, R>(kernels.data(), R, oc_stride, R, 1, 1, s.in_channels, u + ic * oc_stride);
}

// dst[r][left + x][c] = image[c][first_row + r][x] for the image's rows among `rows` rows from
// first_row (which may be negative: padding) and c < channels; zero elsewhere, up to rows x
// row_width pixels of channel_stride values (a whole number of vectors). A vector of channels by
// a vector of pixels at a time, transposed in registers: one value at a time, this copy took 5-11
// % of the improved LeNet's conv2 (benchmarks/NOTES.md, section 18).
template <typename T>
void channels_last_band(const T* image, int64_t channels, int64_t h, int64_t w, int64_t first_row, int64_t rows,
                        int64_t left, int64_t row_width, int64_t channel_stride, T* dst) {
  constexpr int64_t L = Vec<T>::kLanes;
  std::fill_n(dst, rows * row_width * channel_stride, T(0));
  for (int64_t r = std::max<int64_t>(0, -first_row); r < std::min(rows, h - first_row); ++r) {
    T* row = dst + (r * row_width + left) * channel_stride;
    for (int64_t c0 = 0; c0 < channels; c0 += L) {
      const int64_t loaded = std::min(L, channels - c0);
      const T* src = image + (c0 * h + first_row + r) * w;
      int64_t x = 0;
      for (; x + L <= w; x += L)
        transpose_square_copy<T>(src + x, h * w, loaded, row + x * channel_stride + c0, channel_stride);
      for (; x < w; ++x)
        for (int64_t m = 0; m < loaded; ++m) row[x * channel_stride + c0 + m] = src[m * h * w + x];
    }
  }
}

// How a layer's output is cut into tiles, and its images into work items of a band of tile rows
// each: as many rows as keep a band's transformed tiles (Tile x Tile values per tile and channel,
// input and output side) within about half of L2.
struct WinogradTiling {
  int64_t outputs, tiles_h, tiles_w, band_rows, bands, band_tiles, input_rows, input_w;

  template <typename T, int R>
  static WinogradTiling of(const Conv2dShape& s, int64_t ic_stride, int64_t oc_stride) {
    constexpr int M = kWinogradOutputs;
    WinogradTiling t;
    t.outputs = M;
    t.tiles_h = blocks_of(s.out_h, M), t.tiles_w = blocks_of(s.out_w, M);
    const int64_t bytes_per_tile = kWinogradTaps<kWinogradTile<R>> * (ic_stride + oc_stride) * sizeof(T);
    t.band_rows = std::clamp<int64_t>((1 << 19) / (bytes_per_tile * t.tiles_w), 1, t.tiles_h);
    t.bands = blocks_of(t.tiles_h, t.band_rows), t.band_tiles = t.band_rows * t.tiles_w;
    t.input_rows = t.band_rows * M + R - 1, t.input_w = t.tiles_w * M + R - 1;
    return t;
  }
  // Tiles in band b, and the output row it starts at.
  int64_t tiles_in(int64_t b) const { return std::min(band_rows, tiles_h - b * band_rows) * tiles_w; }
  int64_t first_row(int64_t b) const { return b * band_rows * outputs; }
};

// Band b of image n's input tiles: its rows channels-last inside the zero padding in `band`
// (input_rows x input_w pixels of ic_stride values), transformed into `transformed`, tile_stride
// tiles per tap.
template <typename T, int R>
void winograd_input_band(const T* input, int64_t n, int64_t b, const Conv2dShape& s, const WinogradTiling& tiling,
                         int64_t ic_stride, int64_t tile_stride, T* band, T* transformed) {
  channels_last_band(input + n * s.in_channels * s.in_h * s.in_w, s.in_channels, s.in_h, s.in_w,
                     tiling.first_row(b) - s.pad_h, tiling.input_rows, s.pad_w, tiling.input_w, ic_stride, band);
  constexpr int Tile = kWinogradTile<R>;
  winograd_tile_transform<T, Tile, Tile>(band, tiling.input_w, ic_stride, tiling.outputs, tiling.tiles_in(b),
                                         tiling.tiles_w, tile_stride, transformed);
}

// The output tiles of `tiles` tiles from their products: tile_products(t, oc0) points at the
// products of tile t for output channels [oc0, oc0 + L), tap after tap TapStride apart.
// y = A^T p A plus the bias (`biases`: out_channels rounded up to a vector), written into the
// image's planes `out` from output row first_row. A column of p at a time, added into y: with
// the whole of p loaded first, its 36 vectors (6x6 tiles) and their addresses spilled to the stack.
template <typename T, int R, int TapStride, typename TileProducts>
void winograd_output_transform(const TileProducts& tile_products, int64_t tiles, int64_t tiles_w,
                               int64_t first_row, const T* biases, const Conv2dShape& s, T* out) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes, M = kWinogradOutputs, Tile = kWinogradTile<R>;
  constexpr const auto& a = kWinogradOutput<Tile, M>;
  const int64_t out_plane = s.out_h * s.out_w, out_w = s.out_w;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t oy = first_row + t / tiles_w * M, ox = t % tiles_w * M;
    const int64_t rows = std::min<int64_t>(M, s.out_h - oy), columns = std::min<int64_t>(M, out_w - ox);
    T* corner = out + oy * out_w + ox;
    for (int64_t oc0 = 0; oc0 < s.out_channels; oc0 += L) {
      const T* product = tile_products(t, oc0);
      V bias, y[M][M];
      load_vec(bias, biases + oc0);
#pragma GCC unroll 4
      for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < M; ++j) y[i][j] = bias;
#pragma GCC unroll 8
      for (int k = 0; k < Tile; ++k) {
        V column[Tile], ap[M];
#pragma GCC unroll 8
        for (int i = 0; i < Tile; ++i) load_vec(column[i], product + (i * Tile + k) * TapStride);
        multiply_constant<M, Tile, 1, V>(
            a, [&](int i, int) -> const V& { return column[i]; }, [&](int i, int, const V& x) { ap[i] = x; });
#pragma GCC unroll 4
        for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
          for (int j = 0; j < M; ++j)
            if (a[j][k] != 0) y[i][j] += ap[i] * static_cast<T>(a[j][k]);
      }
      // y[i][j][lane], written plane by plane below: a lane is an output channel.
      alignas(64) T lanes_of[M][M][L];
#pragma GCC unroll 4
      for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < M; ++j) store_vec(lanes_of[i][j], y[i][j]);
      const int64_t lanes = std::min<int64_t>(L, s.out_channels - oc0);
      T* planes = corner + oc0 * out_plane;
      if (rows == M && columns == M) {
        for (int64_t l = 0; l < lanes; ++l)
#pragma GCC unroll 4
          for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
            for (int j = 0; j < M; ++j) planes[l * out_plane + i * out_w + j] = lanes_of[i][j][l];
      } else {
        for (int64_t l = 0; l < lanes; ++l)
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < columns; ++j) planes[l * out_plane + i * out_w + j] = lanes_of[i][j][l];
      }
    }
  }
}

template <typename T, int R, int MB, int NV>
void winograd_correlate(const T* input, const T* weight, const T* bias, T* output, const Conv2dShape& s) {
  constexpr int L = Vec<T>::kLanes, N = NV * L, Taps = kWinogradTaps<kWinogradTile<R>>;
  const int64_t ic_n = s.in_channels, oc_n = s.out_channels;
  const int64_t ic_stride = blocks_of(ic_n, L) * L, panels = blocks_of(oc_n, N), oc_stride = panels * N;
  const WinogradTiling tiling = WinogradTiling::of<T, R>(s, ic_stride, oc_stride);
  // One tile of slack per tap, as in winograd_grad_weight: the improved LeNet's grad_input (16
  // tiles of 32 channels) put a tile's 64 taps 2 KB apart, half of them into one of L1's sets,
  // and its input transform took 1.9x as long (benchmarks/NOTES.md, section 26).
  const int64_t tile_blocks = blocks_of(tiling.band_tiles, MB), tile_stride = tile_blocks * MB + 1;

  Scratch<T> u(Taps * ic_n * oc_stride, T(0));
  parallel_for(ic_n, oc_stride * Taps * R, [&](int64_t ic) {
    winograd_kernel_transform<T, R>(weight, ic, s, oc_stride, u.data());
  });
  const std::vector<int64_t> u_rows = evenly_spaced(ic_n, oc_stride);
  Scratch<T> biases(oc_stride, T(0));
  if (bias) std::copy_n(bias, oc_n, biases.data());

  parallel_for_ranges(s.batch * tiling.bands, tiling.band_tiles * Taps * ic_n * oc_n,
                      [&](int64_t first, int64_t last) {
    // The band's input rows channels-last inside the zero padding, per tap the transformed tiles
    // (the rows of its product), and the products.
    Scratch<T> band(tiling.input_rows * tiling.input_w * ic_stride, T(0));
    Scratch<T> transformed(Taps * tile_stride * ic_stride, T(0));
    Scratch<T> products(Taps * tile_stride * oc_stride, T(0));
    for (int64_t item = first; item < last; ++item) {
      const int64_t n = item / tiling.bands, b = item % tiling.bands, tiles = tiling.tiles_in(b);
      winograd_input_band<T, R>(input, n, b, s, tiling, ic_stride, tile_stride, band.data(), transformed.data());
      // The last block's tile has only the rows left: the improved LeNet's conv2 has 16 tiles per
      // image, VGG's 8x8 layers 4, and padding rows cost 11 and 33 % of their products.
      for (int64_t tap = 0; tap < Taps; ++tap)
        for (int64_t block = 0; block < blocks_of(tiles, MB); ++block)
          with_count<MB>(std::min<int64_t>(MB, tiles - block * MB), [&]<int Rows>() {
            // A block's tiles lie ic_stride apart: with one or two vectors of channels (the
            // improved conv2's forward and grad_input), read from one pointer at constant
            // displacements, which leaves the forward's 16 tiles per image room for 2 blocks
            // of 8 rows instead of 6, 6 and 4 (benchmarks/NOTES.md, section 27).
            const T* first_row = transformed.data() + (tap * tile_stride + block * MB) * ic_stride;
            const auto products_by = [&](const auto& rows) __attribute__((always_inline)) {
              for (int64_t panel = 0; panel < panels; ++panel)
                gemm_tile<T, Rows, NV>(rows, u.data() + tap * ic_n * oc_stride + panel * N, u_rows.data(), ic_n,
                                       products.data() + ((block * panels + panel) * Taps + tap) * MB * N);
            };
            if (ic_stride == L) {
              products_by(StridedRows<T, L>{first_row});
            } else if (ic_stride == 2 * L) {
              products_by(StridedRows<T, 2 * L>{first_row});
            } else {
              RowPointers<T, Rows> rows;
              for (int m = 0; m < Rows; ++m) rows.row[m] = first_row + m * ic_stride;
              products_by(rows);
            }
          });
      const auto tile_products = [&](int64_t t, int64_t oc0) {
        return products.data() + ((t / MB * panels + oc0 / N) * Taps * MB + t % MB) * N + oc0 % N;
      };
      winograd_output_transform<T, R, MB * N>(tile_products, tiles, tiling.tiles_w, tiling.first_row(b), biases.data(), s,
                                              output + n * oc_n * s.out_h * s.out_w);
    }
  });
}

// A's rows a column apart in a row-major matrix of `stride` columns: a(m, k) = a[k * stride + m].
// One pointer that moves a row per step, the rows at constant offsets from it.
template <typename T>
struct ColumnsOf {
  const T* a;
  int64_t stride;
  T operator()(int m, int64_t k) const { return a[k * stride + m]; }
};

// grad_weight[oc][ic] = A_R^T W A_R for the Tile x Tile sums W = sums[tap][ic][oc], vectorized
// across output channels.
template <typename T, int R>
void winograd_weight_transform(const T* sums, int64_t ic, const Conv2dShape& s, int64_t oc_stride,
                               T* grad_weight) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes, Tile = kWinogradTile<R>;
  constexpr const auto& a = kWinogradOutput<Tile, R>;
  const int64_t ic_n = s.in_channels;
  for (int64_t oc0 = 0; oc0 < s.out_channels; oc0 += L) {
    V w[Tile][Tile], aw[R][Tile];
    alignas(64) T y[R][R][L];
#pragma GCC unroll 8
    for (int i = 0; i < Tile; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < Tile; ++j) load_vec(w[i][j], sums + ((i * Tile + j) * ic_n + ic) * oc_stride + oc0);
    multiply_constant<R, Tile, Tile, V>(
        a, [&](int k, int j) -> const V& { return w[k][j]; }, [&](int i, int j, const V& x) { aw[i][j] = x; });
    multiply_constant<R, Tile, R, V>(
        a, [&](int k, int j) -> const V& { return aw[j][k]; }, [&](int i, int j, const V& x) { store_vec(y[j][i], x); });
    for (int64_t l = 0; l < std::min<int64_t>(L, s.out_channels - oc0); ++l)
      for (int kh = 0; kh < R; ++kh)
        for (int kw = 0; kw < R; ++kw) grad_weight[(((oc0 + l) * ic_n + ic) * R + kh) * R + kw] = y[kh][kw][l];
  }
}

// grad_weight by the algorithm F(R x R, M x M) on the same tiles: per tile, the correlation of
// its input tile with its M x M block of grad_output (the filter) gives an R x R kernel's
// worth of sums, so per tap the reduction over tiles is one matrix product (input channels x
// tiles) times (tiles x output channels). The products run over groups of whole images of at
// least kWinogradDepth tiles, added into the sums of their chunk of kImagesPerPartial images;
// each chunk's sums are transformed into a partial grad_weight, and the partials added in order.
// A group's transformed tiles stay in L2 where an image's do (the improved LeNet's conv2: two
// images of 16 tiles); VGG's 8x8 layers group 8 images of 4 tiles, since adding short products
// into sums of 36 x 256 x 256 values cost more than the products. On 8x8 tiles (5x5 kernels) it
// is F(5x5, 4x4).
constexpr int64_t kWinogradDepth = 32;

template <typename T, int R, int MB, int NV>
void winograd_grad_weight(const T* grad_output, const T* input, T* grad_weight, const Conv2dShape& s) {
  constexpr int L = Vec<T>::kLanes, N = NV * L, M = kWinogradOutputs, Tile = kWinogradTile<R>;
  constexpr int Taps = kWinogradTaps<Tile>;
  const int64_t ic_n = s.in_channels, oc_n = s.out_channels;
  const int64_t ic_stride = blocks_of(ic_n, L) * L, panels = blocks_of(oc_n, N), oc_stride = panels * N;
  const WinogradTiling tiling = WinogradTiling::of<T, R>(s, ic_stride, oc_stride);
  const int64_t image_tiles = tiling.tiles_h * tiling.tiles_w;
  const int64_t group_images = std::min(kImagesPerPartial, blocks_of(kWinogradDepth, image_tiles));
  // One tile of slack per tap: a group's tiles are often a power of two (16 or 64), and a tile's
  // stores, a power of two of KB apart, fell into a few of L1's sets (benchmarks/NOTES.md,
  // section 18).
  const int64_t tile_stride = group_images * image_tiles + 1;
  const int64_t chunks = blocks_of(s.batch, kImagesPerPartial), weights = oc_n * ic_n * R * R;
  const std::vector<int64_t> go_rows = evenly_spaced(tile_stride, oc_stride);

  const ChunkPartials<T> partials(chunks, weights, grad_weight);
  parallel_for_ranges(chunks, kImagesPerPartial * image_tiles * Taps * ic_n * oc_n,
                      [&](int64_t first, int64_t last) {
    Scratch<T> band(tiling.input_rows * tiling.input_w * ic_stride, T(0));
    Scratch<T> go_band(tiling.band_rows * M * tiling.tiles_w * M * oc_stride, T(0));
    Scratch<T> transformed(Taps * tile_stride * ic_stride, T(0));
    Scratch<T> go_transformed(Taps * tile_stride * oc_stride, T(0));
    Scratch<T> sums(Taps * ic_n * oc_stride, T(0));
    alignas(64) T tile[MB * N];
    for (int64_t chunk = first; chunk < last; ++chunk) {
      const int64_t chunk_end = std::min(s.batch, (chunk + 1) * kImagesPerPartial);
      for (int64_t group = chunk * kImagesPerPartial; group < chunk_end; group += group_images) {
        const int64_t images = std::min(group_images, chunk_end - group), tiles = images * image_tiles;
        for (int64_t i = 0; i < images; ++i)
          for (int64_t b = 0; b < tiling.bands; ++b) {
            const int64_t n = group + i, t0 = i * image_tiles + b * tiling.band_tiles;
            winograd_input_band<T, R>(input, n, b, s, tiling, ic_stride, tile_stride, band.data(),
                                transformed.data() + t0 * ic_stride);
            channels_last_band(grad_output + n * oc_n * s.out_h * s.out_w, oc_n, s.out_h, s.out_w, tiling.first_row(b),
                               tiling.band_rows * M, 0, tiling.tiles_w * M, oc_stride, go_band.data());
            winograd_tile_transform<T, Tile, M>(go_band.data(), tiling.tiles_w * M, oc_stride, M,
                                                tiling.tiles_in(b), tiling.tiles_w, tile_stride,
                                                go_transformed.data() + t0 * oc_stride);
          }
        for (int64_t tap = 0; tap < Taps; ++tap)
          for (int64_t ic0 = 0; ic0 < ic_n; ic0 += MB)
            with_count<MB>(std::min<int64_t>(MB, ic_n - ic0), [&]<int Rows>() {
              for (int64_t panel = 0; panel < panels; ++panel) {
                gemm_tile<T, Rows, NV>(ColumnsOf<T>{transformed.data() + tap * tile_stride * ic_stride + ic0, ic_stride},
                                       go_transformed.data() + tap * tile_stride * oc_stride + panel * N, go_rows.data(),
                                       tiles, tile);
                store_tile(tile, N, Rows, N, group > chunk * kImagesPerPartial,
                           sums.data() + (tap * ic_n + ic0) * oc_stride + panel * N, oc_stride);
              }
            });
      }
      for (int64_t ic = 0; ic < ic_n; ++ic)
        winograd_weight_transform<T, R>(sums.data(), ic, s, oc_stride, partials.data() + chunk * weights);
    }
  });
  partials.sum();
}

// The register tile of the products: rows of MB tiles (forward) or input channels
// (grad_weight) against NV vectors of output channels. Not with_tile's choice, which takes 12 or
// 16 rows for one or two vectors: rows read in place through their own pointers take a register
// each, and more than 8 spill. On AVX-512, 8 rows of 2 vectors: grad_weight's rows (ColumnsOf)
// and the forward's of up to 2 vectors of channels (StridedRows) come from one pointer.
// AVX2's 16 vector registers hold half the accumulators; 4 vectors or more run there in 6x2
// tiles over panels of 2 vectors, 1.2-1.3x as fast as 3x4 tiles (benchmarks/NOTES.md, section 14).
template <typename T, typename Fn>
void with_winograd_tile(const Conv2dShape& s, const Fn& fn) {
  constexpr bool wide = kVectorRegisters == 32;
  const int64_t vectors = blocks_of(s.out_channels, Vec<T>::kLanes);
  const auto by_kernel = [&]<int MB, int NV>() {
    if (s.kernel_h == 3)
      fn.template operator()<3, MB, NV>();
    else
      fn.template operator()<5, MB, NV>();
  };
  if (vectors == 1)
    by_kernel.template operator()<8, 1>();
  else if (vectors == 2)
    by_kernel.template operator()<wide ? 8 : 6, 2>();
  else if (vectors == 3)
    by_kernel.template operator()<wide ? 8 : 4, 3>();
  else if (wide)
    by_kernel.template operator()<6, 4>();
  else
    by_kernel.template operator()<6, 2>();
}

// conv2d_forward's Winograd path, for a weight conv2d_forward found finite; false (nothing
// written) where a value of the input is not finite.
template <typename T>
bool conv2d_winograd(const T* input, const T* weight, const T* bias, T* output, const Conv2dShape& s) {
  if (!all_finite(input, s.batch * s.in_channels * s.in_h * s.in_w)) return false;
  with_winograd_tile<T>(s, [&]<int R, int MB, int NV>() { winograd_correlate<T, R, MB, NV>(input, weight, bias, output, s); });
  return true;
}

// The grad_weight paths' Winograd path; false (nothing written) where a value of grad_output or
// the input is not finite.
template <typename T>
bool conv2d_grad_weight_winograd(const T* grad_output, const T* input, T* grad_weight, const Conv2dShape& s) {
  if (!all_finite(grad_output, s.batch * s.out_channels * s.out_h * s.out_w) ||
      !all_finite(input, s.batch * s.in_channels * s.in_h * s.in_w))
    return false;
  with_winograd_tile<T>(s, [&]<int R, int MB, int NV>() {
    winograd_grad_weight<T, R, MB, NV>(grad_output, input, grad_weight, s);
  });
  return true;
}

}  // namespace lenetx::cpu::LENETX_ISA

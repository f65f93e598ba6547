#pragma once
// Stride-1 correlation with 3x3 and 5x5 kernels by Winograd's minimal filtering (Lavin and Gray,
// "Fast Algorithms for Convolutional Neural Networks", 2015): F(4x4, 3x3) and F(2x2, 5x5), both on
// 6x6 input tiles. Per tile
//   output = A^T [ sum over input channels of (G g G^T) * (B^T d B) ] A,
// where * is elementwise: the 6x6 = 36 transformed taps are 36 independent matrix products
// (tiles x input channels) times (input channels x output channels), with 36 multiply-adds per
// tile where the direct correlation does 16 * 9 (3x3 kernels, 4x fewer) or 4 * 25 (5x5, 2.8x
// fewer).
//
// The interpolation points are 0, 1, -1, 1/2, -2 and infinity: in float32, their rounding error
// was half that of Lavin's 0, 1, -1, 2, -2 (benchmarks/NOTES.md, section 11), a few units in the
// 6th digit of the output's largest value. The transforms mix every value of a tile, so an
// infinite or NaN input or weight would spread NaN over outputs that never read it: those take
// the direct paths instead.
#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "../shape_checks.h"
#include "conv2d_common.h"
#include "micro_gemm.h"
#include "parallel.h"
#include "simd.h"

namespace lenetx::cpu {

constexpr int kWinogradTile = 6;
constexpr int kWinogradTaps = kWinogradTile * kWinogradTile;

// B^T of both algorithms (it depends only on the points).
constexpr double kWinogradInput[6][6] = {
    {1, -1.5, -2, 1.5, 1, 0}, {0, -1, 0.5, 2.5, 1, 0}, {0, 1, -2.5, 0.5, 1, 0},
    {0, -2, -1, 2, 1, 0},     {0, 0.5, -1, -0.5, 1, 0}, {0, 1, -1.5, -2, 1.5, 1},
};

// G (6 x R) and A^T (M x 6) of F(M x M, R x R), M + R - 1 = 6.
template <int R>
struct WinogradMatrices;

template <>
struct WinogradMatrices<3> {
  static constexpr int kOut = 4;
  static constexpr double kKernel[6][3] = {
      {1, 0, 0}, {1. / 3, 1. / 3, 1. / 3}, {-1. / 3, 1. / 3, -1. / 3},
      {-16. / 15, -8. / 15, -4. / 15}, {1. / 15, -2. / 15, 4. / 15}, {0, 0, 1},
  };
  static constexpr double kOutput[4][6] = {
      {1, 1, 1, 1, 1, 0}, {0, 1, -1, 0.5, -2, 0}, {0, 1, 1, 0.25, 4, 0}, {0, 1, -1, 0.125, -8, 1},
  };
};

template <>
struct WinogradMatrices<5> {
  static constexpr int kOut = 2;
  static constexpr double kKernel[6][5] = {
      {1, 0, 0, 0, 0},
      {1. / 3, 1. / 3, 1. / 3, 1. / 3, 1. / 3},
      {-1. / 3, 1. / 3, -1. / 3, 1. / 3, -1. / 3},
      {-16. / 15, -8. / 15, -4. / 15, -2. / 15, -1. / 15},
      {1. / 15, -2. / 15, 4. / 15, -8. / 15, 16. / 15},
      {0, 0, 0, 0, 1},
  };
  static constexpr double kOutput[2][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 0.5, -2, 1}};
};

// out(i, j) = sum over k of matrix[i][k] * in(k, j) for i < Rows, j < Columns (K terms). The
// loops unroll completely, so the zero coefficients (half of B^T's) cost nothing and the
// others are constants.
template <int Rows, int K, int Columns, typename V, typename In, typename Out>
__attribute__((always_inline)) inline void multiply_constant(const double (&matrix)[Rows][K], const In& in,
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

// Every value of x[0, count) finite.
template <typename T>
LENETX_SIMD_CLONES bool all_finite(const T* x, int64_t count) {
  std::atomic<bool> finite{true};
  constexpr int64_t kBlock = 1 << 14;
  parallel_for(blocks_of(count, kBlock), kBlock, [&](int64_t block) {
    const T* values = x + block * kBlock;
    T zero_if_finite = 0;  // x * 0 is NaN for an infinite or NaN x
#pragma omp simd reduction(+ : zero_if_finite)
    for (int64_t i = 0; i < std::min(kBlock, count - block * kBlock); ++i) zero_if_finite += values[i] * T(0);
    if (zero_if_finite != T(0)) finite = false;
  });
  return finite;
}

// The 3x3 and 5x5 stride-1 correlations that Winograd's algorithm computes faster than the
// direct paths (benchmarks/NOTES.md, section 11): enough channels to fill the products, and
// outputs larger than one tile.
template <typename T>
bool worth_winograd(const Conv2dShape& s) {
  const bool kernel = (s.kernel_h == 3 && s.kernel_w == 3) || (s.kernel_h == 5 && s.kernel_w == 5);
  return kernel && s.stride_h == 1 && s.stride_w == 1 && s.dilation_h == 1 && s.dilation_w == 1 &&
         s.groups == 1 && s.in_channels >= 8 && s.out_channels >= Vec<T>::kLanes && s.out_h >= 8 && s.out_w >= 8;
}

// U[tap][ic][oc] = (G g G^T)[tap] for the kernel g = weight[oc][ic] of input channel ic,
// vectorized across output channels; zero for oc past out_channels, up to `oc_stride`.
template <typename T, int R>
LENETX_SIMD_CLONES void winograd_kernel_transform(const T* weight, int64_t ic, const Conv2dShape& s,
                                                  int64_t oc_stride, T* u) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  const int64_t ic_n = s.in_channels, oc_n = s.out_channels;
  for (int64_t oc0 = 0; oc0 < oc_stride; oc0 += L) {
    V g[R][R], gg[kWinogradTile][R];
    for (int kh = 0; kh < R; ++kh)
      for (int kw = 0; kw < R; ++kw)
        for (int l = 0; l < L; ++l)
          g[kh][kw][l] = oc0 + l < oc_n ? weight[(((oc0 + l) * ic_n + ic) * R + kh) * R + kw] : T(0);
    multiply_constant<kWinogradTile, R, R, V>(
        WinogradMatrices<R>::kKernel, [&](int k, int j) { return g[k][j]; },
        [&](int i, int j, const V& x) { gg[i][j] = x; });
    multiply_constant<kWinogradTile, R, kWinogradTile, V>(
        WinogradMatrices<R>::kKernel, [&](int k, int j) { return gg[j][k]; },
        [&](int i, int j, const V& x) { store_vec(u + ((j * kWinogradTile + i) * ic_n + ic) * oc_stride + oc0, x); });
  }
}

// transformed[tap][t][c] = (B^T d B)[tap] for the 6x6 input tile d of tile t < tiles, whose top
// left corner is at row t / tiles_w * step, column t % tiles_w * step of `band`, channels-last
// rows of `row_width` pixels of `channels` values; `tile_stride` tiles per tap.
template <typename T>
LENETX_SIMD_CLONES void winograd_input_transform(const T* band, int64_t row_width, int64_t channels,
                                                 int64_t step, int64_t tiles, int64_t tiles_w,
                                                 int64_t tile_stride, T* transformed) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  for (int64_t t = 0; t < tiles; ++t) {
    const T* corner = band + ((t / tiles_w) * step * row_width + (t % tiles_w) * step) * channels;
    for (int64_t c = 0; c < channels; c += L) {
      V d[kWinogradTile][kWinogradTile], bd[kWinogradTile][kWinogradTile];
#pragma GCC unroll 6
      for (int i = 0; i < kWinogradTile; ++i)
#pragma GCC unroll 6
        for (int j = 0; j < kWinogradTile; ++j) load_vec(d[i][j], corner + (i * row_width + j) * channels + c);
      multiply_constant<kWinogradTile, kWinogradTile, kWinogradTile, V>(
          kWinogradInput, [&](int k, int j) { return d[k][j]; }, [&](int i, int j, const V& x) { bd[i][j] = x; });
      multiply_constant<kWinogradTile, kWinogradTile, kWinogradTile, V>(
          kWinogradInput, [&](int k, int j) { return bd[j][k]; },
          [&](int i, int j, const V& x) { store_vec(transformed + ((j * kWinogradTile + i) * tile_stride + t) * channels + c, x); });
    }
  }
}

// The output tiles of `tiles` tiles from their products: tile_products(t, oc0) points at the
// products of tile t for output channels [oc0, oc0 + L), tap after tap `tap_stride` apart.
// y = A^T p A plus the bias (`biases`: out_channels rounded up to a vector), written into the
// image's planes `out` from output row first_row.
template <typename T, int R, typename TileProducts>
LENETX_SIMD_CLONES void winograd_output_transform(const TileProducts& tile_products, int64_t tap_stride,
                                                  int64_t tiles, int64_t tiles_w, int64_t first_row,
                                                  const T* biases, const Conv2dShape& s, T* out) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes, M = WinogradMatrices<R>::kOut;
  const int64_t out_plane = s.out_h * s.out_w, out_w = s.out_w;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t oy = first_row + t / tiles_w * M, ox = t % tiles_w * M;
    const int64_t rows = std::min<int64_t>(M, s.out_h - oy), columns = std::min<int64_t>(M, out_w - ox);
    T* corner = out + oy * out_w + ox;
    for (int64_t oc0 = 0; oc0 < s.out_channels; oc0 += L) {
      const T* product = tile_products(t, oc0);
      V p[kWinogradTile][kWinogradTile], ap[M][kWinogradTile], bias;
#pragma GCC unroll 6
      for (int i = 0; i < kWinogradTile; ++i)
#pragma GCC unroll 6
        for (int j = 0; j < kWinogradTile; ++j) load_vec(p[i][j], product + (i * kWinogradTile + j) * tap_stride);
      load_vec(bias, biases + oc0);
      // y[i][j][lane], written plane by plane below: a lane is an output channel.
      alignas(64) T y[M][M][L];
      multiply_constant<M, kWinogradTile, kWinogradTile, V>(
          WinogradMatrices<R>::kOutput, [&](int k, int j) { return p[k][j]; },
          [&](int i, int j, const V& x) { ap[i][j] = x; });
      multiply_constant<M, kWinogradTile, M, V>(
          WinogradMatrices<R>::kOutput, [&](int k, int j) { return ap[j][k]; },
          [&](int i, int j, const V& x) { store_vec(y[j][i], x + bias); });
      const int64_t lanes = std::min<int64_t>(L, s.out_channels - oc0);
      T* planes = corner + oc0 * out_plane;
      if (rows == M && columns == M) {
        for (int64_t l = 0; l < lanes; ++l)
#pragma GCC unroll 4
          for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
            for (int j = 0; j < M; ++j) planes[l * out_plane + i * out_w + j] = y[i][j][l];
      } else {
        for (int64_t l = 0; l < lanes; ++l)
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < columns; ++j) planes[l * out_plane + i * out_w + j] = y[i][j][l];
      }
    }
  }
}

template <typename T, int R, int MB, int NV>
void winograd_correlate(const T* input, const T* weight, const T* bias, T* output, const Conv2dShape& s) {
  constexpr int L = Vec<T>::kLanes, N = NV * L, M = WinogradMatrices<R>::kOut;
  const int64_t ic_n = s.in_channels, oc_n = s.out_channels;
  const int64_t ic_stride = blocks_of(ic_n, L) * L, panels = blocks_of(oc_n, N), oc_stride = panels * N;
  const int64_t tiles_h = blocks_of(s.out_h, M), tiles_w = blocks_of(s.out_w, M);
  const int64_t padded_w = tiles_w * M + R - 1;

  std::vector<T> u(kWinogradTaps * ic_n * oc_stride);
  parallel_for(ic_n, oc_stride * kWinogradTaps * R, [&](int64_t ic) {
    winograd_kernel_transform<T, R>(weight, ic, s, oc_stride, u.data());
  });

  // Work items are bands of tile rows of one image, as many as keep a band's transformed input
  // and its products (36 values per tile and channel) within about half of L2.
  const int64_t bytes_per_tile = kWinogradTaps * (ic_stride + oc_stride) * sizeof(T);
  const int64_t band_rows = std::clamp<int64_t>((1 << 19) / (bytes_per_tile * tiles_w), 1, tiles_h);
  const int64_t bands = blocks_of(tiles_h, band_rows), band_tiles = band_rows * tiles_w;
  const int64_t tile_blocks = blocks_of(band_tiles, MB), tile_stride = tile_blocks * MB;
  const int64_t band_input_rows = band_rows * M + R - 1;
  const std::vector<int64_t> u_rows = evenly_spaced(ic_n, oc_stride);
  const int64_t plane = s.in_h * s.in_w;
  std::vector<T> biases(oc_stride, T(0));
  if (bias) std::copy_n(bias, oc_n, biases.begin());

  parallel_for_ranges(s.batch * bands, band_tiles * kWinogradTaps * ic_n * oc_n, [&](int64_t first, int64_t last) {
    // The band's input rows channels-last inside the zero padding (lanes past the channels stay
    // zero), per tap the transformed tiles (the rows of its product), and the products.
    std::vector<T> band(band_input_rows * padded_w * ic_stride);
    std::vector<T> transformed(kWinogradTaps * tile_stride * ic_stride, T(0));
    std::vector<T> products(kWinogradTaps * tile_stride * oc_stride);
    for (int64_t item = first; item < last; ++item) {
      const int64_t n = item / bands, first_tile_row = item % bands * band_rows;
      const int64_t tiles = std::min(band_rows, tiles_h - first_tile_row) * tiles_w;
      const int64_t first_row = first_tile_row * M - s.pad_h;  // the input row of the band's first

      std::fill(band.begin(), band.end(), T(0));
      for (int64_t r = std::max<int64_t>(0, -first_row); r < std::min(band_input_rows, s.in_h - first_row); ++r) {
        T* row = band.data() + (r * padded_w + s.pad_w) * ic_stride;
        for (int64_t ic = 0; ic < ic_n; ++ic) {
          const T* src = input + (n * ic_n + ic) * plane + (first_row + r) * s.in_w;
          for (int64_t x = 0; x < s.in_w; ++x) row[x * ic_stride + ic] = src[x];
        }
      }
      winograd_input_transform(band.data(), padded_w, ic_stride, M, tiles, tiles_w, tile_stride, transformed.data());

      for (int64_t tap = 0; tap < kWinogradTaps; ++tap)
        for (int64_t block = 0; block < blocks_of(tiles, MB); ++block) {
          RowPointers<T, MB> rows;
          for (int m = 0; m < MB; ++m) rows.row[m] = transformed.data() + (tap * tile_stride + block * MB + m) * ic_stride;
          for (int64_t panel = 0; panel < panels; ++panel)
            gemm_tile<T, MB, NV>(rows, u.data() + tap * ic_n * oc_stride + panel * N, u_rows.data(), ic_n,
                                 products.data() + ((tap * tile_blocks + block) * panels + panel) * MB * N);
        }

      const auto tile_products = [&](int64_t t, int64_t oc0) {
        return products.data() + ((t / MB * panels + oc0 / N) * MB + t % MB) * N + oc0 % N;
      };
      winograd_output_transform<T, R>(tile_products, tile_blocks * panels * MB * N, tiles, tiles_w,
                                      first_tile_row * M, biases.data(), s, output + n * oc_n * s.out_h * s.out_w);
    }
  });
}

// conv2d_forward's Winograd path; false (nothing written) where a value of the input or the
// weight is not finite.
template <typename T>
bool conv2d_winograd(const T* input, const T* weight, const T* bias, T* output, const Conv2dShape& s) {
  if (!all_finite(weight, s.out_channels * s.in_channels * s.kernel_h * s.kernel_w) ||
      !all_finite(input, s.batch * s.in_channels * s.in_h * s.in_w))
    return false;
  const int64_t vectors = blocks_of(s.out_channels, Vec<T>::kLanes);
  const auto run = [&]<int R>() {
    if (vectors == 1)
      winograd_correlate<T, R, 8, 1>(input, weight, bias, output, s);
    else if (vectors == 2)
      winograd_correlate<T, R, 6, 2>(input, weight, bias, output, s);
    else if (vectors == 3)
      winograd_correlate<T, R, 8, 3>(input, weight, bias, output, s);
    else
      winograd_correlate<T, R, 6, 4>(input, weight, bias, output, s);
  };
  if (s.kernel_h == 3)
    run.template operator()<3>();
  else
    run.template operator()<5>();
  return true;
}

}  // namespace lenetx::cpu

#pragma once
// Forward with 3- or 5-wide kernels, stride 1 along rows (LeNet's conv2: 16 output channels; the
// improved LeNet's conv2: 32, and its grad_input, a correlation; VGG's 8x8 grad_inputs), one
// vector of output channels at a time. A tile holds MB adjacent output pixels of one row; each
// input value is broadcast once and feeds every (pixel, kernel column) pair that reads it, so a
// broadcast serves kernel_w multiply-adds instead of one, and no lane is spent on padding
// columns.
#include <ATen/ATen.h>

#include <algorithm>
#include <memory>
#include <type_traits>
#include <vector>

#include "../shape_checks.h"
#include "block_loops.h"
#include "conv2d_common.h"
#include "micro_gemm.h"
#include "parallel.h"
#include "scratch.h"

namespace lenetx::cpu::LENETX_ISA {

#if defined(__x86_64__) && LENETX_VECTOR_BYTES == 32
// row_tile<float, 5, 5, 2> on AVX2 (LeNet-5's conv2 forward), one (kh, ic) step per asm
// statement: its 10 accumulators, the kernel row's 5 weights (ymm10-ymm14) and the broadcast
// input value (ymm15) fill the 16 registers exactly. GCC compiled the C++ loop with an
// accumulator on the stack, multiply-adds that overwrite a weight or the broadcast, and register
// copies: the tiles ran at 83 % of the cores' multiply-add peak, here at 95 %
// (benchmarks/NOTES.md, section 24). Each line broadcasts input column c of row r and adds it
// times kernel column kw into the accumulator of pixel c - kw of that row (r * 5 + c - kw), in
// row_tile's order of sums, so that both give the same bits.
#define LENETX_BROADCAST(r, c) "vbroadcastss " #c "*4(%[row" #r "]), %%ymm15\n\t"
#define LENETX_FMA(kw, a) "vfmadd231ps %%ymm1" #kw ", %%ymm15, %[a" #a "]\n\t"
inline void row_tile_float_5x5x2_avx2(const float* __restrict in, int64_t plane, int64_t row_step, int64_t rows_apart,
                                      const float* __restrict w, int64_t kernel_h, int64_t channels, int64_t rows,
                                      int64_t pixels, float* __restrict out, int64_t out_row) {
  using V = Vec<float>::type;
  constexpr int L = Vec<float>::kLanes;
  // Apart, not an array: an array's elements went back to the stack after every step.
  V a0{}, a1{}, a2{}, a3{}, a4{}, a5{}, a6{}, a7{}, a8{}, a9{};
  for (int64_t kh = 0; kh < kernel_h; ++kh)
    for (int64_t ic = 0; ic < channels; ++ic) {
      const float* row0 = in + ic * plane + kh * row_step;
      const float* row1 = row0 + rows_apart;
      const float* taps = w + (kh * channels + ic) * 5 * L;
      asm("vmovups (%[w]), %%ymm10\n\t"
          "vmovups 32(%[w]), %%ymm11\n\t"
          "vmovups 64(%[w]), %%ymm12\n\t"
          "vmovups 96(%[w]), %%ymm13\n\t"
          "vmovups 128(%[w]), %%ymm14\n\t"
          LENETX_BROADCAST(0, 0) LENETX_FMA(0, 0)
          LENETX_BROADCAST(1, 0) LENETX_FMA(0, 5)
          LENETX_BROADCAST(0, 1) LENETX_FMA(0, 1) LENETX_FMA(1, 0)
          LENETX_BROADCAST(1, 1) LENETX_FMA(0, 6) LENETX_FMA(1, 5)
          LENETX_BROADCAST(0, 2) LENETX_FMA(0, 2) LENETX_FMA(1, 1) LENETX_FMA(2, 0)
          LENETX_BROADCAST(1, 2) LENETX_FMA(0, 7) LENETX_FMA(1, 6) LENETX_FMA(2, 5)
          LENETX_BROADCAST(0, 3) LENETX_FMA(0, 3) LENETX_FMA(1, 2) LENETX_FMA(2, 1) LENETX_FMA(3, 0)
          LENETX_BROADCAST(1, 3) LENETX_FMA(0, 8) LENETX_FMA(1, 7) LENETX_FMA(2, 6) LENETX_FMA(3, 5)
          LENETX_BROADCAST(0, 4) LENETX_FMA(0, 4) LENETX_FMA(1, 3) LENETX_FMA(2, 2) LENETX_FMA(3, 1) LENETX_FMA(4, 0)
          LENETX_BROADCAST(1, 4) LENETX_FMA(0, 9) LENETX_FMA(1, 8) LENETX_FMA(2, 7) LENETX_FMA(3, 6) LENETX_FMA(4, 5)
          LENETX_BROADCAST(0, 5) LENETX_FMA(1, 4) LENETX_FMA(2, 3) LENETX_FMA(3, 2) LENETX_FMA(4, 1)
          LENETX_BROADCAST(1, 5) LENETX_FMA(1, 9) LENETX_FMA(2, 8) LENETX_FMA(3, 7) LENETX_FMA(4, 6)
          LENETX_BROADCAST(0, 6) LENETX_FMA(2, 4) LENETX_FMA(3, 3) LENETX_FMA(4, 2)
          LENETX_BROADCAST(1, 6) LENETX_FMA(2, 9) LENETX_FMA(3, 8) LENETX_FMA(4, 7)
          LENETX_BROADCAST(0, 7) LENETX_FMA(3, 4) LENETX_FMA(4, 3)
          LENETX_BROADCAST(1, 7) LENETX_FMA(3, 9) LENETX_FMA(4, 8)
          LENETX_BROADCAST(0, 8) LENETX_FMA(4, 4)
          LENETX_BROADCAST(1, 8) LENETX_FMA(4, 9)
          : [a0] "+x"(a0), [a1] "+x"(a1), [a2] "+x"(a2), [a3] "+x"(a3), [a4] "+x"(a4), [a5] "+x"(a5), [a6] "+x"(a6),
            [a7] "+x"(a7), [a8] "+x"(a8), [a9] "+x"(a9)
          : [row0] "r"(row0), [row1] "r"(row1), [w] "r"(taps), "m"(*reinterpret_cast<const float(*)[9]>(row0)),
            "m"(*reinterpret_cast<const float(*)[9]>(row1)), "m"(*reinterpret_cast<const float(*)[5 * L]>(taps))
          : "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
    }
  const V acc[2][5] = {{a0, a1, a2, a3, a4}, {a5, a6, a7, a8, a9}};
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t m = 0; m < pixels; ++m) store_vec(out + r * out_row + m * L, acc[r][m]);
}
#undef LENETX_BROADCAST
#undef LENETX_FMA
#endif

// out[r * out_row + m * L] = sum over kh, ic and kw of
// in[ic * plane + kh * row_step + r * rows_apart + m + kw] * w[kh][ic][kw], for the first `rows` of
// RB output rows r and the first `pixels` of MB pixels m, w packed as [kh][ic][kw][one vector of
// output channels]. The weights loaded for a (kh, ic) serve all RB rows, and RB rows put the
// multiply-adds into one accumulator RB times as far apart (row_tile_rows).
template <typename T, int MB, int KW, int RB>
void row_tile(const T* __restrict in, int64_t plane, int64_t row_step, int64_t rows_apart, const T* __restrict w,
              int64_t kernel_h, int64_t channels, int64_t rows, int64_t pixels, T* __restrict out, int64_t out_row) {
#if defined(__x86_64__) && LENETX_VECTOR_BYTES == 32
  if constexpr (std::is_same_v<T, float> && MB == 5 && KW == 5 && RB == 2) {
    row_tile_float_5x5x2_avx2(in, plane, row_step, rows_apart, w, kernel_h, channels, rows, pixels, out, out_row);
    return;
  }
#endif
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  V acc[RB][MB];
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 32
    for (int m = 0; m < MB; ++m) acc[r][m] = V{};
  for (int64_t kh = 0; kh < kernel_h; ++kh)
    for (int64_t ic = 0; ic < channels; ++ic) {
      const T* row = in + ic * plane + kh * row_step;
      const T* taps = w + (kh * channels + ic) * KW * L;
      V weights[KW];
#pragma GCC unroll 8
      for (int kw = 0; kw < KW; ++kw) load_vec(weights[kw], taps + kw * L);
#pragma GCC unroll 40
      for (int c = 0; c < MB + KW - 1; ++c)
#pragma GCC unroll 4
        for (int r = 0; r < RB; ++r) {
          const T value = row[r * rows_apart + c];
#pragma GCC unroll 8
          for (int kw = 0; kw < KW; ++kw)
            if (c - kw >= 0 && c - kw < MB) acc[r][c - kw] += value * weights[kw];
        }
    }
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 32
    for (int m = 0; m < MB; ++m)
      if (r < rows && m < pixels) store_vec(out + r * out_row + m * L, acc[r][m]);
}

// Every vector of output channels more than half used (the last one holds more than half a
// vector), a kernel row without gaps read along an output row without stride.
template <typename T>
bool worth_row_tiles(const Conv2dShape& s) {
  const int64_t ocg = s.out_channels_per_group();
  return 2 * ocg > blocks_of(ocg, Vec<T>::kLanes) * Vec<T>::kLanes && s.stride_w == 1 && s.dilation_w == 1 &&
         (s.kernel_w == 3 || s.kernel_w == 5);
}

template <typename T, int MB, int KW, int RB>
void correlate_row_tiles(const T* input, const T* weight, const T* bias, T* output, const Conv2dShape& s) {
  constexpr int64_t L = Vec<T>::kLanes;
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t taps = s.kernel_h * s.kernel_w, out_plane = s.out_h * s.out_w, vectors = blocks_of(ocg, L);
  const int64_t padded_w = s.in_w + 2 * s.pad_w, plane = (s.in_h + 2 * s.pad_h) * padded_w;
  const int64_t rows_apart = s.stride_h * padded_w;
  // A part-filled last tile of a row reads on into the next row, and the last block of rows
  // (RB - 1 of them past the output's last) past the last plane: that much slack of zeros.
  const int64_t slack = (RB - 1) * rows_apart + MB + KW;
  // Weights as [group][vector][kh][ic][kw][L output channels], zero past ocg; written in order,
  // as for the transposed grad_input's (conv2d_transposed.h).
  Scratch<T> packed(s.groups * vectors * icg * taps * L, T(0));
  T* next = packed.data();
  for (int64_t g = 0; g < s.groups; ++g)
    for (int64_t v = 0; v < vectors; ++v)
      for (int64_t kh = 0; kh < s.kernel_h; ++kh)
        for (int64_t ic = 0; ic < icg; ++ic)
          for (int64_t kw = 0; kw < KW; ++kw)
            for (int64_t o = v * L; o < (v + 1) * L; ++o)
              *next++ = o < ocg ? weight[(((g * ocg + o) * icg + ic) * s.kernel_h + kh) * KW + kw] : T(0);
  // Work items are RowBands of the (image, group, vector of output channels) planes: an image's
  // bands for one vector of output channels, then the next vector's, so that its weights stay in
  // cache over a whole plane, the padded input over all the vectors. A band's tiles are gathered
  // channels-last, then written onto the output's planes by store_channels_last_pixels.
  const RowBands bands(s.batch * s.groups * vectors, s.out_h, RB);
  const bool padded_input = s.pad_h > 0 || s.pad_w > 0;
  const int64_t input_size = s.batch * s.in_channels * s.in_h * s.in_w;
  parallel_for_ranges(s.batch * s.groups * vectors * bands.count, icg * taps * bands.rows * s.out_w * L,
                      [&](int64_t first, int64_t last) {
    // The padded planes of the (image, group) this thread works on, copied here so that they are
    // in cache when its tiles read them, as the padded rows' are (NOTES, section 6). Unpadded
    // planes are read in place, unless the slack would read past the input (its last image): what
    // the slack reads lands only in pixels that are dropped, and the copy took 4 % of LeNet-5's
    // conv2 forward (NOTES, section 21).
    const Scratch<T> x(icg * plane + slack);
    std::fill_n(x.data() + icg * plane, slack, T(0));
    const Scratch<T> gathered(bands.rows * s.out_w * L);
    const T* planes = nullptr;
    int64_t planes_of = -1;
    for (int64_t item = first; item < last; ++item) {
      const int64_t band = item % bands.count, v = item / bands.count % vectors;
      const int64_t g = item / (bands.count * vectors) % s.groups, n = item / (bands.count * vectors * s.groups);
      if (n * s.groups + g != planes_of) {
        const int64_t offset = (n * s.in_channels + g * icg) * s.in_h * s.in_w;
        const T* src = input + offset;
        if (!padded_input && offset + icg * plane + slack <= input_size) {
          planes = src;
        } else {
          for (int64_t ic = 0; ic < icg; ++ic)
            pad_plane(src + ic * s.in_h * s.in_w, s.in_h, s.in_w, s.pad_h, s.pad_w, x.data() + ic * plane);
          planes = x.data();
        }
        planes_of = n * s.groups + g;
      }
      const int64_t first_row = bands.first_row(band), end_row = bands.end_row(band);
      if (first_row >= end_row) continue;
      for (int64_t oh0 = first_row; oh0 < end_row; oh0 += RB)
        for (int64_t ow0 = 0; ow0 < s.out_w; ow0 += MB) {
          const int64_t pixels = std::min<int64_t>(MB, s.out_w - ow0), rows = std::min<int64_t>(RB, end_row - oh0);
          row_tile<T, MB, KW, RB>(planes + oh0 * rows_apart + ow0, plane, s.dilation_h * padded_w, rows_apart,
                                  packed.data() + (g * vectors + v) * icg * taps * L, s.kernel_h, icg, rows, pixels,
                                  gathered.data() + ((oh0 - first_row) * s.out_w + ow0) * L, s.out_w * L);
        }
      const int64_t oc0 = g * ocg + v * L;
      store_channels_last_pixels(gathered.data(), (end_row - first_row) * s.out_w, std::min<int64_t>(L, ocg - v * L),
                                 bias ? bias + oc0 : nullptr,
                                 output + (n * s.out_channels + oc0) * out_plane + first_row * s.out_w, out_plane);
    }
  });
}

// Two rows of accumulators where they, a kernel row's weights and the broadcast value fit the
// registers: LeNet-5's conv2 forward in tiles of 2 rows of 5 pixels ran 1.2-1.35x as fast as in
// tiles of 1 row on AVX2 (benchmarks/NOTES.md, section 14), in 2 rows of 10 about 1.04x on
// AVX-512 (section 25).
constexpr int row_tile_rows(int mb, int kw) {
  return 2 * mb + kw + 1 <= kVectorRegisters ? 2 : 1;
}

// The tile width with the fewest dropped pixels per output row, the wider on a tie, of widths
// that leave room in the registers for a kernel row's weights: 8 to 16 pixels under AVX-512, 4 to
// 8 under AVX2.
template <typename T>
void conv2d_row_tiles(const T* input, const T* weight, const T* bias, T* output, const Conv2dShape& s) {
  const auto run = [&]<int MB>() {
    if (s.kernel_w == 3)
      correlate_row_tiles<T, MB, 3, row_tile_rows(MB, 3)>(input, weight, bias, output, s);
    else
      correlate_row_tiles<T, MB, 5, row_tile_rows(MB, 5)>(input, weight, bias, output, s);
  };
  constexpr int unit = kVectorRegisters / 16;
  const auto padded = [&](int64_t mb) { return blocks_of(s.out_w, mb) * mb; };
  const int64_t least = std::min({padded(4 * unit), padded(5 * unit), padded(6 * unit), padded(7 * unit), padded(8 * unit)});
  if (padded(8 * unit) == least)
    run.template operator()<8 * unit>();
  else if (padded(7 * unit) == least)
    run.template operator()<7 * unit>();
  else if (padded(6 * unit) == least)
    run.template operator()<6 * unit>();
  else if (padded(5 * unit) == least)
    run.template operator()<5 * unit>();
  else
    run.template operator()<4 * unit>();
}

}  // namespace lenetx::cpu::LENETX_ISA

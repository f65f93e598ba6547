#pragma once
// grad_input of a stride-1 layer whose output is much smaller than its input (LeNet-5's conv2,
// 14x14 -> 10x10), as a transposed convolution. The correlation on the padded grad_output
// (grad_input_as_correlation) would pad it by kernel - 1 - padding on every side, so that about
// half its multiply-adds read zeros there; here each grad_output value is multiplied only by the
// taps that read an input value, padded or not.
#include <ATen/ATen.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "../shape_checks.h"
#include "conv2d_common.h"
#include "micro_gemm.h"
#include "parallel.h"
#include "scratch.h"
#include "simd.h"

namespace lenetx::cpu::LENETX_ISA {

// An image's output pixels, at most: 8 vectors under AVX-512, as before the blocks of columns
// below, and LeNet-5's conv2 (100 pixels) under AVX2.
constexpr int64_t kMaxTransposedPixels = 128;

// Vectors of output pixels that one register tile spans, at most. A wider output takes tiles of
// two vectors over blocks of its columns: a tile as wide as LeNet-5's conv2 output on AVX2 (13
// vectors of 8) would hold one row of accumulators beside 13 loaded vectors, more than the 16
// registers.
constexpr int64_t kMaxSpannedVectors = kVectorRegisters / 4;

// Worth it where the input has at least 1.5 times the output's pixels (the correlation would read
// zeros for a third of its sums or more), for outputs of at most kMaxTransposedPixels pixels.
inline bool worth_grad_input_transposed(const Conv2dShape& s) {
  return s.stride_h == 1 && s.stride_w == 1 && 2 * s.in_h * s.in_w >= 3 * s.out_h * s.out_w &&
         s.out_h * s.out_w <= kMaxTransposedPixels;
}

// grad_input[ic][ih][iw] = sum over taps (kh, kw), in that order, of columns[(ic, kh, kw)][oh *
// out_w + ow] for the output pixel (oh, ow) that reads (ih, iw) through the tap, a vector of iw
// at a time: one unaligned load per tap from the tap's row (its lanes outside the output row
// masked off by masks[chunk][kw]), so that `columns` is read as the product wrote it. The rows
// of `columns` lie N apart between margins that cover the loads' overhang. A vector past the end
// of a row runs into the rows after it, which overwrite it; one that would run past the plane
// goes through `last`. CB channels from ic0, and two vectors at once: two of a row, or where a
// row is one vector (LeNet-5's conv2 under AVX-512), two rows'. One vector's sum is a chain of
// dependent additions, which left fold_pixels waiting on their latency (41 % of its samples on
// the instruction after the add, by perf annotate, with one channel and one vector).
template <typename T, int CB>
void fold_channels(const T* __restrict columns, int64_t N, const typename LaneMask<T>::Lane* masks,
                   const Conv2dShape& s, int64_t ic0, T* __restrict grad_input) {
  using V = typename Vec<T>::type;
  using Mask = typename LaneMask<T>::type;
  constexpr int64_t L = Vec<T>::kLanes;
  const int64_t chunks = blocks_of(s.in_w, L), taps = s.kernel_h * s.kernel_w, plane = s.in_h * s.in_w;
  // Rows [ih0, ih0 + RK), chunks [chunk0, chunk0 + CK) of each, stored in order.
  const auto fold = [&]<int RK, int CK>(int64_t ih0, int64_t chunk0) __attribute__((always_inline)) {
    V sums[RK][CK][CB] = {};
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      const int64_t oh0 = ih0 + s.pad_h - kh * s.dilation_h;
      if (oh0 + RK <= 0 || oh0 >= s.out_h) continue;
      for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
        const T* row0 = columns + (ic0 * taps + kh * s.kernel_w + kw) * N + oh0 * s.out_w + chunk0 * L + s.pad_w -
                        kw * s.dilation_w;
#pragma GCC unroll 2
        for (int k = 0; k < CK; ++k) {
          Mask inside;
          load_vec(inside, masks + ((chunk0 + k) * s.kernel_w + kw) * L);
#pragma GCC unroll 2
          for (int r = 0; r < RK; ++r) {
            if (oh0 + r < 0 || oh0 + r >= s.out_h) continue;
#pragma GCC unroll 4
            for (int c = 0; c < CB; ++c) {
              V v;
              load_vec(v, row0 + r * s.out_w + k * L + c * taps * N);
              sums[r][k][c] += inside ? v : V{};
            }
          }
        }
      }
    }
#pragma GCC unroll 2
    for (int r = 0; r < RK; ++r)
#pragma GCC unroll 2
      for (int k = 0; k < CK; ++k) {
        const int64_t at = (ih0 + r) * s.in_w + (chunk0 + k) * L;
#pragma GCC unroll 4
        for (int c = 0; c < CB; ++c) {
          T* dst = grad_input + (ic0 + c) * plane + at;
          if (at + L <= plane) {
            store_vec(dst, sums[r][k][c]);
          } else {
            alignas(64) T last[L];
            store_vec(last, sums[r][k][c]);
            std::copy_n(last, std::min(L, s.in_w - (chunk0 + k) * L), dst);
          }
        }
      }
  };
  if (chunks == 1) {
    int64_t ih = 0;
    for (; ih + 2 <= s.in_h; ih += 2) fold.template operator()<2, 1>(ih, 0);
    if (ih < s.in_h) fold.template operator()<1, 1>(ih, 0);
    return;
  }
  for (int64_t ih = 0; ih < s.in_h; ++ih) {
    int64_t chunk = 0;
    for (; chunk + 2 <= chunks; chunk += 2) fold.template operator()<1, 2>(ih, chunk);
    if (chunk < chunks) fold.template operator()<1, 1>(ih, chunk);
  }
}

template <typename T>
void fold_pixels(const T* columns, int64_t N, const typename LaneMask<T>::Lane* masks, const Conv2dShape& s,
                 T* grad_input) {
  constexpr int kMaxChannels = 4;
  for (int64_t ic0 = 0; ic0 < s.in_channels_per_group(); ic0 += kMaxChannels)
    with_count<kMaxChannels>(std::min<int64_t>(kMaxChannels, s.in_channels_per_group() - ic0),
                             [&]<int CB>() { fold_channels<T, CB>(columns, N, masks, s, ic0, grad_input); });
}

// Per (images, group): the product of the weight's rows, packed MB at a time, by grad_output's
// planes gives columns[(ic, kh, kw)][p] = sum over oc of weight[oc][ic][kh][kw] times
// grad_output[oc][p], in register tiles of MB rows by NV vectors of output pixels; fold_pixels
// adds them up into grad_input. Two images' planes side by side where one plane does not fill
// its last tile: LeNet-5's conv2 (100 pixels) took 7 tiles of 16 per image, 13 per two.
template <typename T, int MB, int NV>
void grad_input_transposed(const T* grad_output, const T* weight, T* grad_input, const Conv2dShape& s) {
  constexpr int64_t L = Vec<T>::kLanes, NB = NV * L;
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t rows = icg * s.kernel_h * s.kernel_w, row_tiles = blocks_of(rows, MB);
  const int64_t out_plane = s.out_h * s.out_w, chunks = blocks_of(s.in_w, L);
  const int64_t images = out_plane % NB == 0 ? 1 : 2;
  const int64_t column_blocks = blocks_of(images * out_plane, NB), N = column_blocks * NB;
  // The loads of fold_pixels reach (kernel_w - 1) * dilation_w before a row and a few vectors of
  // the input's width past the last.
  const int64_t front = blocks_of((s.kernel_w - 1) * s.dilation_w, L) * L;
  const int64_t back = (chunks + 1) * L + s.pad_w;
  // masks[chunk][kw]: lane l reads output column chunk * L + l + pad_w - kw * dilation_w. Kept as
  // integers: as a template argument the vector type would lose its vector_size.
  Scratch<typename LaneMask<T>::Lane> masks(chunks * s.kernel_w * L);
  for (int64_t chunk = 0; chunk < chunks; ++chunk)
    for (int64_t kw = 0; kw < s.kernel_w; ++kw)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t ow = chunk * L + l + s.pad_w - kw * s.dilation_w;
        masks[(chunk * s.kernel_w + kw) * L + l] = ow >= 0 && ow < s.out_w ? -1 : 0;
      }
  // packed[g][row tile][oc][MB] = weight[g * ocg + oc][row], zero past the last row; written in
  // order, as the fused operator does once per chunk of 8 images (scattered, the writes took
  // 2.3 % of LeNet-5's fused conv2 backward: NOTES, section 22).
  Scratch<T> packed(s.groups * row_tiles * ocg * MB, T(0));
  T* next = packed.data();
  for (int64_t g = 0; g < s.groups; ++g)
    for (int64_t tile = 0; tile < row_tiles; ++tile)
      for (int64_t o = 0; o < ocg; ++o)
        for (int64_t row = tile * MB; row < (tile + 1) * MB; ++row)
          *next++ = row < rows ? weight[(g * ocg + o) * rows + row] : T(0);
  const std::vector<int64_t> plane_rows = evenly_spaced(ocg, N);
  parallel_for_ranges(blocks_of(s.batch, images) * s.groups, rows * ocg * N, [&](int64_t first, int64_t last) {
    // Past the planes: zeros, or an odd batch's last image's neighbour from the item before,
    // whose columns nothing reads. The products write every column; the margins before and after
    // them are read only by lanes that fold_pixels masks off, so they are left unset: zeroed, a
    // memset per chunk of 8 images took 1.6 % of LeNet-5's fused conv2 backward (NOTES, section
    // 21).
    const Scratch<T> planes(ocg * N, T(0));
    const Scratch<T> columns(front + row_tiles * MB * N + back);
    for (int64_t item = first; item < last; ++item) {
      const int64_t n0 = item / s.groups * images, g = item % s.groups;
      const int64_t count = std::min(images, s.batch - n0);
      for (int64_t i = 0; i < count; ++i)
        for (int64_t oc = 0; oc < ocg; ++oc)
          copy_row(grad_output + ((n0 + i) * s.out_channels + g * ocg + oc) * out_plane, out_plane,
                   planes.data() + oc * N + i * out_plane);
      for (int64_t tile_row = 0; tile_row < row_tiles; ++tile_row)
        for (int64_t block = 0; block < column_blocks; ++block)
          gemm_tile<T, MB, NV>(PackedRows<T, MB>{packed.data() + (g * row_tiles + tile_row) * ocg * MB},
                               planes.data() + block * NB, plane_rows.data(), ocg,
                               columns.data() + front + tile_row * MB * N + block * NB, N);
      for (int64_t i = 0; i < count; ++i)
        fold_pixels(columns.data() + front + i * out_plane, N, masks.data(), s,
                    grad_input + ((n0 + i) * s.in_channels + g * icg) * s.in_h * s.in_w);
    }
  });
}

// The register tile by the output's vectors of pixels: tile_rows(NV) rows of NV accumulators.
template <typename T>
void conv2d_grad_input_transposed(const T* grad_output, const T* weight, T* grad_input, const Conv2dShape& s) {
  const int64_t vectors = blocks_of(s.out_h * s.out_w, Vec<T>::kLanes);
  if (vectors > kMaxSpannedVectors) {
    grad_input_transposed<T, tile_rows(2), 2>(grad_output, weight, grad_input, s);
    return;
  }
  switch (vectors) {
    case 1: grad_input_transposed<T, tile_rows(1), 1>(grad_output, weight, grad_input, s); break;
    case 2: grad_input_transposed<T, tile_rows(2), 2>(grad_output, weight, grad_input, s); break;
    case 3: grad_input_transposed<T, tile_rows(3), 3>(grad_output, weight, grad_input, s); break;
    case 4: grad_input_transposed<T, tile_rows(4), 4>(grad_output, weight, grad_input, s); break;
    case 5: grad_input_transposed<T, tile_rows(5), 5>(grad_output, weight, grad_input, s); break;
    case 6: grad_input_transposed<T, tile_rows(6), 6>(grad_output, weight, grad_input, s); break;
    case 7: grad_input_transposed<T, tile_rows(7), 7>(grad_output, weight, grad_input, s); break;
    default: grad_input_transposed<T, tile_rows(8), 8>(grad_output, weight, grad_input, s); break;
  }
}

}  // namespace lenetx::cpu::LENETX_ISA

#pragma once
// Convolutions with few output pixels as matrix products over the unfolded input.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "../shape_checks.h"
#include "conv2d_common.h"
#include "micro_gemm.h"
#include "parallel.h"

namespace lenetx::cpu {

// Layers with few output pixels (VGG's last blocks, LeNet's conv3) as matrix products over the
// unfolded input: row (n, p) of `unfolded` holds every value output pixel p of image n reads, in
// the weight's (ic, kh, kw) order and zero where it reads padding, so that
// output[n][oc][p] = sum over k of unfolded[(n, p)][k] * weight[oc][k] per group. Tiles run over
// whole rows; 16 zero rows and a vector of slack follow the last, so that no tile reads outside.
inline bool few_output_pixels(const Conv2dShape& s) { return s.out_h * s.out_w <= 32; }

// Reduction steps per pass over a weight panel in the unfolded forward.
constexpr int64_t kDepthBlock = 512;

// Each group's columns are stored in panels of `panel` columns, [group][column / panel][row]
// [column % panel], with 16 zero rows after the last of each panel: a tile reading `panel`
// columns of successive rows then walks memory contiguously (reads striding whole rows of a wide
// matrix miss the TLB on every row).
template <typename T>
struct Unfolded {
  std::vector<T> data;
  int64_t rows, group_width, panel;
  int64_t panel_size() const { return (rows + 16) * panel; }
  int64_t offset(int64_t row, int64_t group, int64_t column) const {
    return (group * blocks_of(group_width, panel) + column / panel) * panel_size() + row * panel + column % panel;
  }
  const T* at(int64_t row, int64_t group, int64_t column) const { return data.data() + offset(row, group, column); }
};

// Calls fn(tap, index) for each kernel tap (in (kh, kw) order) of output pixel (oh, ow) that
// reads inside the input, index being where in an input plane it reads: what unfolding copies
// and folding back adds up.
template <typename Fn>
void for_each_tap_inside(const Conv2dShape& s, int64_t oh, int64_t ow, const Fn& fn) {
  for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
    const int64_t ih = oh * s.stride_h - s.pad_h + kh * s.dilation_h;
    if (ih < 0 || ih >= s.in_h) continue;
    for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
      const int64_t iw = ow * s.stride_w - s.pad_w + kw * s.dilation_w;
      if (iw >= 0 && iw < s.in_w) fn(kh * s.kernel_w + kw, ih * s.in_w + iw);
    }
  }
}

template <typename T>
Unfolded<T> unfold(const T* input, const Conv2dShape& s, int64_t panel) {
  const int64_t pixels = s.out_h * s.out_w, taps = s.kernel_h * s.kernel_w;
  const int64_t icg = s.in_channels_per_group();
  Unfolded<T> u{{}, s.batch * pixels, icg * taps, panel};
  u.data.assign(s.groups * blocks_of(u.group_width, panel) * u.panel_size() + 64, T(0));
  // Where column k of row 0 of each group lies: one table, not a division per value.
  std::vector<int64_t> column_offsets(s.in_channels * taps);
  for (int64_t c = 0; c < s.in_channels * taps; ++c) column_offsets[c] = u.offset(0, c / u.group_width, c % u.group_width);
  parallel_for(u.rows, s.in_channels * taps, [&](int64_t row) {
    const int64_t n = row / pixels, oh = row % pixels / s.out_w, ow = row % s.out_w;
    T* dst = u.data.data() + row * panel;
    for (int64_t ic = 0; ic < s.in_channels; ++ic) {
      const T* plane = input + (n * s.in_channels + ic) * s.in_h * s.in_w;
      const int64_t* columns = column_offsets.data() + ic * taps;
      for_each_tap_inside(s, oh, ow, [&](int64_t tap, int64_t index) { dst[columns[tap]] = plane[index]; });
    }
  });
  return u;
}

// grad_output [n][oc][p] as one row per pixel, [(n, p)][oc], with `extra_columns` zero columns
// after the channels and 16 zero rows (plus slack) after the last pixel for tiles to read.
template <typename T>
std::vector<T> pixels_by_channel(const T* grad_output, const Conv2dShape& s, int64_t extra_columns) {
  const int64_t pixels = s.out_h * s.out_w, width = s.out_channels + extra_columns;
  std::vector<T> out((s.batch * pixels + 16) * width + 64, T(0));
  parallel_for(s.batch, s.out_channels * pixels, [&](int64_t n) {
    for (int64_t oc = 0; oc < s.out_channels; ++oc)
      for (int64_t p = 0; p < pixels; ++p)
        out[(n * pixels + p) * width + oc] = grad_output[(n * s.out_channels + oc) * pixels + p];
  });
  return out;
}

template <typename T>
void conv2d_unfolded(const T* input, const T* weight, const T* bias, T* output, const Conv2dShape& s) {
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t depth = icg * s.kernel_h * s.kernel_w, pixels = s.out_h * s.out_w;
  const Unfolded<T> u = unfold(input, s, depth);
  with_tile<T>(u.rows, ocg, [&]<int MB, int NV>() {
    constexpr int64_t N = NV * Vec<T>::kLanes;
    const int64_t blocks = blocks_of(u.rows, MB), tiles = blocks_of(ocg, N);
    // Weights transposed into panels of N output channels, [group][panel][k][N], zero past ocg.
    std::vector<T> wt(s.groups * tiles * depth * N, T(0));
    for (int64_t oc = 0; oc < s.out_channels; ++oc)
      for (int64_t k = 0; k < depth; ++k)
        wt[((oc / ocg * tiles + oc % ocg / N) * depth + k) * N + oc % ocg % N] = weight[oc * depth + k];
    const std::vector<int64_t> rows = evenly_spaced(kDepthBlock, N);
    // The reduction runs in blocks of kDepthBlock (a 128 KB weight panel, which stays in L2
    // across all row blocks); sums[group][block][tile][MB][N] adds the blocks in order.
    std::vector<T> sums(s.groups * blocks * tiles * MB * N);
    for (int64_t k0 = 0; k0 < depth; k0 += kDepthBlock) {
      const int64_t steps = std::min(kDepthBlock, depth - k0);
      // Row blocks vary fastest: each thread keeps its weight panel across many of them.
      parallel_for_ranges(s.groups * blocks * tiles, steps * MB * N, [&](int64_t first, int64_t last) {
        alignas(64) T tile[MB * N];
        for (int64_t item = first; item < last; ++item) {
          const int64_t b = item % blocks, t = item / blocks % tiles, g = item / (tiles * blocks);
          gemm_tile<T, MB, NV>(u.at(b * MB, g, k0), u.panel, 1,
                               wt.data() + ((g * tiles + t) * depth + k0) * N, rows.data(), steps, tile);
          T* sum = sums.data() + ((g * blocks + b) * tiles + t) * MB * N;
          for (int64_t i = 0; i < MB * N; ++i) sum[i] = k0 == 0 ? tile[i] : sum[i] + tile[i];
        }
      });
    }
    parallel_for(s.groups * blocks * tiles, MB * N, [&](int64_t item) {
      const int64_t t = item % tiles, b = item / tiles % blocks, g = item / (tiles * blocks);
      const T* sum = sums.data() + ((g * blocks + b) * tiles + t) * MB * N;
      for (int64_t m = 0; m < std::min<int64_t>(MB, u.rows - b * MB); ++m) {
        const int64_t n = (b * MB + m) / pixels, p = (b * MB + m) % pixels;
        for (int64_t c = t * N; c < std::min(ocg, (t + 1) * N); ++c) {
          const int64_t oc = g * ocg + c;
          output[(n * s.out_channels + oc) * pixels + p] = sum[m * N + c - t * N] + (bias ? bias[oc] : T(0));
        }
      }
    });
  });
}

// The gradient of the unfolded input, a matrix product, folded back: each input value sums the
// gradients of the unfolded copies of it, in (pixel, tap) order.
template <typename T>
void conv2d_grad_input_unfolded(const T* grad_output, const T* weight, T* grad_input,
                                const Conv2dShape& s) {
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  const int64_t taps = s.kernel_h * s.kernel_w, depth = icg * taps, pixels = s.out_h * s.out_w;
  const int64_t rows = s.batch * pixels, unfolded_width = s.in_channels * taps;
  std::vector<T> unfolded_grad(rows * unfolded_width);
  with_tile<T>(rows, depth, [&]<int MB, int NV>() {
    constexpr int64_t N = NV * Vec<T>::kLanes;
    const int64_t blocks = blocks_of(rows, MB), tiles = blocks_of(depth, N);
    const std::vector<T> go = pixels_by_channel(grad_output, s, 0);
    // Weights in panels of N columns, [group][panel][oc][N], zero past depth.
    std::vector<T> w(s.groups * tiles * ocg * N, T(0));
    for (int64_t oc = 0; oc < s.out_channels; ++oc)
      for (int64_t k = 0; k < depth; ++k)
        w[((oc / ocg * tiles + k / N) * ocg + oc % ocg) * N + k % N] = weight[oc * depth + k];
    const std::vector<int64_t> w_rows = evenly_spaced(ocg, N);
    parallel_for_ranges(s.groups * blocks * tiles, ocg * MB * N, [&](int64_t first, int64_t last) {
      alignas(64) T tile[MB * N];
      for (int64_t item = first; item < last; ++item) {
        const int64_t t = item % tiles, b = item / tiles % blocks, g = item / (tiles * blocks);
        gemm_tile<T, MB, NV>(go.data() + b * MB * s.out_channels + g * ocg, s.out_channels, 1,
                             w.data() + (g * tiles + t) * ocg * N, w_rows.data(), ocg, tile);
        for (int64_t m = 0; m < std::min<int64_t>(MB, rows - b * MB); ++m) {
          T* dst = unfolded_grad.data() + (b * MB + m) * unfolded_width + g * depth;
          for (int64_t j = t * N; j < std::min(depth, (t + 1) * N); ++j) dst[j] = tile[m * N + j - t * N];
        }
      }
    });
  });
  parallel_for(s.batch * s.in_channels, pixels * taps, [&](int64_t plane) {
    const int64_t n = plane / s.in_channels, ic = plane % s.in_channels;
    T* gi = grad_input + plane * s.in_h * s.in_w;
    std::fill_n(gi, s.in_h * s.in_w, T(0));
    for (int64_t p = 0; p < pixels; ++p) {
      const int64_t oh = p / s.out_w, ow = p % s.out_w;
      const T* src = unfolded_grad.data() + (n * pixels + p) * unfolded_width + ic * taps;
      for_each_tap_inside(s, oh, ow, [&](int64_t tap, int64_t index) { gi[index] += src[tap]; });
    }
  });
}

// grad_weight[oc][k] = sum over rows (n, p) of grad_output[n][oc][p] * unfolded[(n, p)][k]: each
// tile sums over the whole batch in order, so the result does not depend on the thread count.
template <typename T>
void conv2d_grad_weight_unfolded(const T* grad_output, const T* input, T* grad_weight,
                                 const Conv2dShape& s) {
  const int64_t ocg = s.out_channels_per_group();
  const int64_t depth = s.in_channels_per_group() * s.kernel_h * s.kernel_w;
  with_tile<T>(ocg, depth, [&]<int MB, int NV>() {
    constexpr int64_t N = NV * Vec<T>::kLanes;
    const Unfolded<T> u = unfold(input, s, N);
    const int64_t blocks = blocks_of(ocg, MB), tiles = blocks_of(depth, N), go_width = s.out_channels + MB;
    const std::vector<T> go = pixels_by_channel(grad_output, s, MB);
    const std::vector<int64_t> rows = evenly_spaced(u.rows, N);
    // Channel blocks vary fastest, so that each thread keeps one column panel of the unfolded
    // input in cache across many of them.
    parallel_for_ranges(s.groups * blocks * tiles, u.rows * MB * N, [&](int64_t first, int64_t last) {
      alignas(64) T tile[MB * N];
      for (int64_t item = first; item < last; ++item) {
        const int64_t b = item % blocks, t = item / blocks % tiles, g = item / (tiles * blocks);
        gemm_tile<T, MB, NV>(go.data() + g * ocg + b * MB, 1, go_width,
                             u.at(0, g, t * N), rows.data(), u.rows, tile);
        for (int64_t m = 0; m < std::min<int64_t>(MB, ocg - b * MB); ++m) {
          T* gw = grad_weight + (g * ocg + b * MB + m) * depth;
          for (int64_t j = t * N; j < std::min(depth, (t + 1) * N); ++j) gw[j] = tile[m * N + j - t * N];
        }
      }
    });
  });
}

}  // namespace lenetx::cpu

// Which path computes a CPU convolution's forward, grad_input and grad_weight, by shape
// (benchmarks/NOTES.md has the measurements); conv2d_ops.h's operators and the fused
// conv2d_relu_pool2d run them on whole batches and on chunks of images alike:
// - conv2d_winograd.h: 3x3 and 5x5 stride-1 correlations with enough channels and outputs of 8x8
//   or more (the improved LeNet's conv2, VGG's 32x32 to 8x8 layers), by Winograd's F(4x4, 3x3)
//   on 6x6 tiles and F(4x4, 5x5) on 8x8, and their grad_weight by F(3x3, 4x4) and F(5x5, 4x4)
//   on the same tiles, unless a value they read is not finite.
// - conv2d_unfolded.h: few output pixels (VGG's 8x8 and smaller blocks) as gemm.h's blocked
//   matrix products over the unfolded input, read in place from a channels-last copy; a kernel
//   that covers the whole input (LeNet-5's conv3) as products over the tensors themselves.
// - conv2d_row_tiles.h: 3- or 5-wide kernels, stride 1 along rows, vectors of output channels
//   more than half used. Each input value read feeds every pixel of a row tile that reads it,
//   once per kernel column.
// - conv2d_pixel_tiles.h: other kernels with at least two vectors of output channels. A
//   register tile multiplies a few output pixels, each reading its window from a channels-last
//   copy of the input, by vectors of output channels, over the whole reduction.
// - conv2d_padded_rows.h: stride 1, and before the two above when its rows are nearly all
//   outputs (padded_rows_dense). Positions are numbered along the rows of a zero-padded copy
//   of the input, so each kernel tap reads one contiguous run and micro_gemm.h's register tile
//   multiplies a block of output channels by a run of positions; grad_weight with few output
//   channels is dot products along the same rows.
// - conv2d_transposed.h: grad_input of a stride-1 layer whose input has at least 1.5 times its
//   output's pixels (LeNet-5's conv2), as a transposed convolution: a product per image of the
//   weight's rows by grad_output's planes, folded back onto the input.
// - The grad_input of another stride-1 layer is a forward correlation on the padded grad_output
//   with the flipped kernel, so it takes the forward's paths.
// - conv2d_tap_rows.h: grad_weight of 3- or 5-wide kernels with a vector of output channels or
//   more, the output channels along the lanes and each weight tap a row of the product, read in
//   place from a padded copy of the input.
// - conv2d_channels_last.h: grad_weight with enough input channels to fill a vector, one product
//   per kernel tap over a channels-last copy of the input.
// - conv2d_channel_vector.h: everything else (strides, few channels), vectorized across channels.
#pragma once
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>

#include <algorithm>
#include <vector>

#include "../shape_checks.h"
#include "conv2d_channel_vector.h"
#include "conv2d_channels_last.h"
#include "conv2d_padded_rows.h"
#include "conv2d_pixel_tiles.h"
#include "conv2d_row_tiles.h"
#include "conv2d_tap_rows.h"
#include "conv2d_transposed.h"
#include "conv2d_unfolded.h"
#include "conv2d_winograd.h"
#include "parallel.h"
#include "simd.h"

namespace lenetx::cpu::LENETX_ISA {

// The sums of P planes of `count` values, `stride` apart: each plane's x[i] into its running sum
// i % 8, the 8 added in a fixed order at the end. A vector loop, whose order (unlike an omp simd
// reduction's, which GCC may start with scalar steps up to an aligned address) does not depend on
// where x lies, so that the fused operator's grad_bias, summed from a thread's buffer, equals
// conv2d_grad_bias's bit for bit. P planes at once, each summed as alone: one plane's running sums
// are a chain of dependent additions, which the fused conv1's backward waited on (NOTES,
// section 22).
template <typename T, int P>
void plane_sums(const T* __restrict x, int64_t stride, int64_t count, T* __restrict out) {
  T sums[P][8] = {};
  int64_t i = 0;
  for (; i + 8 <= count; i += 8)
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p)
#pragma omp simd
      for (int j = 0; j < 8; ++j) sums[p][j] += x[p * stride + i + j];
  for (int j = 0; i < count; ++i, ++j)
    for (int p = 0; p < P; ++p) sums[p][j] += x[p * stride + i];
  for (int p = 0; p < P; ++p)
    out[p] = ((sums[p][0] + sums[p][1]) + (sums[p][2] + sums[p][3])) +
             ((sums[p][4] + sums[p][5]) + (sums[p][6] + sums[p][7]));
}

// grad_bias[c] for channels [first, last): each image's plane summed in T, the images' sums added
// in acc_type, in order. The loop runs across channels, so that a small plane (LeNet-5's conv3
// outputs 1x1) is not a vector loop of a few values per (image, channel).
template <typename T>
void grad_bias_channels(const T* __restrict grad_output, int64_t batch, int64_t channels,
                        int64_t plane, int64_t first, int64_t last, T* __restrict grad_bias) {
  using acc_t = at::acc_type<T, /*is_cuda=*/false>;
  std::vector<acc_t> totals(last - first, acc_t(0));
  for (int64_t n = 0; n < batch; ++n) {
    const T* go = grad_output + (n * channels + first) * plane;
    if (plane == 1) {
#pragma omp simd
      for (int64_t c = 0; c < last - first; ++c) totals[c] += go[c];
      continue;
    }
    constexpr int kPlanes = 4;
    for (int64_t c = 0; c < last - first; c += kPlanes)
      with_count<kPlanes>(std::min<int64_t>(kPlanes, last - first - c), [&]<int P>() {
        T sums[P];
        plane_sums<T, P>(go + c * plane, plane, plane, sums);
        for (int p = 0; p < P; ++p) totals[c + p] += sums[p];
      });
  }
  for (int64_t c = first; c < last; ++c) grad_bias[c] = static_cast<T>(totals[c - first]);
}

// Where the products over the unfolded input are fastest (benchmarks/NOTES.md): with few output
// pixels, where the padded rows would compute many dropped columns and the channels-last
// grad_weight would run short products. grad_input's product writes every unfolded value and
// folds it back, so it stops earlier and leaves the rest to the correlation.
inline bool forward_as_product(const Conv2dShape& s) { return s.out_h * s.out_w <= 64; }
inline bool grad_input_as_product(const Conv2dShape& s) { return s.out_h * s.out_w <= 32; }

template <typename T>
void conv2d_channel_vector(const T* input, const T* weight, const T* bias, T* output, const Conv2dShape& s) {
  switch (channel_block(s.out_channels_per_group())) {
    case 8: conv2d_forward_impl<T, 8, 8>(input, weight, bias, output, s); break;
    case 16: conv2d_forward_impl<T, 16, 4>(input, weight, bias, output, s); break;
    default: conv2d_forward_impl<T, 32, 4>(input, weight, bias, output, s); break;
  }
}

// Whether conv2d_forward takes one of its tiled paths rather than the channel-vector kernel.
template <typename T>
bool forward_is_tiled(const Conv2dShape& s) {
  return worth_winograd<T>(s) || forward_as_product(s) || worth_pixel_tiles<T>(s) || worth_row_tiles<T>(s) || worth_padded_rows(s);
}

// The forward paths by shape; also the grad_input of a stride-1 layer, a correlation.
template <typename T>
void conv2d_forward(const T* input, const T* weight, const T* bias, T* output, const Conv2dShape& s) {
  const bool channel_tiles = worth_pixel_tiles<T>(s) || worth_row_tiles<T>(s);
  // A weight that is infinite or NaN: the tiled paths multiply the zeros of a padded copy of the
  // input by every weight, which makes NaN where torch, which skips the border, has infinity or a
  // finite value (the channel-vector kernel skips it too), and Winograd's transforms would spread
  // it over a whole tile. Checked once, where either applies.
  const bool padded = s.pad_h > 0 || s.pad_w > 0, winograd = worth_winograd<T>(s);
  const bool weight_finite =
      !(padded || winograd) || all_finite(weight, s.out_channels * s.in_channels_per_group() * s.kernel_h * s.kernel_w);
  if (is_fully_connected(s))
    conv2d_fully_connected<T>(input, weight, bias, output, s);
  else if (padded && !weight_finite)
    conv2d_channel_vector<T>(input, weight, bias, output, s);
  else if (winograd && weight_finite && conv2d_winograd<T>(input, weight, bias, output, s))
    return;
  else if (forward_as_product(s))
    conv2d_unfolded<T>(input, weight, bias, output, s);
  else if (worth_padded_rows(s) && (padded_rows_dense(s) || !channel_tiles))
    conv2d_padded_rows<T>(input, weight, bias, output, s);
  else if (worth_row_tiles<T>(s))
    conv2d_row_tiles<T>(input, weight, bias, output, s);
  else if (worth_pixel_tiles<T>(s))
    conv2d_pixel_tiles<T>(input, weight, bias, output, s);
  else
    conv2d_channel_vector<T>(input, weight, bias, output, s);
}

// The grad_input paths by shape.
template <typename T>
void conv2d_grad_input_paths(const T* grad_output, const T* weight, T* grad_input, const Conv2dShape& s) {
  if (is_fully_connected(s)) {
    conv2d_grad_input_fully_connected<T>(grad_output, weight, grad_input, s);
  } else if (grad_input_as_product(s)) {
    conv2d_grad_input_unfolded<T>(grad_output, weight, grad_input, s);
  } else if (worth_grad_input_transposed(s)) {
    conv2d_grad_input_transposed<T>(grad_output, weight, grad_input, s);
  } else if (const Conv2dShape t = grad_input_as_correlation(s); grad_input_is_correlation(s) && forward_is_tiled<T>(t)) {
    conv2d_forward<T>(grad_output, flipped_kernel(weight, s).data(), nullptr, grad_input, t);
  } else {
    switch (channel_block(s.in_channels_per_group())) {
      case 8: conv2d_grad_input_impl<T, 8, 8>(grad_output, weight, grad_input, s); break;
      case 16: conv2d_grad_input_impl<T, 16, 4>(grad_output, weight, grad_input, s); break;
      default: conv2d_grad_input_impl<T, 32, 4>(grad_output, weight, grad_input, s); break;
    }
  }
}

// The grad_weight paths by shape.
template <typename T>
void conv2d_grad_weight_paths(const T* grad_output, const T* input, T* grad_weight, const Conv2dShape& s) {
  if (is_fully_connected(s))
    conv2d_grad_weight_fully_connected<T>(grad_output, input, grad_weight, s);
  else if (worth_winograd<T>(s) && conv2d_grad_weight_winograd<T>(grad_output, input, grad_weight, s))
    return;
  else if (forward_as_product(s))
    conv2d_grad_weight_unfolded<T>(grad_output, input, grad_weight, s);
  else if (worth_tap_rows<T>(s))
    conv2d_grad_weight_tap_rows<T>(grad_output, input, grad_weight, s);
  else if (s.in_channels_per_group() >= Vec<T>::kLanes)
    conv2d_grad_weight_channels_last<T>(grad_output, input, grad_weight, s);
  else if (worth_padded_rows(s))
    conv2d_grad_weight_by_rows<T>(grad_output, input, grad_weight, s);
  else if (s.out_channels_per_group() <= Vec<T>::kLanes)
    conv2d_grad_weight_impl<T, 1>(grad_output, input, grad_weight, s);
  else
    conv2d_grad_weight_impl<T, 2>(grad_output, input, grad_weight, s);
}

}  // namespace lenetx::cpu::LENETX_ISA

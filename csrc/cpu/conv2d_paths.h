// Which path computes a CPU convolution's forward, grad_input and grad_weight, by shape
// (benchmarks/NOTES.md has the measurements); conv2d_ops.h's operators and the fused
// conv2d_relu_pool2d run them on whole batches and on chunks of images alike:
// - conv2d_winograd.h: 3x3 and 5x5 stride-1 correlations with enough channels and outputs of 8x8
//   or more (the improved LeNet's conv2, VGG's 32x32 to 8x8 layers), by Winograd's F(4x4, 3x3)
//   on 6x6 tiles and F(4x4, 5x5) on 8x8, and their grad_weight by F(3x3, 4x4) and F(5x5, 4x4)
//   on the same tiles, unless a value they read is not finite.
// - conv2d_winograd_rows.h: 5x5 stride-1 forward correlations with fewer input channels
//   (LeNet-5's conv2) by F(4, 5) or F(5, 5) along the rows and directly down the columns, and
//   where the rows take F(5, 5) their grad_weight too, unless a value they read is not finite;
//   under AVX-512, the float grad_input of 5x5 stride-1 layers where the transposed convolution
//   would apply (LeNet-5's conv2), by F(5, 5) along the rows with two rows of 8 images to a
//   vector, unless a weight is not finite (an image group whose grad_input is: computed again).
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
//   channels is dot products along the same rows. On AVX-512 a plain forward whose output rows
//   are one or two vectors long computes each row as whole vectors, stored in place.
// - conv2d_transposed.h: grad_input of a stride-1 layer whose input has at least 1.5 times its
//   output's pixels (LeNet-5's conv2 in double or under AVX2), as a transposed convolution: a
//   product per image of the weight's rows by grad_output's planes, folded back onto the input.
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
#include "conv2d_winograd_rows.h"
#include "parallel.h"
#include "scratch.h"
#include "simd.h"

namespace lenetx::cpu::LENETX_ISA {

// The sums of P planes `stride` apart, each of `rows` rows of `count` values, row_step apart: each
// plane's values, numbered along its rows, x[i] into its running sum i % 8, the 8 added in a fixed
// order at the end. A vector loop, whose order (unlike an omp simd reduction's, which GCC may
// start with scalar steps up to an aligned address) depends neither on where x lies nor on the
// row step, so that the fused operator's grad_bias, summed from a thread's buffer, equals
// conv2d_grad_bias's bit for bit. P planes at once, each summed as alone: one plane's running
// sums are a chain of dependent additions, which the fused conv1's backward waited on (NOTES,
// section 22).
template <typename T, int P>
void plane_sums(const T* __restrict x, int64_t stride, int64_t rows, int64_t count, int64_t row_step,
                T* __restrict out) {
  typedef T Sums __attribute__((vector_size(8 * sizeof(T))));
  typedef typename LaneMask<T>::Lane Lane;
  typedef Lane Lanes __attribute__((vector_size(8 * sizeof(T))));
  const Lanes lane_index = {0, 1, 2, 3, 4, 5, 6, 7};
  // A value added as zero leaves a running sum as it is: started at +0.0, none is ever -0.0.
  const auto add_lanes = [&](Sums& sums, const T* from, const Lanes& source, const Lanes& take)
                             __attribute__((always_inline)) {
    Sums v;
    load_vec(v, from);
    sums += take ? __builtin_shuffle(v, source) : Sums{};
  };
  Sums sums[P] = {};
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = x + r * row_step;
    // The row's first values finish the round of the running sums that the row before left open,
    // its last ones open the next: in vectors where the row fills one (shuffled from its first
    // or last 8 values), else one at a time.
    const Lane lane = static_cast<Lane>(r * count % 8);
    int64_t i = lane == 0 ? 0 : std::min<int64_t>(8 - lane, count);
    if (i > 0 && count >= 8)
      for (int p = 0; p < P; ++p) add_lanes(sums[p], row + p * stride, (lane_index - lane) & 7, lane_index >= lane);
    else
      for (int p = 0; p < P; ++p)
        for (int64_t j = 0; j < i; ++j) sums[p][lane + j] += row[p * stride + j];
    for (; i + 8 <= count; i += 8)
#pragma GCC unroll 4
      for (int p = 0; p < P; ++p) {
        Sums v;
        load_vec(v, row + p * stride + i);
        sums[p] += v;
      }
    const Lane rest = static_cast<Lane>(count - i);
    if (rest > 0 && count >= 8)
      for (int p = 0; p < P; ++p)
        add_lanes(sums[p], row + p * stride + count - 8, (lane_index + 8 - rest) & 7, lane_index < rest);
    else
      for (int p = 0; p < P; ++p)
        for (int64_t j = 0; j < rest; ++j) sums[p][j] += row[p * stride + i + j];
  }
  for (int p = 0; p < P; ++p)
    out[p] = ((sums[p][0] + sums[p][1]) + (sums[p][2] + sums[p][3])) +
             ((sums[p][4] + sums[p][5]) + (sums[p][6] + sums[p][7]));
}

// plane_sums of `planes` planes plane_step apart (each of `rows` rows of `count` values, row_step
// apart), a few at a time, each plane's sum handed to take(plane, sum).
template <typename T, typename Take>
void sum_planes(const T* x, int64_t planes, int64_t plane_step, int64_t rows, int64_t count, int64_t row_step,
                const Take& take) {
  constexpr int kPlanes = 4;
  for (int64_t p = 0; p < planes; p += kPlanes)
    with_count<kPlanes>(std::min<int64_t>(kPlanes, planes - p), [&]<int P>() {
      T sums[P];
      plane_sums<T, P>(x + p * plane_step, plane_step, rows, count, row_step, sums);
      for (int q = 0; q < P; ++q) take(p + q, sums[q]);
    });
}

// grad_bias[c] for channels [first, last): each image's plane summed in T, the images' sums added
// in acc_type, in order. The loop runs across channels, so that a small plane (LeNet-5's conv3
// outputs 1x1) is not a vector loop of a few values per (image, channel).
template <typename T>
void grad_bias_channels(const T* __restrict grad_output, int64_t batch, int64_t channels,
                        int64_t plane, int64_t first, int64_t last, T* __restrict grad_bias) {
  using acc_t = at::acc_type<T, /*is_cuda=*/false>;
  Scratch<acc_t> totals(last - first, acc_t(0));
  for (int64_t n = 0; n < batch; ++n) {
    const T* go = grad_output + (n * channels + first) * plane;
    if (plane == 1) {
#pragma omp simd
      for (int64_t c = 0; c < last - first; ++c) totals[c] += go[c];
      continue;
    }
    sum_planes<T>(go, last - first, plane, 1, plane, plane, [&](int64_t c, T sum) { totals[c] += sum; });
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
  return worth_winograd<T>(s) || worth_winograd_rows<T>(s) || forward_as_product(s) || worth_pixel_tiles<T>(s) ||
         worth_row_tiles<T>(s) || worth_padded_rows(s);
}

enum class ForwardPath {
  fully_connected, channel_vector, winograd, unfolded, winograd_rows, padded_rows, row_tiles, pixel_tiles
};

// The path conv2d_forward takes for a shape and weight; without Winograd, the one it takes where
// Winograd turns the input down (a value that is not finite).
template <typename T>
ForwardPath forward_path(const T* weight, const Conv2dShape& s, bool with_winograd = true) {
  const bool channel_tiles = worth_pixel_tiles<T>(s) || worth_row_tiles<T>(s);
  // A weight that is infinite or NaN: the tiled paths multiply the zeros of a padded copy of the
  // input by every weight, which makes NaN where torch, which skips the border, has infinity or a
  // finite value (the channel-vector kernel skips it too), and Winograd's transforms would spread
  // it over a whole tile. Checked once, where either applies.
  const bool padded = s.pad_h > 0 || s.pad_w > 0, winograd = with_winograd && worth_winograd<T>(s);
  const bool winograd_rows = with_winograd && worth_winograd_rows<T>(s);
  const bool weight_finite = !(padded || winograd || winograd_rows) ||
                             all_finite(weight, s.out_channels * s.in_channels_per_group() * s.kernel_h * s.kernel_w);
  if (is_fully_connected(s)) return ForwardPath::fully_connected;
  if (padded && !weight_finite) return ForwardPath::channel_vector;
  if (winograd && weight_finite) return ForwardPath::winograd;
  if (forward_as_product(s)) return ForwardPath::unfolded;
  if (winograd_rows && weight_finite) return ForwardPath::winograd_rows;
  if (worth_padded_rows(s) && (padded_rows_dense(s) || !channel_tiles)) return ForwardPath::padded_rows;
  if (worth_row_tiles<T>(s)) return ForwardPath::row_tiles;
  if (worth_pixel_tiles<T>(s)) return ForwardPath::pixel_tiles;
  return ForwardPath::channel_vector;
}

// The forward paths by shape; also the grad_input of a stride-1 layer, a correlation. Without
// Winograd, the path its images take where Winograd's outputs are not finite.
template <typename T>
void conv2d_forward(const T* input, const T* weight, const T* bias, T* output, const Conv2dShape& s,
                    bool with_winograd = true) {
  ForwardPath path = forward_path<T>(weight, s, with_winograd);
  if (path == ForwardPath::winograd) {
    if (conv2d_winograd<T>(input, weight, bias, output, s)) return;
    path = forward_path<T>(weight, s, false);
  }
  if (path == ForwardPath::winograd_rows) {
    Conv2dShape image = s;
    image.batch = 1;
    const int64_t in_image = s.in_channels * s.in_h * s.in_w, out_image = s.out_channels * s.out_h * s.out_w;
    for (const int64_t n : conv2d_winograd_rows<T>(input, weight, bias, output, s))
      conv2d_forward<T>(input + n * in_image, weight, bias, output + n * out_image, image, false);
    return;
  }
  switch (path) {
    case ForwardPath::fully_connected: conv2d_fully_connected<T>(input, weight, bias, output, s); break;
    case ForwardPath::unfolded: conv2d_unfolded<T>(input, weight, bias, output, s); break;
    case ForwardPath::padded_rows: conv2d_padded_rows<T>(input, weight, bias, output, s); break;
    case ForwardPath::row_tiles: conv2d_row_tiles<T>(input, weight, bias, output, s); break;
    case ForwardPath::pixel_tiles: conv2d_pixel_tiles<T>(input, weight, bias, output, s); break;
    default: conv2d_channel_vector<T>(input, weight, bias, output, s); break;
  }
}

enum class GradInputPath { fully_connected, unfolded, winograd_rows, transposed, correlation, channel_vector };

// The path conv2d_grad_input_paths takes for a shape and weight. F(5, 5) along the rows where the
// transposed convolution would apply and the weight is finite; the transposed convolution
// computes again any group of images whose grad_input it leaves not finite.
template <typename T>
GradInputPath grad_input_path(const T* weight, const Conv2dShape& s) {
  if (is_fully_connected(s)) return GradInputPath::fully_connected;
  if (grad_input_as_product(s)) return GradInputPath::unfolded;
  if (worth_grad_input_transposed(s))
    return worth_winograd_rows_grad_input<T>(s) &&
                   all_finite(weight, s.out_channels * s.in_channels * s.kernel_h * s.kernel_w)
               ? GradInputPath::winograd_rows
               : GradInputPath::transposed;
  if (grad_input_is_correlation(s) && forward_is_tiled<T>(grad_input_as_correlation(s)))
    return GradInputPath::correlation;
  return GradInputPath::channel_vector;
}

// The weight as conv2d_grad_input_paths reads it, its path chosen and, for F(5, 5) along the rows,
// its kernel rows transformed, once per operator call: the fused operator runs the paths once per
// chunk of images.
template <typename T>
struct GradInputWeight {
  const T* weight;
  GradInputPath path;
  Scratch<T> winograd_rows;
};

template <typename T>
GradInputWeight<T> prepare_grad_input_weight(const T* weight, const Conv2dShape& s) {
  const GradInputPath path = grad_input_path<T>(weight, s);
  return {weight, path,
          path == GradInputPath::winograd_rows ? winograd_rows_grad_input_filters<T>(weight, s) : Scratch<T>()};
}

// The grad_input paths by shape.
template <typename T>
void conv2d_grad_input_paths(const T* grad_output, const GradInputWeight<T>& prepared, T* grad_input,
                             const Conv2dShape& s) {
  const T* weight = prepared.weight;
  switch (prepared.path) {
    case GradInputPath::winograd_rows: {
      const int64_t images = kWinogradRowsImages<T>;
      const int64_t in_image = s.in_channels * s.in_h * s.in_w, out_image = s.out_channels * s.out_h * s.out_w;
      for (const int64_t group :
           winograd_rows_grad_input<T>(grad_output, prepared.winograd_rows.data(), grad_input, s)) {
        Conv2dShape part = s;
        part.batch = std::min(images, s.batch - group * images);
        conv2d_grad_input_transposed<T>(grad_output + group * images * out_image, weight,
                                        grad_input + group * images * in_image, part);
      }
      break;
    }
    case GradInputPath::fully_connected:
      conv2d_grad_input_fully_connected<T>(grad_output, weight, grad_input, s);
      break;
    case GradInputPath::unfolded: conv2d_grad_input_unfolded<T>(grad_output, weight, grad_input, s); break;
    case GradInputPath::transposed: conv2d_grad_input_transposed<T>(grad_output, weight, grad_input, s); break;
    case GradInputPath::correlation:
      conv2d_forward<T>(grad_output, flipped_kernel(weight, s).data(), nullptr, grad_input,
                        grad_input_as_correlation(s));
      break;
    default:
      switch (channel_block(s.in_channels_per_group())) {
        case 8: conv2d_grad_input_impl<T, 8, 8>(grad_output, weight, grad_input, s); break;
        case 16: conv2d_grad_input_impl<T, 16, 4>(grad_output, weight, grad_input, s); break;
        default: conv2d_grad_input_impl<T, 32, 4>(grad_output, weight, grad_input, s); break;
      }
  }
}

enum class GradWeightPath {
  fully_connected, winograd, winograd_rows, unfolded, tap_rows, channels_last, by_rows, channel_vector,
  two_channel_vectors
};

// The path conv2d_grad_weight_paths takes for a shape; without Winograd, the one it takes where
// Winograd turns the input down (a value that is not finite).
template <typename T>
GradWeightPath grad_weight_path(const Conv2dShape& s, bool with_winograd = true) {
  if (is_fully_connected(s)) return GradWeightPath::fully_connected;
  if (with_winograd && worth_winograd<T>(s)) return GradWeightPath::winograd;
  if (with_winograd && worth_winograd_rows_grad_weight<T>(s)) return GradWeightPath::winograd_rows;
  if (forward_as_product(s)) return GradWeightPath::unfolded;
  if (worth_tap_rows<T>(s)) return GradWeightPath::tap_rows;
  if (s.in_channels_per_group() >= Vec<T>::kLanes) return GradWeightPath::channels_last;
  if (worth_padded_rows(s)) return GradWeightPath::by_rows;
  if (s.out_channels_per_group() <= Vec<T>::kLanes) return GradWeightPath::channel_vector;
  return GradWeightPath::two_channel_vectors;
}

// The grad_weight paths by shape.
template <typename T>
void conv2d_grad_weight_paths(const T* grad_output, const T* input, T* grad_weight, const Conv2dShape& s) {
  GradWeightPath path = grad_weight_path<T>(s);
  if (path == GradWeightPath::winograd || path == GradWeightPath::winograd_rows) {
    const bool done = path == GradWeightPath::winograd
                          ? conv2d_grad_weight_winograd<T>(grad_output, input, grad_weight, s)
                          : conv2d_grad_weight_winograd_rows<T>(grad_output, input, grad_weight, s);
    if (done) return;
    path = grad_weight_path<T>(s, false);
  }
  switch (path) {
    case GradWeightPath::fully_connected:
      conv2d_grad_weight_fully_connected<T>(grad_output, input, grad_weight, s);
      break;
    case GradWeightPath::unfolded: conv2d_grad_weight_unfolded<T>(grad_output, input, grad_weight, s); break;
    case GradWeightPath::tap_rows: conv2d_grad_weight_tap_rows<T>(grad_output, input, grad_weight, s); break;
    case GradWeightPath::channels_last:
      conv2d_grad_weight_channels_last<T>(grad_output, input, grad_weight, s);
      break;
    case GradWeightPath::by_rows: conv2d_grad_weight_by_rows<T>(grad_output, input, grad_weight, s); break;
    case GradWeightPath::channel_vector: conv2d_grad_weight_impl<T, 1>(grad_output, input, grad_weight, s); break;
    default: conv2d_grad_weight_impl<T, 2>(grad_output, input, grad_weight, s); break;
  }
}

}  // namespace lenetx::cpu::LENETX_ISA

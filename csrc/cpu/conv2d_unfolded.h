#pragma once
// Convolutions with few output pixels as matrix products over the unfolded input: row (n, p) of
// it holds every value output pixel p of image n reads, zero where it reads padding, so that per
// group output[n][oc][p] = sum over k of unfolded[(n, p)][k] * weight[oc][k], with k running over
// (ic, kh, kw) as in the weight or over (kh, kw, ic) as in ChannelWindows.
#include <ATen/ATen.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "../shape_checks.h"
#include "conv2d_common.h"
#include "gemm.h"
#include "linear.h"
#include "parallel.h"
#include "scratch.h"

namespace lenetx::cpu::LENETX_ISA {

// Calls fn(tap, index) for each kernel tap (in (kh, kw) order) of output pixel (oh, ow) that
// reads inside the input, index being where in an input plane it reads: what folding the
// unfolded gradient back adds up.
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

// The unfolded input of group g, [batch * out_h * out_w][in_channels_per_group * taps], with
// its columns in (kh, kw, ic) order, read in place from channels_last_padded: the channels a
// pixel reads through one tap are one contiguous run, so gemm reads it with no copy.
template <typename T>
struct ChannelWindows {
  const T* x;
  int64_t channels;                 // per group
  std::vector<int64_t> pixel_start; // where each output pixel's window starts, at the group's first channel
  std::vector<int64_t> tap_start;   // where each tap lies within a window
  int64_t kernel_w;
  bool row_taps_adjacent;

  ChannelWindows(const T* padded, const Conv2dShape& s, int64_t group)
      : x(padded), channels(s.in_channels_per_group()), kernel_w(s.kernel_w),
        row_taps_adjacent(s.groups == 1 && s.dilation_w == 1) {
    const int64_t pixels = s.out_h * s.out_w, C = s.in_channels, padded_w = s.in_w + 2 * s.pad_w;
    const int64_t image = (s.in_h + 2 * s.pad_h) * padded_w * C;
    for (int64_t row = 0; row < s.batch * pixels; ++row) {
      const int64_t n = row / pixels, oh = row % pixels / s.out_w, ow = row % s.out_w;
      pixel_start.push_back(n * image + (oh * s.stride_h * padded_w + ow * s.stride_w) * C + group * channels);
    }
    for (int64_t kh = 0; kh < s.kernel_h; ++kh)
      for (int64_t kw = 0; kw < s.kernel_w; ++kw)
        tap_start.push_back((kh * s.dilation_h * padded_w + kw * s.dilation_w) * C);
  }
  // Without groups or dilation along rows the taps of one kernel row are adjacent too.
  int64_t run(int64_t k) const {
    const int64_t rest_of_tap = channels - k % channels;
    return row_taps_adjacent ? rest_of_tap + (kernel_w - 1 - k / channels % kernel_w) * channels : rest_of_tap;
  }
  // Where step k lies within a window: the same for every pixel.
  int64_t step_offset(int64_t k) const { return tap_start[k / channels] + k % channels; }
  const T* row(int64_t i, int64_t k) const { return x + pixel_start[i] + step_offset(k); }
};

// Group g's weights as ChannelWindows' partner: b(k, oc) = weight[g * ocg + oc][ic][kh][kw] for
// column k = (kh, kw, ic).
template <typename T>
struct WeightsByTap {
  const T* weight;
  int64_t depth;
  std::vector<int64_t> column;  // where column k lies in a row of the weight

  WeightsByTap(const T* w, const Conv2dShape& s, int64_t group)
      : weight(w + group * s.out_channels_per_group() * s.in_channels_per_group() * s.kernel_h * s.kernel_w) {
    const int64_t icg = s.in_channels_per_group(), taps = s.kernel_h * s.kernel_w;
    depth = icg * taps;
    for (int64_t tap = 0; tap < taps; ++tap)
      for (int64_t ic = 0; ic < icg; ++ic) column.push_back(ic * taps + tap);
  }
  T operator()(int64_t k, int64_t oc) const { return weight[oc * depth + column[k]]; }
};

// A kernel that covers the whole input, without padding (LeNet-5's conv3: 5x5 on 5x5): one output
// pixel, so dilation and stride change nothing, and the unfolded input is the input itself,
// [batch][in_channels * h * w], in the weight's (ic, kh, kw) order. Its products read and write
// the tensors in place: no channels-last copy, no transpose, no fold.
inline bool is_fully_connected(const Conv2dShape& s) {
  return s.out_h == 1 && s.out_w == 1 && s.pad_h == 0 && s.pad_w == 0 && s.kernel_h == s.in_h &&
         s.kernel_w == s.in_w;
}

template <typename T>
void conv2d_fully_connected(const T* input, const T* weight, const T* bias, T* output, const Conv2dShape& s) {
  const int64_t ocg = s.out_channels_per_group(), depth = s.in_channels_per_group() * s.in_h * s.in_w;
  for (int64_t g = 0; g < s.groups; ++g)
    linear_forward(s.batch, depth, ocg, input + g * depth, s.groups * depth, weight + g * ocg * depth,
                   output + g * ocg, s.out_channels);
  add_bias_relu(output, s.batch, s.out_channels, bias, false);
}

template <typename T>
void conv2d_grad_input_fully_connected(const T* grad_output, const T* weight, T* grad_input,
                                       const Conv2dShape& s) {
  const int64_t ocg = s.out_channels_per_group(), depth = s.in_channels_per_group() * s.in_h * s.in_w;
  for (int64_t g = 0; g < s.groups; ++g)
    linear_grad_input(s.batch, depth, ocg, grad_output + g * ocg, s.out_channels, weight + g * ocg * depth,
                      grad_input + g * depth, s.groups * depth);
}

template <typename T>
void conv2d_grad_weight_fully_connected(const T* grad_output, const T* input, T* grad_weight,
                                        const Conv2dShape& s) {
  const int64_t ocg = s.out_channels_per_group(), depth = s.in_channels_per_group() * s.in_h * s.in_w;
  for (int64_t g = 0; g < s.groups; ++g)
    linear_grad_weight(s.batch, depth, ocg, grad_output + g * ocg, s.out_channels, input + g * depth,
                       s.groups * depth, grad_weight + g * ocg * depth);
}

// grad_output [n][oc][p] as one row per pixel, [(n, p)][oc].
template <typename T>
Scratch<T> pixels_by_channel(const T* grad_output, const Conv2dShape& s) {
  return channels_last(grad_output, s.batch, s.out_channels, s.out_h, s.out_w, 0, 0, 0);
}

template <typename T>
void conv2d_unfolded(const T* input, const T* weight, const T* bias, T* output, const Conv2dShape& s) {
  const int64_t ocg = s.out_channels_per_group(), pixels = s.out_h * s.out_w, rows = s.batch * pixels;
  const int64_t depth = s.in_channels_per_group() * s.kernel_h * s.kernel_w;
  const Scratch<T> x = channels_last_padded(input, s, 0);
  // products[(n, p)][oc], then moved to [n][oc][p] with the bias.
  const Scratch<T> products(rows * s.out_channels);
  for (int64_t g = 0; g < s.groups; ++g)
    gemm(rows, ocg, depth, ChannelWindows<T>(x.data(), s, g), WeightsByTap<T>(weight, s, g),
         products.data() + g * ocg, s.out_channels);
  parallel_for(s.batch * s.out_channels, pixels, [&](int64_t plane) {
    const int64_t n = plane / s.out_channels, oc = plane % s.out_channels;
    const T shift = bias ? bias[oc] : T(0);
    const T* src = products.data() + n * pixels * s.out_channels + oc;
    T* dst = output + plane * pixels;
    for (int64_t p = 0; p < pixels; ++p) dst[p] = src[p * s.out_channels] + shift;
  });
}

// The gradient of the unfolded input, a matrix product, folded back: each input value sums the
// gradients of the unfolded copies of it, in (pixel, tap) order.
template <typename T>
void conv2d_grad_input_unfolded(const T* grad_output, const T* weight, T* grad_input,
                                const Conv2dShape& s) {
  const int64_t ocg = s.out_channels_per_group(), pixels = s.out_h * s.out_w, rows = s.batch * pixels;
  const int64_t taps = s.kernel_h * s.kernel_w, depth = s.in_channels_per_group() * taps;
  const int64_t width = s.groups * depth;
  const Scratch<T> go = pixels_by_channel(grad_output, s);
  const Scratch<T> unfolded_grad(rows * width);
  for (int64_t g = 0; g < s.groups; ++g)
    gemm(rows, depth, ocg, RowMajor<T>{go.data() + g * ocg, s.out_channels, ocg},
         RowMajor<T>{weight + g * ocg * depth, depth, depth}, unfolded_grad.data() + g * depth, width);
  parallel_for(s.batch * s.in_channels, pixels * taps, [&](int64_t plane) {
    const int64_t n = plane / s.in_channels, ic = plane % s.in_channels;
    T* gi = grad_input + plane * s.in_h * s.in_w;
    std::fill_n(gi, s.in_h * s.in_w, T(0));
    for (int64_t p = 0; p < pixels; ++p) {
      const int64_t oh = p / s.out_w, ow = p % s.out_w;
      const T* src = unfolded_grad.data() + (n * pixels + p) * width + ic * taps;
      for_each_tap_inside(s, oh, ow, [&](int64_t tap, int64_t index) { gi[index] += src[tap]; });
    }
  });
}

// grad_weight[oc][k] = sum over rows (n, p) of grad_output[n][oc][p] * unfolded[(n, p)][k],
// computed transposed, as [k][oc] with ChannelWindows' (kh, kw, ic) order of k: the unfolded input
// is then the A that gemm packs a block at a time, and grad_output the smaller B it packs whole.
template <typename T>
void conv2d_grad_weight_unfolded(const T* grad_output, const T* input, T* grad_weight,
                                 const Conv2dShape& s) {
  const int64_t ocg = s.out_channels_per_group(), rows = s.batch * s.out_h * s.out_w;
  const int64_t icg = s.in_channels_per_group(), taps = s.kernel_h * s.kernel_w, depth = icg * taps;
  const Scratch<T> x = channels_last_padded(input, s, 0);
  const Scratch<T> go = pixels_by_channel(grad_output, s);
  const Scratch<T> by_tap(depth * s.out_channels);  // [kh, kw, ic][oc]
  for (int64_t g = 0; g < s.groups; ++g) {
    const ChannelWindows<T> windows(x.data(), s, g);
    gemm(depth, ocg, rows, transpose(windows), RowMajor<T>{go.data() + g * ocg, s.out_channels, ocg},
         by_tap.data() + g * ocg, s.out_channels);
  }
  // Blocks of kBlock output channels, so that each read of by_tap is a run of them: an output
  // channel at a time read values 2 KB apart (VGG's 512 channels), a third of the product's time.
  constexpr int64_t kBlock = 16;
  parallel_for(blocks_of(s.out_channels, kBlock), kBlock * depth, [&](int64_t block) {
    const int64_t oc0 = block * kBlock, oc1 = std::min(s.out_channels, oc0 + kBlock);
    for (int64_t tap = 0; tap < taps; ++tap)
      for (int64_t ic = 0; ic < icg; ++ic) {
        const T* src = by_tap.data() + (tap * icg + ic) * s.out_channels;
        for (int64_t oc = oc0; oc < oc1; ++oc) grad_weight[(oc * icg + ic) * taps + tap] = src[oc];
      }
  });
}

}  // namespace lenetx::cpu::LENETX_ISA

// Direct 2-D convolution on the CPU: forward, grad_input, grad_weight and grad_bias.
//
// Every kernel walks the output one row at a time and, for each kernel tap, clips the row to the
// columns whose input position is inside the image. The innermost loop is then a branch-free
// axpy or dot product along a row, which the compiler vectorizes; padding costs nothing.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../shape_checks.h"
#include "parallel.h"
#include "simd.h"

namespace lenetx::cpu {
namespace {

// Output channels computed together, so that each input row loaded into cache serves several.
constexpr int64_t kOutChannelBlock = 4;

struct Span {
  int64_t begin, end;
};

// Output positions o in [0, out_size) whose input position o * stride - pad + tap_offset lies
// inside [0, in_size).
inline Span valid_outputs(int64_t in_size, int64_t out_size, int64_t stride, int64_t pad,
                          int64_t tap_offset) {
  const int64_t low = pad - tap_offset;
  const int64_t high = in_size - 1 + pad - tap_offset;
  const int64_t begin = low <= 0 ? 0 : (low + stride - 1) / stride;
  const int64_t end = high < 0 ? 0 : std::min(out_size, high / stride + 1);
  return {begin, std::max(begin, end)};
}

template <typename T>
LENETX_SIMD_CLONES void forward_block(const T* __restrict input, const T* __restrict weight,
                                      const T* bias, T* __restrict output, int64_t block,
                                      const Conv2dShape& s) {
  const int64_t out_plane = s.out_h * s.out_w, in_plane = s.in_h * s.in_w;
  const int64_t kernel_area = s.kernel_h * s.kernel_w;
  const int64_t weight_stride = s.in_channels_per_group() * kernel_area;
  for (int64_t b = 0; b < block; ++b) {
    std::fill_n(output + b * out_plane, out_plane, bias ? bias[b] : T(0));
  }
  for (int64_t ic = 0; ic < s.in_channels_per_group(); ++ic) {
    const T* in = input + ic * in_plane;
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      const int64_t row_offset = kh * s.dilation_h - s.pad_h;
      const Span rows = valid_outputs(s.in_h, s.out_h, s.stride_h, s.pad_h, kh * s.dilation_h);
      for (int64_t oh = rows.begin; oh < rows.end; ++oh) {
        const T* in_row = in + (oh * s.stride_h + row_offset) * s.in_w;
        for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
          const int64_t offset = kw * s.dilation_w - s.pad_w;
          const Span cols = valid_outputs(s.in_w, s.out_w, s.stride_w, s.pad_w, kw * s.dilation_w);
          for (int64_t b = 0; b < block; ++b) {
            const T w = weight[b * weight_stride + ic * kernel_area + kh * s.kernel_w + kw];
            T* out_row = output + b * out_plane + oh * s.out_w;
            if (s.stride_w == 1) {
#pragma omp simd
              for (int64_t ow = cols.begin; ow < cols.end; ++ow) out_row[ow] += w * in_row[ow + offset];
            } else {
#pragma omp simd
              for (int64_t ow = cols.begin; ow < cols.end; ++ow)
                out_row[ow] += w * in_row[ow * s.stride_w + offset];
            }
          }
        }
      }
    }
  }
}

// One plane of grad_input: the forward's row axpy with input and output exchanged.
template <typename T>
LENETX_SIMD_CLONES void grad_input_plane(const T* __restrict grad_output, const T* __restrict weight,
                                         T* __restrict grad_input, const Conv2dShape& s) {
  const int64_t out_plane = s.out_h * s.out_w;
  const int64_t kernel_area = s.kernel_h * s.kernel_w;
  const int64_t weight_stride = s.in_channels_per_group() * kernel_area;
  std::fill_n(grad_input, s.in_h * s.in_w, T(0));
  for (int64_t oc = 0; oc < s.out_channels_per_group(); ++oc) {
    const T* go = grad_output + oc * out_plane;
    const T* w = weight + oc * weight_stride;
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      const int64_t row_offset = kh * s.dilation_h - s.pad_h;
      const Span rows = valid_outputs(s.in_h, s.out_h, s.stride_h, s.pad_h, kh * s.dilation_h);
      for (int64_t oh = rows.begin; oh < rows.end; ++oh) {
        T* gi_row = grad_input + (oh * s.stride_h + row_offset) * s.in_w;
        const T* go_row = go + oh * s.out_w;
        for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
          const T wv = w[kh * s.kernel_w + kw];
          const int64_t offset = kw * s.dilation_w - s.pad_w;
          const Span cols = valid_outputs(s.in_w, s.out_w, s.stride_w, s.pad_w, kw * s.dilation_w);
          if (s.stride_w == 1) {
#pragma omp simd
            for (int64_t ow = cols.begin; ow < cols.end; ++ow) gi_row[ow + offset] += wv * go_row[ow];
          } else {
#pragma omp simd
            for (int64_t ow = cols.begin; ow < cols.end; ++ow)
              gi_row[ow * s.stride_w + offset] += wv * go_row[ow];
          }
        }
      }
    }
  }
}

// The kernel_h x kernel_w taps of grad_weight for one (output channel, input channel) pair,
// summed over the batch in a fixed order. Row sums stay in T (short, vectorized); the total over
// rows and images is carried in the accumulate type.
template <typename T>
LENETX_SIMD_CLONES void grad_weight_taps(const T* __restrict grad_output, const T* __restrict input,
                                         T* __restrict grad_weight, const Conv2dShape& s) {
  using acc_t = at::acc_type<T, /*is_cuda=*/false>;
  const int64_t out_plane = s.out_h * s.out_w, in_plane = s.in_h * s.in_w;
  const int64_t out_image = s.out_channels * out_plane, in_image = s.in_channels * in_plane;
  std::vector<acc_t> taps(s.kernel_h * s.kernel_w, acc_t(0));
  for (int64_t n = 0; n < s.batch; ++n) {
    const T* go = grad_output + n * out_image;
    const T* in = input + n * in_image;
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      const int64_t row_offset = kh * s.dilation_h - s.pad_h;
      const Span rows = valid_outputs(s.in_h, s.out_h, s.stride_h, s.pad_h, kh * s.dilation_h);
      for (int64_t oh = rows.begin; oh < rows.end; ++oh) {
        const T* in_row = in + (oh * s.stride_h + row_offset) * s.in_w;
        const T* go_row = go + oh * s.out_w;
        for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
          const int64_t offset = kw * s.dilation_w - s.pad_w;
          const Span cols = valid_outputs(s.in_w, s.out_w, s.stride_w, s.pad_w, kw * s.dilation_w);
          T sum = 0;
          if (s.stride_w == 1) {
#pragma omp simd reduction(+ : sum)
            for (int64_t ow = cols.begin; ow < cols.end; ++ow) sum += go_row[ow] * in_row[ow + offset];
          } else {
#pragma omp simd reduction(+ : sum)
            for (int64_t ow = cols.begin; ow < cols.end; ++ow)
              sum += go_row[ow] * in_row[ow * s.stride_w + offset];
          }
          taps[kh * s.kernel_w + kw] += sum;
        }
      }
    }
  }
  for (size_t i = 0; i < taps.size(); ++i) grad_weight[i] = static_cast<T>(taps[i]);
}

template <typename T>
LENETX_SIMD_CLONES T grad_bias_channel(const T* __restrict grad_output, int64_t batch,
                                       int64_t image_stride, int64_t plane) {
  using acc_t = at::acc_type<T, /*is_cuda=*/false>;
  acc_t total = 0;
  for (int64_t n = 0; n < batch; ++n) {
    const T* go = grad_output + n * image_stride;
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < plane; ++i) sum += go[i];
    total += sum;
  }
  return static_cast<T>(total);
}

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const Conv2dShape s = check_conv2d(input, weight, bias, stride, padding, dilation, groups);
  const at::Tensor in = input.contiguous(), w = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor output = at::empty({s.batch, s.out_channels, s.out_h, s.out_w}, input.options());
  const int64_t blocks_per_group =
      (s.out_channels_per_group() + kOutChannelBlock - 1) / kOutChannelBlock;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_conv2d", [&] {
    const scalar_t* in_data = in.const_data_ptr<scalar_t>();
    const scalar_t* w_data = w.const_data_ptr<scalar_t>();
    const scalar_t* b_data = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* out_data = output.mutable_data_ptr<scalar_t>();
    const int64_t in_plane = s.in_h * s.in_w, out_plane = s.out_h * s.out_w;
    const int64_t weight_stride = s.in_channels_per_group() * s.kernel_h * s.kernel_w;
    parallel_for(s.batch * s.groups * blocks_per_group, [&](int64_t item) {
      const int64_t n = item / (s.groups * blocks_per_group);
      const int64_t g = item / blocks_per_group % s.groups;
      const int64_t first = (item % blocks_per_group) * kOutChannelBlock;
      const int64_t oc = g * s.out_channels_per_group() + first;
      const int64_t block = std::min(kOutChannelBlock, s.out_channels_per_group() - first);
      forward_block<scalar_t>(
          in_data + (n * s.in_channels + g * s.in_channels_per_group()) * in_plane,
          w_data + oc * weight_stride, b_data ? b_data + oc : nullptr,
          out_data + (n * s.out_channels + oc) * out_plane, block, s);
    });
  });
  return output;
}

Conv2dShape check_conv2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& weight, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation,
                                  int64_t groups, const char* op) {
  const Conv2dShape s = check_conv2d(input, weight, std::nullopt, stride, padding, dilation, groups);
  check_same_dtype_and_device(input, "input", grad_output, "grad_output", op);
  check_grad_output(grad_output, {s.batch, s.out_channels, s.out_h, s.out_w}, op);
  return s;
}

at::Tensor conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& input,
                             const at::Tensor& weight, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const Conv2dShape s = check_conv2d_backward(grad_output, input, weight, stride, padding,
                                              dilation, groups, "lenetx.conv2d_grad_input");
  const at::Tensor go = grad_output.contiguous(), w = weight.contiguous();
  at::Tensor grad_input = at::empty({s.batch, s.in_channels, s.in_h, s.in_w}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_conv2d_grad_input", [&] {
    const scalar_t* go_data = go.const_data_ptr<scalar_t>();
    const scalar_t* w_data = w.const_data_ptr<scalar_t>();
    scalar_t* gi_data = grad_input.mutable_data_ptr<scalar_t>();
    const int64_t kernel_area = s.kernel_h * s.kernel_w;
    parallel_for(s.batch * s.in_channels, [&](int64_t item) {
      const int64_t n = item / s.in_channels, c = item % s.in_channels;
      const int64_t g = c / s.in_channels_per_group(), ic = c % s.in_channels_per_group();
      const int64_t first_oc = g * s.out_channels_per_group();
      grad_input_plane<scalar_t>(
          go_data + (n * s.out_channels + first_oc) * s.out_h * s.out_w,
          w_data + first_oc * s.in_channels_per_group() * kernel_area + ic * kernel_area,
          gi_data + item * s.in_h * s.in_w, s);
    });
  });
  return grad_input;
}

at::Tensor conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                              const at::Tensor& weight, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const Conv2dShape s = check_conv2d_backward(grad_output, input, weight, stride, padding,
                                              dilation, groups, "lenetx.conv2d_grad_weight");
  const at::Tensor go = grad_output.contiguous(), in = input.contiguous();
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_conv2d_grad_weight", [&] {
    const scalar_t* go_data = go.const_data_ptr<scalar_t>();
    const scalar_t* in_data = in.const_data_ptr<scalar_t>();
    scalar_t* gw_data = grad_weight.mutable_data_ptr<scalar_t>();
    const int64_t in_per_group = s.in_channels_per_group();
    parallel_for(s.out_channels * in_per_group, [&](int64_t item) {
      const int64_t oc = item / in_per_group, ic = item % in_per_group;
      const int64_t c = oc / s.out_channels_per_group() * in_per_group + ic;
      grad_weight_taps<scalar_t>(go_data + oc * s.out_h * s.out_w, in_data + c * s.in_h * s.in_w,
                                 gw_data + item * s.kernel_h * s.kernel_w, s);
    });
  });
  return grad_weight;
}

at::Tensor conv2d_grad_bias(const at::Tensor& grad_output) {
  constexpr const char* op = "lenetx.conv2d_grad_bias";
  TORCH_CHECK(grad_output.dim() == 4, op,
              ": expected a 4-D grad_output (N, C, H, W), but got grad_output of size ",
              grad_output.sizes());
  check_floating_dtype(grad_output, op);
  const at::Tensor go = grad_output.contiguous();
  const int64_t batch = go.size(0), channels = go.size(1), plane = go.size(2) * go.size(3);
  at::Tensor grad_bias = at::empty({channels}, go.options());
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "lenetx_conv2d_grad_bias", [&] {
    const scalar_t* go_data = go.const_data_ptr<scalar_t>();
    scalar_t* gb_data = grad_bias.mutable_data_ptr<scalar_t>();
    parallel_for(channels, [&](int64_t c) {
      gb_data[c] = grad_bias_channel<scalar_t>(go_data + c * plane, batch, channels * plane, plane);
    });
  });
  return grad_bias;
}

}  // namespace

TORCH_LIBRARY_IMPL(lenetx, CPU, m) {
  m.impl("conv2d", &conv2d);
  m.impl("conv2d_grad_input", &conv2d_grad_input);
  m.impl("conv2d_grad_weight", &conv2d_grad_weight);
  m.impl("conv2d_grad_bias", &conv2d_grad_bias);
}

}  // namespace lenetx::cpu

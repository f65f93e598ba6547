// Direct 2-D convolution on CUDA. Forward and grad_input give each thread one output (input)
// element and gather over its taps; grad_weight and grad_bias give each block one weight (bias)
// element and reduce over the batch with a fixed-order tree: deterministic, no float atomics.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../shape_checks.h"
#include "cuda_utils.cuh"

namespace lenetx::cuda {
namespace {

template <typename T>
__global__ void forward_kernel(const T* __restrict__ input, const T* __restrict__ weight,
                               const T* __restrict__ bias, T* __restrict__ output, Conv2dShape s) {
  using acc_t = at::acc_type<T, true>;
  const int64_t total = s.batch * s.out_channels * s.out_h * s.out_w;
  const int64_t icg = s.in_channels_per_group();
  LENETX_GRID_STRIDE_LOOP(index, total) {
    const int64_t ow = index % s.out_w, oh = index / s.out_w % s.out_h;
    const int64_t oc = index / (s.out_w * s.out_h) % s.out_channels;
    const int64_t n = index / (s.out_w * s.out_h * s.out_channels);
    const int64_t g = oc / s.out_channels_per_group();
    acc_t acc = bias ? static_cast<acc_t>(bias[oc]) : acc_t(0);
    for (int64_t ic = 0; ic < icg; ++ic) {
      const T* in = input + ((n * s.in_channels + g * icg + ic) * s.in_h) * s.in_w;
      const T* w = weight + (oc * icg + ic) * s.kernel_h * s.kernel_w;
      for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
        const int64_t ih = oh * s.stride_h - s.pad_h + kh * s.dilation_h;
        if (ih < 0 || ih >= s.in_h) continue;
        for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
          const int64_t iw = ow * s.stride_w - s.pad_w + kw * s.dilation_w;
          if (iw < 0 || iw >= s.in_w) continue;
          acc += static_cast<acc_t>(in[ih * s.in_w + iw]) * static_cast<acc_t>(w[kh * s.kernel_w + kw]);
        }
      }
    }
    output[index] = static_cast<T>(acc);
  }
}

template <typename T>
__global__ void grad_input_kernel(const T* __restrict__ grad_output, const T* __restrict__ weight,
                                  T* __restrict__ grad_input, Conv2dShape s) {
  using acc_t = at::acc_type<T, true>;
  const int64_t total = s.batch * s.in_channels * s.in_h * s.in_w;
  const int64_t icg = s.in_channels_per_group(), ocg = s.out_channels_per_group();
  LENETX_GRID_STRIDE_LOOP(index, total) {
    const int64_t iw = index % s.in_w, ih = index / s.in_w % s.in_h;
    const int64_t c = index / (s.in_w * s.in_h) % s.in_channels;
    const int64_t n = index / (s.in_w * s.in_h * s.in_channels);
    const int64_t g = c / icg, ic = c % icg;
    acc_t acc = 0;
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      const int64_t th = ih + s.pad_h - kh * s.dilation_h;
      if (th < 0 || th % s.stride_h != 0 || th / s.stride_h >= s.out_h) continue;
      const int64_t oh = th / s.stride_h;
      for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
        const int64_t tw = iw + s.pad_w - kw * s.dilation_w;
        if (tw < 0 || tw % s.stride_w != 0 || tw / s.stride_w >= s.out_w) continue;
        const int64_t ow = tw / s.stride_w;
        for (int64_t o = 0; o < ocg; ++o) {
          const int64_t oc = g * ocg + o;
          acc += static_cast<acc_t>(grad_output[((n * s.out_channels + oc) * s.out_h + oh) * s.out_w + ow]) *
                 static_cast<acc_t>(weight[((oc * icg + ic) * s.kernel_h + kh) * s.kernel_w + kw]);
        }
      }
    }
    grad_input[index] = static_cast<T>(acc);
  }
}

// One block per weight element; its threads stride over (image, output pixel).
template <typename T>
__global__ void grad_weight_kernel(const T* __restrict__ grad_output, const T* __restrict__ input,
                                   T* __restrict__ grad_weight, Conv2dShape s) {
  using acc_t = at::acc_type<T, true>;
  const int64_t icg = s.in_channels_per_group();
  const int64_t element = blockIdx.x;
  const int64_t kw = element % s.kernel_w, kh = element / s.kernel_w % s.kernel_h;
  const int64_t ic = element / (s.kernel_w * s.kernel_h) % icg;
  const int64_t oc = element / (s.kernel_w * s.kernel_h * icg);
  const int64_t c = oc / s.out_channels_per_group() * icg + ic;
  const int64_t pixels = s.out_h * s.out_w, total = s.batch * pixels;
  acc_t acc = 0;
  for (int64_t i = threadIdx.x; i < total; i += blockDim.x) {
    const int64_t n = i / pixels, oh = i % pixels / s.out_w, ow = i % s.out_w;
    const int64_t ih = oh * s.stride_h - s.pad_h + kh * s.dilation_h;
    const int64_t iw = ow * s.stride_w - s.pad_w + kw * s.dilation_w;
    if (ih < 0 || ih >= s.in_h || iw < 0 || iw >= s.in_w) continue;
    acc += static_cast<acc_t>(grad_output[(n * s.out_channels + oc) * pixels + oh * s.out_w + ow]) *
           static_cast<acc_t>(input[((n * s.in_channels + c) * s.in_h + ih) * s.in_w + iw]);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) grad_weight[element] = static_cast<T>(acc);
}

template <typename T>
__global__ void grad_bias_kernel(const T* __restrict__ grad_output, T* __restrict__ grad_bias,
                                 int64_t batch, int64_t channels, int64_t plane) {
  using acc_t = at::acc_type<T, true>;
  const int64_t c = blockIdx.x;
  acc_t acc = 0;
  for (int64_t i = threadIdx.x; i < batch * plane; i += blockDim.x)
    acc += static_cast<acc_t>(grad_output[(i / plane * channels + c) * plane + i % plane]);
  acc = block_sum(acc);
  if (threadIdx.x == 0) grad_bias[c] = static_cast<T>(acc);
}

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const Conv2dShape s = check_conv2d(input, weight, bias, stride, padding, dilation, groups);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor in = input.contiguous(), w = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor output = at::empty({s.batch, s.out_channels, s.out_h, s.out_w}, input.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lenetx_conv2d_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(output.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        in.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
        b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, output.mutable_data_ptr<scalar_t>(), s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

at::Tensor conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& input,
                             const at::Tensor& weight, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const Conv2dShape s = check_conv2d_backward(grad_output, input, weight, stride, padding, dilation,
                                       groups, "lenetx.conv2d_grad_input");
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor go = grad_output.contiguous(), w = weight.contiguous();
  at::Tensor grad_input = at::empty({s.batch, s.in_channels, s.in_h, s.in_w}, input.options());
  if (grad_input.numel() == 0) return grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lenetx_conv2d_grad_input_cuda", [&] {
    grad_input_kernel<scalar_t><<<blocks_for(grad_input.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        go.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(), s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input;
}

at::Tensor conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                              const at::Tensor& weight, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const Conv2dShape s = check_conv2d_backward(grad_output, input, weight, stride, padding, dilation,
                                       groups, "lenetx.conv2d_grad_weight");
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor go = grad_output.contiguous(), in = input.contiguous();
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options());
  if (grad_weight.numel() == 0) return grad_weight;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lenetx_conv2d_grad_weight_cuda", [&] {
    grad_weight_kernel<scalar_t><<<grad_weight.numel(), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        go.const_data_ptr<scalar_t>(), in.const_data_ptr<scalar_t>(), grad_weight.mutable_data_ptr<scalar_t>(), s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_weight;
}

at::Tensor conv2d_grad_bias(const at::Tensor& grad_output) {
  check_conv2d_grad_bias(grad_output);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor go = grad_output.contiguous();
  at::Tensor grad_bias = at::empty({go.size(1)}, go.options());
  if (grad_bias.numel() == 0) return grad_bias;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(), "lenetx_conv2d_grad_bias_cuda", [&] {
    grad_bias_kernel<scalar_t><<<go.size(1), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        go.const_data_ptr<scalar_t>(), grad_bias.mutable_data_ptr<scalar_t>(), go.size(0), go.size(1),
        go.size(2) * go.size(3));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_bias;
}

}  // namespace

TORCH_LIBRARY_IMPL(lenetx, CUDA, m) {
  m.impl("conv2d", &conv2d);
  m.impl("conv2d_grad_input", &conv2d_grad_input);
  m.impl("conv2d_grad_weight", &conv2d_grad_weight);
  m.impl("conv2d_grad_bias", &conv2d_grad_bias);
}

}  // namespace lenetx::cuda

// Average pooling on CUDA. The backward pass gathers: each input element sums the shares of the
// windows that contain it, so no two threads write the same element.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../pooling_windows.h"
#include "../shape_checks.h"
#include "cuda_utils.cuh"

namespace lenetx::cuda {
namespace {

template <typename T>
__global__ void forward_kernel(const T* __restrict__ input, T* __restrict__ output, Pool2dShape s,
                               bool count_include_pad, int64_t divisor_override, bool relu_input) {
  using acc_t = at::acc_type<T, true>;
  const int64_t total = s.batch * s.channels * s.out_h * s.out_w;
  LENETX_GRID_STRIDE_LOOP(index, total) {
    const int64_t ow = index % s.out_w, oh = index / s.out_w % s.out_h;
    const int64_t plane = index / (s.out_w * s.out_h);
    const AvgPoolWindow win = avg_pool_window(s, oh, ow, count_include_pad, divisor_override);
    const T* in = input + plane * s.in_h * s.in_w;
    acc_t sum = 0;
    for (int64_t ih = win.h0; ih < win.h1; ++ih)
      for (int64_t iw = win.w0; iw < win.w1; ++iw) {
        const acc_t value = static_cast<acc_t>(in[ih * s.in_w + iw]);
        sum += relu_input ? relu(value) : value;
      }
    output[index] = win.empty() ? T(0) : static_cast<T>(sum / static_cast<acc_t>(win.divisor));
  }
}

// Outputs along one dimension whose (unclipped) window can reach input position i.
__device__ void candidate_outputs(int64_t i, int64_t kernel, int64_t stride, int64_t pad,
                                  int64_t out, int64_t& first, int64_t& last) {
  const int64_t low = i + pad - kernel + 1;
  first = low <= 0 ? 0 : (low + stride - 1) / stride;
  last = min((i + pad) / stride, out - 1);
}

template <typename T>
__global__ void backward_kernel(const T* __restrict__ grad_output, const T* __restrict__ input,
                                T* __restrict__ grad_input, Pool2dShape s, bool count_include_pad,
                                int64_t divisor_override, bool relu_input) {
  using acc_t = at::acc_type<T, true>;
  const int64_t total = s.batch * s.channels * s.in_h * s.in_w;
  LENETX_GRID_STRIDE_LOOP(index, total) {
    const int64_t iw = index % s.in_w, ih = index / s.in_w % s.in_h;
    const int64_t plane = index / (s.in_w * s.in_h);
    const T* go = grad_output + plane * s.out_h * s.out_w;
    int64_t oh0, oh1, ow0, ow1;
    candidate_outputs(ih, s.kernel_h, s.stride_h, s.pad_h, s.out_h, oh0, oh1);
    candidate_outputs(iw, s.kernel_w, s.stride_w, s.pad_w, s.out_w, ow0, ow1);
    acc_t sum = 0;
    for (int64_t oh = oh0; oh <= oh1; ++oh)
      for (int64_t ow = ow0; ow <= ow1; ++ow) {
        const AvgPoolWindow win = avg_pool_window(s, oh, ow, count_include_pad, divisor_override);
        if (ih >= win.h0 && ih < win.h1 && iw >= win.w0 && iw < win.w1)
          sum += static_cast<acc_t>(go[oh * s.out_w + ow]) / static_cast<acc_t>(win.divisor);
      }
    grad_input[index] = static_cast<T>(relu_input ? relu_backward(sum, static_cast<acc_t>(input[index])) : sum);
  }
}

at::Tensor avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                      std::optional<int64_t> divisor_override, bool relu_input) {
  const Pool2dShape s = check_avg_pool2d(input, kernel_size, stride, padding, ceil_mode,
                                         divisor_override, "lenetx.avg_pool2d");
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor in = input.contiguous();
  at::Tensor output = at::empty({s.batch, s.channels, s.out_h, s.out_w}, input.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lenetx_avg_pool2d_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(output.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        in.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), s, count_include_pad,
        divisor_override.value_or(0), relu_input);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

at::Tensor avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                               std::optional<int64_t> divisor_override, bool relu_input) {
  constexpr const char* op = "lenetx.avg_pool2d_backward";
  const Pool2dShape s =
      check_avg_pool2d(input, kernel_size, stride, padding, ceil_mode, divisor_override, op);
  check_pool2d_grad_output(grad_output, input, s, op);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor go = grad_output.contiguous();
  const at::Tensor in = relu_input ? input.contiguous() : at::Tensor();
  at::Tensor grad_input = at::empty({s.batch, s.channels, s.in_h, s.in_w}, input.options());
  if (grad_input.numel() == 0) return grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lenetx_avg_pool2d_backward_cuda", [&] {
    backward_kernel<scalar_t><<<blocks_for(grad_input.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        go.const_data_ptr<scalar_t>(), relu_input ? in.const_data_ptr<scalar_t>() : nullptr,
        grad_input.mutable_data_ptr<scalar_t>(), s, count_include_pad, divisor_override.value_or(0), relu_input);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(lenetx, CUDA, m) {
  m.impl("avg_pool2d", &avg_pool2d);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward);
}

}  // namespace lenetx::cuda

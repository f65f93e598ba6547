// Max pooling with indices on CUDA: the CPU kernel's scan order and NaN rule, so the indices
// match torch's. The backward pass gathers over the windows that can contain each input element
// and adds the gradients whose index points at it: deterministic, no atomics.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <limits>

#include "../pooling_windows.h"
#include "../shape_checks.h"
#include "cuda_utils.cuh"

namespace lenetx::cuda {
namespace {

template <typename T>
__global__ void forward_kernel(const T* __restrict__ input, T* __restrict__ output,
                               int64_t* __restrict__ indices, Pool2dShape s, bool relu_input) {
  using acc_t = at::acc_type<T, true>;
  const int64_t total = s.batch * s.channels * s.out_h * s.out_w;
  LENETX_GRID_STRIDE_LOOP(index, total) {
    const int64_t ow = index % s.out_w, oh = index / s.out_w % s.out_h;
    const T* in = input + index / (s.out_w * s.out_h) * s.in_h * s.in_w;
    const MaxPoolTaps rows = max_pool_taps(oh, s.kernel_h, s.stride_h, s.pad_h, s.dilation_h, s.in_h);
    const MaxPoolTaps cols = max_pool_taps(ow, s.kernel_w, s.stride_w, s.pad_w, s.dilation_w, s.in_w);
    int64_t best_index = rows.first * s.in_w + cols.first;
    acc_t best = -std::numeric_limits<acc_t>::infinity();
    for (int64_t ih = rows.first; ih < rows.end; ih += s.dilation_h)
      for (int64_t iw = cols.first; iw < cols.end; iw += s.dilation_w) {
        const acc_t read = static_cast<acc_t>(in[ih * s.in_w + iw]);
        const acc_t value = relu_input ? relu(read) : read;
        if (value > best || isnan(value)) {
          best = value;
          best_index = ih * s.in_w + iw;
        }
      }
    output[index] = static_cast<T>(best);
    indices[index] = best_index;
  }
}

__device__ void candidate_outputs(int64_t i, int64_t kernel, int64_t stride, int64_t pad,
                                  int64_t dilation, int64_t out, int64_t& first, int64_t& last) {
  const int64_t low = i + pad - (kernel - 1) * dilation;
  first = low <= 0 ? 0 : (low + stride - 1) / stride;
  last = min((i + pad) / stride, out - 1);
}

template <typename T>
__global__ void backward_kernel(const T* __restrict__ grad_output, const int64_t* __restrict__ indices,
                                const T* __restrict__ input, T* __restrict__ grad_input, Pool2dShape s,
                                bool relu_input, bool may_be_empty) {
  using acc_t = at::acc_type<T, true>;
  const int64_t total = s.batch * s.channels * s.in_h * s.in_w;
  LENETX_GRID_STRIDE_LOOP(index, total) {
    const int64_t iw = index % s.in_w, ih = index / s.in_w % s.in_h;
    const int64_t plane_offset = index / (s.in_w * s.in_h) * s.out_h * s.out_w;
    int64_t oh0, oh1, ow0, ow1;
    candidate_outputs(ih, s.kernel_h, s.stride_h, s.pad_h, s.dilation_h, s.out_h, oh0, oh1);
    candidate_outputs(iw, s.kernel_w, s.stride_w, s.pad_w, s.dilation_w, s.out_w, ow0, ow1);
    const int64_t flat = ih * s.in_w + iw;
    acc_t sum = 0;
    for (int64_t oh = oh0; oh <= oh1; ++oh)
      for (int64_t ow = ow0; ow <= ow1; ++ow) {
        const int64_t o = plane_offset + oh * s.out_w + ow;
        if (indices[o] == flat && !(may_be_empty && max_pool_window_empty(s, oh, ow)))
          sum += static_cast<acc_t>(grad_output[o]);
      }
    grad_input[index] = static_cast<T>(relu_input ? relu_backward(sum, static_cast<acc_t>(input[index])) : sum);
  }
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices(
    const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode, bool relu_input) {
  const Pool2dShape s = check_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode,
                                     "lenetx.max_pool2d");
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor in = input.contiguous();
  at::Tensor output = at::empty({s.batch, s.channels, s.out_h, s.out_w}, input.options());
  at::Tensor indices = at::empty(output.sizes(), input.options().dtype(at::kLong));
  if (output.numel() == 0) return {output, indices};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lenetx_max_pool2d_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(output.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        in.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(),
        indices.mutable_data_ptr<int64_t>(), s, relu_input);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {output, indices};
}

at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                               const at::Tensor& indices, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, bool ceil_mode, bool relu_input) {
  constexpr const char* op = "lenetx.max_pool2d_backward";
  const Pool2dShape s = check_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, op);
  check_pool2d_grad_output(grad_output, input, s, op);
  check_max_pool2d_indices(indices, grad_output, input, op);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor go = grad_output.contiguous(), idx = indices.contiguous();
  const at::Tensor in = relu_input ? input.contiguous() : at::Tensor();
  at::Tensor grad_input = at::empty(input.sizes(), input.options());
  if (grad_input.numel() == 0) return grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lenetx_max_pool2d_backward_cuda", [&] {
    backward_kernel<scalar_t><<<blocks_for(grad_input.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        go.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(), relu_input ? in.const_data_ptr<scalar_t>() : nullptr,
        grad_input.mutable_data_ptr<scalar_t>(), s, relu_input, max_pool_windows_may_be_empty(s));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(lenetx, CUDA, m) {
  m.impl("max_pool2d_with_indices", &max_pool2d_with_indices);
  m.impl("max_pool2d_backward", &max_pool2d_backward);
}

}  // namespace lenetx::cuda

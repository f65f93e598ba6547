// Adaptive average pooling on CUDA (windows in pooling_windows.h). The backward pass gathers over
// the cells whose window contains each input element: deterministic, no atomics.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../pooling_windows.h"
#include "../shape_checks.h"
#include "cuda_utils.cuh"

namespace lenetx::cuda {
namespace {

template <typename T>
__global__ void forward_kernel(const T* __restrict__ input, T* __restrict__ output, int64_t planes,
                               int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w) {
  using acc_t = at::acc_type<T, true>;
  LENETX_GRID_STRIDE_LOOP(index, planes * out_h * out_w) {
    const int64_t ow = index % out_w, oh = index / out_w % out_h;
    const T* in = input + index / (out_w * out_h) * in_h * in_w;
    const int64_t h0 = adaptive_start(oh, in_h, out_h), h1 = adaptive_end(oh, in_h, out_h);
    const int64_t w0 = adaptive_start(ow, in_w, out_w), w1 = adaptive_end(ow, in_w, out_w);
    acc_t sum = 0;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) sum += static_cast<acc_t>(in[ih * in_w + iw]);
    output[index] = static_cast<T>(sum / static_cast<acc_t>((h1 - h0) * (w1 - w0)));
  }
}

// Cells along one dimension whose window can contain input position i: windows are at most
// ceil(in / out) + 1 long, so only cells near i * out / in qualify.
__device__ void candidate_cells(int64_t i, int64_t in, int64_t out, int64_t& first, int64_t& last) {
  first = max(int64_t(0), i * out / in - 1);
  last = min(out - 1, ((i + 1) * out + in - 1) / in);
}

template <typename T>
__global__ void backward_kernel(const T* __restrict__ grad_output, T* __restrict__ grad_input,
                                int64_t planes, int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w) {
  using acc_t = at::acc_type<T, true>;
  LENETX_GRID_STRIDE_LOOP(index, planes * in_h * in_w) {
    const int64_t iw = index % in_w, ih = index / in_w % in_h;
    const T* go = grad_output + index / (in_w * in_h) * out_h * out_w;
    int64_t oh0, oh1, ow0, ow1;
    candidate_cells(ih, in_h, out_h, oh0, oh1);
    candidate_cells(iw, in_w, out_w, ow0, ow1);
    acc_t sum = 0;
    for (int64_t oh = oh0; oh <= oh1; ++oh) {
      const int64_t h0 = adaptive_start(oh, in_h, out_h), h1 = adaptive_end(oh, in_h, out_h);
      if (ih < h0 || ih >= h1) continue;
      for (int64_t ow = ow0; ow <= ow1; ++ow) {
        const int64_t w0 = adaptive_start(ow, in_w, out_w), w1 = adaptive_end(ow, in_w, out_w);
        if (iw >= w0 && iw < w1)
          sum += static_cast<acc_t>(go[oh * out_w + ow]) / static_cast<acc_t>((h1 - h0) * (w1 - w0));
      }
    }
    grad_input[index] = static_cast<T>(sum);
  }
}

at::Tensor adaptive_avg_pool2d(const at::Tensor& input, at::IntArrayRef output_size) {
  check_adaptive_pool2d(input, output_size);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor in = input.contiguous();
  const int64_t planes = in.size(0) * in.size(1);
  at::Tensor output = at::empty({in.size(0), in.size(1), output_size[0], output_size[1]}, input.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lenetx_adaptive_avg_pool2d_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(output.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        in.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), planes, in.size(2),
        in.size(3), output_size[0], output_size[1]);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

at::Tensor adaptive_avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input) {
  check_adaptive_pool2d_backward(grad_output, input);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor go = grad_output.contiguous();
  at::Tensor grad_input = at::empty(input.sizes(), input.options());
  if (grad_input.numel() == 0) return grad_input;
  if (go.numel() == 0) return grad_input.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lenetx_adaptive_avg_pool2d_backward_cuda", [&] {
    backward_kernel<scalar_t><<<blocks_for(grad_input.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        go.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(), input.size(0) * input.size(1),
        input.size(2), input.size(3), go.size(2), go.size(3));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(lenetx, CUDA, m) {
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward);
}

}  // namespace lenetx::cuda

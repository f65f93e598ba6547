// Adaptive average pooling on the CPU, one (image, channel) plane per work item; the windows are
// defined in pooling_windows.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>

#include "../pooling_windows.h"
#include "../shape_checks.h"
#include "parallel.h"
#include "simd.h"

namespace lenetx::cpu {
namespace {

template <typename T>
LENETX_SIMD_CLONES void forward_plane(const T* __restrict input, T* __restrict output, int64_t in_h,
                                      int64_t in_w, int64_t out_h, int64_t out_w) {
  for (int64_t oh = 0; oh < out_h; ++oh) {
    const int64_t h0 = adaptive_start(oh, in_h, out_h), h1 = adaptive_end(oh, in_h, out_h);
    for (int64_t ow = 0; ow < out_w; ++ow) {
      const int64_t w0 = adaptive_start(ow, in_w, out_w), w1 = adaptive_end(ow, in_w, out_w);
      T sum = 0;
      for (int64_t ih = h0; ih < h1; ++ih) {
        const T* row = input + ih * in_w;
#pragma omp simd reduction(+ : sum)
        for (int64_t iw = w0; iw < w1; ++iw) sum += row[iw];
      }
      output[oh * out_w + ow] = sum / static_cast<T>((h1 - h0) * (w1 - w0));
    }
  }
}

template <typename T>
LENETX_SIMD_CLONES void backward_plane(const T* __restrict grad_output, T* __restrict grad_input,
                                       int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w) {
  std::fill_n(grad_input, in_h * in_w, T(0));
  for (int64_t oh = 0; oh < out_h; ++oh) {
    const int64_t h0 = adaptive_start(oh, in_h, out_h), h1 = adaptive_end(oh, in_h, out_h);
    for (int64_t ow = 0; ow < out_w; ++ow) {
      const int64_t w0 = adaptive_start(ow, in_w, out_w), w1 = adaptive_end(ow, in_w, out_w);
      const T share = grad_output[oh * out_w + ow] / static_cast<T>((h1 - h0) * (w1 - w0));
      for (int64_t ih = h0; ih < h1; ++ih) {
        T* row = grad_input + ih * in_w;
#pragma omp simd
        for (int64_t iw = w0; iw < w1; ++iw) row[iw] += share;
      }
    }
  }
}

at::Tensor adaptive_avg_pool2d(const at::Tensor& input, at::IntArrayRef output_size) {
  check_adaptive_pool2d(input, output_size);
  const at::Tensor in = input.contiguous();
  const int64_t batch = in.size(0), channels = in.size(1), in_h = in.size(2), in_w = in.size(3);
  const int64_t out_h = output_size[0], out_w = output_size[1];
  at::Tensor output = at::empty({batch, channels, out_h, out_w}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_adaptive_avg_pool2d", [&] {
    const scalar_t* in_data = in.const_data_ptr<scalar_t>();
    scalar_t* out_data = output.mutable_data_ptr<scalar_t>();
    parallel_for(batch * channels, in_h * in_w, [&](int64_t plane) {
      forward_plane<scalar_t>(in_data + plane * in_h * in_w, out_data + plane * out_h * out_w,
                              in_h, in_w, out_h, out_w);
    });
  });
  return output;
}

at::Tensor adaptive_avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input) {
  check_adaptive_pool2d_backward(grad_output, input);
  const at::Tensor go = grad_output.contiguous();
  const int64_t batch = input.size(0), channels = input.size(1);
  const int64_t in_h = input.size(2), in_w = input.size(3);
  const int64_t out_h = go.size(2), out_w = go.size(3);
  at::Tensor grad_input = at::empty(input.sizes(), input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_adaptive_avg_pool2d_backward", [&] {
    const scalar_t* go_data = go.const_data_ptr<scalar_t>();
    scalar_t* gi_data = grad_input.mutable_data_ptr<scalar_t>();
    parallel_for(batch * channels, in_h * in_w, [&](int64_t plane) {
      backward_plane<scalar_t>(go_data + plane * out_h * out_w, gi_data + plane * in_h * in_w,
                               in_h, in_w, out_h, out_w);
    });
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(lenetx, CPU, m) {
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward);
}

}  // namespace lenetx::cpu

// Average pooling on the CPU, one (image, channel) plane per work item.
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
LENETX_SIMD_CLONES void forward_plane(const T* __restrict input, T* __restrict output,
                                      const Pool2dShape& s, bool count_include_pad,
                                      int64_t divisor_override) {
  for (int64_t oh = 0; oh < s.out_h; ++oh) {
    for (int64_t ow = 0; ow < s.out_w; ++ow) {
      const AvgPoolWindow win = avg_pool_window(s, oh, ow, count_include_pad, divisor_override);
      T sum = 0;
      if (!win.empty()) {
        for (int64_t ih = win.h0; ih < win.h1; ++ih) {
          const T* row = input + ih * s.in_w;
#pragma omp simd reduction(+ : sum)
          for (int64_t iw = win.w0; iw < win.w1; ++iw) sum += row[iw];
        }
        sum /= static_cast<T>(win.divisor);
      }
      output[oh * s.out_w + ow] = sum;
    }
  }
}

template <typename T>
LENETX_SIMD_CLONES void backward_plane(const T* __restrict grad_output, T* __restrict grad_input,
                                       const Pool2dShape& s, bool count_include_pad,
                                       int64_t divisor_override) {
  std::fill_n(grad_input, s.in_h * s.in_w, T(0));
  for (int64_t oh = 0; oh < s.out_h; ++oh) {
    for (int64_t ow = 0; ow < s.out_w; ++ow) {
      const AvgPoolWindow win = avg_pool_window(s, oh, ow, count_include_pad, divisor_override);
      if (win.empty()) continue;
      const T share = grad_output[oh * s.out_w + ow] / static_cast<T>(win.divisor);
      for (int64_t ih = win.h0; ih < win.h1; ++ih) {
        T* row = grad_input + ih * s.in_w;
#pragma omp simd
        for (int64_t iw = win.w0; iw < win.w1; ++iw) row[iw] += share;
      }
    }
  }
}

at::Tensor avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                      std::optional<int64_t> divisor_override) {
  const Pool2dShape s = check_avg_pool2d(input, kernel_size, stride, padding, ceil_mode,
                                         divisor_override, "lenetx.avg_pool2d");
  const at::Tensor in = input.contiguous();
  at::Tensor output = at::empty({s.batch, s.channels, s.out_h, s.out_w}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_avg_pool2d", [&] {
    const scalar_t* in_data = in.const_data_ptr<scalar_t>();
    scalar_t* out_data = output.mutable_data_ptr<scalar_t>();
    parallel_for(s.batch * s.channels, [&](int64_t plane) {
      forward_plane<scalar_t>(in_data + plane * s.in_h * s.in_w,
                              out_data + plane * s.out_h * s.out_w, s, count_include_pad,
                              divisor_override.value_or(0));
    });
  });
  return output;
}

at::Tensor avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                               std::optional<int64_t> divisor_override) {
  constexpr const char* op = "lenetx.avg_pool2d_backward";
  const Pool2dShape s =
      check_avg_pool2d(input, kernel_size, stride, padding, ceil_mode, divisor_override, op);
  check_pool2d_grad_output(grad_output, input, s, op);
  const at::Tensor go = grad_output.contiguous();
  at::Tensor grad_input = at::empty({s.batch, s.channels, s.in_h, s.in_w}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_avg_pool2d_backward", [&] {
    const scalar_t* go_data = go.const_data_ptr<scalar_t>();
    scalar_t* gi_data = grad_input.mutable_data_ptr<scalar_t>();
    parallel_for(s.batch * s.channels, [&](int64_t plane) {
      backward_plane<scalar_t>(go_data + plane * s.out_h * s.out_w,
                               gi_data + plane * s.in_h * s.in_w, s, count_include_pad,
                               divisor_override.value_or(0));
    });
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(lenetx, CPU, m) {
  m.impl("avg_pool2d", &avg_pool2d);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward);
}

}  // namespace lenetx::cpu

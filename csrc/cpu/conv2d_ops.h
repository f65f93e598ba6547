// The convolution operators on the CPU: each checks its arguments and runs the path that
// conv2d_paths.h picks for the shape. Compiled once per instruction set (isa/kernels.h).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../shape_checks.h"
#include "conv2d_paths.h"
#include "parallel.h"

namespace lenetx::cpu::LENETX_ISA {
namespace {

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const Conv2dShape s = check_conv2d(input, weight, bias, stride, padding, dilation, groups);
  const at::Tensor in = input.contiguous(), w = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor output = at::empty({s.batch, s.out_channels, s.out_h, s.out_w}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_conv2d", [&] {
    conv2d_forward<scalar_t>(in.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                             b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                             output.mutable_data_ptr<scalar_t>(), s);
  });
  return output;
}

at::Tensor conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& input,
                             const at::Tensor& weight, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const Conv2dShape s = check_conv2d_backward(grad_output, input, weight, stride, padding,
                                              dilation, groups, "lenetx.conv2d_grad_input");
  const at::Tensor go = grad_output.contiguous(), w = weight.contiguous();
  at::Tensor grad_input = at::empty({s.batch, s.in_channels, s.in_h, s.in_w}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_conv2d_grad_input", [&] {
    conv2d_grad_input_paths<scalar_t>(go.const_data_ptr<scalar_t>(),
                                      prepare_grad_input_weight<scalar_t>(w.const_data_ptr<scalar_t>(), s),
                                      grad_input.mutable_data_ptr<scalar_t>(), s);
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
    conv2d_grad_weight_paths<scalar_t>(go.const_data_ptr<scalar_t>(), in.const_data_ptr<scalar_t>(),
                                       grad_weight.mutable_data_ptr<scalar_t>(), s);
  });
  return grad_weight;
}

at::Tensor conv2d_grad_bias(const at::Tensor& grad_output) {
  check_conv2d_grad_bias(grad_output);
  const at::Tensor go = grad_output.contiguous();
  const int64_t batch = go.size(0), channels = go.size(1), plane = go.size(2) * go.size(3);
  at::Tensor grad_bias = at::empty({channels}, go.options());
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "lenetx_conv2d_grad_bias", [&] {
    const scalar_t* go_data = go.const_data_ptr<scalar_t>();
    scalar_t* gb_data = grad_bias.mutable_data_ptr<scalar_t>();
    parallel_for_ranges(channels, batch * plane, [&](int64_t first, int64_t last) {
      grad_bias_channels<scalar_t>(go_data, batch, channels, plane, first, last, gb_data);
    });
  });
  return grad_bias;
}

}  // namespace

inline void register_conv2d(torch::Library& m) {
  m.impl("conv2d", &conv2d);
  m.impl("conv2d_grad_input", &conv2d_grad_input);
  m.impl("conv2d_grad_weight", &conv2d_grad_weight);
  m.impl("conv2d_grad_bias", &conv2d_grad_bias);
}

}  // namespace lenetx::cpu::LENETX_ISA

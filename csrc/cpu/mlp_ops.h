// The fully connected stack on the CPU (lenetx::mlp): one operator for every layer of a classifier
// such as LeNet-5's (conv3 as a 400 -> 120 layer, then 120 -> 84 -> 10), so that its forward and
// backward are two calls instead of a dispatch, an autograd node and a ReLU per layer. Compiled
// once per instruction set (isa/kernels.h).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "../pooling_windows.h"
#include "../shape_checks.h"
#include "linear.h"

namespace lenetx::cpu::LENETX_ISA {
namespace {

// grad through the ReLU whose output is activation (positive wherever its input was), a loop
// apart from the AT_DISPATCH lambdas, whose macro arguments cannot hold its pragma.
template <typename T>
void relu_backward_in_place(T* grad, const T* activation, int64_t count) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) grad[i] = relu_backward(grad[i], activation[i]);
}

std::tuple<at::Tensor, std::vector<at::Tensor>> mlp(const at::Tensor& input, at::TensorList weights,
                                                    const c10::List<std::optional<at::Tensor>>& biases) {
  const std::vector<int64_t> widths = check_mlp(input, weights, biases);
  const int64_t rows = input.size(0), layers = static_cast<int64_t>(weights.size());
  std::vector<at::Tensor> hidden;
  at::Tensor x = input.contiguous();
  for (int64_t l = 0; l < layers; ++l) {
    const at::Tensor w = weights[l].contiguous();
    const std::optional<at::Tensor> bias = biases.get(l);
    const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
    at::Tensor out = at::empty({rows, widths[l + 1]}, input.options());
    const bool relu = l + 1 < layers;
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_mlp", [&] {
      scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
      linear_forward<scalar_t>(rows, widths[l], widths[l + 1], x.const_data_ptr<scalar_t>(), widths[l],
                               w.const_data_ptr<scalar_t>(), out_data, widths[l + 1]);
      add_bias_relu<scalar_t>(out_data, rows, widths[l + 1], b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                              relu);
    });
    if (relu) hidden.push_back(out);
    x = out;
  }
  return {x, hidden};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_backward(
    const at::Tensor& grad_output, const at::Tensor& input, at::TensorList weights, at::TensorList hidden,
    bool input_grad) {
  const std::vector<int64_t> widths = check_mlp_backward(grad_output, input, weights, hidden);
  const int64_t rows = input.size(0), layers = static_cast<int64_t>(weights.size());
  std::vector<at::Tensor> grad_weights(layers), grad_biases(layers);
  at::Tensor grad = grad_output.contiguous(), grad_input = at::empty({0}, input.options());
  for (int64_t l = layers - 1; l >= 0; --l) {
    const at::Tensor x = (l == 0 ? input : hidden[l - 1]).contiguous(), w = weights[l].contiguous();
    const int64_t in = widths[l], out = widths[l + 1];
    grad_weights[l] = at::empty({out, in}, input.options());
    grad_biases[l] = at::empty({out}, input.options());
    const bool grad_x = l > 0 || input_grad;
    at::Tensor grad_in = grad_x ? at::empty({rows, in}, input.options()) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lenetx_mlp_backward", [&] {
      const scalar_t* g = grad.const_data_ptr<scalar_t>();
      const scalar_t* x_data = x.const_data_ptr<scalar_t>();
      scalar_t* gw = grad_weights[l].mutable_data_ptr<scalar_t>();
      scalar_t* gi = grad_x ? grad_in.mutable_data_ptr<scalar_t>() : nullptr;
      const auto input_product = [&] {
        linear_grad_input<scalar_t>(rows, in, out, g, out, w.const_data_ptr<scalar_t>(), gi, in);
        if (l > 0) relu_backward_in_place<scalar_t>(gi, x_data, rows * in);
      };
      const auto weight_product = [&] { linear_grad_weight<scalar_t>(rows, in, out, g, out, x_data, in, gw); };
      // On two threads the layer's two products run side by side, one on each: as products of the
      // team one after the other, the threads waited on each other at every product, and the
      // backward ran 1.2x as fast as on one thread (benchmarks/NOTES.md, section 28). On more,
      // each product takes the whole team. gemm's sums do not depend on the threads.
      if (grad_x && at::get_num_threads() == 2) {
        parallel_for_ranges(2, rows * in * out, [&](int64_t first, int64_t last) {
          for (int64_t task = first; task < last; ++task) task == 0 ? weight_product() : input_product();
        });
      } else {
        weight_product();
        if (grad_x) input_product();
      }
      // Each bias gradient the sum of its column, in order of the rows, as the fused operator
      // sums the images' grad_bias.
      sum_chunk_partials<scalar_t>(g, rows, out, grad_biases[l].mutable_data_ptr<scalar_t>());
    });
    if (l > 0)
      grad = grad_in;
    else if (input_grad)
      grad_input = grad_in;
  }
  return {grad_input, grad_weights, grad_biases};
}

}  // namespace

inline void register_mlp(torch::Library& m) {
  m.impl("mlp", &mlp);
  m.impl("mlp_backward", &mlp_backward);
}

}  // namespace lenetx::cpu::LENETX_ISA

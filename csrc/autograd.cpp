// Autograd kernels of the lenetx operators, for every device: each forward saves what its
// backward reads, and each backward calls lenetx's own backward operators for only the
// gradients that are needed. Registered in C++ rather than with torch.library.register_autograd:
// the Python formula cost about 145 us per forward and backward (benchmarks/NOTES.md, section 5),
// the whole time of a small layer.
//
// Second derivatives (create_graph=True: gradient penalties, Hessian-vector products): the
// backward operators of the convolution and the poolings have derivatives of their own, written
// with lenetx's operators, which are differentiable in turn, as torch's are. The fused
// operators' backward kernels have none: under create_graph their backward differentiates the
// same function composed of differentiable operators, with the forward's own ReLU and pooling
// choices (its mask, the MLP's hidden activations).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "operators.h"
#include "pooling_windows.h"

namespace lenetx {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// What a convolution's backward, and the backward of its backward operators, need besides
// their tensors.
struct ConvArguments {
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups;

  static void save(AutogradContext* ctx, IntList stride, IntList padding, IntList dilation, int64_t groups) {
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["groups"] = groups;
  }

  explicit ConvArguments(AutogradContext* ctx)
      : stride(ctx->saved_data["stride"].toIntVector()),
        padding(ctx->saved_data["padding"].toIntVector()),
        dilation(ctx->saved_data["dilation"].toIntVector()),
        groups(ctx->saved_data["groups"].toInt()) {}
};

// The gradients of `outputs` (weighted by `grad_outputs`) with respect to those of `inputs`
// whose entry in `needed` is set, as a graph of their own (create_graph); undefined elsewhere.
variable_list differentiate(const variable_list& outputs, const variable_list& grad_outputs,
                            const variable_list& inputs, const std::vector<bool>& needed) {
  variable_list wanted;
  for (size_t i = 0; i < inputs.size(); ++i)
    if (needed[i]) wanted.push_back(inputs[i]);
  variable_list grads(inputs.size());
  if (wanted.empty()) return grads;
  const variable_list found = torch::autograd::grad(outputs, wanted, grad_outputs, /*retain_graph=*/true,
                                                    /*create_graph=*/true, /*allow_unused=*/true);
  for (size_t i = 0, next = 0; i < inputs.size(); ++i)
    if (needed[i]) grads[i] = found[next++];
  return grads;
}

class Conv2dFunction : public torch::autograd::Function<Conv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, IntList stride, IntList padding,
                            IntList dilation, int64_t groups) {
    ctx->save_for_backward({input, weight});
    ConvArguments::save(ctx, stride, padding, dilation, groups);
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    at::AutoDispatchBelowADInplaceOrView guard;
    return conv2d_op().call(input, weight, bias, stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &weight = saved[1], &grad_output = grad_outputs[0];
    const ConvArguments a(ctx);
    at::Tensor grad_input, grad_weight, grad_bias;
    if (ctx->needs_input_grad(0))
      grad_input = conv2d_grad_input_op().call(grad_output, input, weight, a.stride, a.padding, a.dilation, a.groups);
    if (ctx->needs_input_grad(1))
      grad_weight = conv2d_grad_weight_op().call(grad_output, input, weight, a.stride, a.padding, a.dilation, a.groups);
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2))
      grad_bias = conv2d_grad_bias_op().call(grad_output);
    return {grad_input, grad_weight, grad_bias, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// grad_input is linear in grad_output and in the weight, <v, grad_input(g, w)> = <conv2d(v, w), g>:
// along grad_output its derivative is the convolution of the incoming gradient v, along the
// weight grad_weight with v as the input. The input gives only its shape.
class Conv2dGradInputFunction : public torch::autograd::Function<Conv2dGradInputFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& input,
                            const at::Tensor& weight, IntList stride, IntList padding, IntList dilation,
                            int64_t groups) {
    ctx->save_for_backward({grad_output, weight});
    ConvArguments::save(ctx, stride, padding, dilation, groups);
    at::AutoDispatchBelowADInplaceOrView guard;
    return conv2d_grad_input_op().call(grad_output, input, weight, stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &grad_output = saved[0], &weight = saved[1], &v = grads[0];
    const ConvArguments a(ctx);
    at::Tensor along_grad_output, along_weight;
    if (ctx->needs_input_grad(0))
      along_grad_output = conv2d_op().call(v, weight, std::nullopt, a.stride, a.padding, a.dilation, a.groups);
    if (ctx->needs_input_grad(2))
      along_weight = conv2d_grad_weight_op().call(grad_output, v, weight, a.stride, a.padding, a.dilation, a.groups);
    return {along_grad_output, at::Tensor(), along_weight, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// grad_weight is linear in grad_output and in the input, <v, grad_weight(g, x)> = <conv2d(x, v), g>:
// along grad_output its derivative is the convolution of the input by v, along the input
// grad_input with v as the weight. The weight gives only its shape.
class Conv2dGradWeightFunction : public torch::autograd::Function<Conv2dGradWeightFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& input,
                            const at::Tensor& weight, IntList stride, IntList padding, IntList dilation,
                            int64_t groups) {
    ctx->save_for_backward({grad_output, input});
    ConvArguments::save(ctx, stride, padding, dilation, groups);
    at::AutoDispatchBelowADInplaceOrView guard;
    return conv2d_grad_weight_op().call(grad_output, input, weight, stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &grad_output = saved[0], &input = saved[1], &v = grads[0];
    const ConvArguments a(ctx);
    at::Tensor along_grad_output, along_input;
    if (ctx->needs_input_grad(0))
      along_grad_output = conv2d_op().call(input, v, std::nullopt, a.stride, a.padding, a.dilation, a.groups);
    if (ctx->needs_input_grad(1))
      along_input = conv2d_grad_input_op().call(grad_output, input, v, a.stride, a.padding, a.dilation, a.groups);
    return {along_grad_output, along_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// grad_bias sums grad_output over everything but its channels: its derivative spreads each
// channel's incoming gradient over the channel's plane.
class Conv2dGradBiasFunction : public torch::autograd::Function<Conv2dGradBiasFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output) {
    ctx->saved_data["sizes"] = grad_output.sizes();
    at::AutoDispatchBelowADInplaceOrView guard;
    return conv2d_grad_bias_op().call(grad_output);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const std::vector<int64_t> sizes = ctx->saved_data["sizes"].toIntVector();
    return {grads[0].reshape({1, -1, 1, 1}).expand(sizes)};
  }
};

class Conv2dReluPool2dFunction : public torch::autograd::Function<Conv2dReluPool2dFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, IntList stride, IntList padding,
                               IntList dilation, int64_t groups, IntList pool_size, bool max_pool) {
    at::Tensor output, mask;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(output, mask) =
          conv2d_relu_pool2d_op().call(input, weight, bias, stride, padding, dilation, groups, pool_size, max_pool);
    }
    // The bias only for a second derivative (below), which recomputes the convolution.
    ctx->save_for_backward({input, weight, mask, bias.value_or(at::Tensor())});
    ctx->mark_non_differentiable({mask});
    // Otherwise autograd would zero a mask-sized gradient for the mask every backward (217 us
    // of LeNet-5's 4.6 ms step for conv1's mask, by the profiler).
    ctx->set_materialize_grads(false);
    ConvArguments::save(ctx, stride, padding, dilation, groups);
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["pool_size"] = pool_size;
    ctx->saved_data["max_pool"] = max_pool;
    return {output, mask};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto op =
        lenetx_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, const at::Tensor&, IntList,
                                                                 IntList, IntList, int64_t, IntList, bool, bool)>(
            "lenetx::conv2d_relu_pool2d_backward");
    if (!grad_outputs[0].defined()) return variable_list(9);
    if (at::GradMode::is_enabled()) return differentiable_backward(ctx, grad_outputs[0]);
    const variable_list saved = ctx->get_saved_variables();
    auto& data = ctx->saved_data;
    const ConvArguments a(ctx);
    const bool input_grad = ctx->needs_input_grad(0);
    auto [grad_input, grad_weight, grad_bias] =
        op.call(grad_outputs[0], saved[2], saved[0], saved[1], a.stride, a.padding, a.dilation, a.groups,
                data["pool_size"].toIntVector(), data["max_pool"].toBool(), input_grad);
    return {input_grad ? grad_input : at::Tensor(),
            ctx->needs_input_grad(1) ? grad_weight : at::Tensor(),
            data["has_bias"].toBool() && ctx->needs_input_grad(2) ? grad_bias : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }

 private:
  // Under create_graph: the gradients of conv2d, then the pooling of its output times the mask
  // (1 where relu passes and, for max pooling, at the window's chosen maximum), which is the
  // forward's function with the forward's own choices: an average pooling, or a sum for max
  // pooling.
  static variable_list differentiable_backward(AutogradContext* ctx, const at::Tensor& grad_output) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &weight = saved[1], &mask = saved[2], &bias = saved[3];
    const ConvArguments a(ctx);
    const std::vector<int64_t> pool_size = ctx->saved_data["pool_size"].toIntVector();
    const bool max_pool = ctx->saved_data["max_pool"].toBool();
    const std::optional<at::Tensor> optional_bias = bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt;
    const at::Tensor conv = conv2d_op().call(input, weight, optional_bias, a.stride, a.padding, a.dilation, a.groups);
    const at::Tensor pooled =
        avg_pool2d_op().call(conv * mask, pool_size, pool_size, {0, 0}, /*ceil_mode=*/false,
                             /*count_include_pad=*/true, max_pool ? std::optional<int64_t>(1) : std::nullopt,
                             /*relu_input=*/false);
    variable_list grads =
        differentiate({pooled}, {grad_output}, {input, weight, bias},
                      {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                       bias.defined() && ctx->needs_input_grad(2)});
    grads.resize(9);
    return grads;
  }
};

// What an average pooling's backward, and that backward's, need besides its tensors.
struct AvgPoolArguments {
  std::vector<int64_t> kernel_size, stride, padding;
  bool ceil_mode, count_include_pad;
  std::optional<int64_t> divisor_override;
  bool relu_input;

  static void save(AutogradContext* ctx, IntList kernel_size, IntList stride, IntList padding, bool ceil_mode,
                   bool count_include_pad, std::optional<int64_t> divisor_override, bool relu_input) {
    ctx->saved_data["kernel_size"] = kernel_size;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["ceil_mode"] = ceil_mode;
    ctx->saved_data["count_include_pad"] = count_include_pad;
    ctx->saved_data["divisor_override"] = divisor_override;
    ctx->saved_data["relu_input"] = relu_input;
  }

  explicit AvgPoolArguments(AutogradContext* ctx)
      : kernel_size(ctx->saved_data["kernel_size"].toIntVector()),
        stride(ctx->saved_data["stride"].toIntVector()),
        padding(ctx->saved_data["padding"].toIntVector()),
        ceil_mode(ctx->saved_data["ceil_mode"].toBool()),
        count_include_pad(ctx->saved_data["count_include_pad"].toBool()),
        divisor_override(ctx->saved_data["divisor_override"].toOptional<int64_t>()),
        relu_input(ctx->saved_data["relu_input"].toBool()) {}
};

class AvgPool2dFunction : public torch::autograd::Function<AvgPool2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, IntList kernel_size, IntList stride,
                            IntList padding, bool ceil_mode, bool count_include_pad,
                            std::optional<int64_t> divisor_override, bool relu_input) {
    ctx->save_for_backward({input});
    AvgPoolArguments::save(ctx, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                           relu_input);
    at::AutoDispatchBelowADInplaceOrView guard;
    return avg_pool2d_op().call(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                                relu_input);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const AvgPoolArguments a(ctx);
    const at::Tensor grad_input =
        avg_pool2d_backward_op().call(grad_outputs[0], ctx->get_saved_variables()[0], a.kernel_size, a.stride,
                                      a.padding, a.ceil_mode, a.count_include_pad, a.divisor_override, a.relu_input);
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

class MaxPool2dFunction : public torch::autograd::Function<MaxPool2dFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, IntList kernel_size,
                               IntList stride, IntList padding, IntList dilation, bool ceil_mode,
                               bool relu_input) {
    at::Tensor output, indices;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(output, indices) =
          max_pool2d_with_indices_op().call(input, kernel_size, stride, padding, dilation, ceil_mode, relu_input);
    }
    ctx->save_for_backward({input, indices});
    ctx->mark_non_differentiable({indices});
    // A graph that uses only the indices passes no gradient for the values: nothing to scatter.
    ctx->set_materialize_grads(false);
    ctx->saved_data["kernel_size"] = kernel_size;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["ceil_mode"] = ceil_mode;
    ctx->saved_data["relu_input"] = relu_input;
    return {output, indices};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    at::Tensor grad_input;
    if (grad_outputs[0].defined()) {
      auto& data = ctx->saved_data;
      const variable_list saved = ctx->get_saved_variables();
      grad_input = max_pool2d_backward_op().call(grad_outputs[0], saved[0], saved[1], data["kernel_size"].toIntVector(),
                                                 data["stride"].toIntVector(), data["padding"].toIntVector(),
                                                 data["dilation"].toIntVector(), data["ceil_mode"].toBool(),
                                                 data["relu_input"].toBool());
    }
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class AdaptiveAvgPool2dFunction : public torch::autograd::Function<AdaptiveAvgPool2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, IntList output_size) {
    ctx->save_for_backward({input});
    at::AutoDispatchBelowADInplaceOrView guard;
    return adaptive_avg_pool2d_op().call(input, output_size);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    return {adaptive_avg_pool2d_backward_op().call(grad_outputs[0], ctx->get_saved_variables()[0]), at::Tensor()};
  }
};

// The pooling backwards are linear in grad_output, and piecewise constant in the input (which
// gives their shape and, with relu_input, relu's mask): their derivative is along grad_output
// alone, the adjoint of the spreading, which is the pooling itself (a gather of the indices for
// max pooling) of the incoming gradient with relu's mask applied first.
at::Tensor relu_masked(const at::Tensor& v, const at::Tensor& input, bool relu_input) {
  return relu_input ? v.masked_fill(input <= 0, 0) : v;
}

class AvgPool2dBackwardFunction : public torch::autograd::Function<AvgPool2dBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& input,
                            IntList kernel_size, IntList stride, IntList padding, bool ceil_mode,
                            bool count_include_pad, std::optional<int64_t> divisor_override, bool relu_input) {
    ctx->save_for_backward({input});
    AvgPoolArguments::save(ctx, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                           relu_input);
    at::AutoDispatchBelowADInplaceOrView guard;
    return avg_pool2d_backward_op().call(grad_output, input, kernel_size, stride, padding, ceil_mode,
                                         count_include_pad, divisor_override, relu_input);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const AvgPoolArguments a(ctx);
    const at::Tensor along_grad_output =
        avg_pool2d_op().call(relu_masked(grads[0], ctx->get_saved_variables()[0], a.relu_input), a.kernel_size,
                             a.stride, a.padding, a.ceil_mode, a.count_include_pad, a.divisor_override,
                             /*relu_input=*/false);
    return {along_grad_output, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

// The max-pooling windows that hold no input element (max_pool_window_empty), as a bool
// (out_h, out_w) tensor on input's device; undefined where no window can be empty.
at::Tensor empty_max_pool_windows(const at::Tensor& input, IntList kernel_size, IntList stride, IntList padding,
                                  IntList dilation, bool ceil_mode) {
  const Pool2dShape s = check_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, "lenetx.max_pool2d");
  if (!max_pool_windows_may_be_empty(s)) return {};
  at::Tensor empty = at::empty({s.out_h, s.out_w}, at::kBool);
  bool* flags = empty.mutable_data_ptr<bool>();
  for (int64_t oh = 0; oh < s.out_h; ++oh)
    for (int64_t ow = 0; ow < s.out_w; ++ow) flags[oh * s.out_w + ow] = max_pool_window_empty(s, oh, ow);
  return empty.to(input.device());
}

class MaxPool2dBackwardFunction : public torch::autograd::Function<MaxPool2dBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& input,
                            const at::Tensor& indices, IntList kernel_size, IntList stride, IntList padding,
                            IntList dilation, bool ceil_mode, bool relu_input) {
    ctx->save_for_backward({input, indices});
    ctx->saved_data["relu_input"] = relu_input;
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor grad_input = max_pool2d_backward_op().call(grad_output, input, indices, kernel_size, stride, padding,
                                                          dilation, ceil_mode, relu_input);
    ctx->saved_data["empty_windows"] =
        empty_max_pool_windows(input, kernel_size, stride, padding, dilation, ceil_mode);
    return grad_input;
  }

  // A window that holds no input element gave no gradient (its index names no tap of it), so the
  // gradient along grad_output is zero there.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &indices = saved[1];
    const at::Tensor empty_windows = ctx->saved_data["empty_windows"].toTensor();
    const bool any_empty = empty_windows.defined();
    at::Tensor along_grad_output = relu_masked(grads[0], input, ctx->saved_data["relu_input"].toBool())
                                       .flatten(2)
                                       .gather(2, (any_empty ? indices.masked_fill(empty_windows, 0) : indices).flatten(2))
                                       .view(indices.sizes());
    if (any_empty) along_grad_output = along_grad_output.masked_fill(empty_windows, 0);
    return {along_grad_output, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

class AdaptiveAvgPool2dBackwardFunction : public torch::autograd::Function<AdaptiveAvgPool2dBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& input) {
    ctx->saved_data["output_size"] = grad_output.sizes().slice(grad_output.dim() - 2);
    at::AutoDispatchBelowADInplaceOrView guard;
    return adaptive_avg_pool2d_backward_op().call(grad_output, input);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {adaptive_avg_pool2d_op().call(grads[0], ctx->saved_data["output_size"].toIntVector()), at::Tensor()};
  }
};

// Each layer's bias or none, from the defined biases in layer order and has_bias.
c10::List<std::optional<at::Tensor>> layer_biases(at::TensorList defined_biases, const c10::List<bool>& has_bias) {
  c10::List<std::optional<at::Tensor>> biases;
  for (size_t l = 0, next = 0; l < has_bias.size(); ++l)
    biases.push_back(has_bias.get(l) ? std::optional<at::Tensor>(defined_biases[next++]) : std::nullopt);
  return biases;
}

// The biases arrive as the defined ones alone, has_bias saying which layers they belong to:
// torch::autograd::Function takes a list of tensors as inputs only when none is missing.
class MlpFunction : public torch::autograd::Function<MlpFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, at::TensorList weights,
                               at::TensorList defined_biases, const c10::List<bool>& has_bias) {
    at::Tensor output;
    std::vector<at::Tensor> hidden;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(output, hidden) = mlp_op().call(input, weights, layer_biases(defined_biases, has_bias));
    }
    variable_list saved{input};
    saved.insert(saved.end(), weights.begin(), weights.end());
    saved.insert(saved.end(), hidden.begin(), hidden.end());
    // The biases only for a second derivative (below), which recomputes the layers.
    saved.insert(saved.end(), defined_biases.begin(), defined_biases.end());
    ctx->save_for_backward(saved);
    ctx->mark_non_differentiable(hidden);
    // No zeroed gradients for the hidden outputs, which never get any.
    ctx->set_materialize_grads(false);
    ctx->saved_data["has_bias"] = has_bias;
    variable_list outputs{output};
    outputs.insert(outputs.end(), hidden.begin(), hidden.end());
    return outputs;
  }

  // Gradients in the order of the inputs: input, each weight, each defined bias, has_bias.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto op =
        lenetx_op<std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>(
            const at::Tensor&, const at::Tensor&, at::TensorList, at::TensorList, bool)>("lenetx::mlp_backward");
    const c10::List<bool> has_bias = ctx->saved_data["has_bias"].toBoolList();
    const size_t layers = has_bias.size();
    size_t defined_biases = 0;
    for (const bool b : has_bias) defined_biases += b;
    variable_list grads(1 + layers + defined_biases + 1);
    if (!grad_outputs[0].defined()) return grads;
    const variable_list saved = ctx->get_saved_variables();
    if (at::GradMode::is_enabled()) return differentiable_backward(ctx, saved, grad_outputs[0], grads.size());
    const at::TensorList weights(saved.data() + 1, layers), hidden(saved.data() + 1 + layers, layers - 1);
    const bool input_grad = ctx->needs_input_grad(0);
    auto [grad_input, grad_weights, grad_biases] = op.call(grad_outputs[0], saved[0], weights, hidden, input_grad);
    if (input_grad) grads[0] = grad_input;
    for (size_t l = 0, next = 0; l < layers; ++l) {
      if (ctx->needs_input_grad(1 + l)) grads[1 + l] = grad_weights[l];
      if (!has_bias.get(l)) continue;
      if (ctx->needs_input_grad(1 + layers + next)) grads[1 + layers + next] = grad_biases[l];
      ++next;
    }
    return grads;
  }

 private:
  // Under create_graph: the gradients of the layers recomputed with torch's linear, each ReLU
  // kept where the forward's own hidden activation is positive (relu's derivative, with the
  // forward's choices). `saved`: the input, the weights, the hidden activations, the defined
  // biases.
  static variable_list differentiable_backward(AutogradContext* ctx, const variable_list& saved,
                                               const at::Tensor& grad_output, size_t gradients) {
    const c10::List<bool> has_bias = ctx->saved_data["has_bias"].toBoolList();
    const size_t layers = has_bias.size();
    const at::TensorList weights(saved.data() + 1, layers), hidden(saved.data() + 1 + layers, layers - 1);
    const at::TensorList biases(saved.data() + 2 * layers, saved.size() - 2 * layers);
    const c10::List<std::optional<at::Tensor>> biases_by_layer = layer_biases(biases, has_bias);
    at::Tensor x = saved[0];
    for (size_t l = 0; l < layers; ++l) {
      x = at::linear(x, weights[l], biases_by_layer.get(l));
      if (l + 1 < layers) x = x.masked_fill(hidden[l] <= 0, 0);
    }
    // The inputs in the order of the gradients: input, each weight, each defined bias.
    variable_list inputs(saved.begin(), saved.begin() + 1 + layers);
    inputs.insert(inputs.end(), biases.begin(), biases.end());
    std::vector<bool> needed;
    for (size_t i = 0; i < inputs.size(); ++i) needed.push_back(ctx->needs_input_grad(i));
    variable_list grads = differentiate({x}, {grad_output}, inputs, needed);
    grads.resize(gradients);
    return grads;
  }
};

// Whether autograd has anything to do with a call: record it (grad mode on, and a tensor among
// its arguments that requires a gradient) or carry a forward-mode tangent through it (which
// Function::apply refuses with an error). Elsewhere (inference, a first layer's images, a training
// step's backward operators, which run with grad mode off) the autograd kernels call the operator
// below autograd directly: Function::apply would build a node and save its values for nothing,
// 1.7 us of a batch-1 pooling's 6.6 (benchmarks/NOTES.md, section 33).
bool engages_autograd(const at::Tensor& tensor, bool grad_mode) {
  return tensor.defined() && ((grad_mode && tensor.requires_grad()) || tensor._fw_grad(/*level=*/0).defined());
}
bool engages_autograd(const std::optional<at::Tensor>& tensor, bool grad_mode) {
  return tensor.has_value() && engages_autograd(*tensor, grad_mode);
}
bool engages_autograd(at::TensorList tensors, bool grad_mode) {
  return std::any_of(tensors.begin(), tensors.end(),
                     [&](const at::Tensor& tensor) { return engages_autograd(tensor, grad_mode); });
}
bool engages_autograd(const c10::List<std::optional<at::Tensor>>& tensors, bool grad_mode) {
  for (const std::optional<at::Tensor> tensor : tensors)
    if (engages_autograd(tensor, grad_mode)) return true;
  return false;
}
template <typename NotATensor>
bool engages_autograd(const NotATensor&, bool) {
  return false;
}

template <typename... Args>
bool recorded(const Args&... args) {
  const bool grad_mode = at::GradMode::is_enabled();
  return (engages_autograd(args, grad_mode) || ...);
}

template <typename Signature, typename... Args>
auto call_below_autograd(const c10::TypedOperatorHandle<Signature>& op, const Args&... args) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(args...);
}

// The autograd kernel of an operator with one output: its Function records the call where
// autograd has something to record (for a backward operator, only under create_graph, whose
// backward runs with grad mode on), else the operator runs directly below autograd.
template <typename Fn, typename Signature, typename... Args>
at::Tensor through_function(const c10::TypedOperatorHandle<Signature>& op, const Args&... args) {
  if (!recorded(args...)) return call_below_autograd(op, args...);
  return Fn::apply(args...);
}

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                  IntList stride, IntList padding, IntList dilation, int64_t groups) {
  return through_function<Conv2dFunction>(conv2d_op(), input, weight, bias, stride, padding, dilation, groups);
}

std::tuple<at::Tensor, at::Tensor> conv2d_relu_pool2d(const at::Tensor& input, const at::Tensor& weight,
                                                      const std::optional<at::Tensor>& bias, IntList stride,
                                                      IntList padding, IntList dilation, int64_t groups,
                                                      IntList pool_size, bool max_pool) {
  if (!recorded(input, weight, bias))
    return call_below_autograd(conv2d_relu_pool2d_op(), input, weight, bias, stride, padding, dilation, groups,
                               pool_size, max_pool);
  const variable_list outputs =
      Conv2dReluPool2dFunction::apply(input, weight, bias, stride, padding, dilation, groups, pool_size, max_pool);
  return {outputs[0], outputs[1]};
}

at::Tensor avg_pool2d(const at::Tensor& input, IntList kernel_size, IntList stride, IntList padding,
                      bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override,
                      bool relu_input) {
  return through_function<AvgPool2dFunction>(avg_pool2d_op(), input, kernel_size, stride, padding, ceil_mode,
                                             count_include_pad, divisor_override, relu_input);
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices(const at::Tensor& input, IntList kernel_size,
                                                           IntList stride, IntList padding, IntList dilation,
                                                           bool ceil_mode, bool relu_input) {
  if (!recorded(input))
    return call_below_autograd(max_pool2d_with_indices_op(), input, kernel_size, stride, padding, dilation,
                               ceil_mode, relu_input);
  const variable_list outputs =
      MaxPool2dFunction::apply(input, kernel_size, stride, padding, dilation, ceil_mode, relu_input);
  return {outputs[0], outputs[1]};
}

std::tuple<at::Tensor, std::vector<at::Tensor>> mlp(const at::Tensor& input, at::TensorList weights,
                                                    const c10::List<std::optional<at::Tensor>>& biases) {
  if (!recorded(input, weights, biases)) return call_below_autograd(mlp_op(), input, weights, biases);
  std::vector<at::Tensor> defined_biases;
  c10::List<bool> has_bias;
  for (const std::optional<at::Tensor> bias : biases) {
    has_bias.push_back(bias.has_value() && bias->defined());
    if (has_bias.get(has_bias.size() - 1)) defined_biases.push_back(*bias);
  }
  // As a TensorList: Function::apply takes a std::vector of tensors for one non-tensor argument.
  variable_list outputs = MlpFunction::apply(input, weights, at::TensorList(defined_biases), has_bias);
  const at::Tensor output = outputs[0];
  outputs.erase(outputs.begin());
  return {output, outputs};
}

at::Tensor adaptive_avg_pool2d(const at::Tensor& input, IntList output_size) {
  return through_function<AdaptiveAvgPool2dFunction>(adaptive_avg_pool2d_op(), input, output_size);
}

at::Tensor conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                             IntList stride, IntList padding, IntList dilation, int64_t groups) {
  return through_function<Conv2dGradInputFunction>(conv2d_grad_input_op(), grad_output, input, weight, stride,
                                                    padding, dilation, groups);
}

at::Tensor conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                              IntList stride, IntList padding, IntList dilation, int64_t groups) {
  return through_function<Conv2dGradWeightFunction>(conv2d_grad_weight_op(), grad_output, input, weight, stride,
                                                     padding, dilation, groups);
}

at::Tensor conv2d_grad_bias(const at::Tensor& grad_output) {
  return through_function<Conv2dGradBiasFunction>(conv2d_grad_bias_op(), grad_output);
}

at::Tensor avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input, IntList kernel_size,
                               IntList stride, IntList padding, bool ceil_mode, bool count_include_pad,
                               std::optional<int64_t> divisor_override, bool relu_input) {
  return through_function<AvgPool2dBackwardFunction>(avg_pool2d_backward_op(), grad_output, input, kernel_size,
                                                      stride, padding, ceil_mode, count_include_pad,
                                                      divisor_override, relu_input);
}

at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& indices,
                               IntList kernel_size, IntList stride, IntList padding, IntList dilation, bool ceil_mode,
                               bool relu_input) {
  return through_function<MaxPool2dBackwardFunction>(max_pool2d_backward_op(), grad_output, input, indices,
                                                      kernel_size, stride, padding, dilation, ceil_mode, relu_input);
}

at::Tensor adaptive_avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input) {
  return through_function<AdaptiveAvgPool2dBackwardFunction>(adaptive_avg_pool2d_backward_op(), grad_output, input);
}

}  // namespace

TORCH_LIBRARY_IMPL(lenetx, Autograd, m) {
  m.impl("conv2d", &conv2d);
  m.impl("conv2d_relu_pool2d", &conv2d_relu_pool2d);
  m.impl("avg_pool2d", &avg_pool2d);
  m.impl("max_pool2d_with_indices", &max_pool2d_with_indices);
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d);
  m.impl("mlp", &mlp);
  m.impl("conv2d_grad_input", &conv2d_grad_input);
  m.impl("conv2d_grad_weight", &conv2d_grad_weight);
  m.impl("conv2d_grad_bias", &conv2d_grad_bias);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward);
  m.impl("max_pool2d_backward", &max_pool2d_backward);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward);
  // The fused backward kernels have no derivative of their own (their operators differentiate a
  // composition instead, above): differentiating one called directly raises, instead of the
  // fallback's warning and a silently wrong result.
  for (const char* name : {"conv2d_relu_pool2d_backward", "mlp_backward"})
    m.impl(name, torch::autograd::autogradNotImplementedFallback());
}

}  // namespace lenetx

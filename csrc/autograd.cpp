// Autograd kernels of the lenetx operators, for every device: each forward saves what its
// backward reads, and each backward calls lenetx's own backward operators for only the
// gradients that are needed. Registered in C++ rather than with torch.library.register_autograd:
// the Python formula cost about 145 us per forward and backward (benchmarks/NOTES.md, section 5),
// the whole time of a small layer.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

namespace lenetx {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> lenetx_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using IntList = c10::IntArrayRef;

// What a convolution's backward needs besides its tensors.
void save_conv_arguments(AutogradContext* ctx, IntList stride, IntList padding, IntList dilation, int64_t groups,
                         const std::optional<at::Tensor>& bias) {
  ctx->saved_data["stride"] = stride;
  ctx->saved_data["padding"] = padding;
  ctx->saved_data["dilation"] = dilation;
  ctx->saved_data["groups"] = groups;
  ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
}

class Conv2dFunction : public torch::autograd::Function<Conv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, IntList stride, IntList padding,
                            IntList dilation, int64_t groups) {
    static const auto op = lenetx_op<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                                IntList, IntList, IntList, int64_t)>("lenetx::conv2d");
    ctx->save_for_backward({input, weight});
    save_conv_arguments(ctx, stride, padding, dilation, groups, bias);
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(input, weight, bias, stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    using GradSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, IntList, IntList,
                                     IntList, int64_t);
    static const auto grad_input_op = lenetx_op<GradSignature>("lenetx::conv2d_grad_input");
    static const auto grad_weight_op = lenetx_op<GradSignature>("lenetx::conv2d_grad_weight");
    static const auto grad_bias_op = lenetx_op<at::Tensor(const at::Tensor&)>("lenetx::conv2d_grad_bias");
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &weight = saved[1], &grad_output = grad_outputs[0];
    const std::vector<int64_t> stride = ctx->saved_data["stride"].toIntVector();
    const std::vector<int64_t> padding = ctx->saved_data["padding"].toIntVector();
    const std::vector<int64_t> dilation = ctx->saved_data["dilation"].toIntVector();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    at::Tensor grad_input, grad_weight, grad_bias;
    if (ctx->needs_input_grad(0))
      grad_input = grad_input_op.call(grad_output, input, weight, stride, padding, dilation, groups);
    if (ctx->needs_input_grad(1))
      grad_weight = grad_weight_op.call(grad_output, input, weight, stride, padding, dilation, groups);
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) grad_bias = grad_bias_op.call(grad_output);
    return {grad_input, grad_weight, grad_bias, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class Conv2dReluPool2dFunction : public torch::autograd::Function<Conv2dReluPool2dFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, IntList stride, IntList padding,
                               IntList dilation, int64_t groups, IntList pool_size, bool max_pool) {
    static const auto op =
        lenetx_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                     const std::optional<at::Tensor>&, IntList, IntList, IntList,
                                                     int64_t, IntList, bool)>("lenetx::conv2d_relu_pool2d");
    at::Tensor output, mask;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(output, mask) = op.call(input, weight, bias, stride, padding, dilation, groups, pool_size, max_pool);
    }
    ctx->save_for_backward({input, weight, mask});
    ctx->mark_non_differentiable({mask});
    // Otherwise autograd would zero a mask-sized gradient for the mask every backward (217 us
    // of LeNet-5's 4.6 ms step for conv1's mask, by the profiler).
    ctx->set_materialize_grads(false);
    save_conv_arguments(ctx, stride, padding, dilation, groups, bias);
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
    const variable_list saved = ctx->get_saved_variables();
    auto& data = ctx->saved_data;
    const bool input_grad = ctx->needs_input_grad(0);
    auto [grad_input, grad_weight, grad_bias] =
        op.call(grad_outputs[0], saved[2], saved[0], saved[1], data["stride"].toIntVector(),
                data["padding"].toIntVector(), data["dilation"].toIntVector(), data["groups"].toInt(),
                data["pool_size"].toIntVector(), data["max_pool"].toBool(), input_grad);
    return {input_grad ? grad_input : at::Tensor(),
            ctx->needs_input_grad(1) ? grad_weight : at::Tensor(),
            data["has_bias"].toBool() && ctx->needs_input_grad(2) ? grad_bias : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class AvgPool2dFunction : public torch::autograd::Function<AvgPool2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, IntList kernel_size, IntList stride,
                            IntList padding, bool ceil_mode, bool count_include_pad,
                            std::optional<int64_t> divisor_override, bool relu_input) {
    static const auto op = lenetx_op<at::Tensor(const at::Tensor&, IntList, IntList, IntList, bool, bool,
                                                std::optional<int64_t>, bool)>("lenetx::avg_pool2d");
    ctx->save_for_backward({input});
    ctx->saved_data["kernel_size"] = kernel_size;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["ceil_mode"] = ceil_mode;
    ctx->saved_data["count_include_pad"] = count_include_pad;
    ctx->saved_data["divisor_override"] = divisor_override;
    ctx->saved_data["relu_input"] = relu_input;
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, relu_input);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto op =
        lenetx_op<at::Tensor(const at::Tensor&, const at::Tensor&, IntList, IntList, IntList, bool, bool,
                             std::optional<int64_t>, bool)>("lenetx::avg_pool2d_backward");
    auto& data = ctx->saved_data;
    const at::Tensor grad_input =
        op.call(grad_outputs[0], ctx->get_saved_variables()[0], data["kernel_size"].toIntVector(),
                data["stride"].toIntVector(), data["padding"].toIntVector(), data["ceil_mode"].toBool(),
                data["count_include_pad"].toBool(), data["divisor_override"].toOptional<int64_t>(),
                data["relu_input"].toBool());
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

class MaxPool2dFunction : public torch::autograd::Function<MaxPool2dFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, IntList kernel_size,
                               IntList stride, IntList padding, IntList dilation, bool ceil_mode,
                               bool relu_input) {
    static const auto op = lenetx_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, IntList, IntList,
                                                                        IntList, IntList, bool, bool)>(
        "lenetx::max_pool2d_with_indices");
    at::Tensor output, indices;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(output, indices) = op.call(input, kernel_size, stride, padding, dilation, ceil_mode, relu_input);
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
    static const auto op = lenetx_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, IntList,
                                                IntList, IntList, IntList, bool, bool)>("lenetx::max_pool2d_backward");
    at::Tensor grad_input;
    if (grad_outputs[0].defined()) {
      auto& data = ctx->saved_data;
      const variable_list saved = ctx->get_saved_variables();
      grad_input = op.call(grad_outputs[0], saved[0], saved[1], data["kernel_size"].toIntVector(),
                           data["stride"].toIntVector(), data["padding"].toIntVector(),
                           data["dilation"].toIntVector(), data["ceil_mode"].toBool(), data["relu_input"].toBool());
    }
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class AdaptiveAvgPool2dFunction : public torch::autograd::Function<AdaptiveAvgPool2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, IntList output_size) {
    static const auto op = lenetx_op<at::Tensor(const at::Tensor&, IntList)>("lenetx::adaptive_avg_pool2d");
    ctx->save_for_backward({input});
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(input, output_size);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto op =
        lenetx_op<at::Tensor(const at::Tensor&, const at::Tensor&)>("lenetx::adaptive_avg_pool2d_backward");
    return {op.call(grad_outputs[0], ctx->get_saved_variables()[0]), at::Tensor()};
  }
};

// The biases arrive as the defined ones alone, has_bias saying which layers they belong to:
// torch::autograd::Function takes a list of tensors as inputs only when none is missing.
class MlpFunction : public torch::autograd::Function<MlpFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, at::TensorList weights,
                               at::TensorList defined_biases, const c10::List<bool>& has_bias) {
    static const auto op =
        lenetx_op<std::tuple<at::Tensor, std::vector<at::Tensor>>(
            const at::Tensor&, at::TensorList, const c10::List<std::optional<at::Tensor>>&)>("lenetx::mlp");
    c10::List<std::optional<at::Tensor>> biases;
    for (size_t l = 0, next = 0; l < has_bias.size(); ++l)
      biases.push_back(has_bias.get(l) ? std::optional<at::Tensor>(defined_biases[next++]) : std::nullopt);
    at::Tensor output;
    std::vector<at::Tensor> hidden;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(output, hidden) = op.call(input, weights, biases);
    }
    variable_list saved{input};
    saved.insert(saved.end(), weights.begin(), weights.end());
    saved.insert(saved.end(), hidden.begin(), hidden.end());
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
};

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                  IntList stride, IntList padding, IntList dilation, int64_t groups) {
  return Conv2dFunction::apply(input, weight, bias, stride, padding, dilation, groups);
}

std::tuple<at::Tensor, at::Tensor> conv2d_relu_pool2d(const at::Tensor& input, const at::Tensor& weight,
                                                      const std::optional<at::Tensor>& bias, IntList stride,
                                                      IntList padding, IntList dilation, int64_t groups,
                                                      IntList pool_size, bool max_pool) {
  const variable_list outputs =
      Conv2dReluPool2dFunction::apply(input, weight, bias, stride, padding, dilation, groups, pool_size, max_pool);
  return {outputs[0], outputs[1]};
}

at::Tensor avg_pool2d(const at::Tensor& input, IntList kernel_size, IntList stride, IntList padding,
                      bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override,
                      bool relu_input) {
  return AvgPool2dFunction::apply(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                  divisor_override, relu_input);
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices(const at::Tensor& input, IntList kernel_size,
                                                           IntList stride, IntList padding, IntList dilation,
                                                           bool ceil_mode, bool relu_input) {
  const variable_list outputs =
      MaxPool2dFunction::apply(input, kernel_size, stride, padding, dilation, ceil_mode, relu_input);
  return {outputs[0], outputs[1]};
}

std::tuple<at::Tensor, std::vector<at::Tensor>> mlp(const at::Tensor& input, at::TensorList weights,
                                                    const c10::List<std::optional<at::Tensor>>& biases) {
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
  return AdaptiveAvgPool2dFunction::apply(input, output_size);
}

}  // namespace

TORCH_LIBRARY_IMPL(lenetx, Autograd, m) {
  m.impl("conv2d", &conv2d);
  m.impl("conv2d_relu_pool2d", &conv2d_relu_pool2d);
  m.impl("avg_pool2d", &avg_pool2d);
  m.impl("max_pool2d_with_indices", &max_pool2d_with_indices);
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d);
  m.impl("mlp", &mlp);
  // The backward operators have no derivative of their own: a second derivative through them
  // raises when it is taken, instead of the fallback's warning and a silently wrong result.
  for (const char* name : {"conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias",
                           "conv2d_relu_pool2d_backward", "avg_pool2d_backward", "max_pool2d_backward",
                           "adaptive_avg_pool2d_backward", "mlp_backward"})
    m.impl(name, torch::autograd::autogradNotImplementedFallback());
}

}  // namespace lenetx

// Autograd kernels of the lenetx operators, for every device: each forward records a node that
// saves what its backward reads, and each backward calls lenetx's own backward operators for only
// the gradients that are needed. Registered in C++ rather than with torch.library.register_autograd:
// the Python formula cost about 145 us per forward and backward (benchmarks/NOTES.md, section 5),
// the whole time of a small layer.
//
// The nodes are written as torch's generated ones are, their saved state in typed fields, rather
// than as torch::autograd::Function, whose node builds and reads a map of IValues and wraps every
// input and output: 3.5 us of a batch-1 pooling's forward and backward of 25 (section 37).
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
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/dynamo/compiled_autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "operators.h"
#include "pooling_windows.h"

namespace lenetx {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// torch counts its nodes with c10::intrusive_ptr since pytorch/pytorch#181782 (2026-04), with
// std::shared_ptr before it (the GPU machine's torch 2.11): an edge's pointer says which.
using NodePointer = decltype(torch::autograd::Edge::function);

template <typename NodeType>
auto make_node() {
  if constexpr (std::is_same_v<NodePointer, std::shared_ptr<torch::autograd::Node>>) {
    // torch's deleter frees a long graph without recursing once per node; found by argument-
    // dependent lookup, as only this branch's torch declares it.
    return std::shared_ptr<NodeType>(new NodeType(), [](NodeType* node) { deleteNode(node); });
  } else {
    return c10::make_intrusive<NodeType>();
  }
}

// What compiled autograd and release_variables do with each kind of saved field.
void collect(torch::dynamo::autograd::CompiledNodeArgs& args, const SavedVariable& saved) {
  args.collect(saved, /*is_output=*/false);
}
void collect(torch::dynamo::autograd::CompiledNodeArgs& args, const std::vector<SavedVariable>& saved) {
  args.collect(saved, /*is_output=*/false);
}
template <typename Value>
void collect(torch::dynamo::autograd::CompiledNodeArgs& args, const Value& value) {
  args.collect(value);
}

void release(SavedVariable& saved) { saved.reset_data(); }
void release(std::vector<SavedVariable>& saved) {
  for (SavedVariable& s : saved) s.reset_data();
}
template <typename Value>
void release(Value&) {}

// The backward node of a lenetx operator. Derived declares its saved state as fields, ties them
// in fields() (for release_variables and compiled autograd), names itself in kName and computes
// the gradients of its inputs, in the order of its next edges, in backward().
template <typename Derived>
struct OperatorNode : torch::autograd::Node {
  std::string name() const override { return Derived::kName; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    visit_fields([](auto& field) { release(field); });
  }

  // Not marked override: older torch declares it non-const, and there compiled autograd refuses
  // the node instead of the build failing.
  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs& args) const {
    // Collecting only reads the fields.
    const_cast<OperatorNode*>(this)->visit_fields([&](auto& field) { collect(args, field); });
  }

  // Compiled autograd traces apply with its own tensors swapped in for the saved ones.
  variable_list apply_with_saved(const variable_list& grads,
                                 torch::dynamo::autograd::SwapSavedVariables& saved) override {
    visit_fields([&](auto& field) { saved.before(field); });
    variable_list result = apply(variable_list(grads));
    visit_fields([&](auto& field) { saved.after(field); });
    return result;
  }

 protected:
  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<Derived*>(this)->backward(grads);
  }

  // Whether the gradient of input i is wanted by this backward pass (never where its edge leads
  // nowhere: an undefined input, or one that requires no gradient).
  bool needs_grad(size_t i) const { return task_should_compute_output(i); }

 private:
  template <typename Visitor>
  void visit_fields(Visitor&& visitor) {
    std::apply([&](auto&... fields) { (visitor(fields), ...); }, static_cast<Derived*>(this)->fields());
  }
};

bool requires_grad(const at::Tensor& tensor) { return tensor.defined() && tensor.requires_grad(); }
bool has_tangent(const at::Tensor& tensor) { return tensor.defined() && tensor._fw_grad(/*level=*/0).defined(); }

// Whether `test` holds for a tensor in an argument: a tensor, an optional one or a list of
// either; never for the other arguments.
template <typename Test>
bool any_tensor(const at::Tensor& tensor, Test test) {
  return test(tensor);
}
template <typename Test>
bool any_tensor(const std::optional<at::Tensor>& tensor, Test test) {
  return tensor.has_value() && test(*tensor);
}
template <typename Test>
bool any_tensor(at::TensorList tensors, Test test) {
  return std::any_of(tensors.begin(), tensors.end(), test);
}
template <typename Test>
bool any_tensor(const c10::List<std::optional<at::Tensor>>& tensors, Test test) {
  for (const std::optional<at::Tensor> tensor : tensors)
    if (any_tensor(tensor, test)) return true;
  return false;
}
template <typename NotATensor, typename Test>
bool any_tensor(const NotATensor&, Test) {
  return false;
}

// Whether autograd records a call: grad mode on, and a tensor among its arguments that requires a
// gradient. Elsewhere (inference, a first layer's images, a training step's backward operators,
// which run with grad mode off) the autograd kernels return the operator's result alone. A
// forward-mode tangent is refused, rather than dropped: no node has a forward derivative.
template <typename... Args>
bool recorded(const char* op_name, const Args&... args) {
  TORCH_CHECK_NOT_IMPLEMENTED(!(any_tensor(args, has_tangent) || ...), op_name,
                              ": forward-mode automatic differentiation is not implemented (an input carries a "
                              "tangent of torch.autograd.forward_ad)");
  return at::GradMode::is_enabled() && (any_tensor(args, requires_grad) || ...);
}

template <typename Signature, typename... Args>
auto call_below_autograd(const c10::TypedOperatorHandle<Signature>& op, const Args&... args) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(args...);
}

// Where a node's gradient for `input` goes: nowhere for an undefined input, or one that requires
// no gradient.
torch::autograd::Edge edge_to(const at::Tensor& input) {
  return requires_grad(input) ? torch::autograd::impl::gradient_edge(input) : torch::autograd::Edge();
}

// A new node whose next edges lead to the gradients of `inputs`, in order.
template <typename NodeType>
auto node_for(std::initializer_list<at::Tensor> inputs) {
  auto node = make_node<NodeType>();
  torch::autograd::edge_list edges;
  edges.reserve(inputs.size());
  for (const at::Tensor& input : inputs) edges.push_back(edge_to(input));
  node->set_next_edges(std::move(edges));
  return node;
}

at::Tensor or_undefined(const std::optional<at::Tensor>& tensor) { return tensor.value_or(at::Tensor()); }
std::optional<at::Tensor> or_none(const at::Tensor& tensor) {
  return tensor.defined() ? std::optional<at::Tensor>(tensor) : std::nullopt;
}

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

// ---- Convolution --------------------------------------------------------------------------------

// What a convolution's backward, and the backward of its backward operators, need besides
// their tensors; fields() ties them for the nodes' own.
struct ConvArguments {
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups = 1;

  auto fields() { return std::tie(stride, padding, dilation, groups); }

  void save(IntList stride_, IntList padding_, IntList dilation_, int64_t groups_) {
    stride = stride_.vec();
    padding = padding_.vec();
    dilation = dilation_.vec();
    groups = groups_;
  }
};

// Inputs: input, weight, bias.
struct Conv2dBackward : OperatorNode<Conv2dBackward> {
  static constexpr const char* kName = "lenetx::Conv2dBackward";
  SavedVariable input, weight;
  ConvArguments a;
  auto fields() { return std::tuple_cat(std::tie(input, weight), a.fields()); }

  variable_list backward(const variable_list& grads) {
    const at::Tensor& grad_output = grads[0];
    variable_list result(3);
    if (!grad_output.defined()) return result;
    const at::Tensor x = input.unpack(), w = weight.unpack();
    if (needs_grad(0))
      result[0] = conv2d_grad_input_op().call(grad_output, x, w, a.stride, a.padding, a.dilation, a.groups);
    if (needs_grad(1))
      result[1] = conv2d_grad_weight_op().call(grad_output, x, w, a.stride, a.padding, a.dilation, a.groups);
    if (needs_grad(2)) result[2] = conv2d_grad_bias_op().call(grad_output);
    return result;
  }
};

// grad_input is linear in grad_output and in the weight, <v, grad_input(g, w)> = <conv2d(v, w), g>:
// along grad_output its derivative is the convolution of the incoming gradient v, along the
// weight grad_weight with v as the input. The input gives only its shape.
// Inputs: grad_output, input, weight.
struct Conv2dGradInputBackward : OperatorNode<Conv2dGradInputBackward> {
  static constexpr const char* kName = "lenetx::Conv2dGradInputBackward";
  SavedVariable grad_output, weight;
  ConvArguments a;
  auto fields() { return std::tuple_cat(std::tie(grad_output, weight), a.fields()); }

  variable_list backward(const variable_list& grads) {
    const at::Tensor& v = grads[0];
    variable_list result(3);
    if (!v.defined()) return result;
    const at::Tensor w = weight.unpack();
    if (needs_grad(0)) result[0] = conv2d_op().call(v, w, std::nullopt, a.stride, a.padding, a.dilation, a.groups);
    if (needs_grad(2))
      result[2] = conv2d_grad_weight_op().call(grad_output.unpack(), v, w, a.stride, a.padding, a.dilation, a.groups);
    return result;
  }
};

// grad_weight is linear in grad_output and in the input, <v, grad_weight(g, x)> = <conv2d(x, v), g>:
// along grad_output its derivative is the convolution of the input by v, along the input
// grad_input with v as the weight. The weight gives only its shape.
// Inputs: grad_output, input, weight.
struct Conv2dGradWeightBackward : OperatorNode<Conv2dGradWeightBackward> {
  static constexpr const char* kName = "lenetx::Conv2dGradWeightBackward";
  SavedVariable grad_output, input;
  ConvArguments a;
  auto fields() { return std::tuple_cat(std::tie(grad_output, input), a.fields()); }

  variable_list backward(const variable_list& grads) {
    const at::Tensor& v = grads[0];
    variable_list result(3);
    if (!v.defined()) return result;
    const at::Tensor x = input.unpack();
    if (needs_grad(0)) result[0] = conv2d_op().call(x, v, std::nullopt, a.stride, a.padding, a.dilation, a.groups);
    if (needs_grad(1))
      result[1] = conv2d_grad_input_op().call(grad_output.unpack(), x, v, a.stride, a.padding, a.dilation, a.groups);
    return result;
  }
};

// grad_bias sums grad_output over everything but its channels: its derivative spreads each
// channel's incoming gradient over the channel's plane. Inputs: grad_output.
struct Conv2dGradBiasBackward : OperatorNode<Conv2dGradBiasBackward> {
  static constexpr const char* kName = "lenetx::Conv2dGradBiasBackward";
  std::vector<int64_t> grad_output_sizes;
  auto fields() { return std::tie(grad_output_sizes); }

  variable_list backward(const variable_list& grads) {
    if (!grads[0].defined()) return {at::Tensor()};
    return {grads[0].reshape({1, -1, 1, 1}).expand(grad_output_sizes)};
  }
};

// Inputs: input, weight, bias.
struct Conv2dReluPool2dBackward : OperatorNode<Conv2dReluPool2dBackward> {
  static constexpr const char* kName = "lenetx::Conv2dReluPool2dBackward";
  // The bias only for a second derivative (below), which recomputes the convolution.
  SavedVariable input, weight, mask, bias;
  ConvArguments a;
  std::vector<int64_t> pool_size;
  bool max_pool = false;
  auto fields() { return std::tuple_cat(std::tie(input, weight, mask, bias, pool_size, max_pool), a.fields()); }

  variable_list backward(const variable_list& grads) {
    if (!grads[0].defined()) return variable_list(3);
    if (at::GradMode::is_enabled()) return differentiable_backward(grads[0]);
    const bool input_grad = needs_grad(0);
    auto [grad_input, grad_weight, grad_bias] =
        conv2d_relu_pool2d_backward_op().call(grads[0], mask.unpack(), input.unpack(), weight.unpack(), a.stride,
                                              a.padding, a.dilation, a.groups, pool_size, max_pool, input_grad);
    return {input_grad ? grad_input : at::Tensor(), needs_grad(1) ? grad_weight : at::Tensor(),
            needs_grad(2) ? grad_bias : at::Tensor()};
  }

 private:
  // Under create_graph: the gradients of conv2d, then the pooling of its output times the mask
  // (1 where relu passes and, for max pooling, at the window's chosen maximum), which is the
  // forward's function with the forward's own choices: an average pooling, or a sum for max
  // pooling.
  variable_list differentiable_backward(const at::Tensor& grad_output) {
    const at::Tensor x = input.unpack(), w = weight.unpack(), b = bias.unpack();
    const at::Tensor conv = conv2d_op().call(x, w, or_none(b), a.stride, a.padding, a.dilation, a.groups);
    const at::Tensor pooled =
        avg_pool2d_op().call(conv * mask.unpack(), pool_size, pool_size, {0, 0}, /*ceil_mode=*/false,
                             /*count_include_pad=*/true, max_pool ? std::optional<int64_t>(1) : std::nullopt,
                             /*relu_input=*/false);
    return differentiate({pooled}, {grad_output}, {x, w, b},
                         {needs_grad(0), needs_grad(1), needs_grad(2)});
  }
};

// ---- Pooling ------------------------------------------------------------------------------------

// What an average pooling's backward, and that backward's, need besides its tensors; fields()
// ties them for the nodes' own.
struct AvgPoolArguments {
  std::vector<int64_t> kernel_size, stride, padding;
  bool ceil_mode = false, count_include_pad = true;
  std::optional<int64_t> divisor_override;
  bool relu_input = false;

  auto fields() {
    return std::tie(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, relu_input);
  }

  void save(IntList kernel_size_, IntList stride_, IntList padding_, bool ceil_mode_, bool count_include_pad_,
            std::optional<int64_t> divisor_override_, bool relu_input_) {
    kernel_size = kernel_size_.vec();
    stride = stride_.vec();
    padding = padding_.vec();
    ceil_mode = ceil_mode_;
    count_include_pad = count_include_pad_;
    divisor_override = divisor_override_;
    relu_input = relu_input_;
  }
};

// The average pooling's backward reads the input for its shape and, with relu_input, relu's
// mask. Inputs: input.
struct AvgPool2dBackward : OperatorNode<AvgPool2dBackward> {
  static constexpr const char* kName = "lenetx::AvgPool2dBackward";
  SavedVariable input;
  AvgPoolArguments a;
  auto fields() { return std::tuple_cat(std::tie(input), a.fields()); }

  variable_list backward(const variable_list& grads) {
    if (!grads[0].defined()) return {at::Tensor()};
    return {avg_pool2d_backward_op().call(grads[0], input.unpack(), a.kernel_size, a.stride, a.padding, a.ceil_mode,
                                          a.count_include_pad, a.divisor_override, a.relu_input)};
  }
};

// Inputs: input.
struct MaxPool2dBackward : OperatorNode<MaxPool2dBackward> {
  static constexpr const char* kName = "lenetx::MaxPool2dBackward";
  SavedVariable input, indices;
  std::vector<int64_t> kernel_size, stride, padding, dilation;
  bool ceil_mode = false, relu_input = false;
  auto fields() { return std::tie(input, indices, kernel_size, stride, padding, dilation, ceil_mode, relu_input); }

  // A graph that uses only the indices passes no gradient for the values: nothing to scatter.
  variable_list backward(const variable_list& grads) {
    if (!grads[0].defined()) return {at::Tensor()};
    return {max_pool2d_backward_op().call(grads[0], input.unpack(), indices.unpack(), kernel_size, stride, padding,
                                          dilation, ceil_mode, relu_input)};
  }
};

// Inputs: input.
struct AdaptiveAvgPool2dBackward : OperatorNode<AdaptiveAvgPool2dBackward> {
  static constexpr const char* kName = "lenetx::AdaptiveAvgPool2dBackward";
  SavedVariable input;
  auto fields() { return std::tie(input); }

  variable_list backward(const variable_list& grads) {
    if (!grads[0].defined()) return {at::Tensor()};
    return {adaptive_avg_pool2d_backward_op().call(grads[0], input.unpack())};
  }
};

// The pooling backwards are linear in grad_output, and piecewise constant in the input (which
// gives their shape and, with relu_input, relu's mask): their derivative is along grad_output
// alone, the adjoint of the spreading, which is the pooling itself (a gather of the indices for
// max pooling) of the incoming gradient with relu's mask applied first.
at::Tensor relu_masked(const at::Tensor& v, const at::Tensor& input, bool relu_input) {
  return relu_input ? v.masked_fill(input <= 0, 0) : v;
}

// Inputs: grad_output, input.
struct AvgPool2dBackwardBackward : OperatorNode<AvgPool2dBackwardBackward> {
  static constexpr const char* kName = "lenetx::AvgPool2dBackwardBackward";
  SavedVariable input;
  AvgPoolArguments a;
  auto fields() { return std::tuple_cat(std::tie(input), a.fields()); }

  variable_list backward(const variable_list& grads) {
    if (!grads[0].defined() || !needs_grad(0)) return variable_list(2);
    return {avg_pool2d_op().call(relu_masked(grads[0], input.unpack(), a.relu_input), a.kernel_size, a.stride,
                                 a.padding, a.ceil_mode, a.count_include_pad, a.divisor_override,
                                 /*relu_input=*/false),
            at::Tensor()};
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

// A window that holds no input element gave no gradient (its index names no tap of it), so the
// gradient along grad_output is zero there. Inputs: grad_output, input, indices.
struct MaxPool2dBackwardBackward : OperatorNode<MaxPool2dBackwardBackward> {
  static constexpr const char* kName = "lenetx::MaxPool2dBackwardBackward";
  SavedVariable input, indices, empty_windows;
  bool relu_input = false;
  auto fields() { return std::tie(input, indices, empty_windows, relu_input); }

  variable_list backward(const variable_list& grads) {
    if (!grads[0].defined() || !needs_grad(0)) return variable_list(3);
    const at::Tensor index = indices.unpack(), empty = empty_windows.unpack();
    const bool any_empty = empty.defined();
    at::Tensor along_grad_output = relu_masked(grads[0], input.unpack(), relu_input)
                                       .flatten(2)
                                       .gather(2, (any_empty ? index.masked_fill(empty, 0) : index).flatten(2))
                                       .view(index.sizes());
    if (any_empty) along_grad_output = along_grad_output.masked_fill(empty, 0);
    return {along_grad_output, at::Tensor(), at::Tensor()};
  }
};

// Inputs: grad_output, input.
struct AdaptiveAvgPool2dBackwardBackward : OperatorNode<AdaptiveAvgPool2dBackwardBackward> {
  static constexpr const char* kName = "lenetx::AdaptiveAvgPool2dBackwardBackward";
  std::vector<int64_t> output_size;
  auto fields() { return std::tie(output_size); }

  variable_list backward(const variable_list& grads) {
    if (!grads[0].defined() || !needs_grad(0)) return variable_list(2);
    return {adaptive_avg_pool2d_op().call(grads[0], output_size), at::Tensor()};
  }
};

// ---- Fully connected layers ---------------------------------------------------------------------

// Inputs: input, each layer's weight, each layer's bias (an edge to nothing where it has none).
struct MlpBackward : OperatorNode<MlpBackward> {
  static constexpr const char* kName = "lenetx::MlpBackward";
  SavedVariable input;
  // The biases only for a second derivative (below), which recomputes the layers.
  std::vector<SavedVariable> weights, biases, hidden;
  auto fields() { return std::tie(input, weights, biases, hidden); }

  variable_list backward(const variable_list& grads) {
    const size_t layers = weights.size();
    variable_list result(1 + 2 * layers);
    if (!grads[0].defined()) return result;
    if (at::GradMode::is_enabled()) return differentiable_backward(grads[0]);
    const bool input_grad = needs_grad(0);
    auto [grad_input, grad_weights, grad_biases] =
        mlp_backward_op().call(grads[0], input.unpack(), unpacked(weights), unpacked(hidden), input_grad);
    if (input_grad) result[0] = grad_input;
    for (size_t l = 0; l < layers; ++l) {
      if (needs_grad(1 + l)) result[1 + l] = grad_weights[l];
      if (needs_grad(1 + layers + l)) result[1 + layers + l] = grad_biases[l];
    }
    return result;
  }

 private:
  static std::vector<at::Tensor> unpacked(const std::vector<SavedVariable>& saved) {
    std::vector<at::Tensor> tensors;
    tensors.reserve(saved.size());
    for (const SavedVariable& s : saved) tensors.push_back(s.unpack());
    return tensors;
  }

  // Under create_graph: the gradients of the layers recomputed with torch's linear, each ReLU
  // kept where the forward's own hidden activation is positive (relu's derivative, with the
  // forward's choices).
  variable_list differentiable_backward(const at::Tensor& grad_output) {
    const size_t layers = weights.size();
    variable_list inputs{input.unpack()};
    std::vector<bool> needed{needs_grad(0)};
    for (const auto* saved : {&weights, &biases})
      for (const SavedVariable& s : *saved) {
        inputs.push_back(s.unpack());
        needed.push_back(needs_grad(needed.size()));
      }
    const std::vector<at::Tensor> activations = unpacked(hidden);
    at::Tensor x = inputs[0];
    for (size_t l = 0; l < layers; ++l) {
      x = at::linear(x, inputs[1 + l], or_none(inputs[1 + layers + l]));
      if (l + 1 < layers) x = x.masked_fill(activations[l] <= 0, 0);
    }
    return differentiate({x}, {grad_output}, inputs, needed);
  }
};

// ---- The autograd kernels -----------------------------------------------------------------------

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                  IntList stride, IntList padding, IntList dilation, int64_t groups) {
  at::Tensor output = call_below_autograd(conv2d_op(), input, weight, bias, stride, padding, dilation, groups);
  if (!recorded("lenetx.conv2d", input, weight, bias)) return output;
  auto node = node_for<Conv2dBackward>({input, weight, or_undefined(bias)});
  node->input = SavedVariable(input, /*is_output=*/false);
  node->weight = SavedVariable(weight, /*is_output=*/false);
  node->a.save(stride, padding, dilation, groups);
  torch::autograd::set_history(output, node);
  return output;
}

std::tuple<at::Tensor, at::Tensor> conv2d_relu_pool2d(const at::Tensor& input, const at::Tensor& weight,
                                                      const std::optional<at::Tensor>& bias, IntList stride,
                                                      IntList padding, IntList dilation, int64_t groups,
                                                      IntList pool_size, bool max_pool) {
  auto [output, mask] = call_below_autograd(conv2d_relu_pool2d_op(), input, weight, bias, stride, padding, dilation,
                                            groups, pool_size, max_pool);
  if (!recorded("lenetx.conv2d_relu_pool2d", input, weight, bias)) return {output, mask};
  auto node = node_for<Conv2dReluPool2dBackward>({input, weight, or_undefined(bias)});
  node->input = SavedVariable(input, /*is_output=*/false);
  node->weight = SavedVariable(weight, /*is_output=*/false);
  node->mask = SavedVariable(mask, /*is_output=*/false);
  node->bias = SavedVariable(or_undefined(bias), /*is_output=*/false);
  node->a.save(stride, padding, dilation, groups);
  node->pool_size = pool_size.vec();
  node->max_pool = max_pool;
  // The node takes no gradient for the mask, so none is zeroed for it every backward (217 us of
  // LeNet-5's 4.6 ms step for conv1's mask, by the profiler, when one was).
  torch::autograd::set_history(output, node);
  return {output, mask};
}

at::Tensor avg_pool2d(const at::Tensor& input, IntList kernel_size, IntList stride, IntList padding,
                      bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override,
                      bool relu_input) {
  at::Tensor output = call_below_autograd(avg_pool2d_op(), input, kernel_size, stride, padding, ceil_mode,
                                          count_include_pad, divisor_override, relu_input);
  if (!recorded("lenetx.avg_pool2d", input)) return output;
  auto node = node_for<AvgPool2dBackward>({input});
  node->input = SavedVariable(input, /*is_output=*/false);
  node->a.save(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, relu_input);
  torch::autograd::set_history(output, node);
  return output;
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_indices(const at::Tensor& input, IntList kernel_size,
                                                           IntList stride, IntList padding, IntList dilation,
                                                           bool ceil_mode, bool relu_input) {
  auto [output, indices] = call_below_autograd(max_pool2d_with_indices_op(), input, kernel_size, stride, padding,
                                               dilation, ceil_mode, relu_input);
  if (!recorded("lenetx.max_pool2d", input)) return {output, indices};
  auto node = node_for<MaxPool2dBackward>({input});
  node->input = SavedVariable(input, /*is_output=*/false);
  node->indices = SavedVariable(indices, /*is_output=*/false);
  node->kernel_size = kernel_size.vec();
  node->stride = stride.vec();
  node->padding = padding.vec();
  node->dilation = dilation.vec();
  node->ceil_mode = ceil_mode;
  node->relu_input = relu_input;
  torch::autograd::set_history(output, node);
  return {output, indices};
}

at::Tensor adaptive_avg_pool2d(const at::Tensor& input, IntList output_size) {
  at::Tensor output = call_below_autograd(adaptive_avg_pool2d_op(), input, output_size);
  if (!recorded("lenetx.adaptive_avg_pool2d", input)) return output;
  auto node = node_for<AdaptiveAvgPool2dBackward>({input});
  node->input = SavedVariable(input, /*is_output=*/false);
  torch::autograd::set_history(output, node);
  return output;
}

std::tuple<at::Tensor, std::vector<at::Tensor>> mlp(const at::Tensor& input, at::TensorList weights,
                                                    const c10::List<std::optional<at::Tensor>>& biases) {
  auto [output, hidden] = call_below_autograd(mlp_op(), input, weights, biases);
  if (!recorded("lenetx.mlp", input, weights, biases)) return {output, hidden};
  auto node = make_node<MlpBackward>();
  torch::autograd::edge_list edges{edge_to(input)};
  node->input = SavedVariable(input, /*is_output=*/false);
  for (const at::Tensor& weight : weights) {
    edges.push_back(edge_to(weight));
    node->weights.emplace_back(weight, /*is_output=*/false);
  }
  for (const std::optional<at::Tensor> bias : biases) {
    edges.push_back(edge_to(or_undefined(bias)));
    node->biases.emplace_back(or_undefined(bias), /*is_output=*/false);
  }
  for (const at::Tensor& activation : hidden) node->hidden.emplace_back(activation, /*is_output=*/false);
  node->set_next_edges(std::move(edges));
  // The hidden activations take no gradient.
  torch::autograd::set_history(output, node);
  return {output, hidden};
}

// The backward operators record a node only under create_graph, whose backward runs with grad
// mode on.
at::Tensor conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                             IntList stride, IntList padding, IntList dilation, int64_t groups) {
  at::Tensor grad_input = call_below_autograd(conv2d_grad_input_op(), grad_output, input, weight, stride, padding,
                                              dilation, groups);
  if (!recorded("lenetx.conv2d_grad_input", grad_output, input, weight)) return grad_input;
  auto node = node_for<Conv2dGradInputBackward>({grad_output, input, weight});
  node->grad_output = SavedVariable(grad_output, /*is_output=*/false);
  node->weight = SavedVariable(weight, /*is_output=*/false);
  node->a.save(stride, padding, dilation, groups);
  torch::autograd::set_history(grad_input, node);
  return grad_input;
}

at::Tensor conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                              IntList stride, IntList padding, IntList dilation, int64_t groups) {
  at::Tensor grad_weight = call_below_autograd(conv2d_grad_weight_op(), grad_output, input, weight, stride, padding,
                                               dilation, groups);
  if (!recorded("lenetx.conv2d_grad_weight", grad_output, input, weight)) return grad_weight;
  auto node = node_for<Conv2dGradWeightBackward>({grad_output, input, weight});
  node->grad_output = SavedVariable(grad_output, /*is_output=*/false);
  node->input = SavedVariable(input, /*is_output=*/false);
  node->a.save(stride, padding, dilation, groups);
  torch::autograd::set_history(grad_weight, node);
  return grad_weight;
}

at::Tensor conv2d_grad_bias(const at::Tensor& grad_output) {
  at::Tensor grad_bias = call_below_autograd(conv2d_grad_bias_op(), grad_output);
  if (!recorded("lenetx.conv2d_grad_bias", grad_output)) return grad_bias;
  auto node = node_for<Conv2dGradBiasBackward>({grad_output});
  node->grad_output_sizes = grad_output.sizes().vec();
  torch::autograd::set_history(grad_bias, node);
  return grad_bias;
}

at::Tensor avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input, IntList kernel_size,
                               IntList stride, IntList padding, bool ceil_mode, bool count_include_pad,
                               std::optional<int64_t> divisor_override, bool relu_input) {
  at::Tensor grad_input = call_below_autograd(avg_pool2d_backward_op(), grad_output, input, kernel_size, stride,
                                              padding, ceil_mode, count_include_pad, divisor_override, relu_input);
  if (!recorded("lenetx.avg_pool2d_backward", grad_output, input)) return grad_input;
  auto node = node_for<AvgPool2dBackwardBackward>({grad_output, input});
  node->input = SavedVariable(input, /*is_output=*/false);
  node->a.save(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, relu_input);
  torch::autograd::set_history(grad_input, node);
  return grad_input;
}

at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& indices,
                               IntList kernel_size, IntList stride, IntList padding, IntList dilation, bool ceil_mode,
                               bool relu_input) {
  at::Tensor grad_input = call_below_autograd(max_pool2d_backward_op(), grad_output, input, indices, kernel_size,
                                              stride, padding, dilation, ceil_mode, relu_input);
  if (!recorded("lenetx.max_pool2d_backward", grad_output, input, indices)) return grad_input;
  auto node = node_for<MaxPool2dBackwardBackward>({grad_output, input, indices});
  node->input = SavedVariable(input, /*is_output=*/false);
  node->indices = SavedVariable(indices, /*is_output=*/false);
  node->empty_windows = SavedVariable(
      empty_max_pool_windows(input, kernel_size, stride, padding, dilation, ceil_mode), /*is_output=*/false);
  node->relu_input = relu_input;
  torch::autograd::set_history(grad_input, node);
  return grad_input;
}

at::Tensor adaptive_avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input) {
  at::Tensor grad_input = call_below_autograd(adaptive_avg_pool2d_backward_op(), grad_output, input);
  if (!recorded("lenetx.adaptive_avg_pool2d_backward", grad_output, input)) return grad_input;
  auto node = node_for<AdaptiveAvgPool2dBackwardBackward>({grad_output, input});
  node->output_size = grad_output.sizes().slice(grad_output.dim() - 2).vec();
  torch::autograd::set_history(grad_input, node);
  return grad_input;
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

#pragma once
// The lenetx operators' typed dispatcher handles, for C++ callers: the autograd kernels and the
// functional interface's Python entry points. A typed call skips the boxing of torch.ops.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>
#include <vector>

namespace lenetx {

template <typename Signature>
inline c10::TypedOperatorHandle<Signature> lenetx_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using IntList = c10::IntArrayRef;

using Conv2dSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, IntList,
                                   IntList, IntList, int64_t);
using ConvGradSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, IntList, IntList,
                                     IntList, int64_t);
using AvgPool2dSignature = at::Tensor(const at::Tensor&, IntList, IntList, IntList, bool, bool,
                                      std::optional<int64_t>, bool);
using AvgPool2dBackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, IntList, IntList, IntList, bool,
                                              bool, std::optional<int64_t>, bool);
using MaxPool2dBackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, IntList,
                                              IntList, IntList, IntList, bool, bool);
using Conv2dReluPool2dSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                     const std::optional<at::Tensor>&, IntList,
                                                                     IntList, IntList, int64_t, IntList, bool);
using MaxPool2dSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, IntList, IntList, IntList,
                                                              IntList, bool, bool);
using MlpSignature = std::tuple<at::Tensor, std::vector<at::Tensor>>(const at::Tensor&, at::TensorList,
                                                                     const c10::List<std::optional<at::Tensor>>&);
// The fused backwards, whose last argument says whether grad_input is wanted.
using Conv2dReluPool2dBackwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, IntList, IntList, IntList, int64_t,
    IntList, bool, bool);
using MlpBackwardSignature = std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>(
    const at::Tensor&, const at::Tensor&, at::TensorList, at::TensorList, bool);

// The autograd kernels call each below autograd, then record a node where autograd has something
// to record. Backward formulas and the functional interface call them through the dispatcher's
// top, where autograd (under create_graph too) records them.
inline const c10::TypedOperatorHandle<Conv2dReluPool2dSignature>& conv2d_relu_pool2d_op() {
  static const auto op = lenetx_op<Conv2dReluPool2dSignature>("lenetx::conv2d_relu_pool2d");
  return op;
}
inline const c10::TypedOperatorHandle<MaxPool2dSignature>& max_pool2d_with_indices_op() {
  static const auto op = lenetx_op<MaxPool2dSignature>("lenetx::max_pool2d_with_indices");
  return op;
}
inline const c10::TypedOperatorHandle<MlpSignature>& mlp_op() {
  static const auto op = lenetx_op<MlpSignature>("lenetx::mlp");
  return op;
}
inline const c10::TypedOperatorHandle<Conv2dReluPool2dBackwardSignature>& conv2d_relu_pool2d_backward_op() {
  static const auto op = lenetx_op<Conv2dReluPool2dBackwardSignature>("lenetx::conv2d_relu_pool2d_backward");
  return op;
}
inline const c10::TypedOperatorHandle<MlpBackwardSignature>& mlp_backward_op() {
  static const auto op = lenetx_op<MlpBackwardSignature>("lenetx::mlp_backward");
  return op;
}
inline const c10::TypedOperatorHandle<Conv2dSignature>& conv2d_op() {
  static const auto op = lenetx_op<Conv2dSignature>("lenetx::conv2d");
  return op;
}
inline const c10::TypedOperatorHandle<ConvGradSignature>& conv2d_grad_input_op() {
  static const auto op = lenetx_op<ConvGradSignature>("lenetx::conv2d_grad_input");
  return op;
}
inline const c10::TypedOperatorHandle<ConvGradSignature>& conv2d_grad_weight_op() {
  static const auto op = lenetx_op<ConvGradSignature>("lenetx::conv2d_grad_weight");
  return op;
}
inline const c10::TypedOperatorHandle<at::Tensor(const at::Tensor&)>& conv2d_grad_bias_op() {
  static const auto op = lenetx_op<at::Tensor(const at::Tensor&)>("lenetx::conv2d_grad_bias");
  return op;
}
inline const c10::TypedOperatorHandle<AvgPool2dSignature>& avg_pool2d_op() {
  static const auto op = lenetx_op<AvgPool2dSignature>("lenetx::avg_pool2d");
  return op;
}
inline const c10::TypedOperatorHandle<AvgPool2dBackwardSignature>& avg_pool2d_backward_op() {
  static const auto op = lenetx_op<AvgPool2dBackwardSignature>("lenetx::avg_pool2d_backward");
  return op;
}
inline const c10::TypedOperatorHandle<MaxPool2dBackwardSignature>& max_pool2d_backward_op() {
  static const auto op = lenetx_op<MaxPool2dBackwardSignature>("lenetx::max_pool2d_backward");
  return op;
}
inline const c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, IntList)>& adaptive_avg_pool2d_op() {
  static const auto op = lenetx_op<at::Tensor(const at::Tensor&, IntList)>("lenetx::adaptive_avg_pool2d");
  return op;
}
inline const c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&)>& adaptive_avg_pool2d_backward_op() {
  static const auto op =
      lenetx_op<at::Tensor(const at::Tensor&, const at::Tensor&)>("lenetx::adaptive_avg_pool2d_backward");
  return op;
}

}  // namespace lenetx

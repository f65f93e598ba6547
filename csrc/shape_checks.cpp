#include "shape_checks.h"

#include <string>

namespace lenetx {
namespace {

void check_pair(at::IntArrayRef values, const char* name, const char* op) {
  TORCH_CHECK(values.size() == 2, op, ": ", name, " must have 2 values (height, width), but got ",
              name, "=", values);
}

void check_positive(at::IntArrayRef values, const char* name, const char* op) {
  check_pair(values, name, op);
  TORCH_CHECK(values[0] > 0 && values[1] > 0, op, ": ", name, " must be positive, but got ", name,
              "=", values);
}

void check_non_negative(at::IntArrayRef values, const char* name, const char* op) {
  check_pair(values, name, op);
  TORCH_CHECK(values[0] >= 0 && values[1] >= 0, op, ": ", name,
              " must be non-negative, but got ", name, "=", values);
}

void check_spatial_non_empty(const at::Tensor& input, const char* op) {
  TORCH_CHECK(input.size(1) > 0 && input.size(2) > 0 && input.size(3) > 0, op,
              ": expected input with non-zero channels, height and width, but got input of size ",
              input.sizes());
}

// PyTorch's pooling_output_shape: with ceil_mode the last window must start inside the input
// or its left padding, never wholly in the right padding.
int64_t pooled_size(int64_t input, int64_t kernel, int64_t pad, int64_t stride, int64_t dilation,
                    bool ceil_mode) {
  const int64_t numerator = input + 2 * pad - dilation * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  // Floor division that rounds towards minus infinity, as the numerator may be negative.
  int64_t out = (numerator >= 0 ? numerator / stride : -((-numerator + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= input + pad) --out;
  return out;
}

}  // namespace

void check_4d(const at::Tensor& tensor, const char* name, const char* op) {
  TORCH_CHECK(tensor.dim() == 4, op, ": expected a 4-D ", name, " (N, C, H, W), but got ", name,
              " of size ", tensor.sizes());
}

void check_floating_dtype(const at::Tensor& input, const char* op) {
  const auto dtype = input.scalar_type();
  const bool supported = dtype == at::kFloat || dtype == at::kDouble ||
                         (input.is_cuda() && (dtype == at::kHalf || dtype == at::kBFloat16));
  TORCH_CHECK(supported, op, ": unsupported dtype ", dtype, " on ", input.device().type(),
              " (supported: float32 and float64",
              input.is_cuda() ? ", float16 and bfloat16)" : ")");
}

void check_same_dtype_and_device(
    const at::Tensor& reference, const char* reference_name, const at::Tensor& other,
    const char* other_name, const char* op) {
  TORCH_CHECK(other.device() == reference.device(), op, ": expected ", other_name,
              " on the same device as ", reference_name, " (", reference.device(), "), but got ",
              other_name, " on ", other.device());
  TORCH_CHECK(other.scalar_type() == reference.scalar_type(), op, ": expected ", other_name,
              " with the same dtype as ", reference_name, " (", reference.scalar_type(),
              "), but got ", other_name, " of dtype ", other.scalar_type());
}

Conv2dShape check_conv2d(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    const char* op) {
  check_4d(input, "input", op);
  check_4d(weight, "weight", op);
  check_floating_dtype(input, op);
  check_same_dtype_and_device(input, "input", weight, "weight", op);
  check_positive(stride, "stride", op);
  check_non_negative(padding, "padding", op);
  check_positive(dilation, "dilation", op);
  TORCH_CHECK(groups > 0, op, ": groups must be positive, but got groups=", groups);
  TORCH_CHECK(weight.size(0) > 0 && weight.size(2) > 0 && weight.size(3) > 0, op,
              ": expected weight with non-zero out_channels and kernel size, but got weight of size ",
              weight.sizes());
  TORCH_CHECK(weight.size(0) % groups == 0, op, ": out_channels (weight.size(0)=", weight.size(0),
              ") must be divisible by groups=", groups);
  TORCH_CHECK(input.size(1) == weight.size(1) * groups, op, ": expected input with ",
              weight.size(1) * groups, " channels (weight.size(1)=", weight.size(1),
              " times groups=", groups, "), but got input of size ", input.sizes());
  if (bias.has_value()) {
    check_same_dtype_and_device(input, "input", *bias, "bias", op);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op,
                ": expected bias of size [", weight.size(0), "], but got bias of size ",
                bias->sizes());
  }

  Conv2dShape s{};
  s.batch = input.size(0);
  s.in_channels = input.size(1);
  s.in_h = input.size(2);
  s.in_w = input.size(3);
  s.out_channels = weight.size(0);
  s.kernel_h = weight.size(2);
  s.kernel_w = weight.size(3);
  s.stride_h = stride[0];
  s.stride_w = stride[1];
  s.pad_h = padding[0];
  s.pad_w = padding[1];
  s.dilation_h = dilation[0];
  s.dilation_w = dilation[1];
  s.groups = groups;

  const int64_t padded_h = s.in_h + 2 * s.pad_h, padded_w = s.in_w + 2 * s.pad_w;
  const int64_t dilated_kh = s.dilation_h * (s.kernel_h - 1) + 1;
  const int64_t dilated_kw = s.dilation_w * (s.kernel_w - 1) + 1;
  TORCH_CHECK(padded_h >= dilated_kh && padded_w >= dilated_kw, op,
              ": the kernel is larger than the padded input: padded input size (", padded_h,
              " x ", padded_w, "), dilated kernel size (", dilated_kh, " x ", dilated_kw,
              ") for input of size ", input.sizes(), ", weight of size ", weight.sizes(),
              ", padding=", padding, ", dilation=", dilation);
  s.out_h = (padded_h - dilated_kh) / s.stride_h + 1;
  s.out_w = (padded_w - dilated_kw) / s.stride_w + 1;
  return s;
}

Pool2dShape check_pool2d(
    const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode, const char* op) {
  check_4d(input, "input", op);
  check_spatial_non_empty(input, op);
  check_floating_dtype(input, op);
  check_positive(kernel_size, "kernel_size", op);
  check_positive(stride, "stride", op);
  check_non_negative(padding, "padding", op);
  check_positive(dilation, "dilation", op);
  TORCH_CHECK(padding[0] <= kernel_size[0] / 2 && padding[1] <= kernel_size[1] / 2, op,
              ": padding must be at most half of kernel_size, but got padding=", padding,
              " and kernel_size=", kernel_size);

  Pool2dShape s{};
  s.batch = input.size(0);
  s.channels = input.size(1);
  s.in_h = input.size(2);
  s.in_w = input.size(3);
  s.kernel_h = kernel_size[0];
  s.kernel_w = kernel_size[1];
  s.stride_h = stride[0];
  s.stride_w = stride[1];
  s.pad_h = padding[0];
  s.pad_w = padding[1];
  s.dilation_h = dilation[0];
  s.dilation_w = dilation[1];
  s.out_h = pooled_size(s.in_h, s.kernel_h, s.pad_h, s.stride_h, s.dilation_h, ceil_mode);
  s.out_w = pooled_size(s.in_w, s.kernel_w, s.pad_w, s.stride_w, s.dilation_w, ceil_mode);
  TORCH_CHECK(s.out_h >= 1 && s.out_w >= 1, op, ": output size is too small: input of size ",
              input.sizes(), " with kernel_size=", kernel_size, ", stride=", stride,
              ", padding=", padding, ", dilation=", dilation, " gives output size (", s.out_h,
              " x ", s.out_w, ")");
  return s;
}

Pool2dShape check_avg_pool2d(
    const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, bool ceil_mode, std::optional<int64_t> divisor_override, const char* op) {
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0, op,
              ": divisor_override must be non-zero, but got divisor_override=0");
  const int64_t no_dilation[] = {1, 1};
  return check_pool2d(input, kernel_size, stride, padding, no_dilation, ceil_mode, op);
}

void check_adaptive_pool2d(const at::Tensor& input, at::IntArrayRef output_size) {
  constexpr const char* op = "lenetx.adaptive_avg_pool2d";
  check_4d(input, "input", op);
  check_spatial_non_empty(input, op);
  check_floating_dtype(input, op);
  check_non_negative(output_size, "output_size", op);
}

static void check_grad_output(const at::Tensor& grad_output, const at::Tensor& input,
                              at::IntArrayRef expected, const char* op) {
  check_same_dtype_and_device(input, "input", grad_output, "grad_output", op);
  TORCH_CHECK(grad_output.sizes() == expected, op, ": expected grad_output of size ", expected,
              ", but got grad_output of size ", grad_output.sizes());
}

ConvReluPoolShape check_conv2d_relu_pool2d(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_size, const char* op) {
  const Conv2dShape conv = check_conv2d(input, weight, bias, stride, padding, dilation, groups, op);
  check_positive(pool_size, "pool_size", op);
  const ConvReluPoolShape s{conv, pool_size[0], pool_size[1], conv.out_h / pool_size[0], conv.out_w / pool_size[1]};
  TORCH_CHECK(s.pooled_h >= 1 && s.pooled_w >= 1, op, ": pool_size=", pool_size,
              " is larger than the convolution's output (", conv.out_h, " x ", conv.out_w,
              ") for input of size ", input.sizes(), " and weight of size ", weight.sizes());
  return s;
}

ConvReluPoolShape check_conv2d_relu_pool2d_backward(
    const at::Tensor& grad_output, const at::Tensor& mask, const at::Tensor& input,
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, at::IntArrayRef pool_size) {
  constexpr const char* op = "lenetx.conv2d_relu_pool2d_backward";
  const ConvReluPoolShape s = check_conv2d_relu_pool2d(input, weight, std::nullopt, stride, padding,
                                                       dilation, groups, pool_size, op);
  const Conv2dShape& c = s.conv;
  check_grad_output(grad_output, input, {c.batch, c.out_channels, s.pooled_h, s.pooled_w}, op);
  TORCH_CHECK(mask.scalar_type() == at::kByte && mask.device() == input.device(), op,
              ": expected a uint8 mask on ", input.device(), ", but got mask of dtype ",
              mask.scalar_type(), " on ", mask.device());
  TORCH_CHECK(mask.sizes() == at::IntArrayRef({c.batch, c.out_channels, c.out_h, c.out_w}), op,
              ": expected mask of size [", c.batch, ", ", c.out_channels, ", ", c.out_h, ", ", c.out_w,
              "] (the convolution's output), but got mask of size ", mask.sizes());
  return s;
}

Conv2dShape check_conv2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    const char* op) {
  const Conv2dShape s = check_conv2d(input, weight, std::nullopt, stride, padding, dilation, groups);
  check_grad_output(grad_output, input, {s.batch, s.out_channels, s.out_h, s.out_w}, op);
  return s;
}

void check_pool2d_grad_output(const at::Tensor& grad_output, const at::Tensor& input,
                              const Pool2dShape& s, const char* op) {
  check_grad_output(grad_output, input, {s.batch, s.channels, s.out_h, s.out_w}, op);
}

void check_max_pool2d_indices(const at::Tensor& indices, const at::Tensor& grad_output,
                              const at::Tensor& input, const char* op) {
  TORCH_CHECK(indices.scalar_type() == at::kLong && indices.device() == input.device(), op,
              ": expected int64 indices on ", input.device(), ", but got ", indices.scalar_type(),
              " indices on ", indices.device());
  TORCH_CHECK(indices.sizes() == grad_output.sizes(), op, ": expected indices of size ",
              grad_output.sizes(), ", but got indices of size ", indices.sizes());
}

void check_conv2d_grad_bias(const at::Tensor& grad_output) {
  constexpr const char* op = "lenetx.conv2d_grad_bias";
  TORCH_CHECK(grad_output.dim() == 4, op,
              ": expected a 4-D grad_output (N, C, H, W), but got grad_output of size ",
              grad_output.sizes());
  check_floating_dtype(grad_output, op);
}

std::vector<int64_t> check_mlp(const at::Tensor& input, at::TensorList weights,
                               const c10::List<std::optional<at::Tensor>>& biases) {
  constexpr const char* op = "lenetx.mlp";
  TORCH_CHECK(input.dim() == 2, op, ": expected a 2-D input (N, in_features), but got input of size ",
              input.sizes());
  check_floating_dtype(input, op);
  TORCH_CHECK(!weights.empty(), op, ": expected at least one weight, but got none");
  TORCH_CHECK(biases.size() == weights.size(), op, ": expected one bias (or None) per weight, but got ",
              weights.size(), " weights and ", biases.size(), " biases");
  std::vector<int64_t> widths{input.size(1)};
  for (size_t l = 0; l < weights.size(); ++l) {
    const std::string name = "weights[" + std::to_string(l) + "]";
    const at::Tensor& weight = weights[l];
    TORCH_CHECK(weight.dim() == 2, op, ": expected a 2-D ", name, " (out_features, in_features), but got ",
                name, " of size ", weight.sizes());
    check_same_dtype_and_device(input, "input", weight, name.c_str(), op);
    TORCH_CHECK(weight.size(1) == widths.back(), op, ": ", name, " of size ", weight.sizes(), " takes ",
                weight.size(1), " in_features, but ",
                l == 0 ? c10::str("got input of size ", input.sizes())
                       : c10::str("weights[", l - 1, "] of size ", weights[l - 1].sizes(), " gives ", widths.back()));
    const std::optional<at::Tensor> bias = biases.get(l);
    if (bias.has_value() && bias->defined()) {
      const std::string bias_name = "biases[" + std::to_string(l) + "]";
      check_same_dtype_and_device(input, "input", *bias, bias_name.c_str(), op);
      TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": expected ", bias_name,
                  " of size [", weight.size(0), "], but got ", bias_name, " of size ", bias->sizes());
    }
    widths.push_back(weight.size(0));
  }
  return widths;
}

std::vector<int64_t> check_mlp_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                        at::TensorList weights, at::TensorList hidden) {
  constexpr const char* op = "lenetx.mlp_backward";
  const std::vector<int64_t> widths = check_mlp(input, weights, c10::List<std::optional<at::Tensor>>(
                                                                    std::vector<std::optional<at::Tensor>>(weights.size())));
  const int64_t rows = input.size(0);
  check_grad_output(grad_output, input, {rows, widths.back()}, op);
  TORCH_CHECK(hidden.size() + 1 == weights.size(), op, ": expected ", weights.size() - 1,
              " hidden layers' outputs (one per weight but the last), but got ", hidden.size());
  for (size_t l = 0; l < hidden.size(); ++l) {
    const std::string name = "hidden[" + std::to_string(l) + "]";
    check_same_dtype_and_device(input, "input", hidden[l], name.c_str(), op);
    TORCH_CHECK(hidden[l].sizes() == at::IntArrayRef({rows, widths[l + 1]}), op, ": expected ", name,
                " of size [", rows, ", ", widths[l + 1], "], but got ", name, " of size ", hidden[l].sizes());
  }
  return widths;
}

void check_adaptive_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input) {
  constexpr const char* op = "lenetx.adaptive_avg_pool2d_backward";
  TORCH_CHECK(grad_output.dim() == 4, op,
              ": expected a 4-D grad_output (N, C, H, W), but got grad_output of size ",
              grad_output.sizes());
  check_adaptive_pool2d(input, {grad_output.size(2), grad_output.size(3)});
  check_grad_output(grad_output, input,
                    {input.size(0), input.size(1), grad_output.size(2), grad_output.size(3)}, op);
}

}  // namespace lenetx

#pragma once
// Argument validation and output-shape arithmetic shared by the CPU and CUDA kernels.
// Every failure raises a RuntimeError that names the offending argument and its value.
#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace lenetx {

struct Conv2dShape {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, out_h, out_w;
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t groups;
  C10_HOST_DEVICE int64_t in_channels_per_group() const { return in_channels / groups; }
  C10_HOST_DEVICE int64_t out_channels_per_group() const { return out_channels / groups; }
};

struct Pool2dShape {
  int64_t batch, channels, in_h, in_w, out_h, out_w;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
};

// A RuntimeError naming the tensor and its size unless it is 4-D.
void check_4d(const at::Tensor& tensor, const char* name, const char* op);

// The CPU kernels take float32/float64; the CUDA kernels also float16/bfloat16.
void check_floating_dtype(const at::Tensor& input, const char* op);

void check_same_dtype_and_device(
    const at::Tensor& reference, const char* reference_name, const at::Tensor& other,
    const char* other_name, const char* op);

Conv2dShape check_conv2d(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    const char* op = "lenetx.conv2d");

// conv2d_relu_pool2d: the convolution's checks, then a pool_size that fits in its output.
// pooled_h/w: the output's size, floor(conv output / pool_size).
struct ConvReluPoolShape {
  Conv2dShape conv;
  int64_t pool_h, pool_w, pooled_h, pooled_w;
};

ConvReluPoolShape check_conv2d_relu_pool2d(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_size, const char* op);

// Its backward: grad_output of the pooled size, and the forward's mask (uint8, the
// convolution's output size).
ConvReluPoolShape check_conv2d_relu_pool2d_backward(
    const at::Tensor& grad_output, const at::Tensor& mask, const at::Tensor& input,
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, at::IntArrayRef pool_size);

Pool2dShape check_pool2d(
    const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode, const char* op);

Pool2dShape check_avg_pool2d(
    const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, bool ceil_mode, std::optional<int64_t> divisor_override, const char* op);

void check_adaptive_pool2d(const at::Tensor& input, at::IntArrayRef output_size);

// mlp: a 2-D input and, per layer, a 2-D weight that takes the previous layer's outputs and a
// bias of its out_features or none. Returns the widths: input's features, then each layer's.
std::vector<int64_t> check_mlp(const at::Tensor& input, at::TensorList weights,
                               const c10::List<std::optional<at::Tensor>>& biases);

// The backward ops: the forward's checks, plus grad_output (and indices) of exactly the dtype,
// device and shape the forward produced.
Conv2dShape check_conv2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    const char* op);

void check_pool2d_grad_output(const at::Tensor& grad_output, const at::Tensor& input,
                              const Pool2dShape& s, const char* op);

void check_max_pool2d_indices(const at::Tensor& indices, const at::Tensor& grad_output,
                              const at::Tensor& input, const char* op);

void check_adaptive_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input);

void check_conv2d_grad_bias(const at::Tensor& grad_output);

// mlp_backward: the weights' checks, then grad_output and the hidden layers' outputs of the
// sizes the forward produced. Returns the widths as check_mlp does.
std::vector<int64_t> check_mlp_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                        at::TensorList weights, at::TensorList hidden);

}  // namespace lenetx

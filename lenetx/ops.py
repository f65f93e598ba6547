"""Fake (meta) kernels of the lenetx operators.

The schemas, the CPU/CUDA kernels and the autograd kernels (csrc/autograd.cpp, whose backward
formulas call lenetx's own backward operators) live in csrc/; this module makes the operators
traceable by torch.compile.
"""

import torch

from . import _extension  # noqa: F401  (loads the schemas before they are referenced)
from .shapes import pooled_size

ops = torch.ops.lenetx


# ---------------------------------------------------------------------------------------------
# Fake kernels: output metadata only. Outputs are contiguous (NCHW), as the real kernels' are.


def _empty(reference, *shape, dtype=None):
    return reference.new_empty(shape, dtype=dtype or reference.dtype)


def _conv2d_output_shape(input, weight, bias, stride, padding, dilation, groups):
    for name, tensor in (("weight", weight), ("bias", bias)):
        torch._check(tensor is None or (tensor.device == input.device and tensor.dtype == input.dtype),
                     lambda: f"lenetx.conv2d: expected {name} with the dtype and device of input "
                             f"({input.dtype}, {input.device}), but got {tensor.dtype}, {tensor.device}")
    torch._check(input.dim() == 4 and weight.dim() == 4,
                 lambda: f"lenetx.conv2d: expected 4-D input and weight, got {tuple(input.shape)} "
                         f"and {tuple(weight.shape)}")
    torch._check(input.shape[1] == weight.shape[1] * groups,
                 lambda: f"lenetx.conv2d: expected input with {weight.shape[1] * groups} channels, "
                         f"but got input of size {tuple(input.shape)}")
    out_h = pooled_size(input.shape[2], weight.shape[2], padding[0], stride[0], dilation[0], False)
    out_w = pooled_size(input.shape[3], weight.shape[3], padding[1], stride[1], dilation[1], False)
    torch._check(out_h >= 1 and out_w >= 1,
                 lambda: "lenetx.conv2d: the kernel is larger than the padded input")
    return input.shape[0], weight.shape[0], out_h, out_w


@torch.library.register_fake("lenetx::conv2d")
def _(input, weight, bias, stride, padding, dilation, groups):
    return _empty(input, *_conv2d_output_shape(input, weight, bias, stride, padding, dilation, groups))


@torch.library.register_fake("lenetx::conv2d_grad_input")
def _(grad_output, input, weight, stride, padding, dilation, groups):
    return _empty(input, *input.shape)


@torch.library.register_fake("lenetx::conv2d_grad_weight")
def _(grad_output, input, weight, stride, padding, dilation, groups):
    return _empty(weight, *weight.shape)


@torch.library.register_fake("lenetx::conv2d_grad_bias")
def _(grad_output):
    return _empty(grad_output, grad_output.shape[1])


@torch.library.register_fake("lenetx::conv2d_relu_pool2d")
def _(input, weight, bias, stride, padding, dilation, groups, pool_size, max_pool):
    batch, channels, conv_h, conv_w = _conv2d_output_shape(input, weight, bias, stride, padding,
                                                           dilation, groups)
    torch._check(pool_size[0] >= 1 and pool_size[1] >= 1,
                 lambda: f"lenetx.conv2d_relu_pool2d: pool_size must be positive, but got "
                         f"pool_size={list(pool_size)}")
    pooled_h, pooled_w = conv_h // pool_size[0], conv_w // pool_size[1]
    torch._check(pooled_h >= 1 and pooled_w >= 1,
                 lambda: f"lenetx.conv2d_relu_pool2d: pool_size={list(pool_size)} is larger than "
                         f"the convolution's output ({conv_h} x {conv_w})")
    return (_empty(input, batch, channels, pooled_h, pooled_w),
            _empty(input, batch, channels, conv_h, conv_w, dtype=torch.uint8))


@torch.library.register_fake("lenetx::conv2d_relu_pool2d_backward")
def _(grad_output, mask, input, weight, stride, padding, dilation, groups, pool_size, max_pool,
      input_grad):
    grad_input = _empty(input, *input.shape) if input_grad else _empty(input, 0)
    return grad_input, _empty(weight, *weight.shape), _empty(weight, weight.shape[0])


def _mlp_widths(input, weights, biases):
    torch._check(input.dim() == 2,
                 lambda: f"lenetx.mlp: expected a 2-D input (N, in_features), but got input of size "
                         f"{tuple(input.shape)}")
    torch._check(len(weights) > 0, lambda: "lenetx.mlp: expected at least one weight, but got none")
    torch._check(len(biases) == len(weights),
                 lambda: f"lenetx.mlp: expected one bias (or None) per weight, but got {len(weights)} "
                         f"weights and {len(biases)} biases")
    widths = [input.shape[1]]
    for index, weight in enumerate(weights):
        torch._check(weight.dim() == 2 and weight.shape[1] == widths[-1],
                     lambda: f"lenetx.mlp: weights[{index}] of size {tuple(weight.shape)} does not take "
                             f"{widths[-1]} in_features")
        widths.append(weight.shape[0])
    return widths


@torch.library.register_fake("lenetx::mlp")
def _(input, weights, biases):
    widths = _mlp_widths(input, weights, biases)
    rows = input.shape[0]
    return _empty(input, rows, widths[-1]), [_empty(input, rows, width) for width in widths[1:-1]]


@torch.library.register_fake("lenetx::mlp_backward")
def _(grad_output, input, weights, hidden, input_grad):
    grad_input = _empty(input, *input.shape) if input_grad else _empty(input, 0)
    return (grad_input, [_empty(weight, *weight.shape) for weight in weights],
            [_empty(weight, weight.shape[0]) for weight in weights])


def _pool2d_output_shape(input, kernel_size, stride, padding, dilation, ceil_mode, op):
    torch._check(input.dim() == 4,
                 lambda: f"{op}: expected a 4-D input, but got input of size {tuple(input.shape)}")
    out_h = pooled_size(input.shape[2], kernel_size[0], padding[0], stride[0], dilation[0], ceil_mode)
    out_w = pooled_size(input.shape[3], kernel_size[1], padding[1], stride[1], dilation[1], ceil_mode)
    torch._check(out_h >= 1 and out_w >= 1, lambda: f"{op}: output size is too small")
    return input.shape[0], input.shape[1], out_h, out_w


@torch.library.register_fake("lenetx::avg_pool2d")
def _(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
      relu_input=False):
    shape = _pool2d_output_shape(input, kernel_size, stride, padding, (1, 1), ceil_mode,
                                 "lenetx.avg_pool2d")
    return _empty(input, *shape)


@torch.library.register_fake("lenetx::avg_pool2d_backward")
def _(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
      divisor_override, relu_input=False):
    return _empty(input, *input.shape)


@torch.library.register_fake("lenetx::max_pool2d_with_indices")
def _(input, kernel_size, stride, padding, dilation, ceil_mode, relu_input=False):
    shape = _pool2d_output_shape(input, kernel_size, stride, padding, dilation, ceil_mode,
                                 "lenetx.max_pool2d")
    return _empty(input, *shape), _empty(input, *shape, dtype=torch.int64)


@torch.library.register_fake("lenetx::max_pool2d_backward")
def _(grad_output, input, indices, kernel_size, stride, padding, dilation, ceil_mode,
      relu_input=False):
    return _empty(input, *input.shape)


@torch.library.register_fake("lenetx::adaptive_avg_pool2d")
def _(input, output_size):
    torch._check(input.dim() == 4, lambda: "lenetx.adaptive_avg_pool2d: expected a 4-D input")
    return _empty(input, input.shape[0], input.shape[1], output_size[0], output_size[1])


@torch.library.register_fake("lenetx::adaptive_avg_pool2d_backward")
def _(grad_output, input):
    return _empty(input, *input.shape)


@torch.library.register_fake("lenetx::crop_normalize")
def _(images, index, row_offsets, col_offsets, flip, padding, mean, std):
    torch._check(images.dim() == 4 and index.dim() == 1,
                 lambda: f"lenetx.crop_normalize: expected 4-D images and a 1-D index, got "
                         f"{tuple(images.shape)} and {tuple(index.shape)}")
    return _empty(images, index.shape[0], *images.shape[1:], dtype=torch.float32)

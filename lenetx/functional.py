"""Functional interface with the signatures and semantics of torch.nn.functional.

Like torch.nn.functional's Python functions, each hands a call whose tensors override
__torch_function__ to them before looking at its arguments: torch.fx's symbolic tracing
(torchvision's feature extraction included) records the call, and tensor subclasses and
TorchFunctionModes see it, as they see torch's. The convolution and pooling functions then call
lenetx._C's entry points, which parse the arguments and call the operators through the
dispatcher without torch.ops's boxing (csrc/python_functional.cpp); torch.compile keeps those
calls in its graph, where they trace to the operators."""

import torch
import torch.nn.functional as F
from torch.overrides import handle_torch_function, has_torch_function, has_torch_function_unary

from ._extension import kernels
from .ops import ops


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution; see torch.nn.functional.conv2d."""
    if has_torch_function((input, weight, bias)):
        return handle_torch_function(conv2d, (input, weight, bias), input, weight, bias, stride=stride,
                                     padding=padding, dilation=dilation, groups=groups)
    return kernels.conv2d(input, weight, bias, stride, padding, dilation, groups)


def conv2d_relu_pool2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                       pool_size=2, max_pool=False):
    """avg_pool2d(relu(conv2d(input, ...)), pool_size), or max_pool2d with max_pool=True: pooling
    windows of pool_size at stride pool_size, without padding, in floor mode. On the CPU one
    operator computes it a chunk of images at a time, without the convolution's output ever
    reaching memory; elsewhere it is conv2d, then the pooling with relu_input."""
    if has_torch_function((input, weight, bias)):
        return handle_torch_function(conv2d_relu_pool2d, (input, weight, bias), input, weight, bias, stride=stride,
                                     padding=padding, dilation=dilation, groups=groups, pool_size=pool_size,
                                     max_pool=max_pool)
    return kernels.conv2d_relu_pool2d(input, weight, bias, stride, padding, dilation, groups, pool_size, max_pool)


def mlp(input, weights, biases=None):
    """Fully connected layers with ReLU between them and none after the last:
    linear(relu(... relu(linear(input, weights[0], biases[0])) ...), weights[-1], biases[-1]), with
    torch.nn.functional.linear's input (*, in_features) and weights (out_features, in_features).
    biases: None, or one bias or None per weight. On the CPU one operator runs every layer, and
    its backward every layer's backward; elsewhere it is F.linear and relu, layer by layer."""
    weights = list(weights)
    biases = [None] * len(weights) if biases is None else list(biases)
    if has_torch_function((input, *weights, *biases)):
        return handle_torch_function(mlp, (input, *weights, *biases), input, weights, biases)
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"lenetx.mlp: input must be a Tensor, but got {type(input).__name__}")
    if len(biases) != len(weights):
        raise RuntimeError(f"lenetx.mlp: expected one bias (or None) per weight, but got {len(weights)} "
                           f"weights and {len(biases)} biases")
    if input.device.type != "cpu":
        for layer, (weight, bias) in enumerate(zip(weights, biases)):
            input = F.linear(input if layer == 0 else F.relu(input), weight, bias)
        return input
    if input.dim() == 2:
        return ops.mlp(input, weights, biases)[0]
    if input.dim() == 0:
        raise RuntimeError("lenetx.mlp: expected an input of at least 1 dimension, but got a 0-D input")
    output, _ = ops.mlp(input.reshape(-1, input.shape[-1]), weights, biases)
    return output.reshape(*input.shape[:-1], output.shape[-1])


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None, *, relu_input=False):
    """2-D average pooling; see torch.nn.functional.avg_pool2d. relu_input=True pools
    relu(input) in one pass, and its backward masks the gradient as relu's would."""
    if has_torch_function_unary(input):
        return handle_torch_function(avg_pool2d, (input,), input, kernel_size, stride=stride, padding=padding,
                                     ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                                     divisor_override=divisor_override, relu_input=relu_input)
    return kernels.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                              relu_input)


def max_pool2d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode=False, *, relu_input=False):
    """2-D max pooling that also returns, per output, the flat index within its H x W plane.
    relu_input=True pools relu(input) in one pass, as avg_pool2d's does."""
    if has_torch_function_unary(input):
        return handle_torch_function(max_pool2d_with_indices, (input,), input, kernel_size, stride=stride,
                                     padding=padding, dilation=dilation, ceil_mode=ceil_mode, relu_input=relu_input)
    return kernels.max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode, relu_input)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, relu_input=False):
    """2-D max pooling; see torch.nn.functional.max_pool2d. relu_input=True pools relu(input) in
    one pass, as avg_pool2d's does."""
    if has_torch_function_unary(input):
        return handle_torch_function(max_pool2d, (input,), input, kernel_size, stride=stride, padding=padding,
                                     dilation=dilation, ceil_mode=ceil_mode, return_indices=return_indices,
                                     relu_input=relu_input)
    output, indices = kernels.max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode,
                                                      relu_input)
    return (output, indices) if return_indices else output


def adaptive_avg_pool2d(input, output_size):
    """2-D adaptive average pooling; see torch.nn.functional.adaptive_avg_pool2d. A None entry in
    output_size keeps that dimension's input size."""
    if has_torch_function_unary(input):
        return handle_torch_function(adaptive_avg_pool2d, (input,), input, output_size)
    return kernels.adaptive_avg_pool2d(input, output_size)


torch.compiler.allow_in_graph([kernels.conv2d, kernels.conv2d_relu_pool2d, kernels.avg_pool2d,
                               kernels.max_pool2d_with_indices, kernels.adaptive_avg_pool2d])

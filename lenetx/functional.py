"""Functional interface with the signatures and semantics of torch.nn.functional.

Like torch.nn.functional's Python functions, each hands a call whose tensors override
__torch_function__ to them before looking at its arguments: torch.fx's symbolic tracing
(torchvision's feature extraction included) records the call, and tensor subclasses and
TorchFunctionModes see it, as they see torch's."""

import torch
import torch.nn.functional as F
from torch.overrides import handle_torch_function, has_torch_function, has_torch_function_unary

from .ops import ops


def _is_int(value):
    # type() first: the layers' own arguments are plain ints, and the isinstance checks alone cost
    # about a microsecond per _pair, ten of them per fused layer's call.
    return type(value) is int or (isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool))


def _pair(name, value):
    if _is_int(value):
        return [value, value]
    if not isinstance(value, (tuple, list, torch.Size)):
        raise TypeError(f"{name} must be an int or a pair of ints, but got {name}={value!r}")
    values = list(value)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not (_is_int(values[0]) and _is_int(values[1])):
        raise TypeError(f"{name} must be an int or a pair of ints, but got {name}={value!r}")
    return values


def _batched(input, op):
    """Returns (4-D input, whether a batch dimension was added)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{op}: input must be a Tensor, but got {type(input).__name__}")
    if input.dim() == 4:
        return input, False
    if input.dim() == 3:
        return input.unsqueeze(0), True
    raise RuntimeError(
        f"{op}: expected a 3-D (unbatched) or 4-D (batched) input, but got input of size "
        f"{list(input.shape)}"
    )


def _pool_stride(stride, kernel_size):
    # As in torch.nn.functional, None or an empty sequence means "the kernel size".
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        return kernel_size
    return _pair("stride", stride)


def _same_padding(input, kernel_size, stride, dilation):
    """PyTorch's padding='same': symmetric where the total is even, one extra row/column on the
    bottom/right where it is odd. Returns (input padded for the odd part, symmetric padding)."""
    if stride != [1, 1]:
        raise RuntimeError(
            f"lenetx.conv2d: padding='same' is not supported for strided convolutions, but got "
            f"stride={tuple(stride)}"
        )
    totals = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
    left = [t // 2 for t in totals]
    extra_h, extra_w = (t - 2 * l for t, l in zip(totals, left))
    if extra_h or extra_w:
        input = F.pad(input, [0, extra_w, 0, extra_h])
    return input, left


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution; see torch.nn.functional.conv2d."""
    if has_torch_function((input, weight, bias)):
        return handle_torch_function(conv2d, (input, weight, bias), input, weight, bias, stride=stride,
                                     padding=padding, dilation=dilation, groups=groups)
    input, unbatched = _batched(input, "lenetx.conv2d")
    input, stride, padding, dilation = _conv_arguments(input, weight, stride, padding, dilation)
    output = ops.conv2d(input, weight, bias, stride, padding, dilation, groups)
    return output.squeeze(0) if unbatched else output


def _conv_arguments(input, weight, stride, padding, dilation):
    """(input, stride, padding, dilation) as the operators take them; a padding string can pad
    the input."""
    stride, dilation = _pair("stride", stride), _pair("dilation", dilation)
    if isinstance(padding, str):
        if padding == "valid":
            padding = [0, 0]
        elif padding == "same":
            input, padding = _same_padding(input, weight.shape[2:], stride, dilation)
        else:
            raise RuntimeError(
                f"lenetx.conv2d: invalid padding string {padding!r}; expected 'same' or 'valid'"
            )
    else:
        padding = _pair("padding", padding)
    return input, stride, padding, dilation


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
    input, unbatched = _batched(input, "lenetx.conv2d_relu_pool2d")
    pool_size = _pair("pool_size", pool_size)
    if input.device.type != "cpu":
        output = conv2d(input, weight, bias, stride, padding, dilation, groups)
        pool = max_pool2d if max_pool else avg_pool2d
        output = pool(output, pool_size, relu_input=True)
    else:
        input, stride, padding, dilation = _conv_arguments(input, weight, stride, padding, dilation)
        output, _ = ops.conv2d_relu_pool2d(input, weight, bias, stride, padding, dilation, groups,
                                           pool_size, max_pool)
    return output.squeeze(0) if unbatched else output


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
    input, unbatched = _batched(input, "lenetx.avg_pool2d")
    kernel_size = _pair("kernel_size", kernel_size)
    stride = _pool_stride(stride, kernel_size)
    output = ops.avg_pool2d(input, kernel_size, stride, _pair("padding", padding), ceil_mode,
                            count_include_pad, divisor_override, relu_input)
    return output.squeeze(0) if unbatched else output


def max_pool2d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode=False, *, relu_input=False):
    """2-D max pooling that also returns, per output, the flat index within its H x W plane.
    relu_input=True pools relu(input) in one pass, as avg_pool2d's does."""
    if has_torch_function_unary(input):
        return handle_torch_function(max_pool2d_with_indices, (input,), input, kernel_size, stride=stride,
                                     padding=padding, dilation=dilation, ceil_mode=ceil_mode, relu_input=relu_input)
    input, unbatched = _batched(input, "lenetx.max_pool2d")
    kernel_size = _pair("kernel_size", kernel_size)
    stride = _pool_stride(stride, kernel_size)
    output, indices = ops.max_pool2d_with_indices(
        input, kernel_size, stride, _pair("padding", padding), _pair("dilation", dilation), ceil_mode,
        relu_input,
    )
    if unbatched:
        output, indices = output.squeeze(0), indices.squeeze(0)
    return output, indices


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, relu_input=False):
    """2-D max pooling; see torch.nn.functional.max_pool2d. relu_input=True pools relu(input) in
    one pass, as avg_pool2d's does."""
    if has_torch_function_unary(input):
        return handle_torch_function(max_pool2d, (input,), input, kernel_size, stride=stride, padding=padding,
                                     dilation=dilation, ceil_mode=ceil_mode, return_indices=return_indices,
                                     relu_input=relu_input)
    output, indices = max_pool2d_with_indices(input, kernel_size, stride, padding, dilation,
                                              ceil_mode, relu_input=relu_input)
    return (output, indices) if return_indices else output


def adaptive_avg_pool2d(input, output_size):
    """2-D adaptive average pooling; see torch.nn.functional.adaptive_avg_pool2d. A None entry in
    output_size keeps that dimension's input size."""
    if has_torch_function_unary(input):
        return handle_torch_function(adaptive_avg_pool2d, (input,), input, output_size)
    input, unbatched = _batched(input, "lenetx.adaptive_avg_pool2d")
    if isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        output_size = [input.shape[2 + i] if size is None else size
                       for i, size in enumerate(output_size)]
    output = ops.adaptive_avg_pool2d(input, _pair("output_size", output_size))
    return output.squeeze(0) if unbatched else output

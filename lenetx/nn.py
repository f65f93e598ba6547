"""Drop-in layers: subclasses of the torch.nn classes (same constructor, parameters, repr and
state_dict) whose forward runs lenetx's kernels."""

import torch
import torch.nn.functional as F

from . import functional as LF


class Conv2d(torch.nn.Conv2d):
    __doc__ = torch.nn.Conv2d.__doc__

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return LF.conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return LF.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class AvgPool2d(torch.nn.AvgPool2d):
    __doc__ = torch.nn.AvgPool2d.__doc__

    def forward(self, input, *, relu_input=False):
        return LF.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                             self.count_include_pad, self.divisor_override, relu_input=relu_input)


class MaxPool2d(torch.nn.MaxPool2d):
    __doc__ = torch.nn.MaxPool2d.__doc__

    def forward(self, input, *, relu_input=False):
        return LF.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                             ceil_mode=self.ceil_mode, return_indices=self.return_indices,
                             relu_input=relu_input)


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    __doc__ = torch.nn.AdaptiveAvgPool2d.__doc__

    def forward(self, input):
        return LF.adaptive_avg_pool2d(input, self.output_size)


def relu_pool(pool, input):
    """pool(relu(input)) for a pooling layer: one pass (relu_input) for lenetx's average and max
    pooling, relu then the layer for any other, torch.nn's included."""
    if isinstance(pool, (AvgPool2d, MaxPool2d)):
        return pool(input, relu_input=True)
    return pool(torch.relu(input))


# The fused operator pays where the convolution is cheap beside the memory its output would
# take: the LeNets' first layers, 25 and 9 multiply-adds per output, and LeNet-5's second (150),
# which runs as fast fused as on its own paths followed by relu_pool and makes the step 4 %
# faster. The improved LeNet's second layer (400, Winograd) gained nothing fused
# (benchmarks/NOTES.md, sections 9, 11 and 16).
_MAX_FUSED_TAPS = 150


def conv_relu_pool(conv, pool, input, input_padding=0):
    """pool(relu(conv(input))) for a convolution and a pooling layer: one fused operator
    (lenetx.functional.conv2d_relu_pool2d) for lenetx's layers when the convolution takes at most
    _MAX_FUSED_TAPS multiply-adds per output and the pooling's windows do not overlap (stride =
    kernel_size, no padding, floor mode), conv then relu_pool otherwise. input_padding zero rows
    and columns around the input, as F.pad would add them, become part of the fused operator's
    padding instead of a padded copy (LeNet-5's 28x28 digits padded to 32x32: 31 us a step)."""
    fused = (isinstance(conv, Conv2d) and conv.padding_mode == "zeros" and _fusable_pool(pool)
             and conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1] <= _MAX_FUSED_TAPS)
    padding = conv.padding
    if input_padding and fused and not isinstance(padding, str):
        padding = [p + input_padding for p in padding]
    elif input_padding:
        input = F.pad(input, [input_padding] * 4)
    if fused:
        return LF.conv2d_relu_pool2d(input, conv.weight, conv.bias, conv.stride, padding,
                                     conv.dilation, conv.groups, pool_size=pool.kernel_size,
                                     max_pool=isinstance(pool, MaxPool2d))
    return relu_pool(pool, conv(input))


def _fusable_pool(pool):
    if isinstance(pool, AvgPool2d):
        plain = pool.divisor_override is None
    elif isinstance(pool, MaxPool2d):
        plain = _as_pair(pool.dilation) == (1, 1) and not pool.return_indices
    else:
        return False
    kernel_size = _as_pair(pool.kernel_size)
    stride = kernel_size if pool.stride is None or pool.stride in ((), []) else _as_pair(pool.stride)
    return (plain and kernel_size is not None and stride == kernel_size and _as_pair(pool.padding) == (0, 0)
            and not pool.ceil_mode)


def _as_pair(value):
    """A layer's int or sequence of one or two ints as a pair, None for anything else: the layer's
    own call, unfused, then takes it as the functional interface does or rejects it with its
    message."""
    values = list(value) if isinstance(value, (tuple, list)) else [value]
    if len(values) in (1, 2) and all(type(v) is int for v in values):
        return values[0], values[-1]
    return None


def _without_hooks(*modules):
    """No forward or backward hook on any of `modules` nor a global one: running them as one
    fused operator skips no hook."""
    hooks = torch.nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks or hooks._global_backward_hooks \
            or hooks._global_backward_pre_hooks:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                   for m in modules)


class Sequential(torch.nn.Sequential):
    """torch.nn.Sequential that runs a lenetx Conv2d, a torch.nn.ReLU and a lenetx pooling layer
    in a row through conv_relu_pool (one fused operator where the convolution and the pooling
    allow it), a ReLU followed by a lenetx pooling layer through relu_pool, and a lenetx Conv2d,
    ReLU, Flatten, Linear, then any ReLU, Linear pairs (LeNet-5's conv3 and classifier) through
    conv_relu_mlp: what convert() makes of a torch.nn.Sequential. The modules are not changed; a
    run with hooks runs module by module."""

    def forward(self, input):
        modules = list(self._modules.values())
        i = 0
        while i < len(modules):
            run = modules[i:i + 3]
            linears = _classifier_linears(modules, i)
            if linears and _without_hooks(*modules[i:i + 2 + 2 * len(linears)]):
                input = conv_relu_mlp(modules[i], linears, input)
                i += 2 + 2 * len(linears)
            elif (len(run) == 3 and isinstance(run[0], Conv2d) and type(run[1]) is torch.nn.ReLU
                    and isinstance(run[2], (AvgPool2d, MaxPool2d)) and _without_hooks(*run)):
                input = conv_relu_pool(run[0], run[2], input)
                i += 3
            elif (len(run) >= 2 and type(run[0]) is torch.nn.ReLU and isinstance(run[1], (AvgPool2d, MaxPool2d))
                  and _without_hooks(*run[:2])):
                input = relu_pool(run[1], input)
                i += 2
            else:
                input = modules[i](input)
                i += 1
        return input


def _classifier_linears(modules, i):
    """The Linear layers of a run modules[i], ... = a lenetx Conv2d, ReLU, Flatten (of every
    dimension after the batch's), Linear, then ReLU, Linear pairs, which conv_relu_mlp computes;
    none where no such run starts."""
    head = modules[i:i + 4]
    if not (len(head) == 4 and isinstance(head[0], Conv2d) and type(head[1]) is torch.nn.ReLU
            and type(head[2]) is torch.nn.Flatten and (head[2].start_dim, head[2].end_dim) == (1, -1)
            and type(head[3]) is torch.nn.Linear):
        return []
    linears, j = [head[3]], i + 4
    while j + 1 < len(modules) and type(modules[j]) is torch.nn.ReLU and type(modules[j + 1]) is torch.nn.Linear:
        linears.append(modules[j + 1])
        j += 2
    return linears


# torch.nn class -> its lenetx replacement; convert() swaps exactly these types.
REPLACEMENTS = {
    torch.nn.Conv2d: Conv2d,
    torch.nn.AvgPool2d: AvgPool2d,
    torch.nn.MaxPool2d: MaxPool2d,
    torch.nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d,
}


def conv_relu_mlp(conv, linears, input):
    """linears[-1](relu(... linears[0](relu(conv(input)).flatten(1)) ...)), ReLU between the
    fully connected layers: LeNet-5's conv3 and classifier. One fused operator
    (lenetx.functional.mlp) for a lenetx Conv2d whose kernel covers its whole unpadded input
    (one output pixel: a fully connected layer, as LeNet-5's conv3, 16x5x5 -> 120) followed by
    torch.nn.Linear layers, on a batched CPU input; layer by layer otherwise. As with
    conv_relu_pool, the fused path calls no module, so it runs none of their hooks."""
    if _acts_as_linear(conv, input) and all(type(layer) is torch.nn.Linear for layer in linears):
        weights = [conv.weight.flatten(1)] + [layer.weight for layer in linears]
        biases = [conv.bias] + [layer.bias for layer in linears]
        return LF.mlp(input.flatten(1), weights, biases)
    x = F.relu(conv(input)).flatten(1)
    for index, layer in enumerate(linears):
        x = layer(x if index == 0 else F.relu(x))
    return x


def _acts_as_linear(conv, input):
    # Decided on the input's shape and device, which a torch.fx Proxy does not have, and through an
    # operator whose list of optional biases torch.jit.trace cannot record: traced either way, the
    # layers run one by one.
    return (isinstance(conv, Conv2d) and isinstance(input, torch.Tensor) and not torch.jit.is_tracing()
            and input.dim() == 4 and input.device.type == "cpu"
            and conv.groups == 1 and conv.padding_mode == "zeros"
            and conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1)
            and tuple(input.shape[2:]) == conv.kernel_size)

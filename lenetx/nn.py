"""Drop-in layers: subclasses of the torch.nn classes (same constructor, parameters, repr and
state_dict) whose forward runs lenetx's kernels."""

import torch

from . import functional as LF


class Conv2d(torch.nn.Conv2d):
    __doc__ = torch.nn.Conv2d.__doc__

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            input = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice,
                                            mode=self.padding_mode)
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


def conv_relu_pool(conv, pool, input):
    """pool(relu(conv(input))) for a convolution and a pooling layer: one fused operator
    (lenetx.functional.conv2d_relu_pool2d) for lenetx's layers when the pooling's windows do not
    overlap (stride = kernel_size, no padding, floor mode), conv then relu_pool otherwise."""
    if isinstance(conv, Conv2d) and conv.padding_mode == "zeros" and _fusable_pool(pool):
        return LF.conv2d_relu_pool2d(input, conv.weight, conv.bias, conv.stride, conv.padding,
                                     conv.dilation, conv.groups, pool_size=pool.kernel_size,
                                     max_pool=isinstance(pool, MaxPool2d))
    return relu_pool(pool, conv(input))


def _fusable_pool(pool):
    if isinstance(pool, AvgPool2d):
        plain = pool.divisor_override is None
    elif isinstance(pool, MaxPool2d):
        plain = LF._pair("dilation", pool.dilation) == [1, 1] and not pool.return_indices
    else:
        return False
    kernel_size = LF._pair("kernel_size", pool.kernel_size)
    stride = LF._pool_stride(pool.stride, kernel_size)
    return (plain and stride == kernel_size and LF._pair("padding", pool.padding) == [0, 0]
            and not pool.ceil_mode)


# torch.nn class -> its lenetx replacement; convert() swaps exactly these types.
REPLACEMENTS = {
    torch.nn.Conv2d: Conv2d,
    torch.nn.AvgPool2d: AvgPool2d,
    torch.nn.MaxPool2d: MaxPool2d,
    torch.nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d,
}

"""Bad input raises a Python exception naming the parameter and its value; nothing crashes."""

import re

import pytest
import torch
import torch.nn.functional as F

import lenetx.functional as LF

x = torch.randn(2, 3, 8, 8)
w = torch.randn(6, 3, 3, 3)

CONV_ERRORS = [
    (dict(input=torch.randn(3, 8)), r"input of size \[3, 8\]"),
    (dict(input=torch.randn(1, 2, 3, 8, 8)), r"input of size \[1, 2, 3, 8, 8\]"),
    (dict(weight=torch.randn(6, 3, 3)), r"weight of size \[6, 3, 3\]"),
    (dict(weight=torch.randn(6, 3, 3), padding="same"), r"4-D weight .*weight of size \[6, 3, 3\]"),
    (dict(weight=torch.randn(6, 2, 3, 3)), r"2 channels \(weight.size\(1\)=2.*input of size \[2, 3, 8, 8\]"),
    (dict(weight=torch.randn(6, 1, 3, 3), groups=2), r"weight.size\(1\)=1 times groups=2"),
    (dict(weight=torch.randn(5, 1, 3, 3), groups=3), r"weight.size\(0\)=5\) must be divisible by groups=3"),
    (dict(groups=0), r"groups=0"),
    (dict(groups=-1), r"groups=-1"),
    (dict(stride=0), r"stride=\[0, 0\]"),
    (dict(stride=(1, -2)), r"stride=\[1, -2\]"),
    (dict(dilation=0), r"dilation=\[0, 0\]"),
    (dict(padding=-1), r"padding=\[-1, -1\]"),
    (dict(padding="same", stride=2), r"padding='same'.*stride=\(2, 2\)"),
    (dict(padding="full"), r"padding string 'full'"),
    (dict(weight=torch.randn(6, 3, 9, 3)), r"padded input size \(8 x 8\).*kernel size \(9 x 3\)"),
    (dict(weight=torch.randn(6, 3, 3, 3), dilation=4), r"dilated kernel size \(9 x 9\)"),
    (dict(bias=torch.randn(5)), r"bias of size \[5\]"),
    (dict(weight=torch.randn(6, 3, 3, 3, dtype=torch.float64)), r"weight of dtype Double"),
    (dict(bias=torch.randn(6, dtype=torch.float64)), r"bias of dtype Double"),
    (dict(input=torch.randn(2, 3, 8, 8, dtype=torch.complex64)), r"dtype"),
    (dict(stride=(1, 2, 3)), r"stride=\(1, 2, 3\)"),
    (dict(stride=1.5), r"stride=1.5"),
    (dict(groups=1.0), r"groups=1.0"),
    (dict(weight="w"), r"weight must be a Tensor, but got str"),
    (dict(bias=[1.0]), r"bias must be a Tensor or None, but got list"),
    (dict(padding="\ud800"), r"padding string '\\ud800'"),
]


@pytest.mark.parametrize("kwargs, message", CONV_ERRORS, ids=[m for _, m in CONV_ERRORS])
def test_conv2d_rejects_bad_input(kwargs, message):
    args = dict(input=x, weight=w, bias=None)
    args.update(kwargs)
    with pytest.raises((RuntimeError, ValueError, TypeError), match=message):
        LF.conv2d(**args)
    # PyTorch rejects the same input.
    with pytest.raises(Exception):
        F.conv2d(**args)


POOL_ERRORS = [
    ("avg_pool2d", dict(kernel_size=0), r"kernel_size=\[0, 0\]"),
    ("avg_pool2d", dict(kernel_size=2, stride=0), r"stride=\[0, 0\]"),
    ("avg_pool2d", dict(kernel_size=3, padding=2), r"padding=\[2, 2\].*kernel_size=\[3, 3\]"),
    ("avg_pool2d", dict(kernel_size=2, padding=-1), r"padding=\[-1, -1\]"),
    ("avg_pool2d", dict(kernel_size=2, divisor_override=0), r"divisor_override=0"),
    ("avg_pool2d", dict(kernel_size=9), r"output size is too small.*kernel_size=\[9, 9\]"),
    ("max_pool2d", dict(kernel_size=3, dilation=0), r"dilation=\[0, 0\]"),
    ("max_pool2d", dict(kernel_size=3, padding=2), r"padding=\[2, 2\]"),
    ("max_pool2d", dict(kernel_size=3, dilation=4), r"output size is too small.*dilation=\[4, 4\]"),
    ("max_pool2d", dict(kernel_size=(2, 2, 2)), r"kernel_size=\(2, 2, 2\)"),
    ("adaptive_avg_pool2d", dict(output_size=(-1, 2)), r"output_size=\[-1, 2\]"),
    ("adaptive_avg_pool2d", dict(output_size=(1, 2, 3)), r"output_size=\(1, 2, 3\)"),
    ("adaptive_avg_pool2d", dict(output_size=(None, "a")), r"output_size=\(None, 'a'\)"),
    ("avg_pool2d", dict(kernel_size=2, ceil_mode=1), r"ceil_mode must be a bool, but got ceil_mode=1"),
    ("avg_pool2d", dict(kernel_size=2, count_include_pad=None), r"count_include_pad=None"),
    ("avg_pool2d", dict(kernel_size=2, divisor_override=2.0), r"divisor_override=2.0"),
    ("avg_pool2d", dict(kernel_size=True), r"kernel_size=True"),
    ("max_pool2d", dict(kernel_size=2, ceil_mode="no"), r"ceil_mode='no'"),
    ("max_pool2d", dict(kernel_size=2.0), r"kernel_size=2.0"),
]


@pytest.mark.parametrize("name, kwargs, message", POOL_ERRORS, ids=[m for _, _, m in POOL_ERRORS])
def test_pooling_rejects_bad_input(name, kwargs, message):
    with pytest.raises((RuntimeError, ValueError, TypeError), match=message):
        getattr(LF, name)(x, **kwargs)
    with pytest.raises(Exception):
        getattr(F, name)(x, **kwargs)


@pytest.mark.parametrize("name, kwargs", [
    ("avg_pool2d", dict(kernel_size=2)), ("max_pool2d", dict(kernel_size=2)),
    ("adaptive_avg_pool2d", dict(output_size=2)),
])
@pytest.mark.parametrize("shape", [(8, 8), (2, 0, 8, 8), (2, 3, 0, 8), (1, 1, 2, 3, 8, 8)])
def test_pooling_rejects_bad_shapes(name, kwargs, shape):
    with pytest.raises(RuntimeError, match=re.escape(f"input of size {list(shape)}")):
        getattr(LF, name)(torch.randn(shape), **kwargs)


def test_device_mix_is_rejected():
    with pytest.raises(RuntimeError, match=r"device of input \(torch.float32, meta\), but got torch.float32, cpu"):
        LF.conv2d(torch.randn(2, 3, 8, 8, device="meta"), w)


def test_integer_input_is_rejected():
    # PyTorch's CPU path computes integer convolutions and pools; lenetx's kernels are float-only.
    with pytest.raises(RuntimeError, match="unsupported dtype Long"):
        LF.conv2d(torch.randint(0, 5, (2, 3, 8, 8)), torch.randint(0, 5, (6, 3, 3, 3)))
    with pytest.raises(RuntimeError, match="unsupported dtype Long"):
        LF.max_pool2d(torch.randint(0, 9, (1, 1, 4, 4)), 2)


def test_backward_ops_reject_mismatched_gradients():
    ops = torch.ops.lenetx
    with pytest.raises(RuntimeError, match=r"expected grad_output of size \[2, 6, 6, 6\].*\[2, 6, 5, 5\]"):
        ops.conv2d_grad_input(torch.randn(2, 6, 5, 5), x, w, [1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match=r"grad_output of dtype Double"):
        ops.conv2d_grad_weight(torch.randn(2, 6, 6, 6, dtype=torch.float64), x, w, [1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match=r"expected grad_output of size \[2, 3, 4, 4\]"):
        ops.avg_pool2d_backward(torch.randn(2, 3, 3, 3), x, [2, 2], [2, 2], [0, 0], False, True, None)
    with pytest.raises(RuntimeError, match=r"indices of size"):
        ops.max_pool2d_backward(torch.randn(2, 3, 4, 4), x, torch.zeros(2, 3, 3, 3, dtype=torch.long),
                                [2, 2], [2, 2], [0, 0], [1, 1], False)


def test_max_pool2d_backward_rejects_out_of_range_indices():
    bad = torch.full((2, 3, 4, 4), 64, dtype=torch.long)
    with pytest.raises(RuntimeError, match=r"indices must lie in \[0, H\*W\) = \[0, 64\)"):
        torch.ops.lenetx.max_pool2d_backward(torch.randn(2, 3, 4, 4), x, bad, [2, 2], [2, 2], [0, 0],
                                             [1, 1], False)

"""Dispatcher registration: torch.library.opcheck on every op, and torch.compile end to end."""

import pytest
import torch
from helpers import assert_compiled_matches_eager

import lenetx.functional as LF
import lenetx.nn as lnn

ops = torch.ops.lenetx


def _t(*shape, grad=False, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype).requires_grad_(grad)


def opcheck_samples():
    x = _t(2, 3, 9, 8)
    w = _t(4, 3, 3, 2)
    conv_args = ([2, 1], [1, 1], [1, 2], 1)
    go_conv = ops.conv2d(x, w, None, *conv_args)
    avg_args = ([3, 2], [2, 2], [1, 1], True, False, None)
    max_args = ([3, 3], [2, 1], [1, 0], [1, 2], True)
    out, idx = ops.max_pool2d_with_indices(x, *max_args)
    return [
        ("conv2d", (x, w, _t(4), *conv_args)),
        ("conv2d", (_t(2, 3, 9, 8, grad=True), _t(4, 3, 3, 2, grad=True), None, *conv_args)),
        ("conv2d", (_t(1, 4, 6, 6, grad=True, dtype=torch.float64),
                    _t(8, 1, 3, 3, grad=True, dtype=torch.float64), _t(8, grad=True, dtype=torch.float64),
                    [1, 1], [1, 1], [1, 1], 4)),
        ("conv2d_grad_input", (torch.randn_like(go_conv), x, w, *conv_args)),
        ("conv2d_grad_weight", (torch.randn_like(go_conv), x, w, *conv_args)),
        ("conv2d_grad_bias", (torch.randn_like(go_conv),)),
        ("avg_pool2d", (_t(2, 3, 9, 8, grad=True), *avg_args)),
        ("avg_pool2d", (_t(2, 3, 9, 8, grad=True), [2, 2], [2, 2], [0, 0], False, True, 3)),
        ("avg_pool2d_backward", (torch.randn_like(ops.avg_pool2d(x, *avg_args)), x, *avg_args)),
        ("max_pool2d_with_indices", (_t(2, 3, 9, 8, grad=True), *max_args)),
        ("max_pool2d_backward", (torch.randn_like(out), x, idx, *max_args)),
        # relu_input: the pooling of relu(input), and its masked backward.
        ("avg_pool2d", (_t(2, 3, 9, 8, grad=True), *avg_args, True)),
        ("avg_pool2d_backward", (torch.randn_like(ops.avg_pool2d(x, *avg_args)), x, *avg_args, True)),
        ("max_pool2d_with_indices", (_t(2, 3, 9, 8, grad=True), *max_args, True)),
        ("max_pool2d_backward", (torch.randn_like(out), x, idx, *max_args, True)),
        ("adaptive_avg_pool2d", (_t(2, 3, 9, 8, grad=True), [4, 3])),
        ("adaptive_avg_pool2d_backward", (_t(2, 3, 4, 3), x)),
    ]


@pytest.mark.parametrize("name, args", opcheck_samples(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    torch.library.opcheck(getattr(ops, name).default, args)


class TinyLeNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            lnn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), lnn.AvgPool2d(2),
            lnn.Conv2d(6, 16, 5), torch.nn.ReLU(), lnn.MaxPool2d(2),
            lnn.AdaptiveAvgPool2d((3, 3)),
        )
        self.conv = lnn.Conv2d(16, 8, 1)
        self.pool = lnn.MaxPool2d(2, ceil_mode=True)
        self.classifier = torch.nn.Linear(8 * 4, 10)

    def forward(self, x):
        x = lnn.relu_pool(self.pool, self.conv(self.features(x)))
        return self.classifier(x.flatten(1))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph_matches_eager(dynamic):
    torch.manual_seed(0)
    model = TinyLeNet()
    assert_compiled_matches_eager(model, torch.randn(4, 1, 28, 28), dynamic=dynamic,
                                  backend="aot_eager" if dynamic else "inductor")


def test_torch_compile_of_functional_same_padding():
    fn = torch.compile(lambda x, w: LF.conv2d(x, w, padding="same"), fullgraph=True)
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 4, 4)
    torch.testing.assert_close(fn(x, w), LF.conv2d(x, w, padding="same"))

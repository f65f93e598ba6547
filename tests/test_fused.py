"""The fused convolution + ReLU + pooling operator (lenetx.functional.conv2d_relu_pool2d and
lenetx.nn.conv_relu_pool) against torch's conv2d, relu and pooling: outputs, every gradient,
the mask it saves, determinism, opcheck and the errors it raises."""

import pytest
import torch
import torch.nn.functional as F

import lenetx.functional as LF
import lenetx.nn as lnn
from lenetx import models

from helpers import assert_compiled_matches_eager, assert_matches_torch
from test_conv2d import case_id, case_tensors, generated_cases

ops = torch.ops.lenetx


def torch_reference(x, w, b, pool_size, max_pool, **conv):
    pool = F.max_pool2d if max_pool else F.avg_pool2d
    return pool(F.relu(F.conv2d(x, w, b, **conv)), pool_size)


def fused_cases():
    """The convolution grid's cases whose output fits a pooling window, with 2x2, 3x3 and 2x1
    windows, average and max, across batch sizes that fill several chunks of 8 images."""
    cases = []
    for i, case in enumerate(generated_cases()):
        pool_size = [(2, 2), (3, 3), (2, 1)][i % 3]
        conv = {k: case[k] for k in ("stride", "padding", "dilation", "groups")}
        out = F.conv2d(torch.empty(1, case["in_channels"], *case["size"]),
                       torch.empty(case["out_channels"], case["in_channels"] // case["groups"], *case["kernel"]),
                       **conv).shape[2:]
        if out[0] < pool_size[0] or out[1] < pool_size[1]:
            continue
        cases.append(dict(case, batch=[1, 3, 9, 17][i % 4], pool_size=pool_size, max_pool=i % 2 == 0))
    return cases[:48]


def run(case, generator):
    input, weight, bias, conv = case_tensors(case, generator)
    pool = dict(pool_size=case["pool_size"], max_pool=case["max_pool"])
    assert_matches_torch(lambda x, w, b: LF.conv2d_relu_pool2d(x, w, b, **conv, **pool),
                         lambda x, w, b: torch_reference(x, w, b, **pool, **conv),
                         [input, weight, bias], case["dtype"], generator)


@pytest.mark.parametrize("case", fused_cases(), ids=lambda c: (
    f"{case_id(c)}-pool{c['pool_size']}{'max' if c['max_pool'] else 'avg'}").replace(" ", ""))
def test_matches_torch_on_generated_grid(case, generator):
    run(case, generator)


@pytest.mark.parametrize("max_pool", [False, True], ids=["avg", "max"])
@pytest.mark.parametrize("shape", [
    dict(input=(20, 1, 32, 32), weight=(6, 1, 5, 5), padding=0),  # LeNet-5's conv1
    dict(input=(19, 1, 28, 28), weight=(16, 1, 3, 3), padding=1),  # the improved LeNet's conv1
    dict(input=(11, 6, 14, 14), weight=(16, 6, 5, 5), padding=0),  # LeNet-5's conv2, odd output rows
    dict(input=(3, 2, 13, 12), weight=(4, 2, 2, 3), padding=0),  # uncovered row and column
], ids=["lenet5-conv1", "improved-conv1", "lenet5-conv2", "uncovered"])
def test_matches_torch_at_lenet_shapes(shape, max_pool, generator):
    case = dict(batch=shape["input"][0], in_channels=shape["input"][1], size=shape["input"][2:],
                out_channels=shape["weight"][0], kernel=shape["weight"][2:], stride=1,
                padding=shape["padding"], dilation=1, groups=1, bias=True, layout="contiguous",
                dtype=torch.float32, pool_size=(2, 2), max_pool=max_pool)
    run(case, generator)


@pytest.mark.parametrize("width", [8, 13, 19, 35], ids=lambda w: f"width{w}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("max_pool", [False, True], ids=["avg", "max"])
def test_ties_zeros_infinities_and_nan_as_torch(max_pool, dtype, width):
    # A 1x1 kernel of weight 1 passes the input through: windows of ties (max pooling's gradient
    # goes to the first), of non-positive values only, -0.0, infinities and NaN (which relu keeps
    # and whose gradient relu's backward lets through). The 2x2 windows of rows of at least half
    # a vector of windows (8 float32, 4 float64; under AVX-512, float32 rows of 4 to 7 windows in
    # vectors of 8) run in vector blocks, the last block overlapping the one before; an odd width
    # leaves a column no window covers.
    block = torch.tensor([[-1.0, -2.0, 0.0, -0.0, float("inf"), 1.0, 2.0, 2.0],
                          [-3.0, -0.5, -0.0, 2.0, -float("inf"), float("nan"), 2.0, 2.0],
                          [0.5, -1.0, 3.0, 3.0, -4.0, -4.0, 1.0, 0.0],
                          [-1.0, 0.5, -2.0, 1.0, -5.0, -6.0, 0.0, 1.0]], dtype=dtype)
    # Copies rolled by odd and by even numbers of columns put each value in both columns of a
    # window, at the wider widths.
    input = torch.cat([block.roll(shift, dims=1) for shift in (0, 3, 1, 6, 5)], dim=1)[:, :width]
    input = input.view(1, 1, 4, width)
    pool = dict(pool_size=2, max_pool=max_pool)
    upstream = torch.arange(1.0, 2 * (width // 2) + 1, dtype=dtype).view(1, 1, 2, width // 2)
    results = []
    for function in (lambda x, w: LF.conv2d_relu_pool2d(x, w, **pool),
                     lambda x, w: torch_reference(x, w, None, **pool)):
        x, w = input.clone().requires_grad_(), torch.ones(1, 1, 1, 1, dtype=dtype, requires_grad=True)
        out = function(x, w)
        results.append((out, *torch.autograd.grad(out, (x, w), upstream)))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, equal_nan=True)


@pytest.mark.parametrize("width", [7, 14, 35], ids=lambda w: f"width{w}")
@pytest.mark.parametrize("pool_size", [(3, 3), (2, 1)], ids=lambda p: f"pool{p[0]}x{p[1]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("max_pool", [False, True], ids=["avg", "max"])
def test_other_windows_pass_infinite_and_nan_gradients_as_torch(max_pool, dtype, pool_size, width, generator):
    # Windows other than 2x2 unpool a row at a time, selected by the mask in vectors as wide as
    # the ISA's, in 8 lanes, or a value at a time, by the row's length: infinite and NaN gradients
    # reach only the values relu and the pooling let through, and the windows past the last
    # whole one get none.
    input = torch.randn(2, 1, 7, width, generator=generator, dtype=dtype)
    input[0, 0, 0, :4] = torch.tensor([float("inf"), -float("inf"), 0.0, -0.0], dtype=dtype)
    pool = dict(pool_size=pool_size, max_pool=max_pool)
    results = []
    for function in (lambda x, w: LF.conv2d_relu_pool2d(x, w, **pool),
                     lambda x, w: torch_reference(x, w, None, **pool)):
        x, w = input.clone().requires_grad_(), torch.ones(1, 1, 1, 1, dtype=dtype, requires_grad=True)
        out = function(x, w)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        upstream.view(-1)[::3] = float("nan")
        upstream.view(-1)[1::5] = float("inf")
        results.append((out, *torch.autograd.grad(out, (x, w), upstream)))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, equal_nan=True)


@pytest.mark.parametrize("width", [9, 21, 40], ids=lambda w: f"width{w}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_mask_marks_where_the_gradient_reaches_the_convolution(dtype, width, generator):
    input = torch.randn(3, 2, 9, width, generator=generator, dtype=dtype)
    weight = torch.randn(4, 2, 3, 3, generator=generator, dtype=dtype)
    conv = F.conv2d(input, weight)
    for max_pool in (False, True):
        _, mask = ops.conv2d_relu_pool2d(input, weight, None, [1, 1], [0, 0], [1, 1], 1, [2, 2], max_pool)
        assert mask.dtype == torch.uint8 and mask.shape == conv.shape
        leaf = conv.clone().requires_grad_()
        pooled = (F.max_pool2d if max_pool else F.avg_pool2d)(F.relu(leaf), 2)
        (grad,) = torch.autograd.grad(pooled, leaf, torch.ones_like(pooled))
        assert torch.equal(mask.bool(), grad != 0)


def test_results_are_bit_identical_and_independent_of_the_thread_count(generator):
    input = torch.randn(21, 3, 16, 16, generator=generator, requires_grad=True)
    weight = torch.randn(8, 3, 5, 5, generator=generator, requires_grad=True)
    bias = torch.randn(8, generator=generator, requires_grad=True)
    upstream = torch.randn(21, 8, 6, 6, generator=generator)
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (1, 2, 3, 2):
            torch.set_num_threads(count)
            out = LF.conv2d_relu_pool2d(input, weight, bias, max_pool=True)
            runs.append((out, *torch.autograd.grad(out, (input, weight, bias), upstream)))
    finally:
        torch.set_num_threads(threads)
    for run_ in runs[1:]:
        for a, b in zip(runs[0], run_):
            assert torch.equal(a, b)


@pytest.mark.parametrize("finite", [True, False], ids=["finite", "infinite-input"])
@pytest.mark.parametrize("batch", [1, 9], ids=lambda b: f"batch{b}")
@pytest.mark.parametrize("pool_size", [(2, 2), (3, 3), (2, 1)], ids=lambda p: f"pool{p[0]}x{p[1]}")
@pytest.mark.parametrize("max_pool", [False, True], ids=["avg", "max"])
def test_a_first_layer_over_padded_rows_matches_torch(max_pool, pool_size, batch, finite, generator):
    # One input channel, stride 1: the forward pools each band of padded rows from the tiles'
    # buffer (a batch of one splits an image into bands), and without a gradient for the input
    # the backward unpools the convolution's gradient straight into grad_weight's rows and sums
    # the bias there; an input that is not finite takes the planes' way instead.
    input = torch.randn(batch, 1, 23, 21, generator=generator, dtype=torch.float64)
    if not finite:
        input[0, 0, 5, 7] = float("inf")
    weight = torch.randn(5, 1, 5, 3, generator=generator, dtype=torch.float64)
    bias = torch.randn(5, generator=generator, dtype=torch.float64)
    pool = dict(pool_size=pool_size, max_pool=max_pool)
    results = []
    for function in (lambda w, b: LF.conv2d_relu_pool2d(input, w, b, padding=(2, 1), **pool),
                     lambda w, b: torch_reference(input, w, b, padding=(2, 1), **pool)):
        w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
        out = function(w, b)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        results.append((out, *torch.autograd.grad(out, (w, b), upstream)))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, equal_nan=True)


def test_grad_weight_and_bias_equal_the_unfused_operators_bit_for_bit(generator):
    # The fused backward adds the same per-chunk and per-image partial sums in the same order.
    input = torch.randn(21, 1, 32, 32, generator=generator)
    weight = torch.randn(6, 1, 5, 5, generator=generator, requires_grad=True)
    bias = torch.randn(6, generator=generator, requires_grad=True)
    upstream = torch.randn(21, 6, 14, 14, generator=generator)
    fused = torch.autograd.grad(LF.conv2d_relu_pool2d(input, weight, bias), (weight, bias), upstream)
    unfused = torch.autograd.grad(LF.avg_pool2d(LF.conv2d(input, weight, bias), 2, relu_input=True),
                                  (weight, bias), upstream)
    for a, b in zip(fused, unfused):
        assert torch.equal(a, b)


def test_backward_without_input_grad_returns_an_empty_grad_input():
    # (test_conv2d checks that autograd asks only for the gradients it needs.)
    grads = ops.conv2d_relu_pool2d_backward(torch.ones(2, 4, 3, 3), torch.ones(2, 4, 6, 6, dtype=torch.uint8),
                                            torch.ones(2, 3, 8, 8), torch.ones(4, 3, 3, 3), [1, 1], [0, 0],
                                            [1, 1], 1, [2, 2], False, False)
    assert grads[0].shape == (0,) and grads[1].shape == (4, 3, 3, 3) and grads[2].shape == (4,)


@pytest.mark.parametrize("in_channels, out_channels, size", [(1, 6, 32), (6, 16, 14)], ids=["conv1", "conv2"])
def test_backward_of_an_empty_batch_gives_zero_gradients_in_reused_memory(in_channels, out_channels, size):
    # As test_conv2d's for grad_weight: the allocations the results are likely to get hold NaN.
    input, weight = torch.randn(0, in_channels, size, size), torch.randn(out_channels, in_channels, 5, 5)
    pooled = (size - 4) // 2
    for _ in range(3):
        poison = (torch.full_like(weight, float("nan")), torch.full((out_channels,), float("nan")))
        del poison
        _, grad_weight, grad_bias = ops.conv2d_relu_pool2d_backward(
            torch.randn(0, out_channels, pooled, pooled), torch.ones(0, out_channels, size - 4, size - 4, dtype=torch.uint8),
            input, weight, [1, 1], [0, 0], [1, 1], 1, [2, 2], False, False)
        assert torch.equal(grad_weight, torch.zeros_like(weight)) and torch.equal(grad_bias, torch.zeros(out_channels))


def test_backward_zeroes_no_gradient_for_the_mask(generator):
    # The mask is not differentiable: a mask-sized zero gradient for it, filled every backward,
    # took 217 us of LeNet-5's step for conv1's.
    input = torch.randn(4, 1, 32, 32, generator=generator)
    weight = torch.randn(6, 1, 5, 5, generator=generator, requires_grad=True)
    output = LF.conv2d_relu_pool2d(input, weight, None, pool_size=2)
    with torch.profiler.profile(record_shapes=True) as profile:
        output.sum().backward()
    mask_shape = [4, 6, 28, 28]
    assert not [e.name for e in profile.events()
                if e.name in ("aten::zero_", "aten::fill_") and mask_shape in e.input_shapes]
    assert weight.grad is not None


def test_backward_passes_on_an_absent_gradient_as_absent(generator):
    class DropsGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return None

    input = torch.randn(2, 3, 8, 8, generator=generator, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, generator=generator, requires_grad=True)
    output = LF.conv2d_relu_pool2d(input, weight, None, pool_size=2)
    grads = torch.autograd.grad(DropsGradient.apply(output).sum() + weight.sum(), (input, weight),
                                allow_unused=True)
    assert grads[0] is None and torch.equal(grads[1], torch.ones_like(weight))


def gradcheck_tensors(generator):
    # Values away from relu's kink and from ties, where the finite differences are exact enough.
    input = torch.randn(3, 2, 7, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(3, 2, 2, 2, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, generator=generator, requires_grad=True)
    return input, weight, bias


@pytest.mark.parametrize("max_pool", [False, True], ids=["avg", "max"])
def test_gradcheck(max_pool, generator):
    assert torch.autograd.gradcheck(
        lambda x, w, b: LF.conv2d_relu_pool2d(x, w, b, padding=1, pool_size=2, max_pool=max_pool),
        gradcheck_tensors(generator), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("max_pool", [False, True], ids=["avg", "max"])
def test_gradgradcheck(max_pool, generator):
    assert torch.autograd.gradgradcheck(
        lambda x, w, b: LF.conv2d_relu_pool2d(x, w, b, padding=1, pool_size=2, max_pool=max_pool),
        gradcheck_tensors(generator), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("max_pool", [False, True], ids=["avg", "max"])
def test_second_derivatives_match_torch(max_pool, generator):
    # Under create_graph the backward differentiates conv2d and a pooling with the forward's own
    # mask: its first derivatives are the fused backward's, its second torch's.
    tensors = gradcheck_tensors(generator)

    def fused(x, w, b):
        return LF.conv2d_relu_pool2d(x, w, b, padding=1, pool_size=2, max_pool=max_pool)

    def unfused(x, w, b):
        return torch_reference(x, w, b, 2, max_pool, padding=1)

    def gradients(fn):
        first = torch.autograd.grad(fn(*tensors).sin().sum(), tensors, create_graph=True)
        return first, torch.autograd.grad(sum(g.square().sum() for g in first), tensors)

    plain = torch.autograd.grad(fused(*tensors).sin().sum(), tensors)
    ours, theirs = gradients(fused), gradients(unfused)
    for a, b in zip(ours[0], plain):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    for a, b in zip(ours[0] + ours[1], theirs[0] + theirs[1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_backward_operator_has_no_derivative_of_its_own(generator):
    # The operator's own derivative goes through the composition; its backward kernel, called
    # directly on tensors that take a gradient, raises rather than returning a wrong one.
    input, weight, bias = (t.detach().float() for t in gradcheck_tensors(generator))
    output, mask = ops.conv2d_relu_pool2d(input, weight, bias, [1, 1], [1, 1], [1, 1], 1, [2, 2], False)
    grad_output = torch.randn(output.shape, generator=generator, requires_grad=True)
    grads = ops.conv2d_relu_pool2d_backward(grad_output, mask, input, weight, [1, 1], [1, 1], [1, 1], 1,
                                            [2, 2], False, True)
    with pytest.raises(RuntimeError,
                       match="derivative for lenetx::conv2d_relu_pool2d_backward is not implemented"):
        grads[1].sum().backward()


@pytest.mark.parametrize("max_pool", [False, True], ids=["avg", "max"])
def test_opcheck(max_pool):
    x = torch.randn(9, 3, 9, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    args = ([1, 1], [1, 0], [1, 1], 1, [2, 3], max_pool)
    torch.library.opcheck(ops.conv2d_relu_pool2d.default, (x, w, b, *args))
    out, mask = ops.conv2d_relu_pool2d(x, w, b, *args)
    for input_grad in (False, True):
        torch.library.opcheck(ops.conv2d_relu_pool2d_backward.default,
                              (torch.randn_like(out), mask, x.detach(), w.detach(), *args, input_grad))


def test_unbatched_input_matches_torch(generator):
    input = torch.randn(2, 10, 10, generator=generator)
    weight = torch.randn(3, 2, 3, 3, generator=generator)
    torch.testing.assert_close(LF.conv2d_relu_pool2d(input, weight, max_pool=True),
                               F.max_pool2d(F.relu(F.conv2d(input, weight)), 2))


@pytest.mark.parametrize("pool, fused", [
    (lnn.AvgPool2d(2), True),
    (lnn.MaxPool2d((2, 3)), True),
    (lnn.AvgPool2d(2, stride=1), False),
    (lnn.AvgPool2d(2, padding=1), False),
    (lnn.AvgPool2d(2, divisor_override=3), False),
    (lnn.MaxPool2d(3, ceil_mode=True), False),
    (lnn.MaxPool2d(2, dilation=2), False),
    (torch.nn.AvgPool2d(2), False),
], ids=["avg", "max-2x3", "overlapping", "padded", "divisor", "ceil", "dilated", "torch-layer"])
def test_conv_relu_pool_fuses_exactly_the_plain_poolings(pool, fused, monkeypatch, generator):
    calls = []
    real = LF.conv2d_relu_pool2d
    monkeypatch.setattr(LF, "conv2d_relu_pool2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    conv = lnn.Conv2d(2, 3, 3)
    input = torch.randn(2, 2, 11, 11, generator=generator)
    torch.testing.assert_close(lnn.conv_relu_pool(conv, pool, input), pool(F.relu(conv(input))))
    assert bool(calls) == fused


@pytest.mark.parametrize("conv, copies", [
    (lnn.Conv2d(1, 6, 5), False),
    (lnn.Conv2d(1, 6, 5, padding=(1, 0)), False),
    (lnn.Conv2d(1, 6, 5, padding="same"), True),
    (torch.nn.Conv2d(1, 6, 5), True),
], ids=["fused", "fused-padded", "fused-same", "torch-layer"])
def test_conv_relu_pool_input_padding_is_a_padded_input(conv, copies, monkeypatch, generator):
    # LeNet-5 pads 28x28 digits to 32x32: the fused operator takes that padding as its own.
    input = torch.randn(2, 1, 12, 13, generator=generator)
    pool = lnn.AvgPool2d(2)
    expected = pool(F.relu(conv(F.pad(input, [2] * 4))))
    pads = []
    real = F.pad
    monkeypatch.setattr(F, "pad", lambda *a, **k: pads.append(1) or real(*a, **k))
    torch.testing.assert_close(lnn.conv_relu_pool(conv, pool, input, input_padding=2), expected)
    assert bool(pads) == copies


@pytest.mark.parametrize("conv, fused", [(lnn.Conv2d(1, 16, 5), True), (lnn.Conv2d(2, 8, 4, groups=2), True),
                                         (lnn.Conv2d(6, 16, 5), True), (lnn.Conv2d(16, 32, 5), False),
                                         (lnn.Conv2d(7, 3, 5), False)])
def test_conv_relu_pool_fuses_only_convolutions_cheap_beside_their_output(conv, fused, monkeypatch, generator):
    # At most 150 multiply-adds per output: the LeNets' first layers and LeNet-5's second, not the
    # improved LeNet's second (400).
    calls = []
    real = LF.conv2d_relu_pool2d
    monkeypatch.setattr(LF, "conv2d_relu_pool2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    pool = lnn.MaxPool2d(2)
    input = torch.randn(2, conv.in_channels, 12, 12, generator=generator)
    torch.testing.assert_close(lnn.conv_relu_pool(conv, pool, input), pool(F.relu(conv(input))))
    assert bool(calls) == fused


def test_torch_compile_of_a_model_with_the_fused_operator_matches_eager():
    # LeNet-5 in training mode: the fused operator's fake kernels and its backward in the graph.
    torch.manual_seed(0)
    model = models.create("lenet5", num_classes=10, in_channels=1, backend="lenetx", image_size=28)
    assert_compiled_matches_eager(model, torch.randn(3, 1, 28, 28))


@pytest.mark.parametrize("call, message", [
    (lambda x, w: ops.conv2d_relu_pool2d(x, w, None, [1, 1], [0, 0], [1, 1], 1, [0, 2], False),
     r"lenetx.conv2d_relu_pool2d: pool_size must be positive, but got pool_size=\[0, 2\]"),
    (lambda x, w: ops.conv2d_relu_pool2d(x, w, None, [1, 1], [0, 0], [1, 1], 1, [7, 2], False),
     r"lenetx.conv2d_relu_pool2d: pool_size=\[7, 2\] is larger than the convolution's output \(6 x 6\)"),
    (lambda x, w: ops.conv2d_relu_pool2d(x, w[:, :2], None, [1, 1], [0, 0], [1, 1], 1, [2, 2], False),
     r"lenetx.conv2d_relu_pool2d: expected input with 2 channels"),
    (lambda x, w: ops.conv2d_relu_pool2d_backward(torch.ones(2, 4, 3, 3), torch.ones(2, 4, 6, 6), x, w,
                                                  [1, 1], [0, 0], [1, 1], 1, [2, 2], False, True),
     r"lenetx.conv2d_relu_pool2d_backward: expected a uint8 mask on cpu, but got mask of dtype Float"),
    (lambda x, w: ops.conv2d_relu_pool2d_backward(torch.ones(2, 4, 3, 3), torch.ones(2, 4, 5, 6, dtype=torch.uint8),
                                                  x, w, [1, 1], [0, 0], [1, 1], 1, [2, 2], False, True),
     r"expected mask of size \[2, 4, 6, 6\] \(the convolution's output\), but got mask of size \[2, 4, 5, 6\]"),
    (lambda x, w: ops.conv2d_relu_pool2d_backward(torch.ones(2, 4, 2, 3), torch.ones(2, 4, 6, 6, dtype=torch.uint8),
                                                  x, w, [1, 1], [0, 0], [1, 1], 1, [2, 2], False, True),
     r"expected grad_output of size \[2, 4, 3, 3\], but got grad_output of size \[2, 4, 2, 3\]"),
], ids=["pool-size", "pool-too-large", "channels", "mask-dtype", "mask-shape", "grad-output-shape"])
def test_bad_arguments_raise_naming_the_parameter_and_value(call, message):
    with pytest.raises(RuntimeError, match=message):
        call(torch.ones(2, 3, 8, 8), torch.ones(4, 3, 3, 3))

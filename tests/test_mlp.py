"""The fully connected stack (lenetx.functional.mlp and lenetx.nn.conv_relu_mlp) against torch's
linear and relu layer by layer: outputs, every gradient, determinism, opcheck, the errors it
raises, and LeNet-5's classifier on it."""

import pytest
import torch
import torch.nn.functional as F

import lenetx
import lenetx.functional as LF
import lenetx.nn as lnn
from lenetx import models

from helpers import assert_matches_torch

ops = torch.ops.lenetx


def torch_reference(input, weights, biases):
    for layer, (weight, bias) in enumerate(zip(weights, biases)):
        input = F.linear(input if layer == 0 else F.relu(input), weight, bias)
    return input


def layer_tensors(widths, with_bias, dtype, generator):
    weights = [torch.randn(out, in_, dtype=dtype, generator=generator) / in_ ** 0.5
               for in_, out in zip(widths, widths[1:])]
    biases = [torch.randn(w.shape[0], dtype=dtype, generator=generator) if has else None
              for w, has in zip(weights, with_bias)]
    return weights, biases


def check_against_torch(input, weights, biases, dtype, generator):
    layers = len(weights)
    bias_at = [i for i, b in enumerate(biases) if b is not None]

    def split(tensors):
        ws, bs = list(tensors[1:1 + layers]), [None] * layers
        for i, b in zip(bias_at, tensors[1 + layers:]):
            bs[i] = b
        return tensors[0], ws, bs

    assert_matches_torch(lambda *t: LF.mlp(*split(t)), lambda *t: torch_reference(*split(t)),
                         [input, *weights, *(b for b in biases if b is not None)], dtype, generator)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", [1, 3, 128])
@pytest.mark.parametrize("widths, with_bias", [
    ([400, 120, 84, 10], [True, True, True]),
    ([7, 5], [True]),
    ([9, 17, 3], [False, False]),
    ([5, 33, 1, 6, 2], [False, True, True, False]),
], ids=["lenet5", "one-layer", "no-bias", "mixed"])
def test_matches_torch(widths, with_bias, rows, dtype, generator):
    weights, biases = layer_tensors(widths, with_bias, dtype, generator)
    input = torch.randn(rows, widths[0], dtype=dtype, generator=generator)
    check_against_torch(input, weights, biases, dtype, generator)


@pytest.mark.parametrize("shape", [(6,), (2, 3, 6), (0, 6)], ids=["unbatched", "3-D", "empty"])
def test_input_dimensions_as_torch_linear(shape, generator):
    weights, biases = layer_tensors([6, 4, 3], [True, True], torch.float64, generator)
    input = torch.randn(*shape, dtype=torch.float64, generator=generator)
    check_against_torch(input, weights, biases, torch.float64, generator)


def test_transposed_input_and_weight_match_torch(generator):
    weights, biases = layer_tensors([7, 5, 3], [True, False], torch.float64, generator)
    input = torch.randn(12, 7, dtype=torch.float64, generator=generator).t().contiguous().t()
    second = weights[1].t().contiguous().t()
    assert not (input.is_contiguous() or second.is_contiguous())
    check_against_torch(input, [weights[0], second], biases, torch.float64, generator)


def gradcheck_tensors(generator):
    weights, biases = layer_tensors([5, 4, 3, 2], [True, False, True], torch.float64, generator)
    return [t.requires_grad_() for t in [torch.randn(3, 5, dtype=torch.float64, generator=generator),
                                         *weights, biases[0], biases[2]]]


def stack(x, w0, w1, w2, b0, b2):
    return LF.mlp(x, [w0, w1, w2], [b0, None, b2])


def test_gradcheck(generator):
    assert torch.autograd.gradcheck(stack, gradcheck_tensors(generator))


def test_gradgradcheck(generator):
    assert torch.autograd.gradgradcheck(stack, gradcheck_tensors(generator))


def test_second_derivatives_match_torch(generator):
    # Under create_graph the backward differentiates torch's linear layers with the forward's own
    # ReLU pattern: its first derivatives are the fused backward's, its second torch's.
    tensors = gradcheck_tensors(generator)

    def gradients(fn, create_graph=True):
        x, w0, w1, w2, b0, b2 = tensors
        first = torch.autograd.grad(fn(x, [w0, w1, w2], [b0, None, b2]).sin().sum(), tensors,
                                    create_graph=create_graph)
        if not create_graph:
            return first, ()
        return first, torch.autograd.grad(sum(g.square().sum() for g in first), tensors)

    plain, ours, theirs = gradients(LF.mlp, create_graph=False), gradients(LF.mlp), gradients(torch_reference)
    for a, b in zip(ours[0], plain[0]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    for a, b in zip(ours[0] + ours[1], theirs[0] + theirs[1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_relu_and_its_gradient_treat_nan_as_torch(generator):
    # relu(NaN) is NaN, and relu's backward lets the gradient through a NaN.
    weights, biases = layer_tensors([4, 5, 3], [True, True], torch.float64, generator)
    input = torch.randn(3, 4, dtype=torch.float64, generator=generator)
    input[1, 2] = float("nan")
    leaves = [t.clone().requires_grad_() for t in (input, *weights, *biases)]
    ours = LF.mlp(leaves[0], leaves[1:3], leaves[3:])
    reference_leaves = [t.clone().requires_grad_() for t in (input, *weights, *biases)]
    theirs = torch_reference(reference_leaves[0], reference_leaves[1:3], reference_leaves[3:])
    torch.testing.assert_close(ours, theirs, equal_nan=True)
    upstream = torch.randn(3, 3, dtype=torch.float64, generator=generator)
    ours.backward(upstream)
    theirs.backward(upstream)
    for a, b in zip(leaves, reference_leaves):
        torch.testing.assert_close(a.grad, b.grad, equal_nan=True)


def test_results_are_bit_identical_and_independent_of_the_thread_count(generator):
    weights, biases = layer_tensors([400, 120, 84, 10], [True] * 3, torch.float32, generator)
    leaves = [t.requires_grad_() for t in (torch.randn(37, 400, generator=generator), *weights, *biases)]
    upstream = torch.randn(37, 10, generator=generator)
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (1, 2, 3, 2):
            torch.set_num_threads(count)
            out = LF.mlp(leaves[0], leaves[1:4], leaves[4:])
            runs.append((out, *torch.autograd.grad(out, leaves, upstream)))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert torch.equal(a, b)


def test_backward_of_an_empty_batch_gives_zero_gradients_in_reused_memory():
    # As test_conv2d's for grad_weight: the allocations the results are likely to get hold NaN.
    weights = [torch.randn(120, 400), torch.randn(10, 120)]
    out, hidden = ops.mlp(torch.randn(0, 400), weights, [None, None])
    for _ in range(3):
        poison = [torch.full_like(w, float("nan")) for w in weights] + [torch.full((120,), float("nan"))]
        del poison
        grad_input, grad_weights, grad_biases = ops.mlp_backward(torch.randn(0, 10), torch.randn(0, 400),
                                                                 weights, hidden, True)
        assert grad_input.shape == (0, 400)
        for grad, weight in zip(grad_weights, weights):
            assert torch.equal(grad, torch.zeros_like(weight))
        for grad, weight in zip(grad_biases, weights):
            assert torch.equal(grad, torch.zeros(weight.shape[0]))


def test_backward_without_input_grad_returns_an_empty_grad_input():
    weights = [torch.ones(4, 3), torch.ones(2, 4)]
    _, hidden = ops.mlp(torch.ones(5, 3), weights, [None, None])
    grad_input, grad_weights, grad_biases = ops.mlp_backward(torch.ones(5, 2), torch.ones(5, 3), weights,
                                                             hidden, False)
    assert grad_input.shape == (0,)
    assert [g.shape for g in grad_weights] == [(4, 3), (2, 4)] and [g.shape for g in grad_biases] == [(4,), (2,)]


def test_autograd_computes_only_what_is_asked_and_hidden_outputs_take_no_gradient(generator):
    weights, biases = layer_tensors([5, 4, 3], [True, True], torch.float32, generator)
    weights[1].requires_grad_()
    output, hidden = ops.mlp(torch.randn(2, 5, generator=generator), weights, biases)
    (grad,) = torch.autograd.grad(output.sum(), weights[1])
    assert grad.shape == (3, 4)
    assert not hidden[0].requires_grad


def opcheck_samples():
    def t(*shape, dtype=torch.float32):
        return torch.randn(*shape, dtype=dtype).requires_grad_()

    weights = [torch.randn(4, 6), torch.randn(3, 4)]
    _, hidden = ops.mlp(torch.randn(5, 6), weights, [None, None])
    return [
        ("mlp", (t(5, 6), [t(4, 6), t(3, 4)], [t(4), t(3)])),
        ("mlp", (t(2, 3, dtype=torch.float64), [t(4, 3, dtype=torch.float64), t(2, 4, dtype=torch.float64),
                                                t(1, 2, dtype=torch.float64)],
                 [None, t(2, dtype=torch.float64), None])),
        ("mlp_backward", (torch.randn(5, 3), torch.randn(5, 6), weights, hidden, True)),
        ("mlp_backward", (torch.randn(5, 3), torch.randn(5, 6), weights, hidden, False)),
    ]


@pytest.mark.parametrize("name, args", opcheck_samples(), ids=["mlp", "mlp-float64-no-bias", "backward",
                                                                "backward-no-input-grad"])
def test_opcheck(name, args):
    torch.library.opcheck(getattr(ops, name).default, args)


@pytest.mark.parametrize("call, message", [
    (lambda x, w: ops.mlp(x[0], w, [None, None]),
     r"lenetx.mlp: expected a 2-D input \(N, in_features\), but got input of size \[6\]"),
    (lambda x, w: ops.mlp(x, [], []), r"lenetx.mlp: expected at least one weight, but got none"),
    (lambda x, w: ops.mlp(x, w, [None]),
     r"lenetx.mlp: expected one bias \(or None\) per weight, but got 2 weights and 1 biases"),
    (lambda x, w: LF.mlp(x, w, [None]),
     r"lenetx.mlp: expected one bias \(or None\) per weight, but got 2 weights and 1 biases"),
    (lambda x, w: ops.mlp(x[:, :5], w, [None, None]),
     r"lenetx.mlp: weights\[0\] of size \[4, 6\] takes 6 in_features, but got input of size \[3, 5\]"),
    (lambda x, w: ops.mlp(x, [w[0], w[1][:, :3]], [None, None]),
     r"lenetx.mlp: weights\[1\] of size \[2, 3\] takes 3 in_features, but weights\[0\] of size \[4, 6\] gives 4"),
    (lambda x, w: ops.mlp(x, [w[0], w[1][0]], [None, None]),
     r"lenetx.mlp: expected a 2-D weights\[1\] \(out_features, in_features\), but got weights\[1\] of size \[4\]"),
    (lambda x, w: ops.mlp(x, w, [torch.ones(5), None]),
     r"lenetx.mlp: expected biases\[0\] of size \[4\], but got biases\[0\] of size \[5\]"),
    (lambda x, w: ops.mlp(x, [w[0].double(), w[1]], [None, None]),
     r"lenetx.mlp: expected weights\[0\] with the same dtype as input \(Float\), but got weights\[0\] of dtype Double"),
    (lambda x, w: ops.mlp(x.int(), w, [None, None]), r"lenetx.mlp: unsupported dtype Int"),
    (lambda x, w: LF.mlp(torch.tensor(1.0), w),
     r"lenetx.mlp: expected an input of at least 1 dimension, but got a 0-D input"),
    (lambda x, w: ops.mlp_backward(torch.ones(3, 3), x, w, [torch.ones(3, 4)], True),
     r"lenetx.mlp_backward: expected grad_output of size \[3, 2\], but got grad_output of size \[3, 3\]"),
    (lambda x, w: ops.mlp_backward(torch.ones(3, 2), x, w, [], True),
     r"lenetx.mlp_backward: expected 1 hidden layers' outputs \(one per weight but the last\), but got 0"),
    (lambda x, w: ops.mlp_backward(torch.ones(3, 2), x, w, [torch.ones(2, 4)], True),
     r"lenetx.mlp_backward: expected hidden\[0\] of size \[3, 4\], but got hidden\[0\] of size \[2, 4\]"),
], ids=["input-dim", "no-weights", "bias-count", "bias-count-python", "input-width", "layer-width",
        "weight-dim", "bias-size", "weight-dtype", "int-input", "0-d-input", "grad-output-shape", "hidden-count",
        "hidden-shape"])
def test_bad_arguments_raise_naming_the_parameter_and_value(call, message):
    with pytest.raises(RuntimeError, match=message):
        call(torch.ones(3, 6), [torch.ones(4, 6), torch.ones(2, 4)])


@pytest.mark.parametrize("conv, size, fused", [
    (lnn.Conv2d(16, 12, 5), 5, True),
    (lnn.Conv2d(16, 12, (5, 3)), (5, 3), True),
    (lnn.Conv2d(16, 12, 5, padding="valid"), 5, True),
    (lnn.Conv2d(16, 12, 5), 6, False),
    (lnn.Conv2d(16, 12, 5, padding=1), 3, False),
    (lnn.Conv2d(16, 12, 3, dilation=2), 5, False),
    (lnn.Conv2d(16, 12, 5, groups=4), 5, False),
    (torch.nn.Conv2d(16, 12, 5), 5, False),
], ids=["lenet5-conv3", "rectangular", "valid", "larger-input", "padded", "dilated", "groups", "torch-layer"])
def test_conv_relu_mlp_fuses_exactly_convolutions_that_are_fully_connected(conv, size, fused, monkeypatch,
                                                                            generator):
    calls = []
    real = LF.mlp
    monkeypatch.setattr(LF, "mlp", lambda *a, **k: calls.append(1) or real(*a, **k))
    height, width = (size, size) if isinstance(size, int) else size
    input = torch.randn(2, 16, height, width, generator=generator)
    features = F.relu(conv(input)).flatten(1)
    linears = (torch.nn.Linear(features.shape[1], 7), torch.nn.Linear(7, 3))
    expected = linears[1](F.relu(linears[0](features)))
    torch.testing.assert_close(lnn.conv_relu_mlp(conv, linears, input), expected)
    assert bool(calls) == fused


def test_lenet5_larger_than_32x32_runs_its_classifier_layer_by_layer(generator):
    # conv3's output is 2x2 there, not one pixel: the same network on both backends.
    torch.manual_seed(0)
    ours = models.create("lenet5", image_size=36)
    theirs = models.create("lenet5", image_size=36, backend="torch")
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 1, 36, 36, generator=generator)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


def test_lenet5_gradients_match_the_torch_backend(generator):
    torch.manual_seed(0)
    ours, theirs = models.create("lenet5"), models.create("lenet5", backend="torch")
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 1, 28, 28, generator=generator)
    for model in (ours, theirs):
        F.cross_entropy(model(x), torch.arange(5)).backward()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)


def classifier_sequential(flatten=torch.nn.Flatten(), between=torch.nn.ReLU()):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(16, 12, 5), torch.nn.ReLU(), flatten, torch.nn.Linear(12, 9),
                               between, torch.nn.Linear(9, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3),
                               torch.nn.ReLU())


@pytest.mark.parametrize("sequential, hooked, fused", [
    (classifier_sequential(), False, True),
    (classifier_sequential(), True, False),
    (classifier_sequential(flatten=torch.nn.Flatten(0)), False, False),
    (classifier_sequential(between=torch.nn.Dropout(0.0)), False, True),
], ids=["lenet5-classifier", "hooked", "flatten-from-0", "dropout-between"])
def test_converted_sequential_fuses_a_convolution_and_its_classifier(sequential, hooked, fused, monkeypatch,
                                                                     generator):
    # Dropout between the Linear layers ends the fused run after the first: conv, ReLU, Flatten,
    # Linear, then module by module. One image, which a Flatten from dimension 0 also takes.
    calls = []
    real = LF.mlp
    monkeypatch.setattr(LF, "mlp", lambda x, weights, biases: calls.append(len(weights)) or real(x, weights, biases))
    converted = lenetx.convert(sequential)
    if hooked:
        converted[3].register_forward_hook(lambda *args: None)
    input = torch.randn(1, 16, 5, 5, generator=generator)
    torch.testing.assert_close(converted(input), sequential(input))
    assert calls == ([4] if fused and isinstance(sequential[4], torch.nn.ReLU) else [2] if fused else [])

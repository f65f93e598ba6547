import random

import pytest
import torch
import torch.nn.functional as F
from helpers import LAYOUTS, assert_matches_torch, make_input

import lenetx.functional as LF

DTYPES = (torch.float32, torch.float64)


def pool_cases(count, seed, dilated):
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        kernel = rng.choice([1, 2, 3, (2, 3), (3, 1), 4])
        k = (kernel, kernel) if isinstance(kernel, int) else kernel
        padding = rng.choice([0, 1, (1, 0), (0, 1)])
        p = (padding, padding) if isinstance(padding, int) else padding
        padding = tuple(min(pi, ki // 2) for pi, ki in zip(p, k))
        dilation = rng.choice([1, 2, (1, 2)]) if dilated else 1
        d = (dilation, dilation) if isinstance(dilation, int) else dilation
        size = tuple(max(rng.randint(1, 12), di * (ki - 1) + 1 - 2 * pi)
                     for ki, pi, di in zip(k, padding, d))
        cases.append(dict(
            shape=(rng.choice([0, 1, 2]), rng.choice([1, 3]), *size), kernel_size=kernel,
            stride=rng.choice([None, 1, 2, (2, 1), 3, 5]), padding=padding, dilation=dilation,
            ceil_mode=rng.random() < 0.5, layout=LAYOUTS[i % 3], dtype=DTYPES[i % 2],
        ))
    return cases


def _case_id(case):
    return "-".join(f"{k}{v}" for k, v in case.items()).replace(" ", "").replace("torch.", "")


def avg_cases():
    cases = pool_cases(120, 7, dilated=False)
    rng = random.Random(8)
    for case in cases:
        del case["dilation"]
        case["count_include_pad"] = rng.random() < 0.5
        case["divisor_override"] = rng.choice([None, None, 1, 3, -2])
    return cases


@pytest.mark.parametrize("case", avg_cases(), ids=_case_id)
def test_avg_pool2d_matches_torch(case, generator):
    case = dict(case)
    input = make_input(case.pop("shape"), case["dtype"], case.pop("layout"), generator)
    dtype = case.pop("dtype")
    assert_matches_torch(lambda x: LF.avg_pool2d(x, **case), lambda x: F.avg_pool2d(x, **case),
                         [input], dtype, generator)


def has_empty_windows(input, case):
    # From finite input, -inf comes only from a window that holds no input element; torch's
    # backward gives such windows' gradient to an unrelated element (test_max_pool2d_windows_of_padding_alone).
    return bool(torch.isinf(F.max_pool2d(input, **case)).any())


@pytest.mark.parametrize("case", pool_cases(150, 9, dilated=True), ids=_case_id)
def test_max_pool2d_matches_torch_with_identical_indices(case, generator):
    case = dict(case)
    input = make_input(case.pop("shape"), case["dtype"], case.pop("layout"), generator)
    dtype = case.pop("dtype")
    assert_matches_torch(lambda x: LF.max_pool2d(x, **case, return_indices=True),
                         lambda x: F.max_pool2d(x, **case, return_indices=True),
                         [input], dtype, generator, grad=not has_empty_windows(input, case))
    # assert_close already compared the int64 indices exactly; ties must resolve like torch too.
    ties = torch.randint(0, 3, input.shape, generator=generator).to(dtype)
    assert torch.equal(LF.max_pool2d(ties, **case, return_indices=True)[1],
                       F.max_pool2d(ties, **case, return_indices=True)[1])


def test_max_pool2d_propagates_nan_like_torch(generator):
    input = torch.randn(2, 3, 9, 9, generator=generator)
    input[0, 0, 1, 1] = input[0, 0, 2, 2] = input[1, 2, 8, 8] = float("nan")
    input[0, 1, 4, 4] = input[0, 1, 4, 5] = input[0, 1, 5, 5] = float("nan")  # three in one 2x2 window
    input[1, 1] = float("-inf")
    for kwargs in (dict(kernel_size=3), dict(kernel_size=3, stride=1, padding=1, ceil_mode=True),
                   dict(kernel_size=2, dilation=2), dict(kernel_size=2), dict(kernel_size=2, ceil_mode=True)):
        ours = LF.max_pool2d(input, return_indices=True, **kwargs)
        theirs = F.max_pool2d(input, return_indices=True, **kwargs)
        torch.testing.assert_close(ours[0], theirs[0], equal_nan=True)
        assert torch.equal(ours[1], theirs[1])


# (shape, (kernel_size, stride, padding, dilation, ceil_mode))
@pytest.mark.parametrize("shape, pooling", [
    # Each window's rows -1 and 2: the index torch reports, 2 * 5 + column, is past the plane.
    ((2, 3, 2, 5), ([2, 2], [1, 1], [1, 1], [3, 3], False)),
    # Each window's columns -1 and 1 of a one-column input: the index names the next row's element.
    ((1, 2, 8, 1), ([2, 2], [1, 1], [0, 1], [2, 2], True)),
    ((3, 2, 2, 24), ([2, 4], [3, 2], [1, 2], [3, 1], False)),
])
@pytest.mark.parametrize("relu_input", [False, True])
def test_max_pool2d_windows_of_padding_alone(shape, pooling, relu_input, generator):
    """A dilated window that starts in the padding can step over the whole input: its output is
    -inf with torch's index, past its last tap, and it gives no gradient, where torch's backward
    adds it at that index (pytorch/pytorch#114216: another element, or memory past the plane)."""
    input = torch.randn(shape, dtype=torch.float64, generator=generator, requires_grad=True)
    output, indices = LF.max_pool2d(input, *pooling, return_indices=True, relu_input=relu_input)
    theirs, their_indices = F.max_pool2d(input.detach(), *pooling, return_indices=True)
    assert torch.equal(output, theirs) and torch.equal(indices, their_indices)
    assert torch.isinf(output).all()
    upstream = torch.randn(output.shape, dtype=torch.float64, generator=generator, requires_grad=True)
    (grad,) = torch.autograd.grad(output, input, upstream, create_graph=True)
    assert torch.equal(grad, torch.zeros_like(input))
    (along_upstream,) = torch.autograd.grad(grad, upstream, torch.randn_like(grad))
    assert torch.equal(along_upstream, torch.zeros_like(upstream))
    # The backward operator takes any index at such a window: none of them has a tap to name.
    hand_made = torch.full_like(indices, -7)
    grad_input = torch.ops.lenetx.max_pool2d_backward(upstream.detach(), input.detach(), hand_made, *pooling)
    assert torch.equal(grad_input, torch.zeros_like(input))


# Rows of 14 windows (blocks of 8 that overlap), of 7 and 15, of 3 (fewer than a block), of one.
@pytest.mark.parametrize("shape", [(3, 5, 28, 28), (2, 4, 14, 30), (2, 3, 9, 7), (1, 2, 2, 2)])
def test_max_pool2d_2x2_ties_match_torch(shape, generator):
    """The 2x2/stride-2 fast path: ties among few distinct values resolve to torch's index."""
    for dtype in DTYPES:
        ties = torch.randint(-1, 2, shape, generator=generator).to(dtype)
        assert torch.equal(LF.max_pool2d(ties, 2, return_indices=True)[1],
                           F.max_pool2d(ties, 2, return_indices=True)[1])
        ours = LF.max_pool2d(ties, 2, return_indices=True, relu_input=True)
        theirs = F.max_pool2d(F.relu(ties), 2, return_indices=True)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


ADAPTIVE_SIZES = [1, 2, 3, (5, 7), (4, None), (None, 2), (None, None), (0, 3), (13, 6), (1, 9)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("output_size", ADAPTIVE_SIZES, ids=str)
def test_adaptive_avg_pool2d_matches_torch(output_size, layout, dtype, generator):
    input = make_input((2, 3, 9, 11), dtype, layout, generator)
    assert_matches_torch(lambda x: LF.adaptive_avg_pool2d(x, output_size),
                         lambda x: F.adaptive_avg_pool2d(x, output_size), [input], dtype, generator)


@pytest.mark.parametrize("name, kwargs", [
    ("avg_pool2d", dict(kernel_size=3, stride=2, padding=1)),
    ("max_pool2d", dict(kernel_size=2)),
    ("adaptive_avg_pool2d", dict(output_size=(3, 2))),
])
def test_unbatched_and_empty_batch_inputs_match_torch(name, kwargs, generator):
    for shape in ((3, 8, 7), (0, 3, 8, 7)):
        input = torch.randn(shape, generator=generator)
        assert_matches_torch(lambda x: getattr(LF, name)(x, **kwargs),
                             lambda x: getattr(F, name)(x, **kwargs), [input], torch.float32, generator)


GRADCHECK_ARGUMENTS = [
    ("avg_pool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    ("avg_pool2d", dict(kernel_size=(2, 3), divisor_override=5)),
    ("avg_pool2d", dict(kernel_size=2, relu_input=True)),
    ("max_pool2d", dict(kernel_size=3, stride=2, padding=1, dilation=2)),
    ("max_pool2d", dict(kernel_size=2, ceil_mode=True, relu_input=True)),
    ("adaptive_avg_pool2d", dict(output_size=(3, 4))),
]


def gradcheck_input(generator):
    # Distinct values, so that no max-pool window has a tie that finite differences would split,
    # and none at relu's kink (0).
    input = (torch.randperm(2 * 3 * 9 * 8, generator=generator).to(torch.float64).view(2, 3, 9, 8) - 200.5) / 7
    return input.requires_grad_()


@pytest.mark.parametrize("name, kwargs", GRADCHECK_ARGUMENTS)
def test_gradcheck(name, kwargs, generator):
    assert torch.autograd.gradcheck(lambda x: getattr(LF, name)(x, **kwargs), (gradcheck_input(generator),))


@pytest.mark.parametrize("name, kwargs", GRADCHECK_ARGUMENTS)
def test_gradgradcheck(name, kwargs, generator):
    assert torch.autograd.gradgradcheck(lambda x: getattr(LF, name)(x, **kwargs), (gradcheck_input(generator),))


def test_results_are_bit_identical_from_run_to_run(generator):
    input = torch.randn(8, 6, 28, 28, generator=generator, requires_grad=True)
    upstream = torch.randn(8, 6, 14, 14, generator=generator)
    fns = [lambda x: LF.avg_pool2d(x, 2), lambda x: LF.max_pool2d(x, 2),
           lambda x: LF.adaptive_avg_pool2d(x, 14)]
    for fn in fns:
        runs = [(fn(input), *torch.autograd.grad(fn(input), input, upstream)) for _ in range(3)]
        for run in runs[1:]:
            assert all(torch.equal(a, b) for a, b in zip(runs[0], run))


@pytest.mark.parametrize("name, kwargs", [
    ("avg_pool2d", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ("max_pool2d", dict(kernel_size=3, stride=2, padding=1)),
    ("adaptive_avg_pool2d", dict(output_size=(3, 4))),
])
def test_second_derivatives_match_torch(name, kwargs, generator):
    # A gradient penalty: the gradient of |d loss / d input|^2, with the loss a smooth function
    # of the pooled values, so that the second derivative is not zero.
    input = gradcheck_input(generator)

    def penalty_gradient(pool):
        (grad_input,) = torch.autograd.grad(pool(input, **kwargs).sin().sum(), input, create_graph=True)
        return torch.autograd.grad(grad_input.square().sum(), input)[0]

    expected = penalty_gradient(getattr(F, name))
    assert expected.abs().sum() > 0
    torch.testing.assert_close(penalty_gradient(getattr(LF, name)), expected, rtol=1e-9, atol=1e-9)


def test_max_pool2d_backward_follows_indices_outside_their_windows(generator):
    # A 2x2 pooling writes each input's gradient once; indices that are not their window's own
    # (made by hand here) must still be scattered and summed as torch does.
    input = torch.randn(2, 3, 9, 7, generator=generator)
    grad_output = torch.randn(2, 3, 4, 3, generator=generator)
    indices = torch.randint(0, 9 * 7, (2, 3, 4, 3), generator=generator)
    indices[0, 0] = 0
    ours = torch.ops.lenetx.max_pool2d_backward(grad_output, input, indices, [2, 2], [2, 2], [0, 0],
                                                [1, 1], False)
    theirs = torch.ops.aten.max_pool2d_with_indices_backward(grad_output, input, [2, 2], [2, 2], [0, 0],
                                                             [1, 1], False, indices)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("case", avg_cases()[:40], ids=_case_id)
def test_avg_pool2d_of_relu_matches_torch(case, generator):
    case = dict(case)
    input = make_input(case.pop("shape"), case["dtype"], case.pop("layout"), generator)
    dtype = case.pop("dtype")
    assert_matches_torch(lambda x: LF.avg_pool2d(x, **case, relu_input=True),
                         lambda x: F.avg_pool2d(F.relu(x), **case), [input], dtype, generator)


@pytest.mark.parametrize("case", pool_cases(40, 10, dilated=True), ids=_case_id)
def test_max_pool2d_of_relu_matches_torch_with_identical_indices(case, generator):
    case = dict(case)
    input = make_input(case.pop("shape"), case["dtype"], case.pop("layout"), generator)
    dtype = case.pop("dtype")
    assert_matches_torch(lambda x: LF.max_pool2d(x, **case, return_indices=True, relu_input=True),
                         lambda x: F.max_pool2d(F.relu(x), **case, return_indices=True),
                         [input], dtype, generator, grad=not has_empty_windows(input, case))


@pytest.mark.parametrize("ours, theirs", [
    (lambda x: LF.avg_pool2d(x, 2, relu_input=True), lambda x: F.avg_pool2d(F.relu(x), 2)),
    (lambda x: LF.max_pool2d(x, 2, return_indices=True, relu_input=True),
     lambda x: F.max_pool2d(F.relu(x), 2, return_indices=True)),
], ids=["avg", "max"])
def test_pooling_of_relu_handles_zeros_infinities_and_nan_as_torch(ours, theirs, generator):
    # Windows of only non-positive values (all relu to 0: max pooling's index is the first),
    # -0.0, infinities and a NaN, which relu keeps and whose gradient relu's backward drops.
    input = torch.tensor([[[[-1.0, -2.0, 0.0, -0.0, float("inf"), 1.0],
                            [-3.0, -0.5, -0.0, 2.0, -float("inf"), float("nan")],
                            [0.5, -1.0, 3.0, 3.0, -4.0, -4.0],
                            [-1.0, 0.5, -2.0, 1.0, -5.0, -6.0]]]])
    assert_matches_torch(ours, theirs, [input], torch.float32, generator)


@pytest.mark.parametrize("size", [(10, 10), (9, 7)], ids=["tiled", "uncovered-row-and-column"])
@pytest.mark.parametrize("options", [
    dict(), dict(divisor_override=3), dict(ceil_mode=True), dict(relu_input=True),
], ids=["plain", "divisor", "ceil-inside", "relu"])
def test_avg_pool2d_2x2_tiles_match_torch(size, options, generator):
    # 2x2 windows at stride 2 without padding write each input's gradient once.
    options = dict(options)
    relu = options.pop("relu_input", False)
    input = torch.randn(3, 4, *size, generator=generator)
    assert_matches_torch(lambda x: LF.avg_pool2d(x, 2, **options, relu_input=relu),
                         lambda x: F.avg_pool2d(F.relu(x) if relu else x, 2, **options),
                         [input], torch.float32, generator)


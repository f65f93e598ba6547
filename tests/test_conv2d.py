import random

import pytest
import torch
import torch.nn.functional as F
from helpers import LAYOUTS, assert_matches_torch, make_input, tolerances

import lenetx
import lenetx.functional as LF

DTYPES = (torch.float32, torch.float64)


def generated_cases(count=150, seed=2024):
    """A seeded sample of the whole parameter space; every case is small enough to run in ms."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        depthwise = rng.random() < 0.2
        groups = rng.choice([2, 3, 4]) if depthwise else rng.choice([1, 1, 2, 3])
        in_per_group = 1 if depthwise else rng.choice([1, 2, 3])
        out_per_group = rng.choice([1, 2, 3])  # channel multiplier when depthwise
        kernel = rng.choice([(1, 1), (3, 3), (2, 3), (5, 5), (3, 1), (4, 2)])
        stride = rng.choice([1, 1, 2, (1, 3), (3, 2), 4])
        padding = rng.choice([0, 1, (2, 0), (0, 3)])
        dilation = rng.choice([1, 1, 2, (1, 2)])
        size = []
        for d in range(2):
            k, p = kernel[d], padding if isinstance(padding, int) else padding[d]
            dil = dilation if isinstance(dilation, int) else dilation[d]
            size.append(max(rng.randint(1, 11), dil * (k - 1) + 1 - 2 * p))
        cases.append(dict(
            batch=rng.choice([0, 1, 2, 3]), in_channels=groups * in_per_group,
            out_channels=groups * out_per_group, size=tuple(size), kernel=kernel, stride=stride,
            padding=padding, dilation=dilation, groups=groups, bias=rng.random() < 0.7,
            layout=LAYOUTS[i % 3], dtype=DTYPES[i % 2],
        ))
    return cases


EDGE_CASES = [
    dict(batch=2, in_channels=3, out_channels=4, size=(7, 5), kernel=(1, 1)),  # 1x1 kernel
    dict(batch=2, in_channels=2, out_channels=3, size=(5, 6), kernel=(5, 6)),  # kernel = input
    dict(batch=1, in_channels=4, out_channels=6, size=(5, 5), kernel=(5, 5), groups=2),  # one image
    dict(batch=3, in_channels=2, out_channels=2, size=(9, 11), kernel=(2, 2), stride=5),  # stride > kernel
    dict(batch=0, in_channels=3, out_channels=6, size=(8, 8), kernel=(3, 3)),  # empty batch
    dict(batch=0, in_channels=6, out_channels=16, size=(14, 14), kernel=(5, 5)),  # empty, row tiles
    dict(batch=0, in_channels=1, out_channels=6, size=(32, 32), kernel=(5, 5)),  # empty, padded rows
    dict(batch=1, in_channels=1, out_channels=6, size=(28, 28), kernel=(5, 5), padding=2),  # LeNet conv1
    dict(batch=2, in_channels=6, out_channels=16, size=(14, 14), kernel=(5, 5)),  # LeNet conv2
    dict(batch=2, in_channels=16, out_channels=32, size=(13, 13), kernel=(5, 5)),  # improved conv2
    dict(batch=1, in_channels=8, out_channels=8, size=(6, 6), kernel=(3, 3), padding=1, groups=8),
    dict(batch=2, in_channels=4, out_channels=12, size=(7, 7), kernel=(3, 3), groups=4, stride=2),
    dict(batch=1, in_channels=3, out_channels=5, size=(1, 1), kernel=(3, 3), padding=1),  # 1x1 image
    dict(batch=1, in_channels=3, out_channels=5, size=(13, 3), kernel=(3, 2), padding=(1, 0),
         stride=(2, 1), dilation=(3, 1)),
    # Larger than one register tile in every direction: several channel blocks, position runs,
    # image blocks (fully connected) and output-channel vectors (grad_weight).
    dict(batch=19, in_channels=5, out_channels=37, size=(9, 12), kernel=(3, 3), padding=1),
    dict(batch=17, in_channels=6, out_channels=40, size=(5, 5), kernel=(5, 5), groups=2),
    dict(batch=10, in_channels=4, out_channels=70, size=(4, 3), kernel=(4, 3)),
    # Kernels that cover the whole input (products over the tensors in place): several row
    # blocks, column panels and depth blocks (LeNet-5's conv3 at batch 200); groups, with a
    # stride and dilation that a 1x1 kernel on a 1x1 input never uses.
    dict(batch=200, in_channels=16, out_channels=120, size=(5, 5), kernel=(5, 5)),
    dict(batch=3, in_channels=4, out_channels=6, size=(1, 1), kernel=(1, 1), stride=2, dilation=3,
         groups=2),
    dict(batch=3, in_channels=2, out_channels=4, size=(10, 9), kernel=(3, 3), padding=2, dilation=2),
    dict(batch=9, in_channels=3, out_channels=6, size=(30, 33), kernel=(5, 5)),
    dict(batch=3, in_channels=40, out_channels=20, size=(9, 8), kernel=(3, 3), padding=1,
         stride=(1, 2), groups=2),  # grad_weight over channels-last input, groups, stride
    dict(batch=5, in_channels=60, out_channels=9, size=(4, 4), kernel=(3, 3), padding=1),  # few pixels, depth > 512
    # Blocked matrix products: several row blocks, column panels and depth blocks, with channel
    # runs that do not fill a depth block; with groups, stride, dilation and uneven padding.
    dict(batch=13, in_channels=70, out_channels=100, size=(8, 8), kernel=(3, 3), padding=1),
    dict(batch=7, in_channels=36, out_channels=50, size=(11, 9), kernel=(3, 3), padding=(2, 1),
         stride=2, dilation=(2, 1), groups=2),
    dict(batch=4, in_channels=24, out_channels=30, size=(8, 8), kernel=(3, 3), padding=1, groups=3),
    # Pixel tiles: tiles that span output rows and images, a part-filled last tile and channel
    # panel; then a stride-1 grad_input (a correlation) with many input channels.
    dict(batch=3, in_channels=6, out_channels=90, size=(11, 10), kernel=(3, 2), padding=(1, 2),
         stride=(2, 1), dilation=(1, 2), groups=2),
    dict(batch=2, in_channels=40, out_channels=8, size=(10, 9), kernel=(3, 3), padding=1),
    # Pixel tiles over chunks of images, the last one part-filled (a 2-wide kernel: 3- and 5-wide
    # ones take the row tiles).
    dict(batch=5, in_channels=4, out_channels=64, size=(20, 23), kernel=(3, 2), padding=1,
         stride=(2, 1), groups=2),
    # Row tiles: part-filled last tiles of a row, with stride, dilation and groups across rows;
    # then a stride-1 grad_input through them; then several vectors of output channels per
    # group, the last part-filled.
    dict(batch=2, in_channels=3, out_channels=13, size=(11, 23), kernel=(5, 5), padding=2,
         stride=(3, 1), dilation=(2, 1)),
    dict(batch=3, in_channels=4, out_channels=14, size=(13, 19), kernel=(3, 3), padding=(0, 1),
         stride=(2, 1), dilation=(2, 1), groups=2),
    dict(batch=2, in_channels=12, out_channels=20, size=(8, 9), kernel=(3, 3), padding=1),
    dict(batch=3, in_channels=6, out_channels=40, size=(9, 11), kernel=(5, 5), padding=2, groups=2),
    # grad_weight as dot products along padded rows: a part-filled last chunk of images, tap
    # blocks of uneven size, channel blocks that run past a group's channels and, in the last
    # image, past the last channel.
    dict(batch=11, in_channels=4, out_channels=14, size=(12, 17), kernel=(3, 3), padding=(1, 2),
         dilation=(2, 1), groups=2),
    dict(batch=9, in_channels=1, out_channels=7, size=(20, 21), kernel=(5, 4), padding=1),
    dict(batch=5, in_channels=1, out_channels=20, size=(14, 15), kernel=(3, 3), padding=1),
    # grad_weight with output channels along the lanes and weight taps as rows: a stride, a
    # dilation down the kernel, a part-filled chunk of images and a part-filled channel panel.
    dict(batch=9, in_channels=6, out_channels=24, size=(21, 19), kernel=(3, 3), padding=1, stride=2,
         dilation=(2, 1)),
    # Winograd's F(4x4, 3x3): an image in several bands of tile rows, part-filled tiles at the
    # bottom and right, two panels of output channels, the last part-filled; then F(4x4, 5x5)
    # with input channels that do not fill a vector and three vectors of output channels.
    dict(batch=3, in_channels=64, out_channels=100, size=(30, 27), kernel=(3, 3), padding=1),
    dict(batch=2, in_channels=9, out_channels=37, size=(15, 12), kernel=(5, 5), padding=2),
    # Winograd's grad_weight over several chunks of images, the last part-filled, each image 4
    # tiles, so that a product runs over several images.
    dict(batch=11, in_channels=12, out_channels=20, size=(8, 8), kernel=(3, 3), padding=1),
    dict(batch=11, in_channels=12, out_channels=20, size=(9, 8), kernel=(5, 5), padding=2),
    # grad_input as a transposed convolution (input of 1.5 times the output's pixels or more):
    # input rows of several vectors, padding and dilation along them; then groups, padding down
    # and kernel rows past the input's edge. Outputs of more than kVectorRegisters / 4 vectors
    # (these two on AVX2) take tiles of two vectors over blocks of the output, the last
    # part-filled.
    dict(batch=3, in_channels=5, out_channels=7, size=(6, 37), kernel=(3, 5), padding=(0, 1),
         dilation=(1, 3)),
    dict(batch=4, in_channels=6, out_channels=9, size=(11, 12), kernel=(5, 5), padding=(1, 0),
         groups=3),
    # The same in float64 too, dilated down the kernel.
    dict(batch=2, in_channels=3, out_channels=5, size=(9, 10), kernel=(3, 4), padding=(1, 0),
         dilation=(2, 1)),
    # Input rows narrower than a vector, so that a row's vector covers the rows after it.
    dict(batch=3, in_channels=2, out_channels=4, size=(30, 5), kernel=(3, 3)),
    # grad_weight over taps as rows with three kernel rows in all (one tile of them, the improved
    # LeNet's conv1): float32 with 16 output channels over two chunks of images, the last
    # part-filled, with a stride and a dilation down the kernel; float64 with 8, a 1x3 kernel over
    # three input channels.
    dict(batch=9, in_channels=1, out_channels=16, size=(13, 17), kernel=(3, 3), padding=1,
         stride=(2, 1), dilation=(2, 1)),
    dict(batch=3, in_channels=3, out_channels=8, size=(10, 11), kernel=(1, 3), padding=(0, 1)),
]


def case_tensors(case, generator, device="cpu"):
    """A case's input, weight and bias (or None), and its convolution's keyword arguments."""
    dtype = case.get("dtype", torch.float32)
    groups = case.get("groups", 1)
    input = make_input((case["batch"], case["in_channels"], *case["size"]), dtype,
                       case.get("layout", "contiguous"), generator, device)
    weight = torch.randn(case["out_channels"], case["in_channels"] // groups, *case["kernel"],
                         dtype=dtype, generator=generator).to(device)
    bias = (torch.randn(case["out_channels"], dtype=dtype, generator=generator).to(device)
            if case.get("bias", True) else None)
    kwargs = {k: case[k] for k in ("stride", "padding", "dilation") if k in case}
    kwargs["groups"] = groups
    return input, weight, bias, kwargs


def case_id(c):
    return (f"n{c['batch']}c{c['in_channels']}o{c['out_channels']}s{c['size']}k{c['kernel']}st{c['stride']}"
            f"p{c['padding']}d{c['dilation']}g{c['groups']}{'b' if c['bias'] else ''}-{c['layout']}-"
            f"{str(c['dtype'])[6:]}").replace(" ", "")


def run_case(case, generator, device="cpu"):
    dtype = case.get("dtype", torch.float32)
    input, weight, bias, kwargs = case_tensors(case, generator, device)
    assert_matches_torch(lambda x, w, b: LF.conv2d(x, w, b, **kwargs),
                         lambda x, w, b: F.conv2d(x, w, b, **kwargs),
                         [input, weight, bias], dtype, generator)


@pytest.mark.parametrize("case", generated_cases(), ids=case_id)
def test_matches_torch_on_generated_grid(case, generator):
    run_case(case, generator)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", EDGE_CASES, ids=range(len(EDGE_CASES)))
def test_matches_torch_on_edge_cases(case, dtype, generator):
    run_case(dict(case, dtype=dtype), generator)


@pytest.mark.parametrize("kernel", [(3, 3), (4, 4), (2, 5)])
@pytest.mark.parametrize("dilation", [1, 2, (1, 3)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_padding_strings_match_torch(kernel, dilation, padding, generator):
    input = torch.randn(2, 3, 9, 16, generator=generator)
    weight = torch.randn(4, 3, *kernel, generator=generator)
    assert_matches_torch(lambda x, w: LF.conv2d(x, w, padding=padding, dilation=dilation),
                         lambda x, w: F.conv2d(x, w, padding=padding, dilation=dilation),
                         [input, weight], torch.float32, generator)


def test_unbatched_input_matches_torch(generator):
    input = torch.randn(3, 8, 8, generator=generator)
    weight = torch.randn(5, 3, 3, 3, generator=generator)
    bias = torch.randn(5, generator=generator)
    assert_matches_torch(lambda x, w, b: LF.conv2d(x, w, b, padding=1),
                         lambda x, w, b: F.conv2d(x, w, b, padding=1),
                         [input, weight, bias], torch.float32, generator)


@pytest.mark.parametrize("function", [LF.conv2d, LF.conv2d_relu_pool2d], ids=["conv2d", "conv2d_relu_pool2d"])
def test_only_requested_gradients_are_computed(function, generator):
    input = torch.randn(2, 3, 8, 8, generator=generator)
    weight = torch.randn(4, 3, 3, 3, generator=generator, requires_grad=True)
    bias = torch.randn(4, generator=generator)
    function(input, weight, bias).sum().backward()
    assert input.grad is None and bias.grad is None and weight.grad is not None


@pytest.mark.parametrize("in_channels, out_channels, size, kernel, padding", [
    (3, 6, 8, 3, 0), (6, 16, 14, 5, 0), (1, 6, 28, 5, 2), (16, 32, 14, 5, 2), (64, 64, 8, 3, 1),
], ids=["3-6", "lenet5-conv2", "lenet5-conv1", "improved-conv2", "64-64"])
def test_grad_weight_of_an_empty_batch_is_zero_in_reused_memory(in_channels, out_channels, size, kernel, padding):
    # The allocation the result is likely to get is filled with NaN first: grad_weight must write
    # zeros, not leave whatever was there.
    weight = torch.randn(out_channels, in_channels, kernel, kernel)
    input = torch.randn(0, in_channels, size, size)
    grad_output = torch.randn(0, out_channels, size + 2 * padding - kernel + 1, size + 2 * padding - kernel + 1)
    for _ in range(3):
        poison = torch.full_like(weight, float("nan"))
        del poison
        grad = torch.ops.lenetx.conv2d_grad_weight(grad_output, input, weight, [1, 1], [padding, padding], [1, 1], 1)
        assert torch.equal(grad, torch.zeros_like(weight))


def test_results_are_bit_identical_from_run_to_run(generator):
    input = torch.randn(16, 6, 14, 14, generator=generator, requires_grad=True)
    weight = torch.randn(16, 6, 5, 5, generator=generator, requires_grad=True)
    bias = torch.randn(16, generator=generator, requires_grad=True)
    upstream = torch.randn(16, 16, 10, 10, generator=generator)
    runs = []
    for _ in range(3):
        out = LF.conv2d(input, weight, bias)
        grads = torch.autograd.grad(out, (input, weight, bias), upstream)
        runs.append((out, *grads))
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert torch.equal(a, b)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
@pytest.mark.parametrize("out_channels", [6, 20])
def test_grad_weight_with_non_finite_input_matches_torch(value, out_channels, generator):
    """Few input channels take a path whose padding columns meet real input values; an
    infinite or NaN input must still give torch's answer (NaN exactly where torch has one)."""
    input = torch.randn(3, 1, 12, 12, generator=generator)
    input[1, 0, 4, 0] = value
    weight = torch.randn(out_channels, 1, 5, 5, generator=generator)
    upstream = torch.randn(3, out_channels, 8, 8, generator=generator)
    ours = torch.ops.lenetx.conv2d_grad_weight(upstream, input, weight, [1, 1], [0, 0], [1, 1], 1)
    theirs = torch.ops.aten.convolution_backward(
        upstream, input, weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False])[1]
    torch.testing.assert_close(ours, theirs, equal_nan=True)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_transposed_grad_input_with_non_finite_weight_matches_torch(value, generator):
    """LeNet-5's conv2 takes grad_input as a transposed convolution, which multiplies each weight
    only by the gradients that reach it (and by the zeros past an image's output, which the fold
    drops): a non-finite weight gives NaN or infinity only where torch has them."""
    input = torch.randn(3, 6, 14, 14, generator=generator)
    weight = torch.randn(16, 6, 5, 5, generator=generator)
    weight[2, 4, 0, 3] = value
    upstream = torch.randn(3, 16, 10, 10, generator=generator)
    ours = torch.ops.lenetx.conv2d_grad_input(upstream, input, weight, [1, 1], [0, 0], [1, 1], 1)
    theirs = torch.ops.aten.convolution_backward(
        upstream, input, weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, False, False])[0]
    assert not theirs.isfinite().all()
    torch.testing.assert_close(ours, theirs, equal_nan=True, **tolerances(torch.float32, theirs))


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
@pytest.mark.parametrize("size, channels, padding", [(20, 6, 0), (14, 16, 2), (28, 1, 1)])
def test_zero_border_with_non_finite_weight_matches_torch(value, size, channels, padding, generator):
    """The tiled paths read a zero-padded copy of the input (the forward with padding) or of
    grad_output (grad_input as a correlation): a non-finite weight must not turn the border's
    zeros into NaN where torch, which skips the border, has infinity or a finite value."""
    input = torch.randn(2, channels, size, size, generator=generator)
    kernel = 3 if channels == 1 else 5
    weight = torch.randn(16, channels, kernel, kernel, generator=generator)
    weight[2, channels - 1, 0, 1] = value
    theirs = F.conv2d(input, weight, padding=padding)
    ours = LF.conv2d(input, weight, padding=padding)
    torch.testing.assert_close(ours, theirs, equal_nan=True, **tolerances(torch.float32, theirs))
    upstream = torch.randn_like(theirs)
    args = ([1, 1], [padding, padding], [1, 1], 1)
    ours = torch.ops.lenetx.conv2d_grad_input(upstream, input, weight, *args)
    theirs = torch.ops.aten.convolution_backward(
        upstream, input, weight, None, *args[:3], False, [0, 0], 1, [True, False, False])[0]
    assert not theirs.isfinite().all()
    torch.testing.assert_close(ours, theirs, equal_nan=True, **tolerances(torch.float32, theirs))


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_tiles_past_the_plane_of_an_unpadded_input_read_into_no_output(value, generator):
    """Row tiles read an unpadded input in place: a part-filled tile (9 x 9 outputs in tiles of 2
    rows of 5 pixels on AVX2) reads on into the next row, plane and image, whose values must reach
    only pixels that are dropped. The next images are all infinity or NaN; the first stays finite."""
    input = torch.randn(3, 6, 13, 13, generator=generator)
    input[1:] = value
    weight = torch.randn(16, 6, 5, 5, generator=generator)
    bias = torch.randn(16, generator=generator)
    expected = F.conv2d(input, weight, bias)
    ours = LF.conv2d(input, weight, bias)
    assert ours[0].isfinite().all()
    torch.testing.assert_close(ours, expected, equal_nan=True, **tolerances(torch.float32, expected[0]))


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
@pytest.mark.parametrize("where", ["input", "weight"])
def test_winograd_shape_with_non_finite_value_matches_torch(value, where, generator):
    """Winograd's transforms mix a whole tile: a non-finite value must still give torch's answer
    (forward and grad_weight), NaN or infinity only where the direct sums have them."""
    input = torch.randn(2, 16, 12, 12, generator=generator)
    weight = torch.randn(32, 16, 3, 3, generator=generator)
    if where == "input":
        input[1, 3, 4, 5] = value
    else:
        weight[1, 3, 2, 1] = value
    expected = F.conv2d(input, weight)
    torch.testing.assert_close(LF.conv2d(input, weight), expected, equal_nan=True,
                               **tolerances(torch.float32, expected))
    upstream = torch.randn(expected.shape, generator=generator)
    ours = torch.ops.lenetx.conv2d_grad_weight(upstream, input, weight, [1, 1], [0, 0], [1, 1], 1)
    theirs = torch.ops.aten.convolution_backward(
        upstream, input, weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False])[1]
    torch.testing.assert_close(ours, theirs, equal_nan=True, **tolerances(torch.float32, theirs))


# 5x5 kernels over rows that fit one AVX-512 vector with fewer than 8 input channels: Winograd
# along the rows (conv2d_winograd_rows.h) where the kernels are built for AVX-512, in segments of
# 5 outputs where a row has 9 or 10 and of 4 otherwise, the direct paths elsewhere; both must
# match torch.
ROW_TRANSFORM_SHAPES = [
    dict(input=(9, 6, 14, 14), weight=(16, 6, 5, 5), padding=0),  # LeNet-5's conv2, odd batch
    dict(input=(1, 1, 12, 16), weight=(12, 1, 5, 5), padding=0),  # a row of 16, part of a vector
    dict(input=(3, 7, 11, 10), weight=(20, 7, 5, 5), padding=1),  # padding, two output vectors
    dict(input=(2, 3, 12, 12), weight=(16, 3, 5, 5), padding=2),  # rows padded to 16
    dict(input=(4, 2, 30, 13), weight=(32, 2, 5, 5), padding=0),  # tall rows of 9: part-filled blocks
    dict(input=(2, 5, 8, 9), weight=(16, 5, 5, 5), padding=2),  # rows of 9, padded; 8 output rows
]


@pytest.mark.parametrize("shape", ROW_TRANSFORM_SHAPES)
def test_row_transform_shapes_match_torch(shape, generator):
    input = torch.randn(shape["input"], generator=generator)
    weight = torch.randn(shape["weight"], generator=generator)
    bias = torch.randn(shape["weight"][0], generator=generator)
    assert_matches_torch(lambda x, w, b: LF.conv2d(x, w, b, padding=shape["padding"]),
                         lambda x, w, b: F.conv2d(x, w, b, padding=shape["padding"]),
                         (input, weight, bias), torch.float32, generator)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
@pytest.mark.parametrize("shape", ROW_TRANSFORM_SHAPES[:4])
def test_row_transform_shapes_with_non_finite_input_match_torch(value, shape, generator):
    """A row's transforms mix its values, so an image with a value that is not finite is computed
    again by the direct paths: NaN or infinity only where torch has them, the other images as
    before. The value sits in the last row of the batch, which a vector read straight from the
    input would pass."""
    input = torch.randn(shape["input"], generator=generator)
    weight = torch.randn(shape["weight"], generator=generator)
    input[-1, -1, -1, -1] = value
    expected = F.conv2d(input, weight, padding=shape["padding"])
    ours = LF.conv2d(input, weight, padding=shape["padding"])
    assert not expected.isfinite().all()
    torch.testing.assert_close(ours, expected, equal_nan=True, **tolerances(torch.float32, expected))
    if len(input) > 1:
        finite = F.conv2d(input[:-1], weight, padding=shape["padding"])
        assert torch.equal(ours[:-1], LF.conv2d(input[:-1], weight, padding=shape["padding"]))
        torch.testing.assert_close(ours[:-1], finite, **tolerances(torch.float32, finite))


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
@pytest.mark.parametrize("where", ["input", "grad_output"])
@pytest.mark.parametrize("shape", [ROW_TRANSFORM_SHAPES[0], ROW_TRANSFORM_SHAPES[-1]])
def test_row_transform_grad_weight_with_non_finite_value_matches_torch(value, where, shape, generator):
    """grad_weight along the rows (segments of 5) sums every image's transforms into each weight:
    a value that is not finite sends the whole grad_weight to the direct paths, which put NaN or
    infinity only where torch has them."""
    input = torch.randn(shape["input"], generator=generator)
    weight = torch.randn(shape["weight"], generator=generator)
    args = ([1, 1], [shape["padding"]] * 2, [1, 1])
    upstream = torch.randn(F.conv2d(input, weight, padding=shape["padding"]).shape, generator=generator)
    if where == "input":
        input[-1, 0, 2, 3] = value
    else:
        upstream[-1, 1, 2, 3] = value
    ours = torch.ops.lenetx.conv2d_grad_weight(upstream, input, weight, *args, 1)
    theirs = torch.ops.aten.convolution_backward(
        upstream, input, weight, None, *args, False, [0, 0], 1, [False, True, False])[1]
    assert not theirs.isfinite().all() and theirs.isfinite().any()
    torch.testing.assert_close(ours, theirs, equal_nan=True, **tolerances(torch.float32, theirs))


# grad_input by F(5, 5) along the rows (conv2d_winograd_rows.h) where the kernels are built for
# AVX-512 (float): 5x5 stride-1 layers whose input has 1.5 times the output's pixels or more, in
# groups of 8 images, two rows of each to a vector; the transposed convolution elsewhere. Both
# must match torch.
ROW_TRANSFORM_GRAD_INPUT_SHAPES = [
    dict(input=(9, 6, 14, 14), weight=(16, 6, 5, 5)),  # LeNet-5's conv2: a group and one image
    dict(input=(3, 13, 13, 11), weight=(5, 13, 5, 5)),  # odd rows, blocks of 6, 6 and 1 channels
    dict(input=(17, 1, 10, 15), weight=(24, 1, 5, 5)),  # rows of three whole segments
    # Rows shorter than half a vector: a whole vector stored at a plane's second-to-last row would
    # run into the next channel's plane, the next image's, or past grad_input's end.
    dict(input=(9, 2, 15, 7), weight=(3, 2, 5, 5)),
    dict(input=(5, 3, 24, 6), weight=(4, 3, 5, 5)),
]


@pytest.mark.parametrize("shape", ROW_TRANSFORM_GRAD_INPUT_SHAPES)
def test_row_transform_grad_input_matches_torch(shape, generator):
    input = torch.randn(shape["input"], generator=generator)
    weight = torch.randn(shape["weight"], generator=generator)
    upstream = torch.randn(F.conv2d(input, weight).shape, generator=generator)
    ours = torch.ops.lenetx.conv2d_grad_input(upstream, input, weight, [1, 1], [0, 0], [1, 1], 1)
    theirs = torch.ops.aten.convolution_backward(
        upstream, input, weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, False, False])[0]
    torch.testing.assert_close(ours, theirs, **tolerances(torch.float32, theirs))


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_row_transform_grad_input_with_non_finite_grad_output_matches_torch(value, generator):
    """The transforms mix a row's values, so a group of images with a grad_output value that is
    not finite is computed again by the transposed convolution: NaN or infinity only where torch
    has them, the other groups as before."""
    input = torch.randn(17, 6, 14, 14, generator=generator)
    weight = torch.randn(16, 6, 5, 5, generator=generator)
    upstream = torch.randn(17, 16, 10, 10, generator=generator)
    finite = torch.ops.lenetx.conv2d_grad_input(upstream, input, weight, [1, 1], [0, 0], [1, 1], 1)
    upstream[9, 3, 4, 4] = value
    ours = torch.ops.lenetx.conv2d_grad_input(upstream, input, weight, [1, 1], [0, 0], [1, 1], 1)
    theirs = torch.ops.aten.convolution_backward(
        upstream, input, weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, False, False])[0]
    assert not theirs.isfinite().all()
    torch.testing.assert_close(ours, theirs, equal_nan=True, **tolerances(torch.float32, theirs))
    assert torch.equal(ours[:8], finite[:8]) and torch.equal(ours[16:], finite[16:])


# Stride-1 rows of one or two vectors where the kernels are built for AVX-512 (float rows of 16 to
# 32, double rows of 8 to 16) go through conv2d_padded_rows.h's row vectors: the last vector of a
# row overlaps the one before where the row is not a multiple of the vector, and so does the
# plane's last block of rows; a tile taller than the output takes the padded rows instead.
ROW_VECTOR_SHAPES = [
    dict(input=(5, 1, 28, 28), weight=(16, 1, 3, 3), padding=1),  # the improved LeNet's conv1
    dict(input=(3, 1, 32, 32), weight=(6, 1, 5, 5), padding=0),  # LeNet-5's conv1
    dict(input=(2, 3, 32, 32), weight=(10, 3, 3, 3), padding=1),  # rows of two vectors, a part-filled block
    dict(input=(2, 2, 18, 20), weight=(7, 2, 3, 3), padding=0),  # 18 wide: vectors overlapping by 14
    dict(input=(3, 1, 16, 16), weight=(5, 1, 3, 3), padding=1),  # float rows of one vector, double of two
    dict(input=(1, 2, 19, 21), weight=(9, 2, 3, 3), padding=2, dilation=2),
    dict(input=(2, 1, 4, 30), weight=(4, 1, 3, 3), padding=0),  # 2 rows, fewer than the tile's 3
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", ROW_VECTOR_SHAPES)
def test_row_vector_shapes_match_torch(shape, dtype, generator):
    input = torch.randn(shape["input"], generator=generator, dtype=dtype)
    weight = torch.randn(shape["weight"], generator=generator, dtype=dtype)
    bias = torch.randn(shape["weight"][0], generator=generator, dtype=dtype)
    options = dict(padding=shape["padding"], dilation=shape.get("dilation", 1))
    assert_matches_torch(lambda x, w, b: LF.conv2d(x, w, b, **options),
                         lambda x, w, b: F.conv2d(x, w, b, **options),
                         (input, weight, bias), dtype, generator)


@pytest.mark.parametrize("size,kernel,padding,stride", [
    (28, 3, 1, 1),  # rows of two vectors under AVX-512 (conv2d_padded_rows.h's row vectors)
    (16, 3, 1, 1),  # rows of one vector
    (14, 5, 0, 1),  # LeNet-5's conv2 shape
    (9, 3, 1, 2),  # strided
])
def test_no_input_channels_give_the_bias_on_every_path(size, kernel, padding, stride):
    """An empty sum over input channels: the output is the bias, as lenetx's fake kernel says,
    on every path, with gradients. (torch returns no output channels there instead; lenetx keeps
    the formula.)"""
    input = torch.randn(2, 0, size, size, requires_grad=True)
    weight = torch.randn(16, 0, kernel, kernel, requires_grad=True)
    bias = torch.randn(16, requires_grad=True)
    output = LF.conv2d(input, weight, bias, stride=stride, padding=padding)
    meta = LF.conv2d(input.to("meta"), weight.to("meta"), bias.to("meta"), stride=stride, padding=padding)
    assert output.shape == meta.shape
    assert torch.equal(output, bias.detach().view(1, -1, 1, 1).expand_as(output))
    output.sum().backward()
    assert torch.equal(bias.grad, torch.full_like(bias, output[0, 0].numel() * 2))


@pytest.mark.parametrize("shape", [
    dict(input=(20, 6, 14, 14), weight=(16, 6, 5, 5)),  # stride-1 convolution
    dict(input=(20, 1, 32, 32), weight=(6, 1, 5, 5)),  # few output channels
    dict(input=(20, 16, 5, 5), weight=(120, 16, 5, 5)),  # fully connected
    dict(input=(9, 70, 8, 8), weight=(40, 70, 3, 3)),  # blocked matrix products
    dict(input=(6, 16, 12, 12), weight=(40, 16, 3, 3)),  # pixel tiles
    # Row tiles in bands of output rows, as many per image as give each thread two: one image
    # and one vector of channels (AVX2) make 1, 4 (the last empty) and 5 bands at 1, 2, 3 threads.
    dict(input=(1, 6, 14, 14), weight=(8, 6, 5, 5)),
    # Padded rows in bands the same way: one image and one block of two channels make 2, 4 (the
    # last empty) and 5 bands of its 5 output rows at 1, 2, 3 threads.
    dict(input=(1, 1, 9, 32), weight=(2, 1, 5, 5)),
])
def test_results_do_not_depend_on_the_thread_count(shape, generator):
    input = torch.randn(shape["input"], generator=generator, requires_grad=True)
    weight = torch.randn(shape["weight"], generator=generator, requires_grad=True)
    upstream = torch.randn_like(F.conv2d(input, weight))
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            out = LF.conv2d(input, weight)
            runs.append((out, *torch.autograd.grad(out, (input, weight), upstream)))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert torch.equal(a, b)


GRADCHECK_ARGUMENTS = [
    dict(), dict(stride=2, padding=1), dict(dilation=2, padding=(2, 1)), dict(groups=2, stride=(1, 2)),
]


def gradcheck_tensors(kwargs, generator):
    input = torch.randn(2, 4, 7, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(6, 4 // kwargs.get("groups", 1), 3, 2, dtype=torch.float64,
                         generator=generator, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, generator=generator, requires_grad=True)
    return input, weight, bias


@pytest.mark.parametrize("kwargs", GRADCHECK_ARGUMENTS)
def test_gradcheck(kwargs, generator):
    assert torch.autograd.gradcheck(lambda x, w, b: LF.conv2d(x, w, b, **kwargs),
                                    gradcheck_tensors(kwargs, generator))


@pytest.mark.parametrize("kwargs", GRADCHECK_ARGUMENTS)
def test_gradgradcheck(kwargs, generator):
    # Second derivatives through conv2d_grad_input, conv2d_grad_weight and conv2d_grad_bias,
    # and third ones through the operators their derivatives call.
    assert torch.autograd.gradgradcheck(lambda x, w, b: LF.conv2d(x, w, b, **kwargs),
                                        gradcheck_tensors(kwargs, generator))


# torch's forward_ad scripts a helper on its first use.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("function", [
    lambda x: LF.conv2d(x, torch.ones(2, 3, 3, 3)), lambda x: LF.avg_pool2d(x, 2), lambda x: LF.max_pool2d(x, 2),
    lambda x: LF.adaptive_avg_pool2d(x, 3), lambda x: LF.conv2d_relu_pool2d(x, torch.ones(2, 3, 3, 3)),
], ids=["conv2d", "avg_pool2d", "max_pool2d", "adaptive_avg_pool2d", "conv2d_relu_pool2d"])
def test_forward_mode_ad_raises_instead_of_dropping_the_tangent(function, generator):
    # The autograd kernels have no forward-mode derivatives; a call that needs no backward skips
    # them, but not one that carries a tangent.
    input = torch.randn(2, 3, 8, 8, generator=generator)
    with torch.autograd.forward_ad.dual_level(), torch.no_grad():
        dual = torch.autograd.forward_ad.make_dual(input, torch.ones_like(input))
        with pytest.raises(NotImplementedError, match="forward-mode automatic differentiation is not implemented"):
            function(dual)


def test_second_derivatives_match_torch(generator):
    # A gradient penalty: the gradient of |d loss / d input|^2 with respect to every tensor.
    input, weight, bias = gradcheck_tensors(dict(stride=2, padding=1), generator)

    def penalty_gradients(conv):
        (grad_input,) = torch.autograd.grad(conv(input, weight, bias, stride=2, padding=1).sin().sum(),
                                            input, create_graph=True)
        return torch.autograd.grad(grad_input.square().sum(), (input, weight, bias))

    for ours, theirs in zip(penalty_gradients(LF.conv2d), penalty_gradients(F.conv2d)):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


def test_course_notes_worked_example():
    image = torch.tensor([[1, 1, 1, 0, 0],
                          [0, 1, 1, 1, 0],
                          [0, 0, 1, 1, 1],
                          [0, 0, 1, 1, 0],
                          [0, 1, 1, 0, 0]], dtype=torch.float32).view(1, 1, 5, 5)
    kernel = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.float32).view(1, 1, 3, 3)

    valid = LF.conv2d(image, kernel)
    assert valid.shape[-2:] == (3, 3) == (lenetx.conv_output_size(5, 3),) * 2
    assert valid[0, 0, 0, 0].item() == 4
    assert valid[0, 0].tolist() == [[4, 3, 4], [2, 4, 3], [2, 3, 4]]

    strided = LF.conv2d(image, kernel, padding=1, stride=2)
    assert strided.shape[-2:] == (3, 3) == (lenetx.conv_output_size(5, 3, padding=1, stride=2),) * 2
    assert strided[0, 0, 0, 0].item() == 2

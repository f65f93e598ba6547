"""The batch loader's crop_normalize operator against torch's operators composed, and the
loader's random crops."""

import pytest
import torch
import torch.nn.functional as F

from lenetx import data

crop_normalize = torch.ops.lenetx.crop_normalize


def reference(images, index, rows, cols, flip, padding, mean, std):
    """Gather, zero-pad, take each image's window, mirror, normalise: torch's operators, one step
    at a time."""
    picked = F.pad(images[index].float(), [padding] * 4)
    height, width = images.shape[2:]
    windows = []
    for i in range(len(index)):
        top = padding if rows is None else int(rows[i])
        left = padding if cols is None else int(cols[i])
        window = picked[i, :, top:top + height, left:left + width]
        windows.append(window.flip(2) if flip is not None and flip[i] else window)
    batch = torch.stack(windows) if windows else picked[:0]
    return (batch - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def _images(shape, dtype, generator):
    values = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    return values if dtype == torch.uint8 else values.to(dtype) + 0.25


@pytest.mark.parametrize("shape", [(6, 1, 28, 28), (5, 3, 7, 9), (4, 2, 3, 2)])
@pytest.mark.parametrize("padding", [0, 1, 4])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("shifted, mirrored", [(True, True), (True, False), (False, True), (False, False)])
def test_crop_normalize_matches_torch_bit_for_bit(shape, padding, dtype, shifted, mirrored, generator):
    images = _images(shape, dtype, generator)
    index = torch.randint(0, shape[0], (9,), generator=generator)  # repeats, any order
    rows, cols = (torch.randint(0, 2 * padding + 1, (9,), generator=generator) if shifted else None
                  for _ in range(2))
    flip = torch.rand(9, generator=generator) < 0.5 if mirrored else None
    mean = torch.rand(shape[1], generator=generator) * 255
    std = torch.rand(shape[1], generator=generator) * 100 + 1
    args = (images, index, rows, cols, flip, padding, mean, std)
    assert torch.equal(crop_normalize(*args), reference(*args))


def test_crop_normalize_reaches_every_window_corner_and_reads_strided_tensors(generator):
    images = _images((3, 2, 6, 5), torch.uint8, generator).transpose(2, 3).contiguous().transpose(2, 3)
    padding = 3
    corners = torch.cartesian_prod(torch.arange(2 * padding + 1), torch.arange(2 * padding + 1))
    index = torch.arange(len(corners)) % 3
    flip = torch.arange(len(corners)) % 2 == 1
    mean, std = torch.tensor([10.0, 200.0]), torch.tensor([3.0, 0.5])
    args = (images, index, corners[:, 0], corners[:, 1], flip, padding, mean, std)
    assert not images.is_contiguous() and not corners[:, 0].is_contiguous()
    assert torch.equal(crop_normalize(*args), reference(*args))


def test_crop_normalize_of_no_images_is_an_empty_batch():
    images = torch.zeros(4, 3, 5, 5, dtype=torch.uint8)
    out = crop_normalize(images, torch.zeros(0, dtype=torch.int64), None, None, None, 2,
                         torch.zeros(3), torch.ones(3))
    assert out.shape == (0, 3, 5, 5) and out.dtype == torch.float32


def _good_args():
    return dict(images=torch.zeros(4, 3, 5, 5, dtype=torch.uint8), index=torch.tensor([0, 3]),
                row_offsets=torch.tensor([0, 4]), col_offsets=torch.tensor([1, 2]),
                flip=torch.tensor([True, False]), padding=2, mean=torch.zeros(3), std=torch.ones(3))


@pytest.mark.parametrize("change, message", [
    (dict(images=torch.zeros(4, 5, 5, dtype=torch.uint8)), "expected 4-D images"),
    (dict(images=torch.zeros(4, 3, 5, 5, dtype=torch.int32)), "expected uint8 or float32 images"),
    (dict(index=torch.tensor([0, 4])), r"index\[1\]=4 is out of range"),
    (dict(index=torch.tensor([-1, 0])), r"index\[0\]=-1 is out of range"),
    (dict(index=torch.tensor([0.0, 1.0])), "expected index to be a 1-D int64 tensor"),
    (dict(row_offsets=torch.tensor([0, 5])), r"row_offsets\[1\]=5 is out of range"),
    (dict(col_offsets=torch.tensor([-1, 0])), r"col_offsets\[0\]=-1 is out of range"),
    (dict(col_offsets=torch.tensor([0, 1, 2])),
     r"expected col_offsets to be a 1-D int64 tensor with a value per index \(2\)"),
    (dict(flip=torch.tensor([1, 0])), "expected flip to be a 1-D bool tensor"),
    (dict(padding=-1), "padding must be non-negative, but got padding=-1"),
    (dict(mean=torch.zeros(2)), "expected mean to be a 1-D float32 tensor with a value per channel"),
    (dict(std=torch.ones(3, dtype=torch.float64)), "expected std to be a 1-D float32 tensor"),
])
def test_crop_normalize_rejects_bad_arguments(change, message):
    with pytest.raises(RuntimeError, match=message):
        crop_normalize(**{**_good_args(), **change})


def test_crop_normalize_passes_opcheck():
    args = _good_args()
    torch.library.opcheck(crop_normalize.default, tuple(args.values()))
    torch.library.opcheck(crop_normalize.default, (args["images"], args["index"], None, None, None, 0,
                                                   args["mean"], args["std"]))


@pytest.mark.parametrize("augment, shape", [("shift", (16, 1, 28, 28)), ("crop_flip", (5, 3, 7, 9))])
def test_batch_loader_crops_each_image_at_the_windows_its_generator_draws(augment, shape):
    images = torch.randint(0, 256, shape, dtype=torch.uint8)
    loaded = data.ImageData(images, torch.arange(shape[0]), [str(i) for i in range(shape[0])])
    mean, std = (0.5,) * shape[1], (0.25,) * shape[1]
    (batch, labels), = data.BatchLoader(loaded, shape[0], mean, std, augment, shuffle=True, seed=4)
    generator = torch.Generator().manual_seed(4)
    order = torch.randperm(shape[0], generator=generator)
    augmentation = data.AUGMENTATIONS[augment]
    padding = augmentation.padding
    rows, cols = (torch.randint(0, 2 * padding + 1, (shape[0],), generator=generator) for _ in range(2))
    flip = torch.rand(shape[0], generator=generator) < 0.5 if augmentation.flip else None
    normalize = data.Normalize(mean, std)
    assert torch.equal(labels, order)
    assert torch.equal(batch, reference(images, order, rows, cols, flip, padding, normalize.mean, normalize.std))
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 1


def test_batch_loader_rejects_an_unknown_augmentation():
    loaded = data.ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.arange(2), ["a", "b"])
    with pytest.raises(ValueError, match="augment must be None or one of .* but got augment='mirror'"):
        data.BatchLoader(loaded, 2, (0.5,), (0.25,), augment="mirror")

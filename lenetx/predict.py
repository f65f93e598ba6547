"""Applying a trained network to new image files."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .data import IMAGE_SUFFIXES, Normalize, read_image

BUNDLED_CHECKPOINT = Path(__file__).parent / "assets" / "lenet5_mnist.pt"
BUNDLED_SAMPLES = Path(__file__).parent / "assets" / "samples"


def prepare_digit(image):
    """A photo or scan of one handwritten digit made the way MNIST's digits were: grayscale,
    light ink on black, cropped to the ink, fitted in 20x20 keeping the aspect ratio, and centred
    by its centre of mass in a 28x28 image. Returns a uint8 1 x 28 x 28 tensor."""
    pixels = np.asarray(image.convert("L"), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > 127:  # dark ink on light paper
        pixels = 255 - pixels
    # The background level (the border's median) becomes black; faint noise below a threshold too.
    pixels = np.clip(pixels - np.median(border if border.mean() <= 127 else 255 - border), 0, None)
    canvas = np.zeros((28, 28), dtype=np.float32)
    if pixels.max() <= 0:
        return torch.zeros(1, 28, 28, dtype=torch.uint8)
    pixels = pixels * (255 / pixels.max())
    rows = np.flatnonzero((pixels > 50).any(1))
    cols = np.flatnonzero((pixels > 50).any(0))
    ink = pixels[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = 20 / max(ink.shape)
    size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
    fitted = np.asarray(Image.fromarray(ink.astype(np.uint8)).resize(size, Image.LANCZOS),
                        dtype=np.float32)
    total = fitted.sum()
    cy = (fitted.sum(1) * np.arange(fitted.shape[0])).sum() / total
    cx = (fitted.sum(0) * np.arange(fitted.shape[1])).sum() / total
    top = int(np.clip(round(14 - cy), 0, 28 - fitted.shape[0]))
    left = int(np.clip(round(14 - cx), 0, 28 - fitted.shape[1]))
    canvas[top:top + fitted.shape[0], left:left + fitted.shape[1]] = fitted
    return torch.from_numpy(np.clip(canvas, 0, 255).astype(np.uint8)).unsqueeze(0)


def image_files(paths):
    """The given files, and the image files inside the given folders (sorted)."""
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path


def load_for_model(path, checkpoint):
    """The image at `path` as the network's uint8 input (1 x C x H x W)."""
    args = checkpoint["model_args"]
    if checkpoint["digits"]:
        with Image.open(path) as image:
            return prepare_digit(image).unsqueeze(0)
    return read_image(path, args["image_size"], args["in_channels"]).unsqueeze(0)


@torch.no_grad()
def predict_files(model, checkpoint, paths, top_k=1):
    """Yields (path, [(class, probability), ...] or None, error message or None) per file."""
    classes = checkpoint["classes"]
    device = next(model.parameters()).device
    normalize = Normalize(checkpoint["mean"], checkpoint["std"])
    for path in image_files(paths):
        try:
            image = load_for_model(path, checkpoint)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            yield path, None, f"cannot read {path} as an image ({error.__class__.__name__}: {error})"
            continue
        logits = model(normalize(image).to(device))
        probabilities = logits.softmax(1)[0]
        best = probabilities.topk(min(top_k, len(classes)))
        yield path, [(classes[i], p) for p, i in zip(best.values.tolist(), best.indices.tolist())], None

"""Datasets as uint8 tensors decoded once, and a batch loader that gathers, augments and normalises
each batch in one pass of a lenetx operator (no per-sample PIL work in the training loop).

Datasets: MNIST, FashionMNIST, KMNIST and CIFAR-10 through torchvision (downloaded when online,
or read from a local root in torchvision's layout), CIFAR-10 as a JPEG image folder, and any image
folder with train/ and test/ subfolders (torchvision's ImageFolder layout).
"""

import dataclasses
import hashlib
import os
import tarfile
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from . import _extension  # noqa: F401  (loads lenetx's operators)

CIFAR10_CLASSES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_FOLDER = "cifar10-jpeg"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    channels: int
    image_size: int
    mean: tuple
    std: tuple
    augment: str  # "shift" (random translation) or "crop_flip" (random crop and horizontal flip)
    digits: bool = False  # predict() prepares photos of handwritten digits as MNIST was made


DATASETS = {
    "mnist": DatasetSpec("mnist", 1, 28, (0.1307,), (0.3081,), "shift", digits=True),
    "fashion-mnist": DatasetSpec("fashion-mnist", 1, 28, (0.2860,), (0.3530,), "shift"),
    "kmnist": DatasetSpec("kmnist", 1, 28, (0.1918,), (0.3483,), "shift"),
    "cifar10": DatasetSpec("cifar10", 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           "crop_flip"),
    "imagefolder": DatasetSpec("imagefolder", 3, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "crop_flip"),
}

TORCHVISION_CLASSES = {
    "mnist": torchvision.datasets.MNIST,
    "fashion-mnist": torchvision.datasets.FashionMNIST,
    "kmnist": torchvision.datasets.KMNIST,
}


class DatasetNotFoundError(FileNotFoundError):
    pass


@dataclasses.dataclass
class ImageData:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    classes: list

    def subset(self, count, seed=0):
        """`count` images drawn at random (image folders are sorted by class, so the first
        images would all share one label)."""
        index = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(seed))[:count]
        return ImageData(self.images[index], self.labels[index], self.classes)


def default_data_root():
    return Path(os.environ.get("LENETX_DATA", Path.home() / ".cache" / "lenetx" / "data"))


def cache_dir():
    return Path(os.environ.get("LENETX_CACHE", Path.home() / ".cache" / "lenetx"))


def load(name, train, data_root=None, download=True):
    """The train or test split of dataset `name` as uint8 tensors."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    root = Path(data_root) if data_root is not None else default_data_root()
    if name in TORCHVISION_CLASSES:
        return _load_torchvision_digits(name, root, train, download)
    if name == "cifar10":
        return _load_cifar10(root, train, download)
    return load_image_folder(root, train, DATASETS[name].image_size, DATASETS[name].channels)


def _not_found(name, looked_in, how):
    paths = "\n  ".join(str(p) for p in looked_in)
    return DatasetNotFoundError(f"dataset {name!r} not found; looked for:\n  {paths}\n{how}")


def _load_torchvision_digits(name, root, train, download):
    cls = TORCHVISION_CLASSES[name]
    try:
        dataset = cls(str(root), train=train, download=False)
    except RuntimeError:
        if not download:
            raise _not_found(name, [root / cls.__name__ / "raw"],
                             f"Put torchvision's {cls.__name__} files there, or run once online "
                             f"(the files are downloaded into --data-root {root}).") from None
        try:
            dataset = cls(str(root), train=train, download=True)
        except Exception as error:
            raise _not_found(name, [root / cls.__name__ / "raw"],
                             f"Downloading failed ({error.__class__.__name__}: {error}). Run once "
                             f"online, or copy torchvision's {cls.__name__} files into "
                             f"{root / cls.__name__ / 'raw'} and pass --data-root {root}.") from None
    images = dataset.data.unsqueeze(1).contiguous()
    classes = [c.split(" - ")[0] for c in dataset.classes]  # MNIST: "0 - zero" -> "0"
    return ImageData(images, dataset.targets.long(), classes)


def _load_cifar10(root, train, download):
    binary = root / "cifar-10-batches-py"
    folder = root / CIFAR10_FOLDER
    archive = root / f"{CIFAR10_FOLDER}.tar.gz"
    if binary.is_dir() or not (folder.is_dir() or archive.is_file()):
        try:
            dataset = torchvision.datasets.CIFAR10(str(root), train=train, download=download)
        except Exception as error:
            raise _not_found("cifar10", [binary, folder, archive],
                             f"({error.__class__.__name__}: {error}). Run once online to download "
                             f"it into --data-root {root}, or unpack CIFAR-10 there in torchvision's "
                             f"layout or as an image folder {folder}/{{train,test}}/<class>/.") from None
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        return ImageData(images, torch.tensor(dataset.targets), list(CIFAR10_CLASSES))
    if not folder.is_dir():
        folder = _extract_once(archive) / CIFAR10_FOLDER
    data = load_image_folder(folder, train, 32, 3)
    return ImageData(data.images, data.labels, list(CIFAR10_CLASSES))


def _extract_once(archive):
    target = cache_dir() / "extracted" / _digest(archive)
    done = target / ".complete"
    if not done.exists():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
        done.touch()
    return target


def _digest(path, *extra):
    path = Path(path).resolve()
    key = f"{path}|{path.stat().st_mtime_ns}|" + "|".join(map(str, extra))
    return hashlib.sha1(key.encode()).hexdigest()[:16]


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def load_image_folder(root, train, image_size, channels):
    """An ImageFolder split (root/train or root/test, one subfolder per class), decoded once and
    cached under cache_dir()."""
    split = Path(root) / ("train" if train else "test")
    if not split.is_dir():
        raise _not_found("imagefolder", [split],
                         "An image folder needs train/ and test/ subfolders, each with one "
                         "subfolder of images per class.")
    cache = cache_dir() / "decoded" / f"{_digest(split, image_size, channels)}.pt"
    if cache.exists():
        saved = torch.load(cache, weights_only=True)
        return ImageData(saved["images"], saved["labels"], saved["classes"])
    classes = sorted(entry.name for entry in split.iterdir() if entry.is_dir())
    if not classes:
        raise _not_found("imagefolder", [split / "<class>"], "No class subfolders found.")
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((split / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(read_image(path, image_size, channels))
                labels.append(label)
    data = ImageData(torch.stack(images), torch.tensor(labels), classes)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dataclasses.asdict(data), cache)
    return data


def read_image(path, image_size, channels):
    """One image file as a uint8 C x H x W tensor of the given size (resized if needed)."""
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.BILINEAR)
        array = np.asarray(image, dtype=np.uint8).reshape(image_size, image_size, channels)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


class Normalize:
    """uint8 (or float in [0, 255]) images to normalised float32, per channel, on the CPU. The
    constants are made once: made per batch, they took half of normalising MNIST's 128 images (74
    against 36 us; benchmarks/NOTES.md, section 20). A batch's images are gathered from the
    dataset, cropped and normalised in one pass (lenetx's crop_normalize operator): as torch's
    operators, those were 6 passes over the batch and 5 temporaries (NOTES, section 32)."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32) * 255
        self.std = torch.tensor(std, dtype=torch.float32) * 255

    def __call__(self, images, index=None, crop=None):
        """images[index] (every image when index is None), normalised; with a Crop, each image is
        that crop's window of its zero-padded copy."""
        if index is None:
            index = torch.arange(len(images))
        crop = crop or Crop()
        return torch.ops.lenetx.crop_normalize(images, index, crop.rows, crop.cols, crop.flip, crop.padding,
                                               self.mean, self.std)


@dataclasses.dataclass(frozen=True)
class Crop:
    """Each image's window in its copy zero-padded by `padding` on every side: top left corner
    (rows[i], cols[i]), mirrored left to right where flip[i]. None: the unshifted, unmirrored one."""
    padding: int = 0
    rows: torch.Tensor = None
    cols: torch.Tensor = None
    flip: torch.Tensor = None


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random shifts of up to `padding` pixels in each direction, zero-filled, and with `flip`, a
    left-right mirror of half the images."""
    padding: int
    flip: bool = False

    def draw(self, count, generator):
        """A random Crop for each of `count` images."""
        rows, cols = (torch.randint(0, 2 * self.padding + 1, (count,), generator=generator) for _ in range(2))
        flip = torch.rand(count, generator=generator) < 0.5 if self.flip else None
        return Crop(self.padding, rows, cols, flip)


AUGMENTATIONS = {"shift": Augmentation(2), "crop_flip": Augmentation(4, flip=True)}


class BatchLoader:
    """Yields (normalised float images, labels) batches; shuffles and augments with its own
    seeded generator, so the same seed gives the same batches."""

    def __init__(self, data, batch_size, mean, std, augment=None, shuffle=False, seed=0, device="cpu"):
        if augment is not None and augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be None or one of {sorted(AUGMENTATIONS)}, but got augment={augment!r}")
        self.data, self.batch_size = data, batch_size
        self.augmentation, self.shuffle = AUGMENTATIONS.get(augment), shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.device = torch.device(device)
        self.normalize = Normalize(mean, std)

    def __len__(self):
        return (len(self.data.labels) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        count = len(self.data.labels)
        order = torch.randperm(count, generator=self.generator) if self.shuffle else torch.arange(count)
        for start in range(0, count, self.batch_size):
            index = order[start:start + self.batch_size]
            crop = self.augmentation.draw(len(index), self.generator) if self.augmentation else None
            images = self.normalize(self.data.images, index, crop)
            yield images.to(self.device, non_blocking=True), self.data.labels[index].to(self.device)

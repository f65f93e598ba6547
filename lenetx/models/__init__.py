"""The networks of the course: LeNet-5, the improved LeNet, and VGG with batch norm.

Each is built from lenetx layers (backend="lenetx") or torch.nn layers (backend="torch") with the
same parameter names, so a checkpoint loads into either."""

import functools

import torch

from .. import nn as lenetx_nn
from .improved_lenet import ImprovedLeNet
from .lenet5 import LeNet5
from .vgg import CONFIGS, VGG

BACKENDS = {"lenetx": lenetx_nn, "torch": torch.nn}

MODELS = {
    "lenet5": LeNet5,
    "improved_lenet": ImprovedLeNet,
    **{name: functools.partial(VGG, config=name) for name in CONFIGS},
}


def create(name, num_classes=10, in_channels=1, backend="lenetx", image_size=None):
    """Builds model `name` (see MODELS) for images of `in_channels` x image_size x image_size;
    image_size defaults to 28 for one channel (MNIST-like) and 32 otherwise (CIFAR-like)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if image_size is None:
        image_size = 28 if in_channels == 1 else 32
    return MODELS[name](BACKENDS[backend], num_classes=num_classes, in_channels=in_channels,
                        image_size=image_size)


__all__ = ["create", "MODELS", "BACKENDS", "LeNet5", "ImprovedLeNet", "VGG"]

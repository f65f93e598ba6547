"""VGG (Simonyan and Zisserman, 2014) with batch norm, sized for 32x32 images: stacks of 3x3
convolutions and 2x2 max pools, then fully connected layers."""

import torch

from ..shapes import conv_output_size
from ._padding import PadTo32

CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class VGG(PadTo32, torch.nn.Module):
    def __init__(self, layers, config, num_classes=10, in_channels=3, image_size=32):
        super().__init__()
        features, channels, size = [], in_channels, self.init_padding(image_size)
        for item in CONFIGS[config]:
            if item == "M":
                features.append(layers.MaxPool2d(2))
                size = conv_output_size(size, 2, stride=2)
            else:
                features += [layers.Conv2d(channels, item, 3, padding=1, bias=False),
                             torch.nn.BatchNorm2d(item), torch.nn.ReLU(inplace=True)]
                channels = item
        self.features = torch.nn.Sequential(*features)
        self.classifier = torch.nn.Sequential(
            torch.nn.Linear(channels * size * size, 512), torch.nn.ReLU(inplace=True),
            torch.nn.Dropout(0.5), torch.nn.Linear(512, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(self.pad_input(x)).flatten(1))

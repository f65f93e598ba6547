"""LeNet-5 (LeCun et al., 1998) as in the course notes: conv 6@5x5, average pool, conv 16@5x5,
average pool, conv 120@5x5, fully connected 84, fully connected 10, with ReLU activations."""

import torch

from ..nn import conv_relu_mlp, conv_relu_pool
from ..shapes import conv_output_size
from ._padding import PadTo32


class LeNet5(PadTo32, torch.nn.Module):
    def __init__(self, layers, num_classes=10, in_channels=1, image_size=32):
        super().__init__()
        if image_size < 28:
            raise ValueError(f"LeNet-5 needs images of at least 28x28, but got image_size={image_size}")
        size = self.init_padding(image_size)
        self.conv1 = layers.Conv2d(in_channels, 6, 5)
        self.pool1 = layers.AvgPool2d(2)
        self.conv2 = layers.Conv2d(6, 16, 5)
        self.pool2 = layers.AvgPool2d(2)
        self.conv3 = layers.Conv2d(16, 120, 5)
        for kernel, stride in ((5, 1), (2, 2), (5, 1), (2, 2), (5, 1)):
            size = conv_output_size(size, kernel, stride=stride)
        self.fc1 = torch.nn.Linear(120 * size * size, 84)
        self.fc2 = torch.nn.Linear(84, num_classes)

    def forward(self, x):
        x = conv_relu_pool(self.conv1, self.pool1, x, input_padding=self.input_padding)
        x = conv_relu_pool(self.conv2, self.pool2, x)
        return conv_relu_mlp(self.conv3, (self.fc1, self.fc2), x)

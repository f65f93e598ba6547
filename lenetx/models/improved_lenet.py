"""The course notes' improved LeNet: conv1 1->16 3x3, conv2 16->32 5x5, max pooling instead of
average pooling, then two fully connected layers with dropout."""

import torch
import torch.nn.functional as F

from ..nn import conv_relu_pool
from ..shapes import conv_output_size


class ImprovedLeNet(torch.nn.Module):
    def __init__(self, layers, num_classes=10, in_channels=1, image_size=28):
        super().__init__()
        self.conv1 = layers.Conv2d(in_channels, 16, 3, padding=1)
        self.pool1 = layers.MaxPool2d(2)
        self.conv2 = layers.Conv2d(16, 32, 5, padding=2)
        self.pool2 = layers.MaxPool2d(2)
        size = image_size
        for kernel, padding, stride in ((3, 1, 1), (2, 0, 2), (5, 2, 1), (2, 0, 2)):
            size = conv_output_size(size, kernel, padding=padding, stride=stride)
        self.fc1 = torch.nn.Linear(32 * size * size, 256)
        self.dropout = torch.nn.Dropout(0.3)
        self.fc2 = torch.nn.Linear(256, num_classes)

    def forward(self, x):
        x = conv_relu_pool(self.conv1, self.pool1, x)
        x = conv_relu_pool(self.conv2, self.pool2, x).flatten(1)
        return self.fc2(self.dropout(F.relu(self.fc1(x))))

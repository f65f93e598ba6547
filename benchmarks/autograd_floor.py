"""Batch-1 average pooling's forward+backward beside autograd's fixed cost. `lenetx bench` times
a forward+backward as `torch.autograd.grad(pool(x), x, upstream)`; here the same call also runs
the cheapest graph there is, x.sum() on the same input, in the pooling's place. torch's time over
that floor is the highest ratio any pooling kernel could show in those rows.

    python benchmarks/autograd_floor.py
"""

import torch
import torch.nn.functional as F

import lenetx.functional as LF
from lenetx import bench

DEVICE = torch.device("cpu")


def main():
    print("| batch-1 input | lenetx us | x.sum() us | torch us | torch / lenetx | torch / x.sum() (ceiling) |")
    print("|---|---:|---:|---:|---:|---:|")
    for layer, channels, size in (("pool1", 6, 28), ("pool2", 16, 10)):
        x = torch.randn(1, channels, size, size, requires_grad=True)
        upstream = torch.randn(1, channels, size // 2, size // 2)
        one = torch.tensor(1.0)

        def theirs():
            return torch.autograd.grad(F.avg_pool2d(x, 2), x, upstream)

        def ours():
            return torch.autograd.grad(LF.avg_pool2d(x, 2), x, upstream)

        def floor():
            return torch.autograd.grad(x.sum(), x, one)

        ours_s, theirs_s, ratio = bench.time_pair(bench.Case(layer, "lenetx", ours, theirs), DEVICE)
        floor_s, _, ceiling = bench.time_pair(bench.Case(layer, "x.sum()", floor, theirs), DEVICE)
        print(f"| {layer} {channels}x{size}x{size} | {1e6 * ours_s:.1f} | {1e6 * floor_s:.1f} | {1e6 * theirs_s:.1f} "
              f"| {ratio:.2f} | {ceiling:.2f} |")


if __name__ == "__main__":
    main()

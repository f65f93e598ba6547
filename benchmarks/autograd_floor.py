"""Batch-1 average pooling's forward+backward beside autograd's fixed cost: `lenetx bench`'s own
cases, `torch.autograd.grad(pool(x), x, upstream)`, and the same call on the cheapest graph there
is, x.sum() of an input of the same shape, in the pooling's place. torch's time over that floor
is the highest ratio any pooling kernel could show in those rows.

    python benchmarks/autograd_floor.py
"""

import torch

from lenetx import bench

DEVICE = torch.device("cpu")


def main():
    print("| batch-1 input | lenetx us | x.sum() us | torch us | torch / lenetx | torch / x.sum() (ceiling) |")
    print("|---|---:|---:|---:|---:|---:|")
    for layer, channels, size in (("pool1", 6, 28), ("pool2", 16, 10)):
        _, forward_backward = bench._pool_cases("", layer, 1, channels, size, "avg", DEVICE)
        x = torch.randn(1, channels, size, size, requires_grad=True)
        one = torch.tensor(1.0)
        floor = bench.Case("", "x.sum()", lambda: torch.autograd.grad(x.sum(), x, one), forward_backward.torch)
        ours_s, theirs_s, ratio = bench.time_pair(forward_backward, DEVICE)
        floor_s, _, ceiling = bench.time_pair(floor, DEVICE)
        print(f"| {layer} {channels}x{size}x{size} | {1e6 * ours_s:.1f} | {1e6 * floor_s:.1f} | {1e6 * theirs_s:.1f} "
              f"| {ratio:.2f} | {ceiling:.2f} |")


if __name__ == "__main__":
    main()

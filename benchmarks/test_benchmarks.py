"""pytest-benchmark view of the `lenetx bench` cases: each case timed for lenetx and for torch,
grouped side by side. Run with `pytest benchmarks --benchmark-only` (never part of the tests)."""

import pytest
import torch

from lenetx import bench

DEVICE = torch.device("cpu")
CASES = bench.layer_cases(DEVICE, batches=(64,), vgg_batch=16) + bench.model_cases(DEVICE, vgg_batch=16)


@pytest.mark.parametrize("side", ["lenetx", "torch"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(benchmark, case, side):
    benchmark.group = f"{case.group}: {case.name}"
    benchmark(getattr(case, side))

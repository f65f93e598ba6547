import os
import subprocess
import sys

import pytest

import lenetx
from lenetx._extension import CPU_ISA_VARIABLE, CPU_ISAS, check_cpu_isa, check_torch_version


def test_version_and_cpu_capability():
    assert lenetx.__version__.count(".") == 2
    assert lenetx.cpu_capability() in CPU_ISAS


def test_unknown_cpu_isa_is_refused_with_the_value_and_the_choices():
    check_cpu_isa(None)
    check_cpu_isa("avx2")
    with pytest.raises(ValueError, match=r"LENETX_CPU_ISA='sse4' is not one of avx512, avx2, baseline"):
        check_cpu_isa("sse4")


# Each of the convolution kernels' builds at or below this machine's: every path family (row and
# pixel tiles, padded rows, Winograd, products, transposed grad_input, channel vectors, the fused
# operator, average and max) against torch, forward and backward, in a process started with
# LENETX_CPU_ISA.
ISA_CHECK = """
import torch, torch.nn.functional as F, lenetx, lenetx.functional as LF
torch.manual_seed(0)
print(lenetx.cpu_capability())
for n, c_in, c_out, size, k, pad, stride in [(2, 6, 16, 14, 5, 0, 1), (2, 1, 16, 28, 3, 1, 1),
        (2, 16, 32, 14, 5, 2, 1), (2, 16, 120, 5, 5, 0, 1), (2, 3, 20, 17, 3, 1, 2), (2, 24, 40, 6, 3, 1, 1),
        (2, 1, 6, 32, 5, 0, 1)]:
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(n, c_in, size, size, dtype=dtype, requires_grad=True)
        w = torch.randn(c_out, c_in, k, k, dtype=dtype, requires_grad=True)
        b = torch.randn(c_out, dtype=dtype, requires_grad=True)
        ours = LF.conv2d(x, w, b, stride=stride, padding=pad)
        theirs = F.conv2d(x, w, b, stride=stride, padding=pad)
        up = torch.randn_like(theirs)
        tol = dict(atol=1e-3 * theirs.abs().max().item(), rtol=1e-3)
        torch.testing.assert_close(ours, theirs, **tol)
        for g, h in zip(torch.autograd.grad(ours, (x, w, b), up), torch.autograd.grad(theirs, (x, w, b), up)):
            torch.testing.assert_close(g, h, atol=1e-3 * h.abs().max().item(), rtol=1e-3)
        for max_pool in (False, True) if theirs.shape[-1] >= 2 else ():
            fused = LF.conv2d_relu_pool2d(x, w, b, stride=stride, padding=pad, pool_size=2, max_pool=max_pool)
            pool = F.max_pool2d if max_pool else F.avg_pool2d
            plain = pool(F.relu(F.conv2d(x, w, b, stride=stride, padding=pad)), 2)
            torch.testing.assert_close(fused, plain, **tol)
            up = torch.randn_like(plain)
            for g, h in zip(torch.autograd.grad(fused, (x, w, b), up), torch.autograd.grad(plain, (x, w, b), up)):
                torch.testing.assert_close(g, h, atol=1e-3 * h.abs().max().item(), rtol=1e-3)
"""


@pytest.mark.parametrize("isa", CPU_ISAS)
def test_each_convolution_build_matches_torch(isa):
    order = list(reversed(CPU_ISAS))
    if order.index(isa) > order.index(lenetx.cpu_capability()):
        pytest.skip(f"this CPU does not run {isa}")
    result = subprocess.run([sys.executable, "-c", ISA_CHECK], env={**os.environ, CPU_ISA_VARIABLE: isa},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[0] == isa


def test_mismatched_torch_build_is_refused_with_both_versions_and_the_fix():
    check_torch_version("2.14.1+cu130", "2.14.1+cu130")
    with pytest.raises(ImportError, match=r"built against torch 2\.13\.0.*torch 2\.14\.1 is imported.*pip install"):
        check_torch_version("2.13.0", "2.14.1")


@pytest.mark.parametrize("args, expected", [
    (dict(input=5, kernel=3), 3),
    (dict(input=5, kernel=3, padding=1, stride=2), 3),
    (dict(input=32, kernel=5), 28),  # LeNet-5 C1
    (dict(input=28, kernel=2, stride=2), 14),  # S2
    (dict(input=7, kernel=3, stride=2, dilation=2), 2),
    (dict(input=6, kernel=3, stride=2), 2),
    (dict(input=6, kernel=3, stride=2, ceil_mode=True), 3),
    (dict(input=5, kernel=2, stride=2, padding=1, ceil_mode=True), 3),  # last window in padding: dropped
])
def test_conv_output_size(args, expected):
    assert lenetx.conv_output_size(**args) == expected


@pytest.mark.parametrize("args, message", [
    (dict(input=5, kernel=0), "kernel=0"), (dict(input=5, kernel=3, stride=0), "stride=0"),
    (dict(input=5, kernel=3, padding=-1), "padding=-1"), (dict(input=-1, kernel=3), "input=-1"),
    (dict(input=5, kernel=3, dilation=1.5), "dilation=1.5"),
    (dict(input=4, kernel=5), "output size would be 0: kernel=5.*input=4"),
])
def test_conv_output_size_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        lenetx.conv_output_size(**args)

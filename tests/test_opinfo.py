"""PyTorch's own OpInfo sample and error inputs for the four functions, run through lenetx."""

import pytest
import torch

import lenetx.functional as LF

common_methods_invocations = pytest.importorskip(
    "torch.testing._internal.common_methods_invocations", reason="needs expecttest")

NAMES = ("conv2d", "avg_pool2d", "max_pool2d", "adaptive_avg_pool2d")
OPINFOS = {op.name.removeprefix("nn.functional."): op for op in common_methods_invocations.op_db
           if op.name.removeprefix("nn.functional.") in NAMES and not op.variant_test_name}


def _leaves(sample):
    tensors = [sample.input, *(a for a in sample.args if isinstance(a, torch.Tensor)),
               *(v for v in sample.kwargs.values() if isinstance(v, torch.Tensor))]
    return [t for t in tensors if t.requires_grad]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_opinfo_samples_match_torch(name, dtype):
    opinfo = OPINFOS[name]
    samples = list(opinfo.sample_inputs("cpu", dtype, requires_grad=True))
    assert samples
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    for sample in samples:
        theirs = opinfo.op(sample.input, *sample.args, **sample.kwargs)
        ours = getattr(LF, name)(sample.input, *sample.args, **sample.kwargs)
        torch.testing.assert_close(ours, theirs, equal_nan=True, **tol)
        theirs, ours = (theirs[0], ours[0]) if isinstance(theirs, tuple) else (theirs, ours)
        leaves = _leaves(sample)
        if leaves and theirs.numel():
            upstream = torch.randn_like(theirs)
            torch.testing.assert_close(torch.autograd.grad(ours, leaves, upstream, allow_unused=True),
                                       torch.autograd.grad(theirs, leaves, upstream, allow_unused=True),
                                       **tol)


@pytest.mark.parametrize("name", NAMES)
def test_opinfo_error_inputs_are_rejected(name):
    opinfo = OPINFOS[name]
    errors = list(opinfo.error_inputs("cpu"))
    assert errors
    for error in errors:
        sample = error.sample_input
        with pytest.raises((RuntimeError, ValueError, TypeError)):
            getattr(LF, name)(sample.input, *sample.args, **sample.kwargs)

"""Shared helpers: input layouts, tolerances, and comparing a lenetx function with torch's,
forward and every gradient, on the same inputs and upstream gradient."""

import torch

LAYOUTS = ("contiguous", "channels_last", "strided")


def make_input(shape, dtype, layout, generator, device="cpu"):
    """A random tensor of `shape` stored in the given memory layout."""
    if layout == "strided":
        # Every other column of a wider tensor: a view with a non-unit innermost stride.
        wide = torch.randn(*shape[:-1], 2 * shape[-1], dtype=dtype, generator=generator)
        return wide.to(device)[..., ::2]
    tensor = torch.randn(*shape, dtype=dtype, generator=generator).to(device)
    if layout == "channels_last" and tensor.dim() == 4:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def tolerances(dtype, expected):
    """rtol and atol for comparing with `expected`. A float32 sum of many terms rounds at the
    scale of its largest values, not of the result (Winograd's transforms mix a whole tile), so
    atol also grows with the largest finite magnitude in `expected`."""
    if dtype == torch.float64:
        return dict(rtol=1e-9, atol=1e-9)
    finite = expected[expected.isfinite()]
    scale = finite.abs().max().item() if finite.numel() else 0.0
    return dict(rtol=2e-4, atol=2e-4 + 2e-5 * scale)


def assert_matches_torch(ours, theirs, tensors, dtype, generator, grad=True):
    """Runs `ours(*tensors)` and `theirs(*tensors)` on leaf copies of `tensors` (None entries are
    passed through) and compares the outputs and, if `grad`, the gradients of every tensor."""

    def leaves():
        return [None if t is None else t.detach().clone().requires_grad_(grad) for t in tensors]

    ours_in, theirs_in = leaves(), leaves()
    ours_out, theirs_out = ours(*ours_in), theirs(*theirs_in)
    if not isinstance(ours_out, tuple):
        ours_out, theirs_out = (ours_out,), (theirs_out,)
    for a, b in zip(ours_out, theirs_out):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, **tolerances(dtype, b.detach()), equal_nan=True)
    if not grad or ours_out[0].numel() == 0:
        return
    upstream = torch.randn(ours_out[0].shape, dtype=dtype, generator=generator).to(ours_out[0].device)
    ours_out[0].backward(upstream)
    theirs_out[0].backward(upstream)
    for a, b in zip(ours_in, theirs_in):
        if a is not None:
            torch.testing.assert_close(a.grad, b.grad, **tolerances(dtype, b.grad))


def assert_compiled_matches_eager(model, x, **compile_options):
    """torch.compile(model, fullgraph=True) gives the eager output and parameter gradients."""
    compiled = torch.compile(model, fullgraph=True, **compile_options)
    eager_out = model(x)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(model.parameters()))
    compiled_out = compiled(x)
    compiled_grads = torch.autograd.grad(compiled_out.square().sum(), list(model.parameters()))
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

"""Swap torch.nn convolution and pooling layers of any model for lenetx's."""

import copy
import warnings

import torch

from .nn import REPLACEMENTS, Sequential

SUPPORTED_DTYPES = (torch.float32, torch.float64)


def _reason_to_skip(module):
    """Why `module` cannot run on lenetx kernels, or None if it can."""
    if any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in module.parameters()):
        return "its parameters are not initialised yet (lazy module)"
    if type(module) not in REPLACEMENTS:
        return (f"{type(module).__module__}.{type(module).__qualname__} subclasses a torch.nn "
                "layer and may change its behaviour")
    dtypes = {p.dtype for p in module.parameters()}
    if not dtypes <= set(SUPPORTED_DTYPES):
        return f"its parameters have dtype {sorted(map(str, dtypes))}; lenetx takes float32/float64"
    return None


def convert(model: torch.nn.Module, inplace: bool = False) -> torch.nn.Module:
    """Returns `model` with every torch.nn Conv2d, AvgPool2d, MaxPool2d and AdaptiveAvgPool2d
    running on lenetx kernels, and every torch.nn.Sequential running a convolution, ReLU and
    pooling in a row as one fused operator (lenetx.nn.Sequential).

    Each layer keeps its identity (the module object changes class, nothing else), so parameters,
    buffers, names, train/eval mode, hooks and optimizer references all stay valid. Layers that
    cannot be converted are left as they are and listed in one warning.
    """
    if not inplace:
        model = copy.deepcopy(model)
    skipped = []
    for name, module in model.named_modules():
        if type(module) is torch.nn.Sequential:  # not a subclass, which may have its own forward
            module.__class__ = Sequential
            continue
        if not isinstance(module, tuple(REPLACEMENTS)) or type(module) in REPLACEMENTS.values():
            continue
        reason = _reason_to_skip(module)
        if reason is None:
            module.__class__ = REPLACEMENTS[type(module)]
        else:
            skipped.append(f"{name or '<model>'}: {reason}")
    if skipped:
        warnings.warn("lenetx.convert left these layers on torch.nn:\n  " + "\n  ".join(skipped),
                      stacklevel=2)
    return model

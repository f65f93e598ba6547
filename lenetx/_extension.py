"""Loads the compiled kernels (lenetx._C), refusing a build made against another torch."""

import os

import torch

REBUILD_HINT = "rebuild lenetx from its source tree: pip install --no-build-isolation --force-reinstall --no-deps ."


def check_torch_version(built_with: str, running: str) -> None:
    if built_with != running:
        raise ImportError(
            f"lenetx's kernels were built against torch {built_with}, but torch {running} is "
            f"imported; {REBUILD_HINT}"
        )


CPU_ISA_VARIABLE = "LENETX_CPU_ISA"
CPU_ISAS = ("avx512", "avx2", "baseline")


def check_cpu_isa(requested) -> None:
    """LENETX_CPU_ISA, read by the kernels when they load, must name one of their builds."""
    if requested is not None and requested not in CPU_ISAS:
        raise ValueError(f"{CPU_ISA_VARIABLE}={requested!r} is not one of {', '.join(CPU_ISAS)}")


def load():
    """Returns lenetx._C once its build is known to match the torch imported."""
    try:
        from . import _build_info
    except ImportError:
        raise ImportError(f"lenetx's kernels (lenetx._C) are not built; {REBUILD_HINT}") from None
    check_torch_version(_build_info.TORCH_VERSION, torch.__version__)
    check_cpu_isa(os.environ.get(CPU_ISA_VARIABLE))
    from . import _C  # registers the lenetx operators with the dispatcher

    return _C


kernels = load()

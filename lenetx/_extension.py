"""Loads the compiled kernels (lenetx._C), refusing a build made against another torch."""

import torch

REBUILD_HINT = "rebuild lenetx from its source tree: pip install --no-build-isolation --force-reinstall --no-deps ."


def check_torch_version(built_with: str, running: str) -> None:
    if built_with != running:
        raise ImportError(
            f"lenetx's kernels were built against torch {built_with}, but torch {running} is "
            f"imported; {REBUILD_HINT}"
        )


def load() -> None:
    try:
        from . import _build_info
    except ImportError:
        raise ImportError(f"lenetx's kernels (lenetx._C) are not built; {REBUILD_HINT}") from None
    check_torch_version(_build_info.TORCH_VERSION, torch.__version__)
    from . import _C  # noqa: F401  (registers the lenetx operators with the dispatcher)


load()

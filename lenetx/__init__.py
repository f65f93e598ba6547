"""lenetx: convolution and pooling kernels of our own for PyTorch, drop-in layers, and the
LeNet/VGG image-recognition models and tools built on them."""

from . import functional, nn, ops
from .convert import convert
from .shapes import conv_output_size
from .version import __version__


def cpu_capability() -> str:
    """The instruction set lenetx's CPU convolution kernels run with: "avx512", "avx2" or
    "baseline", the widest this machine runs unless the environment variable LENETX_CPU_ISA
    names a lower one."""
    from ._extension import kernels

    return kernels.cpu_capability()


__all__ = ["functional", "nn", "ops", "convert", "conv_output_size", "cpu_capability", "__version__"]

"""Output-size arithmetic of convolution and pooling, as in the course notes and in PyTorch."""


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        raise ValueError(f"{name} must be {kind} integer, but got {name}={value!r}")


def conv_output_size(input, kernel, padding=0, stride=1, dilation=1, ceil_mode=False):
    """Size of a convolution or pooling output along one dimension.

    ``floor((input + 2*padding - dilation*(kernel-1) - 1) / stride) + 1``; with ``dilation=1`` this
    is the course notes' ``floor((input - kernel + 2*padding) / stride) + 1``. ``ceil_mode=True``
    rounds up instead, as pooling layers do, except that the last window must start inside the
    input or its left padding.
    """
    _check_int("input", input, 0)
    _check_int("kernel", kernel, 1)
    _check_int("padding", padding, 0)
    _check_int("stride", stride, 1)
    _check_int("dilation", dilation, 1)
    size = pooled_size(input, kernel, padding, stride, dilation, ceil_mode)
    if size < 1:
        raise ValueError(
            f"output size would be {size}: kernel={kernel} (dilation={dilation}) does not fit in "
            f"input={input} with padding={padding}"
        )
    return size


def pooled_size(input, kernel, padding, stride, dilation, ceil_mode):
    # Unchecked (SymInt-friendly) form, used by the fake kernels too.
    span = input + 2 * padding - dilation * (kernel - 1) - 1
    size = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (size - 1) * stride >= input + padding:
        size -= 1
    return size

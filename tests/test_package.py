import pytest

import lenetx
from lenetx._extension import check_torch_version


def test_version_and_cpu_capability():
    assert lenetx.__version__.count(".") == 2
    assert lenetx.cpu_capability() in {"avx512", "avx2", "x86-64", "default"}


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

"""The functional interface's eager entry points (csrc/python_functional.cpp): arguments as torch
takes them, every call through the dispatcher, the GIL released while the kernels run, and the
calls kept whole under torch.compile."""

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import lenetx.functional as LF

CALLS = [
    ("conv2d", (torch.randn(5, 3, 3, 3),), dict(padding=1), "conv2d"),
    ("avg_pool2d", (2,), dict(ceil_mode=True), "avg_pool2d"),
    ("max_pool2d", (3,), dict(stride=2, padding=1), "max_pool2d_with_indices"),
    ("adaptive_avg_pool2d", ((None, 3),), {}, "adaptive_avg_pool2d"),
    ("conv2d_relu_pool2d", (torch.randn(5, 3, 3, 3),), dict(padding=1, max_pool=True), "conv2d_relu_pool2d"),
]


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=np.int64(3), stride=(np.int32(2), 1), padding=torch.tensor(1)),
    dict(kernel_size=torch.Size([3, 2]), stride=[2], padding=(1, np.int8(0))),
])
@pytest.mark.parametrize("name", ["avg_pool2d", "max_pool2d"])
def test_integer_like_arguments_are_taken_as_torch_takes_them(name, kwargs, generator):
    input = torch.randn(2, 3, 9, 8, generator=generator)
    torch.testing.assert_close(getattr(LF, name)(input, **kwargs), getattr(F, name)(input, **kwargs),
                               rtol=0, atol=1e-6)
    weight = torch.randn(4, 3, 3, 3, generator=generator)
    conv_kwargs = dict(stride=kwargs["stride"], padding=kwargs["padding"], groups=np.int64(1))
    torch.testing.assert_close(LF.conv2d(input, weight, **conv_kwargs), F.conv2d(input, weight, **conv_kwargs),
                               rtol=1e-5, atol=1e-5)


class RecordOperators(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name, args, kwargs, operator", CALLS, ids=[c[0] for c in CALLS])
def test_calls_go_through_the_dispatcher(name, args, kwargs, operator, generator):
    input = torch.randn(2, 3, 8, 8, generator=generator)
    with RecordOperators() as mode:
        expected = getattr(LF, name)(input, *args, **kwargs)
    assert getattr(torch.ops.lenetx, operator).default in mode.seen
    with FakeTensorMode() as fake:
        fake_args = [fake.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        output = getattr(LF, name)(fake.from_tensor(input), *fake_args, **kwargs)
    assert output.shape == expected.shape and output.dtype == expected.dtype


def test_calls_from_threads_match_serial_calls(generator):
    inputs = [torch.randn(8, 3, 16, 16, generator=generator) for _ in range(4)]
    weight = torch.randn(6, 3, 5, 5, generator=generator)

    def layers(x):
        return LF.adaptive_avg_pool2d(LF.max_pool2d(LF.avg_pool2d(LF.conv2d(x, weight, padding=2), 2), 2), 3)

    serial = [layers(x) for x in inputs]
    threaded = [None] * len(inputs)

    def run(i):
        for _ in range(20):
            threaded[i] = layers(inputs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for a, b in zip(threaded, serial):
        assert torch.equal(a, b)


def test_torch_compile_keeps_the_calls_whole_with_dynamic_shapes(generator):
    first, second = torch.randn(4, 3, 3, 3, generator=generator), torch.randn(3, 4, 3, 3, generator=generator)

    def layers(x):
        y = LF.conv2d_relu_pool2d(x, first, None, padding="same")
        y = LF.max_pool2d(LF.conv2d(y, second, padding=1), 2, ceil_mode=True)
        return LF.adaptive_avg_pool2d(LF.avg_pool2d(y, 1), (None, 1))

    compiled = torch.compile(layers, fullgraph=True, dynamic=True)
    for shape in [(2, 3, 12, 12), (3, 3, 16, 20), (3, 14, 14)]:
        input = torch.randn(shape, generator=generator)
        torch.testing.assert_close(compiled(input), layers(input), rtol=1e-5, atol=1e-5)

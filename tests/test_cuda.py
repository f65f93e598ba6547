"""The CUDA kernels: the CPU suite's parity grids, gradcheck, opcheck and torch.compile on the
GPU, CPU-versus-CUDA agreement, and float16/bfloat16 accuracy. Skipped without a GPU."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_matches_torch, make_input
from test_conv2d import EDGE_CASES, generated_cases, run_case
from test_opcheck import TinyLeNet, opcheck_samples
from test_pooling import avg_cases, pool_cases

import lenetx.functional as LF

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def exact_float32():
    # cuDNN, the reference, must not round float32 through TF32.
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.mark.parametrize("case", generated_cases() + EDGE_CASES, ids=range(len(generated_cases()) + len(EDGE_CASES)))
def test_conv2d_matches_torch_on_cuda(case, generator):
    run_case(case, generator, device="cuda")


def _pool_check(name, case, generator, relu_input=False):
    case = dict(case)
    dtype = case.pop("dtype")
    input = make_input(case.pop("shape"), dtype, case.pop("layout"), generator, "cuda")
    if name == "max_pool2d":
        case["return_indices"] = True
    relu = F.relu if relu_input else (lambda x: x)
    assert_matches_torch(lambda x: getattr(LF, name)(x, **case, relu_input=relu_input),
                         lambda x: getattr(F, name)(relu(x), **case), [input], dtype, generator)


@pytest.mark.parametrize("case", avg_cases(), ids=range(len(avg_cases())))
def test_avg_pool2d_matches_torch_on_cuda(case, generator):
    _pool_check("avg_pool2d", case, generator)


@pytest.mark.parametrize("case", pool_cases(150, 9, dilated=True), ids=range(150))
def test_max_pool2d_matches_torch_on_cuda(case, generator):
    _pool_check("max_pool2d", case, generator)


@pytest.mark.parametrize("name, case", [("avg_pool2d", c) for c in avg_cases()[:40]] +
                         [("max_pool2d", c) for c in pool_cases(40, 10, dilated=True)], ids=range(80))
def test_pooling_of_relu_matches_torch_on_cuda(name, case, generator):
    _pool_check(name, case, generator, relu_input=True)


@pytest.mark.parametrize("output_size", [1, (5, 7), (4, None), (13, 6), (0, 3)], ids=str)
def test_adaptive_avg_pool2d_matches_torch_on_cuda(output_size, generator):
    input = torch.randn(2, 3, 9, 11, generator=generator).cuda()
    assert_matches_torch(lambda x: LF.adaptive_avg_pool2d(x, output_size),
                         lambda x: F.adaptive_avg_pool2d(x, output_size), [input], torch.float32, generator)


FUNCTIONS = [
    ("conv2d", lambda x, w: LF.conv2d(x, w, stride=(2, 1), padding=1, dilation=(1, 2))),
    ("avg_pool2d", lambda x, w: LF.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
    ("max_pool2d", lambda x, w: LF.max_pool2d(x, 3, 2, 1, dilation=2)),
    ("adaptive_avg_pool2d", lambda x, w: LF.adaptive_avg_pool2d(x, (3, 5))),
]


@pytest.mark.parametrize("name, fn", FUNCTIONS, ids=[n for n, _ in FUNCTIONS])
def test_cpu_and_cuda_agree(name, fn, generator):
    x = torch.randperm(2 * 4 * 11 * 10, generator=generator).double().view(2, 4, 11, 10) / 100
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64, generator=generator)
    results = []
    for device in ("cpu", "cuda"):
        xd = x.to(device).requires_grad_()
        wd = w.to(device).requires_grad_()
        out = fn(xd, wd)
        grads = torch.autograd.grad(out.square().sum(), [xd, wd] if name == "conv2d" else [xd])
        results.append([t.cpu() for t in (out, *grads)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def gradcheck_inputs(name, generator):
    x = (torch.randperm(2 * 4 * 11 * 10, generator=generator).double().view(2, 4, 11, 10) / 100).cuda()
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64, generator=generator).cuda()
    return (x.requires_grad_(), w.requires_grad_(name == "conv2d"))


@pytest.mark.parametrize("name, fn", FUNCTIONS, ids=[n for n, _ in FUNCTIONS])
def test_gradcheck_on_cuda(name, fn, generator):
    assert torch.autograd.gradcheck(fn, gradcheck_inputs(name, generator))


@pytest.mark.parametrize("name, fn", FUNCTIONS, ids=[n for n, _ in FUNCTIONS])
def test_gradgradcheck_on_cuda(name, fn, generator):
    assert torch.autograd.gradgradcheck(fn, gradcheck_inputs(name, generator))


@pytest.mark.parametrize("name, args", opcheck_samples(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck_on_cuda(name, args):
    moved = [a.detach().cuda().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
             for a in args]
    torch.library.opcheck(getattr(torch.ops.lenetx, name).default, tuple(moved))


def test_torch_compile_on_cuda_matches_eager():
    torch.manual_seed(0)
    model = TinyLeNet().cuda()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(4, 1, 28, 28, device="cuda")
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    grads = [torch.autograd.grad(m(x).square().sum(), list(model.parameters())) for m in (compiled, model)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name, fn", FUNCTIONS, ids=[n for n, _ in FUNCTIONS])
def test_half_precision_against_a_float32_reference(name, fn, dtype, generator):
    x = torch.randn(4, 4, 11, 10, generator=generator).cuda()
    w = torch.randn(6, 4, 3, 3, generator=generator).cuda() / 6
    reference = fn(x, w)
    low = fn(x.to(dtype), w.to(dtype))
    assert low.dtype == dtype
    error = (low.float() - reference).norm() / reference.norm()
    assert error < (5e-3 if dtype == torch.float16 else 3e-2), error


def test_grad_weight_is_deterministic_on_cuda(generator):
    x = torch.randn(64, 16, 14, 14, generator=generator).cuda()
    w = torch.randn(32, 16, 5, 5, generator=generator).cuda().requires_grad_()
    grads = [torch.autograd.grad(LF.conv2d(x, w).sum(), w)[0] for _ in range(3)]
    assert all(torch.equal(grads[0], g) for g in grads[1:])

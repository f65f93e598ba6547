"""lenetx.functional under the __torch_function__ protocol, as torch.nn.functional's Python
functions: torch.fx symbolic tracing of the models and of a converted torchvision model (its
feature extraction), and a TorchFunctionMode seeing each call; torch.jit tracing of the models."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

import lenetx
import lenetx.functional as LF
from lenetx import models


class Calls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.functions = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.functions.append(func)
        return func(*args, **(kwargs or {}))


CALLS = [
    (LF.conv2d, lambda: (torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4)), dict(padding=1)),
    (LF.conv2d_relu_pool2d, lambda: (torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)), dict(max_pool=True)),
    (LF.mlp, lambda: (torch.randn(2, 5), [torch.randn(4, 5), torch.randn(3, 4)]), dict()),
    (LF.avg_pool2d, lambda: (torch.randn(2, 3, 8, 8), 2), dict(relu_input=True)),
    (LF.max_pool2d, lambda: (torch.randn(2, 3, 8, 8), 2), dict(return_indices=True)),
    (LF.max_pool2d_with_indices, lambda: (torch.randn(2, 3, 8, 8), 3), dict(stride=2)),
    (LF.adaptive_avg_pool2d, lambda: (torch.randn(2, 3, 8, 8), (3, None)), dict()),
]


@pytest.mark.parametrize("function, args, kwargs", CALLS, ids=[function.__name__ for function, _, _ in CALLS])
def test_a_torch_function_mode_sees_the_call_and_its_result_is_unchanged(function, args, kwargs):
    args = args()
    expected = function(*args, **kwargs)
    with Calls() as calls:
        result = function(*args, **kwargs)
    assert calls.functions[0] is function
    for a, b in zip(result if isinstance(result, tuple) else (result,),
                    expected if isinstance(expected, tuple) else (expected,)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(models.MODELS))
def test_models_trace_with_torch_fx(name):
    torch.manual_seed(0)
    model = models.create(name).eval()
    traced = torch.fx.symbolic_trace(model)
    targets = {node.target for node in traced.graph.nodes if node.op == "call_function"}
    assert targets & {LF.conv2d, LF.conv2d_relu_pool2d}
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
@pytest.mark.parametrize("name", list(models.MODELS))
def test_models_trace_with_torch_jit(name):
    torch.manual_seed(0)
    model = models.create(name).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        assert traced(torch.randn(3, 1, 28, 28)).shape == (3, 10)
        torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-6)


def test_converted_torchvision_model_gives_torchvision_features():
    feature_extraction = pytest.importorskip("torchvision.models.feature_extraction")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10).eval()
    converted = lenetx.convert(torchvision.models.resnet18(num_classes=10)).eval()
    converted.load_state_dict(reference.state_dict())
    nodes = {"layer1": "early", "avgpool": "late"}
    ours = feature_extraction.create_feature_extractor(converted, nodes)
    theirs = feature_extraction.create_feature_extractor(reference, nodes)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features, expected = ours(x), theirs(x)
    for key in ("early", "late"):
        torch.testing.assert_close(features[key], expected[key], rtol=1e-4, atol=1e-4)

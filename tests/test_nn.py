import pickle
import warnings

import pytest
import torch
import torchvision

import lenetx
import lenetx.nn as lnn

LAYER_ARGS = [
    (lnn.Conv2d, torch.nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=3)),
    (lnn.Conv2d, torch.nn.Conv2d, dict(in_channels=4, out_channels=8, kernel_size=(3, 2), stride=2,
                                       padding=(1, 2), dilation=(2, 1), groups=2, bias=False)),
    (lnn.Conv2d, torch.nn.Conv2d, dict(in_channels=4, out_channels=4, kernel_size=4, padding="same")),
    (lnn.Conv2d, torch.nn.Conv2d, dict(in_channels=4, out_channels=4, kernel_size=3, padding="valid")),
    (lnn.AvgPool2d, torch.nn.AvgPool2d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                             count_include_pad=False)),
    (lnn.AvgPool2d, torch.nn.AvgPool2d, dict(kernel_size=2, divisor_override=3)),
    (lnn.MaxPool2d, torch.nn.MaxPool2d, dict(kernel_size=3, stride=2, padding=1, dilation=2)),
    (lnn.MaxPool2d, torch.nn.MaxPool2d, dict(kernel_size=2, return_indices=True, ceil_mode=True)),
    (lnn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool2d, dict(output_size=(3, None))),
] + [
    (lnn.Conv2d, torch.nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=3, padding=2,
                                       padding_mode=mode))
    for mode in ("reflect", "replicate", "circular")
]


@pytest.mark.parametrize("ours, theirs, kwargs", LAYER_ARGS, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_layer_is_a_drop_in_replacement(ours, theirs, kwargs):
    torch.manual_seed(0)
    layer = ours(**kwargs)
    torch.manual_seed(0)
    reference = theirs(**kwargs)
    assert isinstance(layer, theirs)
    assert repr(layer) == repr(reference)
    assert layer.state_dict().keys() == reference.state_dict().keys()
    for key, value in layer.state_dict().items():  # same initialisation from the same seed
        assert torch.equal(value, reference.state_dict()[key])
    reference.load_state_dict(layer.state_dict())

    input = torch.randn(2, 4, 11, 10, requires_grad=True)
    out, expected = layer(input), reference(input)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out, expected = (out[0], expected[0]) if isinstance(out, tuple) else (out, expected)
    grads = torch.autograd.grad(out.sum(), [input, *layer.parameters()])
    ref_grads = torch.autograd.grad(expected.sum(), [input, *reference.parameters()])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert isinstance(pickle.loads(pickle.dumps(layer)), ours)


def test_convert_keeps_module_identity_parameters_hooks_and_mode():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    model.eval()
    calls = []
    model[0].register_forward_hook(lambda module, inputs, output: calls.append(type(module)))
    converted = lenetx.convert(model, inplace=True)
    assert converted is model and not model.training
    assert type(model[0]) is lnn.Conv2d and type(model[2]) is lnn.MaxPool2d
    model(torch.randn(1, 3, 8, 8))
    assert calls == [lnn.Conv2d]


def _conv_relu_pool_model():
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, 4), nn.ReLU())


def _count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_converted_sequential_fuses_conv_relu_pool_and_relu_pool_runs(monkeypatch):
    torch.manual_seed(0)
    model = _conv_relu_pool_model()
    converted = lenetx.convert(model)
    assert type(converted) is lnn.Sequential and list(converted.state_dict()) == list(model.state_dict())
    fused = _count_calls(monkeypatch, lnn.LF, "conv2d_relu_pool2d")
    relu_pooled = _count_calls(monkeypatch, lnn, "relu_pool")
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    out, expected = converted(x), model(x)
    assert fused == ["conv2d_relu_pool2d"] and relu_pooled == ["relu_pool"]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.sum(), [x, *converted.parameters()])
    for a, b in zip(grads, torch.autograd.grad(expected.sum(), [x, *model.parameters()])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_converted_sequential_runs_modules_with_hooks_one_by_one(monkeypatch):
    converted = lenetx.convert(_conv_relu_pool_model())
    calls = []
    converted[1].register_forward_hook(lambda module, inputs, output: calls.append("relu"))
    converted[5].register_forward_pre_hook(lambda module, inputs: calls.append("relu"))
    fused = _count_calls(monkeypatch, lnn.LF, "conv2d_relu_pool2d")
    converted(torch.randn(1, 3, 12, 12))
    assert calls == ["relu", "relu"] and fused == []


def test_convert_leaves_sequential_subclasses_alone():
    class Block(torch.nn.Sequential):
        pass

    converted = lenetx.convert(torch.nn.Sequential(Block(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())))
    assert type(converted) is lnn.Sequential and type(converted[0]) is Block
    assert type(converted[0][0]) is lnn.Conv2d


def test_convert_copies_unless_inplace():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    converted = lenetx.convert(model)
    assert type(model[0]) is torch.nn.Conv2d and type(converted[0]) is lnn.Conv2d


def test_convert_reports_layers_it_leaves_alone():
    class CustomConv(torch.nn.Conv2d):
        pass

    model = torch.nn.Sequential(CustomConv(3, 4, 3), torch.nn.Conv2d(4, 4, 3).half(),
                                torch.nn.LazyConv2d(4, 3), torch.nn.AvgPool2d(2))
    with pytest.warns(UserWarning) as record:
        converted = lenetx.convert(model)
    message = str(record[0].message)
    assert "0: " in message and "CustomConv" in message
    assert "1: " in message and "torch.float16" in message
    assert "2: " in message and "lazy" in message
    assert type(converted[0]) is CustomConv and type(converted[1]) is torch.nn.Conv2d
    assert type(converted[3]) is lnn.AvgPool2d


TORCHVISION_MODELS = ["vgg11", "resnet18", "alexnet", "googlenet", "mobilenet_v2", "squeezenet1_1",
                      "densenet121", "shufflenet_v2_x0_5", "efficientnet_b0", "regnet_y_400mf",
                      "mnasnet0_5"]


def _count_layers(model, classes):
    return sum(type(m) in classes for m in model.modules())


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_convert_takes_every_layer_of_torchvision_classifiers(name):
    kwargs = dict(aux_logits=False, init_weights=False) if name == "googlenet" else {}
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
    before = _count_layers(model, lnn.REPLACEMENTS.keys())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        converted = lenetx.convert(model)
    assert before > 0
    assert _count_layers(converted, lnn.REPLACEMENTS.values()) == before
    assert _count_layers(converted, lnn.REPLACEMENTS.keys()) == 0
    assert list(converted.state_dict()) == list(model.state_dict())


@pytest.mark.parametrize("name, size", [("resnet18", 64), ("squeezenet1_1", 64), ("vgg11_bn", 32),
                                        ("alexnet", 64)])
def test_converted_torchvision_model_gives_the_same_logits_and_trains(name, size):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    converted = lenetx.convert(model)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), rtol=1e-4, atol=1e-5)

    # Train mode: the same gradients as torch (same dropout masks from the same seed), and an
    # optimizer step moves the converted parameters. float64, because batch norm over a batch of
    # two amplifies float32 rounding differences past any useful tolerance.
    model.train().double()
    converted.train().double()
    x = x.double()
    target = torch.tensor([1, 7])
    grads = []
    for network in (converted, model):
        torch.manual_seed(1)
        loss = torch.nn.functional.cross_entropy(network(x), target)
        grads.append(torch.autograd.grad(loss, list(network.parameters())))
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-9)

    optimizer = torch.optim.SGD(converted.parameters(), lr=0.1)
    for parameter, grad in zip(converted.parameters(), grads[0]):
        parameter.grad = grad
    before = [p.detach().clone() for p in converted.parameters()]
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p, g in zip(before, converted.parameters(), grads[0])
               if g.abs().sum() > 0)

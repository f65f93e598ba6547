import pytest
import torch

import lenetx.nn as lnn
from lenetx import models


@pytest.mark.parametrize("name", list(models.MODELS))
@pytest.mark.parametrize("in_channels, size", [(1, 28), (3, 32)])
def test_models_classify_both_backends_with_the_same_parameters(name, in_channels, size):
    torch.manual_seed(0)
    ours = models.create(name, num_classes=7, in_channels=in_channels)
    theirs = models.create(name, num_classes=7, in_channels=in_channels, backend="torch")
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    ours.eval(), theirs.eval()
    x = torch.randn(2, in_channels, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)
    assert ours(x).shape == (2, 7)
    assert any(isinstance(m, lnn.Conv2d) for m in ours.modules())
    assert not any(type(m) in lnn.REPLACEMENTS.values() for m in theirs.modules())


def test_lenet5_is_the_course_notes_network():
    model = models.create("lenet5")
    convs = [(m.in_channels, m.out_channels, m.kernel_size) for m in model.modules() if isinstance(m, lnn.Conv2d)]
    assert convs == [(1, 6, (5, 5)), (6, 16, (5, 5)), (16, 120, (5, 5))]
    assert sum(isinstance(m, lnn.AvgPool2d) for m in model.modules()) == 2
    assert (model.fc1.in_features, model.fc1.out_features, model.fc2.out_features) == (120, 84, 10)
    assert model.input_padding == 2  # 28x28 digits padded to the original 32x32


def test_improved_lenet_is_the_course_notes_network():
    model = models.create("improved_lenet")
    convs = [(m.in_channels, m.out_channels, m.kernel_size) for m in model.modules() if isinstance(m, lnn.Conv2d)]
    assert convs == [(1, 16, (3, 3)), (16, 32, (5, 5))]
    assert sum(isinstance(m, lnn.MaxPool2d) for m in model.modules()) == 2
    assert not any(isinstance(m, lnn.AvgPool2d) for m in model.modules())


def test_vgg16_has_thirteen_3x3_convolutions_and_five_pools():
    model = models.create("vgg16", in_channels=3)
    convs = [m for m in model.modules() if isinstance(m, lnn.Conv2d)]
    assert len(convs) == 13 and all(m.kernel_size == (3, 3) for m in convs)
    assert sum(isinstance(m, lnn.MaxPool2d) for m in model.modules()) == 5


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="lenet7"), "unknown model 'lenet7'"),
    (dict(name="lenet5", backend="mkl"), "unknown backend 'mkl'"),
    (dict(name="lenet5", image_size=20), "image_size=20"),
])
def test_create_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.create(**kwargs)


@pytest.mark.parametrize("name", ["lenet5", "improved_lenet"])
def test_gradient_penalty_matches_torch(name):
    # Second derivatives (create_graph=True) through the fused operators that lenetx.models'
    # LeNets run, as a gradient penalty or a Hessian-vector product takes them.
    torch.manual_seed(0)
    ours = models.create(name).double().eval()
    theirs = models.create(name, backend="torch").double().eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)

    def penalty_gradients(model):
        input = x.clone().requires_grad_()
        (grad_input,) = torch.autograd.grad(model(input).logsumexp(1).sum(), input, create_graph=True)
        return torch.autograd.grad(grad_input.square().sum(), list(model.parameters()))

    for a, b in zip(penalty_gradients(ours), penalty_gradients(theirs), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)

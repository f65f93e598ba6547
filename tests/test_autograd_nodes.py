"""The backward nodes that the operators' autograd kernels record (csrc/autograd.cpp): the graph
they make, the saved tensors they keep and free as torch's own nodes do, compiled autograd and
torch.func's reverse-mode transforms."""

import threading

import pytest
import torch
from torch._dynamo import compiled_autograd

import lenetx.functional as LF


def leaves(generator, *shapes):
    return [torch.randn(*shape, generator=generator, requires_grad=True) for shape in shapes]


# Each differentiable operator: the shapes of its leaves, and the call that makes one output of them.
OPERATORS = {
    "Conv2dBackward": (((2, 3, 8, 8), (4, 3, 3, 3), (4,)), lambda x, w, b: LF.conv2d(x, w, b, padding=1)),
    "Conv2dReluPool2dBackward": (((2, 3, 8, 8), (4, 3, 3, 3), (4,)),
                                 lambda x, w, b: LF.conv2d_relu_pool2d(x, w, b, max_pool=True)),
    "AvgPool2dBackward": (((2, 3, 8, 8),), lambda x: LF.avg_pool2d(x, 3, stride=2, padding=1)),
    "MaxPool2dBackward": (((2, 3, 8, 8),), lambda x: LF.max_pool2d(x, 2)),
    "AdaptiveAvgPool2dBackward": (((2, 3, 8, 8),), lambda x: LF.adaptive_avg_pool2d(x, 3)),
    "MlpBackward": (((4, 12), (8, 12), (5, 8), (5,)), lambda x, w1, w2, b2: LF.mlp(x, [w1, w2], [None, b2])),
}


@pytest.mark.parametrize("name", OPERATORS)
def test_the_node_leads_to_each_input(name, generator):
    shapes, call = OPERATORS[name]
    inputs = leaves(generator, *shapes)
    output = call(*inputs)
    assert output.grad_fn.name() == f"lenetx::{name}"
    accumulators = [edge[0] for edge in output.grad_fn.next_functions if edge[0] is not None]
    assert [a.variable for a in accumulators] == inputs


@pytest.mark.parametrize("name", OPERATORS)
def test_a_second_backward_through_a_freed_graph_raises(name, generator):
    shapes, call = OPERATORS[name]
    inputs = leaves(generator, *shapes)
    output = call(*inputs).sum()
    output.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        output.backward()


@pytest.mark.parametrize("name", OPERATORS)
def test_a_saved_input_changed_in_place_is_caught(name, generator):
    shapes, call = OPERATORS[name]
    inputs = leaves(generator, *shapes)
    first = inputs[0].detach().clone().requires_grad_()
    changed = first * 1
    output = call(changed, *inputs[1:]).sum()
    with torch.no_grad():
        changed.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        output.backward()


@pytest.mark.parametrize("name", OPERATORS)
def test_saved_tensor_hooks_see_what_the_nodes_save(name, generator):
    shapes, call = OPERATORS[name]
    inputs = leaves(generator, *shapes)
    expected = torch.autograd.grad(call(*inputs).sum(), inputs)
    packed = []

    def pack(tensor):
        packed.append(tensor)
        return tensor.clone()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = call(*inputs).sum()
    assert any(any(t is i for i in inputs) for t in packed)
    for got, want in zip(torch.autograd.grad(output, inputs), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


# torch.compile's first call in a process is slow on 2 cores; eager's backend keeps it to tracing.
@pytest.mark.parametrize("name", OPERATORS)
def test_compiled_autograd_matches_eager(name, generator):
    shapes, call = OPERATORS[name]
    inputs = leaves(generator, *shapes)
    upstream = torch.randn(call(*inputs).shape, generator=generator)
    expected = torch.autograd.grad(call(*inputs).sin(), inputs, upstream)
    with compiled_autograd._enable(torch.compile(backend="eager")):
        got = torch.autograd.grad(call(*inputs).sin(), inputs, upstream)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_threads_backward_through_one_retained_graph(generator):
    # Backwards of one retained graph from several threads, as torch allows: each matches a serial one.
    x, w, b = leaves(generator, (4, 3, 12, 12), (6, 3, 5, 5), (6,))
    output = LF.max_pool2d(LF.avg_pool2d(LF.conv2d(x, w, b, padding=2), 2), 2).square().sum()
    expected = torch.autograd.grad(output, (x, w, b), retain_graph=True)
    results = [None] * 8

    def run(i):
        results[i] = [torch.autograd.grad(output, (x, w, b), retain_graph=True) for _ in range(20)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for per_thread in results:
        for grads in per_thread:
            for g, e in zip(grads, expected):
                torch.testing.assert_close(g, e, rtol=0, atol=0)


# The same calls through torch.nn.functional, for torch.func's transforms to match.
TORCH_CALLS = {
    "Conv2dBackward": lambda x, w, b: torch.nn.functional.conv2d(x, w, b, padding=1),
    "AvgPool2dBackward": lambda x: torch.nn.functional.avg_pool2d(x, 3, stride=2, padding=1),
    "MaxPool2dBackward": lambda x: torch.nn.functional.max_pool2d(x, 2),
    "AdaptiveAvgPool2dBackward": lambda x: torch.nn.functional.adaptive_avg_pool2d(x, 3),
}


# jacrev maps the backward over the rows of an identity with torch's per-example fallback.
@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
@pytest.mark.parametrize("name", TORCH_CALLS)
def test_torch_func_transforms_match_torch(name, generator):
    shapes, call = OPERATORS[name]
    inputs = [t.detach() for t in leaves(generator, *shapes)]
    ours, theirs = call, TORCH_CALLS[name]

    def loss(f):
        return lambda *args: f(*args).sin().sum()

    argnums = tuple(range(len(inputs)))
    torch.testing.assert_close(torch.func.grad(loss(ours), argnums)(*inputs),
                               torch.func.grad(loss(theirs), argnums)(*inputs), rtol=1e-5, atol=1e-5)
    # Second derivatives through the backward operators' own nodes.
    torch.testing.assert_close(
        torch.func.grad(lambda x: torch.func.grad(loss(ours))(x, *inputs[1:]).square().sum())(inputs[0]),
        torch.func.grad(lambda x: torch.func.grad(loss(theirs))(x, *inputs[1:]).square().sum())(inputs[0]),
        rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.func.jacrev(ours)(*inputs), torch.func.jacrev(theirs)(*inputs),
                               rtol=1e-5, atol=1e-5)


# torch's forward_ad scripts a helper on its first use.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_forward_mode_transforms_raise(generator):
    x = torch.randn(2, 3, 8, 8, generator=generator)
    with pytest.raises(NotImplementedError, match="forward-mode automatic differentiation is not implemented"):
        torch.func.jvp(lambda t: LF.avg_pool2d(t, 2), (x,), (torch.ones_like(x),))

"""`lenetx bench`: lenetx's kernels against PyTorch's own path (oneDNN on the CPU, cuDNN on the
GPU), op by op and model by model, in one process. Each case times both sides interleaved, after
a warm-up, and reports the medians; the figure is the median over the repeats of the ratio
torch time / lenetx time (above 1: lenetx is faster), so that a drift of the machine's speed
between repeats cancels out."""

import dataclasses
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from . import functional as LF
from . import models
from .convert import convert


@dataclasses.dataclass
class Case:
    group: str
    name: str
    lenetx: object  # callables run with no arguments
    torch: object


def _timer(device):
    if device.type == "cuda":
        def measure(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000
    else:
        def measure(fn):
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
    return measure


def time_pair(case, device, repeats=None, warmup=2, budget_s=0.5):
    """Median seconds of lenetx and of torch, and the median of their ratio torch / lenetx,
    measured alternately so that drifts hit both. repeats defaults to as many pairs as fill
    budget_s (5 to 501): a stretch of a slow machine then moves a case of microseconds no more
    than one of a second."""
    measure = _timer(device)
    for _ in range(warmup):
        case.lenetx()
        case.torch()
    if repeats is None:
        pair_s = measure(case.lenetx) + measure(case.torch)
        repeats = min(max(int(budget_s / pair_s), 5), 501)
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(measure(case.lenetx))
        theirs.append(measure(case.torch))
    ratio = statistics.median(t / o for o, t in zip(ours, theirs))
    return statistics.median(ours), statistics.median(theirs), ratio


def _conv_cases(group, layer, batch, c_in, c_out, size, kernel, padding, device):
    x = torch.randn(batch, c_in, size, size, device=device)
    w = torch.randn(c_out, c_in, kernel, kernel, device=device) / kernel
    b = torch.randn(c_out, device=device)
    name = f"{layer} {c_in}->{c_out} {kernel}x{kernel} on {size}x{size}, batch {batch}"
    forward = Case(group, f"{name}, forward", lambda: LF.conv2d(x, w, b, padding=padding),
                   lambda: F.conv2d(x, w, b, padding=padding))
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    upstream = torch.randn_like(F.conv2d(x, w, b, padding=padding))

    def backward(conv):
        return lambda: torch.autograd.grad(conv(xg, wg, bg, padding=padding), (xg, wg, bg), upstream)

    both = Case(group, f"{name}, forward+backward", backward(LF.conv2d), backward(F.conv2d))
    return [forward, both]


def _pool_cases(group, layer, batch, channels, size, kind, device):
    x = torch.randn(batch, channels, size, size, device=device)
    ours, theirs = (LF.avg_pool2d, F.avg_pool2d) if kind == "avg" else (LF.max_pool2d, F.max_pool2d)
    name = f"{layer} {kind} 2x2 on {channels}x{size}x{size}, batch {batch}"
    xg = x.clone().requires_grad_()
    upstream = torch.randn_like(theirs(x, 2))
    return [
        Case(group, f"{name}, forward", lambda: ours(x, 2), lambda: theirs(x, 2)),
        Case(group, f"{name}, forward+backward",
             lambda: torch.autograd.grad(ours(xg, 2), xg, upstream),
             lambda: torch.autograd.grad(theirs(xg, 2), xg, upstream)),
    ]


def _fused_cases(group, layer, batch, c_in, c_out, size, kernel, padding, kind, device):
    """A first layer's convolution, ReLU and pooling: the fused operator against torch's three.
    The input (the images) takes no gradient, as in a model."""
    x = torch.randn(batch, c_in, size, size, device=device)
    w = torch.randn(c_out, c_in, kernel, kernel, device=device) / kernel
    b = torch.randn(c_out, device=device)
    pool = F.max_pool2d if kind == "max" else F.avg_pool2d

    def ours(w, b):
        return LF.conv2d_relu_pool2d(x, w, b, padding=padding, pool_size=2, max_pool=kind == "max")

    def theirs(w, b):
        return pool(F.relu(F.conv2d(x, w, b, padding=padding)), 2)

    name = f"{layer}+ReLU+{kind} pool (fused) {c_in}->{c_out} {kernel}x{kernel} on {size}x{size}, batch {batch}"
    wg, bg = w.clone().requires_grad_(), b.clone().requires_grad_()
    upstream = torch.randn_like(theirs(w, b))
    return [
        Case(group, f"{name}, forward", lambda: ours(w, b), lambda: theirs(w, b)),
        Case(group, f"{name}, forward+backward",
             lambda: torch.autograd.grad(ours(wg, bg), (wg, bg), upstream),
             lambda: torch.autograd.grad(theirs(wg, bg), (wg, bg), upstream)),
    ]


def _classifier_cases(group, batch, device):
    """LeNet-5's conv3 (a fully connected layer on its 16x5x5 input), fc1 and fc2 with ReLU
    between them: the fused fully connected stack against torch's five operators. The input
    takes a gradient, as conv2's output does in the model."""
    x = torch.randn(batch, 16, 5, 5, device=device)
    params = [torch.randn(120, 16, 5, 5, device=device) / 20, torch.randn(120, device=device),
              torch.randn(84, 120, device=device) / 11, torch.randn(84, device=device),
              torch.randn(10, 84, device=device) / 9, torch.randn(10, device=device)]

    def ours(x, w3, b3, w4, b4, w5, b5):
        return LF.mlp(x.flatten(1), [w3.flatten(1), w4, w5], [b3, b4, b5])

    def theirs(x, w3, b3, w4, b4, w5, b5):
        return F.linear(F.relu(F.linear(F.relu(F.conv2d(x, w3, b3)).flatten(1), w4, b4)), w5, b5)

    name = f"conv3+ReLU+fc1+ReLU+fc2 (fused) 16x5x5->120->84->10, batch {batch}"
    leaves = [t.clone().requires_grad_() for t in (x, *params)]
    upstream = torch.randn(batch, 10, device=device)
    return [
        Case(group, f"{name}, forward", lambda: ours(x, *params), lambda: theirs(x, *params)),
        Case(group, f"{name}, forward+backward",
             lambda: torch.autograd.grad(ours(*leaves), leaves, upstream),
             lambda: torch.autograd.grad(theirs(*leaves), leaves, upstream)),
    ]


def layer_cases(device, batches=(1, 64, 256), vgg_batch=64):
    cases = []
    for batch in batches:
        cases += _conv_cases("LeNet-5 layers", "conv1", batch, 1, 6, 32, 5, 0, device)
        cases += _pool_cases("LeNet-5 layers", "pool1", batch, 6, 28, "avg", device)
        cases += _conv_cases("LeNet-5 layers", "conv2", batch, 6, 16, 14, 5, 0, device)
        cases += _pool_cases("LeNet-5 layers", "pool2", batch, 16, 10, "avg", device)
        cases += _conv_cases("LeNet-5 layers", "conv3", batch, 16, 120, 5, 5, 0, device)
        cases += _fused_cases("LeNet-5 layers", "conv1", batch, 1, 6, 32, 5, 0, "avg", device)
        cases += _classifier_cases("LeNet-5 layers", batch, device)
    batch = batches[-1] if len(batches) == 1 else 64
    cases += _conv_cases("improved-LeNet layers", "conv1", batch, 1, 16, 28, 3, 1, device)
    cases += _pool_cases("improved-LeNet layers", "pool1", batch, 16, 28, "max", device)
    cases += _conv_cases("improved-LeNet layers", "conv2", batch, 16, 32, 14, 5, 2, device)
    cases += _pool_cases("improved-LeNet layers", "pool2", batch, 32, 14, "max", device)
    cases += _fused_cases("improved-LeNet layers", "conv1", batch, 1, 16, 28, 3, 1, "max", device)
    for c_in, c_out, size in ((3, 64, 32), (64, 64, 32), (128, 128, 16), (256, 256, 8), (512, 512, 4)):
        cases += _conv_cases("VGG-16 layers", "conv", vgg_batch, c_in, c_out, size, 3, 1, device)
    return cases


def _train_step(model, x, y):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def _inference(model, x):
    model = model.eval()

    def run():
        with torch.no_grad():
            model(x)

    return run


def _plain_torch(name, model):
    """The torch model as a user would write it without lenetx: its own layers in a Sequential
    with ReLU modules (convert() makes it a lenetx.nn.Sequential, which fuses the convolution,
    ReLU and pooling runs). lenetx.models' own LeNets call lenetx.nn's fusing helpers instead."""
    nn = torch.nn
    if name == "lenet5":
        return nn.Sequential(nn.ZeroPad2d(model.input_padding), model.conv1, nn.ReLU(), model.pool1,
                             model.conv2, nn.ReLU(), model.pool2, model.conv3, nn.ReLU(), nn.Flatten(),
                             model.fc1, nn.ReLU(), model.fc2)
    if name == "improved_lenet":
        return nn.Sequential(model.conv1, nn.ReLU(), model.pool1, model.conv2, nn.ReLU(), model.pool2,
                             nn.Flatten(), model.fc1, nn.ReLU(), model.dropout, model.fc2)
    return model


class LayerByLayer(torch.nn.Module):
    """A Sequential's layers run one after another by a model's own forward, as in a model that
    is not a Sequential: convert() swaps its layers and fuses nothing."""

    def __init__(self, sequential):
        super().__init__()
        self.layers = torch.nn.ModuleList(sequential)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def model_cases(device, lenet_batch=128, vgg_batch=64):
    cases = []
    specs = [("lenet5", 1, 28, lenet_batch), ("improved_lenet", 1, 28, lenet_batch),
             ("vgg16", 3, 32, vgg_batch)]
    for name, channels, size, batch in specs:
        x = torch.randn(batch, channels, size, size, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        torch.manual_seed(0)
        ours = models.create(name, in_channels=channels).to(device)
        theirs = models.create(name, in_channels=channels, backend="torch").to(device)
        theirs.load_state_dict(ours.state_dict())
        plain = _plain_torch(name, theirs)
        label = f"{name}, batch {batch}"
        cases.append(Case("models", f"{label}, train step (lenetx.models)",
                          _train_step(ours, x, y), _train_step(theirs, x, y)))
        cases.append(Case("models", f"{label}, train step (lenetx.convert of torch.nn)",
                          _train_step(convert(plain), x, y), _train_step(theirs, x, y)))
        if plain is not theirs:
            cases.append(Case("models", f"{label}, train step (lenetx.convert, layer by layer)",
                              _train_step(convert(LayerByLayer(plain)), x, y), _train_step(theirs, x, y)))
        cases.append(Case("models", f"{label}, inference",
                          _inference(ours, x), _inference(theirs, x)))
    return cases


def machine_description(device):
    from . import cpu_capability

    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} threads"]
    if device.type == "cuda":
        lines.append(f"GPU: {torch.cuda.get_device_name(device)}; cuDNN {torch.backends.cudnn.version()}, "
                     f"TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'}")
    else:
        model = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        lines.append(f"CPU: {model}; lenetx kernels use {cpu_capability()}; torch uses oneDNN")
    return lines


def run(device="cpu", quick=False, repeats=None, allow_tf32=False, log=print):
    """Returns rows (group, case, lenetx ms, torch ms, ratio). On CUDA, cuDNN picks its fastest
    algorithm (cudnn.benchmark) and may use TF32 only if allow_tf32."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    batches = (64,) if quick else (1, 64, 256)
    cases = layer_cases(device, batches, vgg_batch=16 if quick else 64)
    cases += model_cases(device, vgg_batch=16 if quick else 64)
    rows = []
    for case in cases:
        ours, theirs, ratio = time_pair(case, device, repeats, budget_s=0.1 if quick else 0.5)
        rows.append((case.group, case.name, 1000 * ours, 1000 * theirs, ratio))
        log(f"{case.group:22s} {case.name:70s} {ratio:6.2f}x")
    return rows


def markdown(rows, machine):
    lines = ["Ratio = torch time / lenetx time (higher is better; > 1 means lenetx is faster).", ""]
    lines += [f"- {line}" for line in machine] + [""]
    lines += ["| group | case | lenetx ms | torch ms | ratio |", "|---|---|---:|---:|---:|"]
    lines += [f"| {g} | {n} | {a:.3f} | {b:.3f} | {r:.2f} |" for g, n, a, b, r in rows]
    return "\n".join(lines) + "\n"


def bar_chart(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 0.28 * len(rows) + 1))
    ratios = [r[4] for r in rows]
    ax.barh(range(len(rows)), ratios, color=["tab:green" if r >= 1 else "tab:red" for r in ratios])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [f"{r[0]}: {r[1]}" for r in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("torch time / lenetx time")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

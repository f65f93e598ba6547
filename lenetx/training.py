"""Training and evaluation loops, the per-class accuracy report, checkpoints and plots."""

import dataclasses
import math
import sys
import time

import torch
import torch.nn.functional as F

from . import models
from .version import __version__

CHECKPOINT_FORMAT = "lenetx-checkpoint-1"


@dataclasses.dataclass
class Recipe:
    epochs: int
    batch_size: int = 128
    lr: float = 0.05  # peak of the one-cycle schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0


def default_recipe(model_name, dataset_name):
    """Settings with which the bare `lenetx train` reaches the accuracies in the README."""
    if model_name.startswith("vgg"):
        return Recipe(epochs=60, lr=0.1, label_smoothing=0.1)
    if dataset_name in ("mnist", "fashion-mnist", "kmnist"):
        return Recipe(epochs=10 if model_name == "lenet5" else 12)
    return Recipe(epochs=40, lr=0.05)


class Progress:
    """A one-line progress bar on an interactive stderr; silent otherwise (logs, CI)."""

    def __init__(self, total, prefix):
        self.total, self.prefix = total, prefix
        self.enabled = sys.stderr.isatty()

    def update(self, done, text):
        if self.enabled:
            filled = int(30 * done / self.total)
            sys.stderr.write(f"\r{self.prefix} [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} {text}")
            sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\r" + " " * 100 + "\r")


@dataclasses.dataclass
class Evaluation:
    confusion: torch.Tensor  # [true class, predicted class] counts
    loss: float

    @property
    def per_class_accuracy(self):
        totals = self.confusion.sum(1).clamp(min=1)
        return (self.confusion.diag() / totals).tolist()

    @property
    def mean_class_accuracy(self):
        return sum(self.per_class_accuracy) / len(self.per_class_accuracy)

    @property
    def accuracy(self):
        return (self.confusion.diag().sum() / self.confusion.sum().clamp(min=1)).item()


@torch.no_grad()
def evaluate(model, loader, num_classes):
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum, count = 0.0, 0
    for images, labels in loader:
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        count += len(labels)
        predicted = logits.argmax(1)
        confusion += torch.bincount((labels * num_classes + predicted).cpu(),
                                    minlength=num_classes * num_classes).view(num_classes, num_classes)
    return Evaluation(confusion, loss_sum / max(count, 1))


def report(evaluation, classes):
    """The course notes' per-class report, then the mean class and overall accuracy."""
    width = max(5, max(len(c) for c in classes))
    lines = [f"Accuracy of {name:>{width}} : {math.floor(100 * acc):2d} %"
             for name, acc in zip(classes, evaluation.per_class_accuracy)]
    correct, total = evaluation.confusion.diag().sum().item(), evaluation.confusion.sum().item()
    lines.append(f"Total mean class accuracy: {100 * evaluation.mean_class_accuracy:.2f} %")
    lines.append(f"Overall accuracy: {100 * evaluation.accuracy:.2f} % ({correct}/{total})")
    return "\n".join(lines)


def fit(model, train_loader, test_loader, recipe, num_classes, log=print):
    """Trains with SGD (Nesterov momentum) under a one-cycle learning-rate schedule; returns the
    per-epoch history."""
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    # fused: one kernel per parameter group instead of a foreach op per update term; the update
    # and the schedule's step took 0.11 against 0.28 ms per LeNet-5 step on 2 cores
    # (benchmarks/NOTES.md, section 15).
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0}],
        lr=recipe.lr, momentum=recipe.momentum, nesterov=True, fused=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.lr, total_steps=recipe.epochs * len(train_loader), pct_start=0.25)
    history = []
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        start = time.perf_counter()
        progress = Progress(len(train_loader), f"epoch {epoch}/{recipe.epochs}")
        loss_sum, correct, seen = 0.0, 0, 0
        for step, (images, labels) in enumerate(train_loader, 1):
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            progress.update(step, f"loss {loss_sum / seen:.4f}")
        progress.close()
        seconds = time.perf_counter() - start
        test = evaluate(model, test_loader, num_classes)
        history.append(dict(epoch=epoch, train_loss=loss_sum / seen, train_accuracy=correct / seen,
                            test_loss=test.loss, test_accuracy=test.accuracy, seconds=seconds))
        log(f"epoch {epoch:3d}/{recipe.epochs}  train loss {loss_sum / seen:.4f}  "
            f"train acc {100 * correct / seen:6.2f} %  test acc {100 * test.accuracy:6.2f} %  "
            f"{seconds:6.1f} s")
    return history


class CheckpointError(ValueError):
    pass


CHECKPOINT_KEYS = ("format", "model", "model_args", "state_dict", "classes", "mean", "std", "digits")


def save_checkpoint(path, model, model_name, model_args, spec, classes, **extra):
    torch.save(dict(format=CHECKPOINT_FORMAT, model=model_name, model_args=model_args,
                    state_dict=model.state_dict(), classes=list(classes), mean=list(spec.mean),
                    std=list(spec.std), digits=spec.digits, dataset=spec.name,
                    lenetx_version=__version__, **extra), path)


def load_checkpoint(path, backend="lenetx", device="cpu"):
    """Returns (model in eval mode, checkpoint dict). Loads with weights_only=True: a checkpoint
    cannot run code."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except Exception as error:
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint ({error.__class__.__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a lenetx checkpoint (expected format "
                              f"{CHECKPOINT_FORMAT!r})")
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {', '.join(missing)}")
    model = models.create(checkpoint["model"], backend=backend, **checkpoint["model_args"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit model "
                              f"{checkpoint['model']!r}: {error}") from None
    return model.to(device).eval(), checkpoint


def save_plots(directory, history, evaluation, classes):
    """training_curves.png and confusion_matrix.png in `directory`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    loss_ax.plot(epochs, [h["test_loss"] for h in history], label="test")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    acc_ax.plot(epochs, [100 * h["train_accuracy"] for h in history], label="train")
    acc_ax.plot(epochs, [100 * h["test_accuracy"] for h in history], label="test")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (loss_ax, acc_ax):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(directory / "training_curves.png", dpi=100)
    plt.close(fig)

    n = len(classes)
    fig, ax = plt.subplots(figsize=(1 + 0.6 * n, 1 + 0.6 * n))
    ax.imshow(evaluation.confusion.numpy(), cmap="Blues")
    ax.set(xticks=range(n), yticks=range(n), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title="Confusion matrix (test set)")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    limit = evaluation.confusion.max().item() / 2
    for i in range(n):
        for j in range(n):
            count = evaluation.confusion[i, j].item()
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                    color="white" if count > limit else "black")
    fig.tight_layout()
    fig.savefig(directory / "confusion_matrix.png", dpi=100)
    plt.close(fig)

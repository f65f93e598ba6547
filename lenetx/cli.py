"""The `lenetx` command: train, evaluate and apply image-recognition networks."""

import argparse
import json
import sys
from pathlib import Path

import torch

from . import data, models, predict, training


def _device(name):
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but CUDA is not available on this machine")
    return torch.device(name)


def _loaders(spec, train_data, test_data, batch_size, seed, device):
    train = data.BatchLoader(train_data, batch_size, spec.mean, spec.std, augment=spec.augment,
                             shuffle=True, seed=seed, device=device)
    test = data.BatchLoader(test_data, 1000, spec.mean, spec.std, device=device)
    return train, test


def train(args):
    device = _device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    spec = data.DATASETS[args.dataset]
    recipe = training.default_recipe(args.model, args.dataset)
    for field in ("epochs", "batch_size", "lr"):
        if getattr(args, field) is not None:
            setattr(recipe, field, getattr(args, field))
    train_data = data.load(args.dataset, True, args.data_root, download=not args.no_download)
    test_data = data.load(args.dataset, False, args.data_root, download=not args.no_download)
    if args.limit:
        train_data = train_data.subset(args.limit, args.seed)
    model_args = dict(num_classes=len(train_data.classes), in_channels=spec.channels,
                      image_size=spec.image_size)
    model = models.create(args.model, backend=args.backend, **model_args).to(device)
    print(f"training {args.model} ({args.backend} backend) on {args.dataset}: "
          f"{len(train_data.labels)} training and {len(test_data.labels)} test images, "
          f"{recipe.epochs} epochs, batch {recipe.batch_size}, lr {recipe.lr}, seed {args.seed}, "
          f"{torch.get_num_threads()} threads, {device}")
    train_loader, test_loader = _loaders(spec, train_data, test_data, recipe.batch_size, args.seed, device)
    history = training.fit(model, train_loader, test_loader, recipe, len(train_data.classes))
    evaluation = training.evaluate(model, test_loader, len(train_data.classes))
    print(training.report(evaluation, train_data.classes))

    output = Path(args.output or f"runs/{args.model}-{args.dataset}")
    output.mkdir(parents=True, exist_ok=True)
    metrics = dict(accuracy=evaluation.accuracy, mean_class_accuracy=evaluation.mean_class_accuracy,
                   per_class_accuracy=evaluation.per_class_accuracy,
                   seconds_per_epoch=sum(h["seconds"] for h in history) / len(history))
    training.save_checkpoint(output / "checkpoint.pt", model, args.model, model_args, spec,
                             train_data.classes, metrics=metrics, history=history,
                             command=args.command_line, seed=args.seed,
                             backend=args.backend)
    (output / "metrics.json").write_text(json.dumps(dict(metrics, history=history), indent=2))
    training.save_plots(output, history, evaluation, train_data.classes)
    print(f"wrote {output / 'checkpoint.pt'}, {output / 'confusion_matrix.png'} and "
          f"{output / 'training_curves.png'}")
    return 0


def evaluate(args):
    device = _device(args.device)
    model, checkpoint = training.load_checkpoint(args.checkpoint, args.backend, device)
    name = args.dataset or checkpoint.get("dataset")
    test_data = data.load(name, False, args.data_root, download=not args.no_download)
    if len(test_data.classes) != len(checkpoint["classes"]):
        raise ValueError(f"the checkpoint has {len(checkpoint['classes'])} classes but dataset "
                         f"{name!r} has {len(test_data.classes)}")
    loader = data.BatchLoader(test_data, 1000, checkpoint["mean"], checkpoint["std"], device=device)
    evaluation = training.evaluate(model, loader, len(checkpoint["classes"]))
    print(training.report(evaluation, checkpoint["classes"]))
    return 0


def predict_command(args):
    device = _device(args.device)
    model, checkpoint = training.load_checkpoint(args.checkpoint, args.backend, device)
    failures = 0
    paths = args.paths or [predict.BUNDLED_SAMPLES]
    for path, top, error in predict.predict_files(model, checkpoint, paths, args.top_k):
        if error:
            failures += 1
            print(f"lenetx: {error}", file=sys.stderr)
            continue
        print(f"{path}  " + "  ".join(f"{name} {probability:.3f}" for name, probability in top))
    return 1 if failures else 0


def bench(args):
    from . import bench as benchmark

    device = _device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = benchmark.run(device, quick=args.quick, allow_tf32=args.allow_tf32)
    table = benchmark.markdown(rows, benchmark.machine_description(device))
    print(table)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    suffix = ("-cuda" if device.type == "cuda" else "") + ("-tf32" if args.allow_tf32 else "")
    command = " ".join(["lenetx", *args.command_line.split()[1:]])
    (output / f"RESULTS{suffix}.md").write_text(f"# lenetx bench\n\nMade by `{command}`.\n\n{table}")
    benchmark.bar_chart(rows, output / f"bench{suffix}.png")
    print(f"wrote {output / f'RESULTS{suffix}.md'} and {output / f'bench{suffix}.png'}")
    return 0


def parser():
    top = argparse.ArgumentParser(prog="lenetx", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    common.add_argument("--backend", default="lenetx", choices=list(models.BACKENDS),
                        help="layers from lenetx kernels or from torch.nn (for comparison)")

    datasets = argparse.ArgumentParser(add_help=False)
    datasets.add_argument("--data-root", help="dataset folder (default: $LENETX_DATA or ~/.cache/lenetx/data)")
    datasets.add_argument("--no-download", action="store_true", help="never try to download a dataset")

    t = commands.add_parser("train", parents=[common, datasets], help="train a network and report its accuracy")
    t.add_argument("--model", default="lenet5", choices=list(models.MODELS))
    t.add_argument("--dataset", default="mnist", choices=list(data.DATASETS))
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    t.add_argument("--limit", type=int, help="train on N training images drawn at random (by --seed)")
    t.add_argument("--output", help="folder for the checkpoint and plots (default: runs/MODEL-DATASET)")
    t.set_defaults(run=train)

    e = commands.add_parser("evaluate", parents=[common, datasets], help="report a checkpoint's test accuracy")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--dataset", help="default: the dataset the checkpoint was trained on")
    e.set_defaults(run=evaluate)

    p = commands.add_parser("predict", parents=[common], help="classify image files")
    p.add_argument("--checkpoint", default=str(predict.BUNDLED_CHECKPOINT),
                   help="default: the bundled LeNet-5 trained on MNIST")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("paths", nargs="*", help="image files or folders (default: the bundled samples)")
    p.set_defaults(run=predict_command)

    b = commands.add_parser("bench", help="time lenetx's kernels against torch's (oneDNN / cuDNN)")
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    b.add_argument("--threads", type=int)
    b.add_argument("--quick", action="store_true", help="fewer, smaller cases")
    b.add_argument("--allow-tf32", action="store_true", help="let cuDNN use TF32 (CUDA only)")
    b.add_argument("--output", default="benchmarks",
                   help="folder for RESULTS.md (RESULTS-cuda.md on a GPU) and the bar chart")
    b.set_defaults(run=bench)
    return top


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    args.command_line = " ".join(["lenetx", *argv])
    for name in ("epochs", "batch_size", "threads", "limit", "top_k"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            print(f"lenetx: error: --{name.replace('_', '-')} must be at least 1, but got {value}",
                  file=sys.stderr)
            return 2
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, data.DatasetNotFoundError) as error:
        print(f"lenetx: error: {error}", file=sys.stderr)
        return 2

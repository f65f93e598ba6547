"""End to end through the `lenetx` command on tiny datasets the tests write themselves, in
MNIST's file format and as an image folder (the real torchvision loading paths)."""

import json
import tarfile
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lenetx
from lenetx import cli, data, models, training
from lenetx.predict import BUNDLED_CHECKPOINT, BUNDLED_SAMPLES, prepare_digit

REAL_DATA = os.environ.get("LENETX_DATA")  # read before the fixtures below hide it


def _class_pattern(label, rng, size=28):
    """A learnable image: a bright bar whose position encodes the class, plus noise."""
    image = rng.integers(0, 40, (size, size))
    row = 2 + 2 * label
    image[row:row + 3, 4:size - 4] = 255
    return image.astype(np.uint8)


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 600), ("t10k", 200)):
        labels = np.arange(count) % 10
        images = np.stack([_class_pattern(label, rng) for label in labels])
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(1)
    for split, count in (("train", 30), ("test", 10)):
        for label, name in enumerate(["circle", "square", "stripe"]):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.stack([_class_pattern(label, rng, 40)] * 3, -1)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LENETX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LENETX_DATA", raising=False)


def _train(root, output, *extra):
    return cli.main(["train", "--data-root", str(root), "--no-download", "--output", str(output),
                     "--epochs", "2", "--threads", "2", *extra])


def test_train_evaluate_predict_round_trip(mnist_root, tmp_path, capsys):
    output = tmp_path / "run"
    assert _train(mnist_root, output, "--model", "lenet5", "--dataset", "mnist", "--batch-size", "16") == 0
    printed = capsys.readouterr().out
    assert "epoch   2/2" in printed and "test acc" in printed
    assert "Accuracy of     3 : " in printed and "Total mean class accuracy: " in printed
    for name in ("checkpoint.pt", "confusion_matrix.png", "training_curves.png", "metrics.json"):
        assert (output / name).stat().st_size > 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.5  # the bars are easy to tell apart
    assert len(metrics["history"]) == 2

    model, checkpoint = training.load_checkpoint(output / "checkpoint.pt")
    assert checkpoint["model"] == "lenet5" and checkpoint["classes"][3] == "3"
    assert checkpoint["command"].startswith("lenetx train") and checkpoint["seed"] == 0
    torch_model, _ = training.load_checkpoint(output / "checkpoint.pt", backend="torch")
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), torch_model(x), rtol=1e-4, atol=1e-4)

    assert cli.main(["evaluate", "--checkpoint", str(output / "checkpoint.pt"),
                     "--data-root", str(mnist_root), "--no-download"]) == 0
    report = capsys.readouterr().out
    assert f"Overall accuracy: {100 * metrics['accuracy']:.2f} %" in report

    digit = _class_pattern(4, np.random.default_rng(5))
    Image.fromarray(digit).save(tmp_path / "four.png")
    (tmp_path / "notes.png").write_text("not an image")
    status = cli.main(["predict", "--checkpoint", str(output / "checkpoint.pt"), "--top-k", "3",
                       str(tmp_path / "notes.png"), str(tmp_path / "four.png")])
    out, err = capsys.readouterr()
    assert status == 1
    assert "cannot read" in err and "notes.png" in err
    line = out.strip().splitlines()[-1].split()
    assert line[0].endswith("four.png") and len(line) == 7
    probabilities = [float(p) for p in line[2::2]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0 + 1e-6


def test_image_folder_dataset(folder_root, tmp_path, capsys):
    output = tmp_path / "run"
    assert _train(folder_root, output, "--model", "improved_lenet", "--dataset", "imagefolder",
                  "--batch-size", "16") == 0
    assert "Accuracy of circle : " in capsys.readouterr().out
    checkpoint = torch.load(output / "checkpoint.pt", weights_only=True)
    assert checkpoint["classes"] == ["circle", "square", "stripe"]
    assert cli.main(["predict", "--checkpoint", str(output / "checkpoint.pt"),
                     str(folder_root / "test" / "square")]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 10


def test_same_seed_gives_the_same_model(mnist_root, tmp_path):
    for run in ("a", "b"):
        assert _train(mnist_root, tmp_path / run, "--limit", "128", "--epochs", "1") == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bundled_checkpoint_predicts_the_bundled_samples(capsys):
    assert BUNDLED_CHECKPOINT.is_file()
    assert cli.main(["predict"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    samples = sorted(BUNDLED_SAMPLES.iterdir())
    assert len(lines) == len(samples)
    for line in lines:
        path, predicted = line.split()[:2]
        assert Path(path).stem.split("_")[-1] == predicted, line


def test_prepare_digit_makes_a_photo_look_like_mnist():
    paper = np.full((120, 90), 230, dtype=np.uint8)
    paper[20:100, 30:40] = 20  # a dark vertical stroke: a "1" on light paper, off-centre
    digit = prepare_digit(Image.fromarray(paper))[0].numpy().astype(float)
    rows, cols = np.nonzero(digit > 50)
    assert digit[0].max() == 0 and digit.max() > 200  # light ink on black
    assert rows.max() - rows.min() + 1 <= 20 and rows.max() - rows.min() + 1 >= 18  # fit in 20x20
    cy = (digit.sum(1) * np.arange(28)).sum() / digit.sum()
    cx = (digit.sum(0) * np.arange(28)).sum() / digit.sum()
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1  # centred by mass


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "mnist", "--data-root", "{empty}", "--no-download"],
     "dataset 'mnist' not found; looked for:\n  {empty}/MNIST/raw"),
    (["train", "--dataset", "cifar10", "--data-root", "{empty}", "--no-download"],
     "dataset 'cifar10' not found; looked for:\n  {empty}/cifar-10-batches-py"),
    (["train", "--dataset", "imagefolder", "--data-root", "{empty}"], "{empty}/train"),
    (["evaluate", "--checkpoint", "{empty}/missing.pt"], "does not exist"),
    (["evaluate", "--checkpoint", "{corrupt}"], "is not a readable checkpoint"),
    (["predict", "--checkpoint", "{foreign}"], "is not a lenetx checkpoint"),
    (["evaluate", "--checkpoint", str(BUNDLED_CHECKPOINT), "--dataset", "svhn"], "unknown dataset 'svhn'"),
    (["train", "--epochs", "0"], "--epochs must be at least 1, but got 0"),
    (["predict", "--top-k", "0"], "--top-k must be at least 1, but got 0"),
])
def test_cli_errors_are_clear(argv, message, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(os.urandom(300))
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    names = dict(empty=empty, corrupt=corrupt, foreign=foreign)
    assert cli.main([arg.format(**names) for arg in argv]) == 2
    assert message.format(**names) in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["train", "--model", "lenet7"], ["train", "--dataset", "svhn"],
                                  ["train", "--device", "tpu"]])
def test_cli_rejects_unknown_choices(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_batch_loader_augments_deterministically_and_normalises():
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    loaded = data.ImageData(images, torch.arange(10), list("abcdefghij"))
    first = [x for x, _ in data.BatchLoader(loaded, 4, (0.5,) * 3, (0.25,) * 3, "crop_flip", True, seed=3)]
    again = [x for x, _ in data.BatchLoader(loaded, 4, (0.5,) * 3, (0.25,) * 3, "crop_flip", True, seed=3)]
    assert [len(x) for x in first] == [4, 4, 2]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    plain = next(iter(data.BatchLoader(loaded, 10, (0.5,) * 3, (0.25,) * 3)))[0]
    torch.testing.assert_close(plain, (images.float() / 255 - 0.5) / 0.25)


def test_normalize_scales_each_channel_and_leaves_float_input_alone():
    normalize = data.Normalize((0.5, 0.25), (0.5, 0.125))
    images = torch.tensor([[[[0.0, 255.0]], [[51.0, 102.0]]]])
    before = images.clone()
    expected = torch.tensor([[[[-1.0, 1.0]], [[-0.4, 1.2]]]])
    torch.testing.assert_close(normalize(images), expected)
    torch.testing.assert_close(normalize(images.to(torch.uint8)), expected)
    assert torch.equal(images, before)


@pytest.mark.skipif(not REAL_DATA, reason="set LENETX_DATA to the real datasets")
def test_lenet5_learns_real_mnist_in_one_epoch(tmp_path, capsys):
    assert cli.main(["train", "--model", "lenet5", "--dataset", "mnist", "--data-root", REAL_DATA,
                     "--no-download", "--epochs", "1", "--limit", "30000",
                     "--output", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.95, capsys.readouterr().out


def test_cifar10_is_read_from_an_image_folder_archive(tmp_path):
    folder = tmp_path / "build" / data.CIFAR10_FOLDER
    rng = np.random.default_rng(2)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for split in ("train", "test"):
        for name in names:
            (folder / split / name).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                folder / split / name / "0000.jpg")
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / f"{data.CIFAR10_FOLDER}.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname=data.CIFAR10_FOLDER)
    test = data.load("cifar10", False, root, download=False)
    assert test.images.shape == (10, 3, 32, 32) and test.images.dtype == torch.uint8
    assert test.classes == data.CIFAR10_CLASSES and test.labels.tolist() == list(range(10))
    again = data.load("cifar10", False, root, download=False)  # from the decoded cache
    assert torch.equal(again.images, test.images)


def test_bench_times_both_sides_and_writes_a_ratio_table():
    from lenetx import bench

    calls = []
    case = bench.Case("group", "case", lambda: calls.append("lenetx"), lambda: calls.append("torch"))
    ours, theirs, ratio = bench.time_pair(case, torch.device("cpu"), repeats=3, warmup=1)
    assert calls == ["lenetx", "torch"] * 4 and ours > 0 and theirs > 0 and ratio > 0
    table = bench.markdown([("g", "c", 2.0, 3.0, 1.5)], ["machine"])
    assert "| g | c | 2.000 | 3.000 | 1.50 |" in table and "- machine" in table
    names = [c.name for c in bench.layer_cases(torch.device("cpu"), batches=(1,), vgg_batch=1)]
    assert "conv1 1->6 5x5 on 32x32, batch 1, forward+backward" in names


@pytest.mark.parametrize("budget_s, call_s, timed_pairs", [(0.0, 1e-3, 5), (10.0, 1e-6, 501), (0.06, 2e-3, 15)])
def test_bench_fills_a_time_budget_with_5_to_501_repeats(monkeypatch, budget_s, call_s, timed_pairs):
    from lenetx import bench

    calls = []

    def measure(fn):
        fn()
        return call_s

    monkeypatch.setattr(bench, "_timer", lambda device: measure)
    case = bench.Case("group", "case", lambda: calls.append("lenetx"), lambda: calls.append("torch"))
    assert bench.time_pair(case, torch.device("cpu"), warmup=1, budget_s=budget_s) == (call_s, call_s, 1.0)
    # One warm-up pair, one pair that sizes the count, then the timed pairs.
    assert calls == ["lenetx", "torch"] * (2 + timed_pairs)


@pytest.mark.parametrize("name", ["lenet5", "improved_lenet"])
def test_bench_converts_a_plain_torch_model_without_lenetx_helpers(name):
    # The converted case must not reach lenetx.nn's fusing helpers through lenetx.models' forward.
    from lenetx import bench

    model = models.create(name, in_channels=1, backend="torch").eval()
    plain = bench._plain_torch(name, model)
    assert all(type(m).__module__.startswith("torch.") for m in plain.modules())
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(plain(x), model(x), rtol=0, atol=0)
    # The layer-by-layer case: layers swapped, no Sequential left to fuse them.
    layer_by_layer = lenetx.convert(bench.LayerByLayer(plain))
    assert not any(isinstance(m, torch.nn.Sequential) for m in layer_by_layer.modules())
    torch.testing.assert_close(layer_by_layer(x), model(x), rtol=1e-5, atol=1e-5)


def test_limit_draws_a_seeded_random_subset_not_the_first_class():
    sorted_by_class = data.ImageData(torch.zeros(100, 1, 2, 2, dtype=torch.uint8),
                                     torch.arange(100) // 10, [str(i) for i in range(10)])
    subset = sorted_by_class.subset(20, seed=1)
    assert len(subset.labels) == 20 and len(set(subset.labels.tolist())) > 3
    assert torch.equal(subset.labels, sorted_by_class.subset(20, seed=1).labels)

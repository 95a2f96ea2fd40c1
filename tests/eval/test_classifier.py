"""The domain classifier: its network, training, cache (key, SHA-256 check), command line, and the `classifier`
metric and `--protocol fashion-mnist` of triangle-evaluate, on a tiny labelled LMDB built from IDX files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, StandInInception, idx_bytes, run_train_main
from conftest import TINY_RUN as TINY

from progressive.cli import evaluate
from progressive.eval import classifier as classifier_module
from progressive.eval.classifier import (
    ClassifierCacheError,
    ClassifierSettings,
    ClassifierUnavailable,
    SmallClassifier,
    classifier_accuracy,
    load_or_train_classifier,
    name_classes,
    random_shifts,
    train_classifier,
)

FAST = ClassifierSettings(epochs=3, batch_size=16, width=8, feature_dim=16)  # seconds, not minutes


def bar_images(count: int, seed: int, side: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (count, side, side), labels): class 0 a horizontal bar, 1 a vertical bar, 2 a square, placed
    at random on black with a little noise: learnable in a few epochs, like a very easy Fashion-MNIST."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 30, (count, side, side)).astype(np.uint8)
    labels = np.arange(count) % 3
    for image, label in zip(images, labels, strict=True):
        row, col = rng.integers(4, side - 12, 2)
        if label == 0:
            image[row : row + 3, 4:-4] = 255
        elif label == 1:
            image[4:-4, col : col + 3] = 255
        else:
            image[row : row + 8, col : col + 8] = 200
    return images, labels


@pytest.fixture(scope="module")
def labelled_lmdb(tmp_path_factory) -> Path:
    """A Fashion-MNIST-format LMDB (grayscale, 10 class names, labels 0..2) of 96 train and 48 holdout images."""
    root = tmp_path_factory.mktemp("labelled")
    idx = root / "idx"
    idx.mkdir()
    for split, count, seed in (("train", 96, 0), ("t10k", 48, 1)):
        images, labels = bar_images(count, seed)
        (idx / f"{split}-images-idx3-ubyte").write_bytes(idx_bytes(images, 0x803))
        (idx / f"{split}-labels-idx1-ubyte").write_bytes(idx_bytes(labels, 0x801))
    out = root / "bars.lmdb"
    command = [sys.executable, "-m", "datasets_prep", "build", f"fashion-mnist:{idx}", str(out), "--max-res", "32",
               "--workers", "1", "--no-progress"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return out


def as_signed(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) as (N, 1, 32, 32) in [-1, 1], padded with black as the builder pads Fashion-MNIST."""
    signed = torch.from_numpy(images).float() / 127.5 - 1.0
    return torch.nn.functional.pad(signed, (2, 2, 2, 2), value=-1.0)[:, None]


def test_the_network_takes_any_side_and_a_gray_one_ignores_how_gray_is_stored():
    network = SmallClassifier(classes=10, channels=1, width=8, feature_dim=16).eval()
    images = torch.rand(5, 3, 32, 32) * 2 - 1
    assert network.logits(images).shape == (5, 10) and network.features(images).shape == (5, 16)
    assert network.logits(images[:, :, ::2, ::2]).shape == (5, 10)  # 16x16, resized to 32x32
    gray = images.mean(dim=1, keepdim=True)
    torch.testing.assert_close(network.features(gray), network.features(gray.expand(-1, 3, -1, -1)))
    assert (network.features(images) >= 0).all()  # after the ReLU


def test_random_shifts_translate_each_image_by_at_most_the_shift():
    images = torch.arange(2 * 36, dtype=torch.float32).view(2, 1, 6, 6)
    assert random_shifts(images, 0, torch.Generator()) is images
    shifted = random_shifts(images, 1, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1), mode="replicate")
    for image, result in zip(padded, shifted, strict=True):
        crops = [image[:, dy : dy + 6, dx : dx + 6] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(crop, result) for crop in crops)


def test_train_classifier_learns_an_easy_task_and_names_classes():
    images, labels = bar_images(240, seed=2)
    network = train_classifier(as_signed(images), torch.from_numpy(labels), 3, settings=FAST)
    test_images, test_labels = bar_images(90, seed=3)
    assert classifier_accuracy(network, as_signed(test_images), torch.from_numpy(test_labels)) >= 0.9
    assert not network.training
    trained = classifier_module.TrainedClassifier(network, ["row", "column", "square"], 1.0, 0.0, "key")
    named = name_classes(trained, as_signed(test_images[:6]).expand(-1, 3, -1, -1))
    assert [name for name, _ in named] == ["row", "column", "square"] * 2
    assert all(1 / 3 < confidence <= 1 for _, confidence in named)


def test_load_or_train_caches_by_dataset_and_settings_and_checks_the_weights(labelled_lmdb, tmp_path):
    cache, lines = tmp_path / "cache", []
    first = load_or_train_classifier(labelled_lmdb, cache, settings=FAST, log=lines.append)
    assert lines[0].startswith(f"training the classifier on {labelled_lmdb}") and len(lines) == 1 + FAST.epochs
    assert first.classes == 10 and first.class_names[:2] == ["T-shirt/top", "Trouser"] and first.network.channels == 1
    assert first.test_accuracy > 0.5  # 48 held-out bars of 3 classes after 18 steps (chance: 1/3)
    (record_path,) = cache.glob("classifier-*.json")
    record = json.loads(record_path.read_text())
    assert record["weights"] == first.path.name and record["test_images"] == 48 and record["channels"] == 1
    assert record["test_accuracy"] == first.test_accuracy and len(record["weights_sha256"]) == 64

    lines.clear()
    again = load_or_train_classifier(labelled_lmdb, cache, settings=FAST, log=lines.append)
    assert lines == [] and again.path == first.path and again.test_accuracy == first.test_accuracy
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(again.network.logits(images), first.network.logits(images))

    other = load_or_train_classifier(labelled_lmdb, cache, settings=FAST.__class__(**{**FAST.__dict__, "seed": 1}))
    assert other.digest != first.digest and len(list(cache.glob("classifier-*.json"))) == 2

    weights = first.path.read_bytes()
    first.path.write_bytes(weights[:-1] + bytes([weights[-1] ^ 1]))
    with pytest.raises(ClassifierCacheError, match="SHA-256 .* delete both files to retrain"):
        load_or_train_classifier(labelled_lmdb, cache, settings=FAST)
    first.path.unlink()  # deleted by hand: trained again
    lines.clear()
    retrained = load_or_train_classifier(labelled_lmdb, cache, settings=FAST, log=lines.append)
    assert lines and retrained.path.is_file() and retrained.digest == first.digest
    record_path.write_text("{not json")
    with pytest.raises(ClassifierCacheError, match="unreadable"):
        load_or_train_classifier(labelled_lmdb, cache, settings=FAST)


def test_an_unlabelled_dataset_has_no_classifier(unlabelled32, unlabelled16, tmp_path):
    shapes = unlabelled32
    with pytest.raises(ClassifierUnavailable, match="no class labels"):
        load_or_train_classifier(shapes, tmp_path / "cache")
    small = unlabelled16
    with pytest.raises(ClassifierUnavailable, match="no 32x32 images"):
        load_or_train_classifier(small, tmp_path / "cache")


def test_the_command_prints_accuracy_and_cache_and_refuses_unlabelled_data(
    labelled_lmdb, unlabelled32, tmp_path, capsys
):
    assert classifier_module.main([str(labelled_lmdb), "--cache", str(tmp_path), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy " in printed and f"cache {tmp_path}" in printed
    shapes = unlabelled32
    assert classifier_module.main([str(shapes), "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "no class labels" in err


# ----------------------------------------------------------------------------- triangle-evaluate


@pytest.fixture(scope="module")
def gray_run(labelled_lmdb, tmp_path_factory) -> Path:
    """The checkpoint of a 16x16 tiny run trained for 240 images on the labelled grayscale LMDB."""
    root = tmp_path_factory.mktemp("gray-run")
    assert run_train_main([*TINY, "--data", str(labelled_lmdb), "--out", str(root / "runs")]) == 0
    return root / "runs" / "00000-tiny-16" / "checkpoints" / "checkpoint-000000240.pt"


def test_evaluate_classifier_and_energy_on_a_labelled_gray_set(gray_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIVERGENCE_TRIANGLE_CACHE", str(tmp_path / "default-cache"))  # never the user's cache
    out = tmp_path / "e.json"
    args = [str(gray_run), "--metrics", "classifier,recon_classifier,energy", "--classifier-cache", str(tmp_path / "c")]
    args += ["--out"]
    assert evaluate.main([*args, str(out), "--samples", "12"]) == 0
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    assert {"classifier/classes", "classifier/kl_uniform", "classifier/confident", "classifier/confident_real",
            "classifier/frechet", "classifier/frechet_floor"} <= set(metrics)  # fmt: skip
    assert 1 <= metrics["classifier/classes"] <= 10 and 0 <= metrics["classifier/kl_uniform"] <= np.log(10) + 1e-9
    assert metrics["classifier/frechet_floor"] >= 0 and report["classifier"]["test_accuracy"] > 0.5
    # The same judge on the reconstructions g(mu(x)) of the held-out images.
    assert 0 <= metrics["recon_classifier/confident"] <= 1 and metrics["recon_classifier/frechet"] >= 0
    assert 0 <= metrics["recon_classifier/accuracy"] <= 1
    assert report["settings"]["channels"] == 1 and metrics["energy/auroc_noise"] == metrics["energy/auroc_noise_gray"]
    assert {"energy/auroc_constant", "energy/auroc_blurred", "energy/auroc_noise_colour"} <= set(metrics)
    assert "energy/auroc_constant_colour" not in metrics
    # The held-out images' labels give the energy's figures by class too.
    assert 0 <= metrics["energy/between_class_share"] <= 1
    assert 0 <= metrics["energy/within_class_blurred"] <= 1 and 0 <= metrics["energy/within_class_shuffled"] <= 1
    assert "training the classifier" in capsys.readouterr().out
    assert evaluate.main([*args, str(tmp_path / "again.json"), "--samples", "12"]) == 0
    assert "training the classifier" not in capsys.readouterr().out  # cached
    assert json.loads((tmp_path / "again.json").read_text())["metrics"] == metrics
    assert not (tmp_path / "default-cache").exists()


def test_evaluate_without_labels_skips_the_classifier_or_refuses_it_by_name(
    gray_run, unlabelled16, tmp_path, capsys, monkeypatch
):
    from progressive.eval import inception

    monkeypatch.setattr(inception, "bundled_inception_file", lambda: None)
    shapes = unlabelled16
    out = tmp_path / "e.json"
    base = [str(gray_run), "--data", str(shapes), "--out", str(out), "--swd-patches", "8"]
    assert evaluate.main([*base, "--metrics", "classifier"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--metrics classifier:" in err and not out.exists()
    assert evaluate.main([*base, "--metrics", "recon,recon_classifier"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--metrics recon_classifier:" in err and not out.exists()
    assert evaluate.main(base) == 0  # auto
    assert "note: classifier, recon_classifier skipped: " in capsys.readouterr().err
    report = json.loads(out.read_text())
    assert {"classifier", "recon_classifier"} <= set(report["skipped"])
    assert not any(k.startswith(("classifier/", "recon_classifier/")) for k in report["metrics"])
    assert "energy/auroc_blurred" in report["metrics"] and "energy/within_class_blurred" not in report["metrics"]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_fashion_mnist_protocol_prints_the_published_anchors(gray_run, tmp_path, capsys, monkeypatch):
    network = tmp_path / "stand-in.pt"
    torch.jit.script(StandInInception()).save(str(network))
    protocol = evaluate.PROTOCOLS["fashion-mnist"]
    small = {**protocol["settings"], "images": 8, "samples": 8, "fid_samples": 8, "fid_real_images": 8}
    monkeypatch.setitem(protocol, "settings", small)  # the real counts take an hour of Inception on a CPU
    out = tmp_path / "protocol.json"
    args = [str(gray_run), "--protocol", "fashion-mnist", "--inception", str(network), "--no-stats-cache",
            "--classifier-cache", str(tmp_path / "c"), "--out", str(out)]  # fmt: skip
    assert evaluate.main(args) == 0
    report = json.loads(out.read_text())
    assert {"fid", "recon/mse", "recon/mse_01", "classifier/frechet", "energy/auroc_blurred"} <= set(report["metrics"])
    assert report["fid_real"]["source"].endswith("(holdout)") and report["protocol"]["paper"] == {}
    assert report["protocol"]["baselines"]["fid"]["WGAN"] == 21.5
    printed = capsys.readouterr().out
    assert "published: VAE 43.6, 2-stage VAE 29.3, WGAN 21.5, LSGAN 30.7, NS-GAN 26.5" in printed
    assert "Lucic et al. 2018" in printed and "note: image size:" in printed

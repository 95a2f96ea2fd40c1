"""The fashion-mnist: source (IDX files, plain or gzipped), labels in the LMDB, and the grayscale metadata."""

from __future__ import annotations

import gzip
import json

import lmdb
import numpy as np
import pytest
import torch
from conftest import idx_bytes, lmdb_pairs
from PIL import Image

from datasets_prep import build as build_module
from datasets_prep import sources
from datasets_prep.__main__ import main
from datasets_prep.lmdb_format import META_KEY, DatasetFormatError, label_key, read_metadata
from datasets_prep.reader import LMDBImageDataset, read_labels

TRAIN, TEST = 7, 3
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {  # split -> (images file, labels file), without .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "holdout": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def run_cli(*args) -> int:
    return main([*map(str, args), "--no-progress"] if args[0] in ("build", "verify") else list(map(str, args)))


def make_fashion_dir(folder, compressed: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A tiny Fashion-MNIST folder (the four files, gzipped or plain); returns split -> (images, labels)."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    contents = {}
    for split, count in (("train", TRAIN), ("holdout", TEST)):
        images = rng.integers(1, 256, (count, 28, 28), dtype=np.uint8)  # never 0: the padding is told apart
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        contents[split] = (images, labels)
        for name, data in zip(FILES[split], (idx_bytes(images, 0x803), idx_bytes(labels, 0x801)), strict=True):
            if compressed:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return contents


def as_pixels(image: torch.Tensor) -> np.ndarray:
    """A reader tensor (3, r, r) in [-1, 1] back to uint8 values."""
    return np.rint((image.numpy() + 1) * 127.5).astype(np.uint8)


@pytest.mark.parametrize("compressed", [True, False], ids=["gzip", "plain"])
def test_fashion_mnist_builds_padded_gray_images_with_labels(tmp_path, capsys, compressed):
    contents = make_fashion_dir(tmp_path / "fashion", compressed)
    out = tmp_path / "db"
    assert run_cli("build", f"fashion-mnist:{tmp_path / 'fashion'}", out, "--max-res", 32, "--workers", 1) == 0

    metadata = read_metadata(out)
    assert metadata["count"] == {"train": TRAIN, "holdout": TEST} and metadata["resolutions"] == [4, 8, 16, 32]
    assert metadata["class_names"] == CLASSES and metadata["channels"] == 1
    assert metadata["source"] == f"fashion-mnist:{(tmp_path / 'fashion').resolve()}"
    for split, (images, labels) in contents.items():
        found = read_labels(out, split)
        assert found.dtype == np.int64 and found.tolist() == labels.tolist()
        dataset = LMDBImageDataset(out, 32, split=split)
        for index, image in enumerate(images):
            pixels = as_pixels(dataset[index])
            assert (pixels[0] == pixels[1]).all() and (pixels[1] == pixels[2]).all()  # gray as three equal channels
            assert (pixels[:, 2:30, 2:30] == image).all()  # padded, not resized
            assert pixels[:, :2].max() == pixels[:, 30:].max() == pixels[:, :, :2].max() == pixels[:, :, 30:].max() == 0
        # The lower levels halve the padded square: 16x16 pixel (1, 1) averages the image's top-left 2x2 values,
        # and, the padding being even, no pixel mixes padding and image.
        dataset.set_resolution(16)
        pixels = as_pixels(dataset[len(images) - 1])[0]
        assert pixels[1, 1] == np.rint(images[-1][:2, :2].mean()) and pixels[0].max() == pixels[:, 0].max() == 0

    capsys.readouterr()
    assert run_cli("info", out) == 0
    text = capsys.readouterr().out
    assert "channels: 1 (grayscale" in text and "classes (10): 0 T-shirt/top, 1 Trouser" in text
    train_counts = ", ".join(str(n) for n in np.bincount(contents["train"][1], minlength=10))
    assert f"labels train: {TRAIN}; per class {train_counts}" in text and f"labels holdout: {TEST};" in text
    assert run_cli("verify", out, "--full") == 0


def test_limit_takes_the_first_images_of_each_split_and_holdout_is_refused(tmp_path, capsys):
    contents = make_fashion_dir(tmp_path / "fashion", compressed=True)
    source = f"fashion-mnist:{tmp_path / 'fashion'}"
    assert run_cli("build", source, tmp_path / "db", "--max-res", 8, "--workers", 1, "--limit", 2) == 0
    assert read_metadata(tmp_path / "db")["count"] == {"train": 2, "holdout": 2}
    assert read_labels(tmp_path / "db", "holdout").tolist() == contents["holdout"][1][:2].tolist()
    assert run_cli("build", source, tmp_path / "other", "--max-res", 8, "--holdout", 1) == 2
    assert "Fashion-MNIST's t10k files" in capsys.readouterr().err


def test_fashion_mnist_without_a_folder_reads_the_debian_one(tmp_path, monkeypatch):
    make_fashion_dir(tmp_path / "debian", compressed=True)
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", str(tmp_path / "debian"))
    source = sources.open_source("fashion-mnist:", 32)
    assert source.description == f"fashion-mnist:{(tmp_path / 'debian').resolve()}"
    assert len(source) == TRAIN + TEST and source.has_splits and source.grayscale
    assert source.class_names == tuple(CLASSES)


def truncate(path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def cut_gzip_stream(folder) -> str:
    truncate(folder / "t10k-labels-idx1-ubyte.gz", 20)
    return "t10k-labels-idx1-ubyte.gz is truncated or damaged"


def not_gzip(folder) -> str:
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    return "train-images-idx3-ubyte.gz is truncated or damaged"


def short_images(folder) -> str:
    data = gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes())
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(data[:-100]))
    return f"t10k-images-idx3-ubyte.gz is truncated ({16 + TEST * 784 - 100} bytes, its header says {16 + TEST * 784})"


def short_header(folder) -> str:
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08"))
    return "train-labels-idx1-ubyte.gz is truncated (3 bytes, less than its header)"


def bad_magic(folder) -> str:
    data = gzip.decompress((folder / "train-labels-idx1-ubyte.gz").read_bytes())
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x03" + data[4:]))
    return "train-labels-idx1-ubyte.gz is not an IDX file of 1-dimensional unsigned bytes (magic 0x00000803"


def missing_file(folder) -> str:
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    return "t10k-labels-idx1-ubyte[.gz] is missing"


def fewer_labels(folder) -> str:
    labels = np.zeros(TEST - 1, dtype=np.uint8)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels, 0x801)))
    return f"t10k-labels-idx1-ubyte.gz has {TEST - 1} labels for {TEST} images (in "


def label_out_of_range(folder) -> str:
    labels = np.full(TRAIN, 10, dtype=np.uint8)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels, 0x801)))
    return "train-labels-idx1-ubyte.gz has label 10, outside 0..9"


@pytest.mark.parametrize(
    "damage",
    [cut_gzip_stream, not_gzip, short_images, short_header, bad_magic, missing_file, fewer_labels, label_out_of_range],
)
def test_a_missing_or_damaged_file_is_one_line_naming_it_and_the_package(tmp_path, capsys, damage):
    make_fashion_dir(tmp_path / "fashion", compressed=True)
    message = damage(tmp_path / "fashion")
    assert run_cli("build", f"fashion-mnist:{tmp_path / 'fashion'}", tmp_path / "db", "--max-res", 32) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {tmp_path / 'fashion'}/") and error.count("\n") == 1, error
    assert message in error and "apt-get install --reinstall dataset-fashion-mnist" in error, error
    assert not (tmp_path / "db").exists()


def test_a_missing_folder_names_the_package(tmp_path, capsys):
    assert run_cli("build", f"fashion-mnist:{tmp_path / 'nowhere'}", tmp_path / "db", "--max-res", 32) == 2
    error = capsys.readouterr().err
    assert "nowhere is not a folder" in error and "apt-get install dataset-fashion-mnist" in error


def interrupt_after(monkeypatch, windows: int) -> None:
    """Make builds stop as Ctrl-C stops them, once `windows` windows are committed."""
    real_commit, commits = build_module._commit, []

    def interrupted_commit(env, puts):
        if len(commits) == windows:
            raise KeyboardInterrupt
        commits.append(len(puts))
        real_commit(env, puts)

    monkeypatch.setattr(build_module, "_commit", interrupted_commit)


def test_labels_and_gray_survive_an_interrupted_build(tmp_path, monkeypatch):
    make_fashion_dir(tmp_path / "fashion", compressed=False)
    source, arguments = f"fashion-mnist:{tmp_path / 'fashion'}", ["--max-res", 8, "--workers", 1, "--commit-every", 2]
    assert run_cli("build", source, tmp_path / "straight", *arguments) == 0
    interrupt_after(monkeypatch, windows=2)
    assert run_cli("build", source, tmp_path / "db", *arguments) == 130
    monkeypatch.undo()
    with pytest.raises(DatasetFormatError, match="interrupted build"):
        read_labels(tmp_path / "db", "train")
    assert run_cli("build", source, tmp_path / "db", *arguments, "--resume") == 0
    assert lmdb_pairs(tmp_path / "db") == lmdb_pairs(tmp_path / "straight")
    assert read_metadata(tmp_path / "db")["channels"] == 1


def test_a_build_begun_before_labels_existed_is_not_resumed_with_them(tmp_path, capsys, monkeypatch):
    make_fashion_dir(tmp_path / "fashion", compressed=False)
    source, arguments = f"fashion-mnist:{tmp_path / 'fashion'}", ["--max-res", 8, "--workers", 1, "--commit-every", 2]
    interrupt_after(monkeypatch, windows=1)
    assert run_cli("build", source, tmp_path / "db", *arguments) == 130
    monkeypatch.undo()
    # What the builder wrote before this change: no class names, no channels, no label keys.
    env = lmdb.open(str(tmp_path / "db"))
    with env.begin(write=True) as txn:
        old = json.loads(txn.get(META_KEY))
        del old["class_names"], old["channels"], old["build"]["all_gray"]
        txn.put(META_KEY, json.dumps(old).encode())
        for index in range(2):
            txn.delete(label_key("train", index))
    env.close()
    capsys.readouterr()
    assert run_cli("build", source, tmp_path / "db", *arguments, "--resume") == 2
    assert "cannot resume" in capsys.readouterr().err
    assert run_cli("build", source, tmp_path / "db", *arguments, "--overwrite") == 0
    assert read_labels(tmp_path / "db", "train").size == TRAIN


def test_verify_checks_labels_and_the_fingerprint_covers_them(tmp_path, capsys):
    make_fashion_dir(tmp_path / "fashion", compressed=True)
    out = tmp_path / "db"
    assert run_cli("build", f"fashion-mnist:{tmp_path / 'fashion'}", out, "--max-res", 8, "--workers", 1) == 0
    first = read_labels(out, "train")[0]
    env = lmdb.open(str(out))
    with env.begin(write=True) as txn:  # another valid class: only the fingerprint can tell
        txn.put(label_key("train", 0), str((first + 1) % 10).encode())
    env.close()
    assert run_cli("verify", out) == 0
    assert run_cli("verify", out, "--full") == 1
    assert "fingerprint" in capsys.readouterr().out

    env = lmdb.open(str(out))
    with env.begin(write=True) as txn:
        txn.delete(label_key("holdout", 1))
        txn.put(label_key("train", 2), b"12")
    env.close()
    assert run_cli("verify", out) == 1
    report = capsys.readouterr().out
    assert "holdout/label/00000001: missing" in report and "train/label/00000002: b'12' is not a class index" in report
    with pytest.raises(DatasetFormatError, match="holdout/label/00000001 is missing"):
        read_labels(out, "holdout")
    with pytest.raises(DatasetFormatError, match="train/label/00000002 is 12, not a class index below 10"):
        read_labels(out, "train")


def test_unlabelled_and_old_lmdbs_read_without_labels(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert run_cli("build", "synthetic:shapes?n=3", out, "--max-res", 8, "--workers", 1) == 0
    metadata = read_metadata(out)
    assert metadata["class_names"] is None and metadata["channels"] == 3
    assert read_labels(out, "train") is None and read_labels(out, "holdout") is None
    with pytest.raises(DatasetFormatError, match="no split 'test'"):
        read_labels(out, "test")

    # An LMDB built before labels: no class_names, channels or all_gray in its metadata.
    old = {key: value for key, value in metadata.items() if key not in ("class_names", "channels")}
    del old["build"]["all_gray"]
    env = lmdb.open(str(out))
    with env.begin(write=True) as txn:
        txn.put(META_KEY, json.dumps(old).encode())
    env.close()
    assert read_metadata(out) == metadata
    assert read_labels(out, "train") is None and len(LMDBImageDataset(out, 8)) == 3
    capsys.readouterr()
    assert run_cli("info", out) == 0
    text = capsys.readouterr().out
    assert "channels: 3 (colour)" in text and "classes" not in text and "labels" not in text
    assert run_cli("verify", out, "--full") == 0


def test_a_folder_of_gray_images_is_marked_one_channel(tmp_path):
    gray, mixed = tmp_path / "gray", tmp_path / "mixed"
    for folder in (gray, mixed):
        folder.mkdir()
        Image.new("L", (16, 16), 80).save(folder / "a.png")
        Image.new("LA", (16, 16), (200, 128)).save(folder / "b.png")  # composited on white: still gray
        Image.new("RGB", (16, 16), (5, 5, 5)).save(folder / "c.png")  # an RGB file of gray pixels
    Image.new("RGB", (16, 16), (5, 6, 5)).save(mixed / "d.png")
    for folder, channels in ((gray, 1), (mixed, 3)):
        assert run_cli("build", folder, tmp_path / f"{folder.name}.lmdb", "--max-res", 16, "--workers", 1) == 0
        metadata = read_metadata(tmp_path / f"{folder.name}.lmdb")
        assert metadata["channels"] == channels and metadata["class_names"] is None

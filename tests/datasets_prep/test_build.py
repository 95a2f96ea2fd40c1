"""Building LMDBs from folders, zips, CIFAR-10 tarballs and synthetic shapes, and reading them back."""

from __future__ import annotations

import io
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import tarfile
import zipfile

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from datasets_prep import build as build_module
from datasets_prep.__main__ import main
from datasets_prep.lmdb_format import META_KEY, encode_image, image_key, read_metadata
from datasets_prep.reader import LMDBImageDataset, read_labels
from datasets_prep.synthetic import render_shape_image

MAX_RES = 32
CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
RESOLUTIONS = [4, 8, 16, 32]
EXIF_ORIENTATION = 0x0112


def to_unit(value: int) -> float:
    """A uint8 value as the reader scales it."""
    return value / 127.5 - 1.0


def run_cli(*args: str) -> int:
    return main([*map(str, args), "--no-progress"] if args[0] in ("build", "verify") else list(map(str, args)))


def make_mixed_folder(root) -> dict[str, str]:
    """Images of mixed sizes, modes and orientations; returns name -> what the reader must show."""
    root.mkdir()
    (root / "sub").mkdir()
    # RGBA, fully transparent black: composited on white.
    Image.new("RGBA", (40, 50), (0, 0, 0, 0)).save(root / "a_rgba.png")
    Image.new("L", (64, 48), 100).save(root / "b_gray.png")
    palette = Image.new("P", (33, 70))
    palette.putpalette([10, 200, 30] + [0] * 765)
    palette.save(root / "c_palette.png")
    Image.new("CMYK", (48, 48), (0, 255, 255, 0)).save(root / "d_cmyk.jpg", quality=95)  # red in CMYK
    Image.fromarray(np.full((36, 36), 40000, dtype=np.uint16)).save(root / "e_sixteen.png")
    # Stored with red on top, blue below; EXIF orientation 6 says "rotate 90 degrees clockwise to display",
    # which puts red on the right and blue on the left.
    rotated = np.zeros((64, 64, 3), dtype=np.uint8)
    rotated[:32, :, 0] = 255
    rotated[32:, :, 2] = 255
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(rotated).save(root / "f_rotated.jpg", quality=95, exif=exif.tobytes())
    Image.new("RGB", (100, 60), (50, 60, 70)).save(root / "g_photo.webp", lossless=True)
    Image.new("RGB", (32, 32), (200, 100, 0)).save(root / "sub" / "h_small.BMP")
    return {
        "a_rgba.png": "white",
        "b_gray.png": "gray100",
        "c_palette.png": "palette",
        "d_cmyk.jpg": "red",
        "e_sixteen.png": "gray156",
        "f_rotated.jpg": "blue-left",
        "g_photo.webp": "rgb506070",
        "sub/h_small.BMP": "rgb2001000",
    }


def check_expectation(image: torch.Tensor, expectation: str) -> None:
    """Assert what one decoded image (3, r, r) in [-1, 1] must look like."""
    mean = image.mean(dim=(1, 2))
    constants = {
        "white": (255, 255, 255),
        "gray100": (100, 100, 100),
        "palette": (10, 200, 30),
        "gray156": (156, 156, 156),
        "rgb506070": (50, 60, 70),
        "rgb2001000": (200, 100, 0),
    }
    if expectation in constants:
        expected = torch.tensor([to_unit(v) for v in constants[expectation]])
        assert torch.allclose(image, expected[:, None, None].expand_as(image), atol=1e-6), expectation
    elif expectation == "red":
        assert mean[0] > 0.8 and mean[1] < -0.8 and mean[2] < -0.8, mean
    elif expectation == "blue-left":
        side = image.shape[-1]
        left, right = image[:, :, : side // 2 - 1], image[:, :, side // 2 + 1 :]
        assert left[2].mean() > 0.8 and left[0].mean() < -0.8, "left half should be blue"
        assert right[0].mean() > 0.8 and right[2].mean() < -0.8, "right half should be red"
    else:
        raise AssertionError(f"unknown expectation {expectation}")


def test_mixed_folder_round_trip(tmp_path, capsys):
    expectations = make_mixed_folder(tmp_path / "photos")
    (tmp_path / "photos" / "notes.txt").write_text("not an image, not an image extension")
    out = tmp_path / "db"
    assert run_cli("build", tmp_path / "photos", out, "--max-res", MAX_RES, "--workers", 2) == 0
    assert "wrote 8 images" in capsys.readouterr().out

    metadata = read_metadata(out)
    assert metadata["resolutions"] == RESOLUTIONS
    assert metadata["count"] == {"train": 8, "holdout": 0}
    assert metadata["complete"] and metadata["skipped"] == 0
    assert "notes.txt" in (out / "report.txt").read_text()

    dataset = LMDBImageDataset(out, resolution=4)
    assert len(dataset) == 8 and dataset.max_resolution == MAX_RES and dataset.resolutions == RESOLUTIONS
    for resolution in RESOLUTIONS:
        dataset.set_resolution(resolution)
        for index, expectation in enumerate(sorted(expectations)):
            image = dataset[index]
            assert image.dtype == torch.float32 and image.shape == (3, resolution, resolution)
            assert image.min() >= -1.0 and image.max() <= 1.0
            check_expectation(image, expectations[expectation])
    assert run_cli("verify", out, "--full") == 0


def make_valid_png(size: int, colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_input_is_skipped_and_reported(tmp_path, capsys):
    source = tmp_path / "mess"
    source.mkdir()
    for i in range(5):
        (source / f"good_{i}.png").write_bytes(make_valid_png(40, (i * 40, 0, 0)))
    noise = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    (source / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + noise)
    jpeg = io.BytesIO()
    Image.fromarray(render_shape_image(0, 64)).save(jpeg, format="JPEG")
    (source / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (source / "truncated.png").write_bytes(make_valid_png(64, (1, 2, 3))[:-40])
    (source / "zero.jpg").write_bytes(b"")
    (source / "text.jpg").write_text("hello, I am not a JPEG")
    (source / "tiny.png").write_bytes(make_valid_png(16, (0, 0, 0)))

    out = tmp_path / "db"
    assert run_cli("build", source, out, "--max-res", MAX_RES, "--workers", 2) == 0
    assert "skipped 6" in capsys.readouterr().out
    metadata = read_metadata(out)
    assert metadata["count"]["train"] == 5 and metadata["skipped"] == 6
    report = (out / "report.txt").read_text()
    for name in ("corrupt.png", "truncated.jpg", "truncated.png", "zero.jpg", "text.jpg"):
        assert f"{name}\tunreadable" in report, name
    assert "tiny.png\ttoo small" in report
    assert run_cli("verify", out) == 0

    # --upscale accepts the small image.
    assert run_cli("build", source, tmp_path / "up", "--max-res", MAX_RES, "--workers", 1, "--upscale") == 0
    assert read_metadata(tmp_path / "up")["count"]["train"] == 6


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["missing_dir", "OUT", "--max-res", "32"], "source not found"),
        (["EMPTY", "OUT", "--max-res", "32"], "no images"),
        (["synthetic:shapes?n=4", "OUT", "--max-res", "48"], "power of two"),
        (["synthetic:shapes?n=4", "OUT", "--max-res", "32", "--min-res", "64"], "above --max-res"),
        (["synthetic:shapes?n=4&colour=red", "OUT", "--max-res", "32"], "unknown synthetic:shapes parameter"),
        (["synthetic:shapes?n=4", "EXISTING", "--max-res", "8"], "already exists"),
        (["synthetic:shapes?n=5", "OUT", "--max-res", "8", "--holdout", "5"], "--holdout 5 leaves no training image"),
        (["synthetic:shapes?n=0", "OUT", "--max-res", "8"], "needs n >= 1"),
        (["TRUNCATED.tar.gz", "OUT", "--max-res", "8"], "TRUNCATED.tar.gz is truncated or damaged"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, monkeypatch, arguments, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "EMPTY").mkdir()
    make_cifar_tarball(tmp_path / "whole.tar.gz", train_per_batch=4, test_count=4)
    (tmp_path / "TRUNCATED.tar.gz").write_bytes((tmp_path / "whole.tar.gz").read_bytes()[:-200])
    assert run_cli("build", "synthetic:shapes?n=2", "EXISTING", "--max-res", 8, "--workers", 1) == 0
    capsys.readouterr()
    assert run_cli("build", *arguments) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1, error
    assert not (tmp_path / "OUT").exists()


def test_existing_output_overwrite_and_resume_of_complete_build(tmp_path, capsys):
    out = tmp_path / "db"
    assert run_cli("build", "synthetic:shapes?n=6", out, "--max-res", 8, "--workers", 1) == 0
    first = read_metadata(out)
    assert run_cli("build", "synthetic:shapes?n=6", out, "--max-res", 8, "--workers", 1, "--resume") == 0
    assert read_metadata(out) == first
    assert run_cli("build", "synthetic:shapes?n=6&seed=3", out, "--max-res", 8, "--workers", 1, "--resume") == 2
    assert "cannot resume" in capsys.readouterr().err
    assert run_cli("build", "synthetic:shapes?n=6&seed=3", out, "--max-res", 8, "--workers", 1, "--overwrite") == 0
    assert read_metadata(out)["fingerprint"] != first["fingerprint"]


def test_a_complete_build_resumed_starts_no_workers_and_the_sigterm_handler_is_restored(tmp_path, monkeypatch):
    out = tmp_path / "db"
    assert run_cli("build", "synthetic:shapes?n=6", out, "--max-res", 8, "--workers", 1) == 0
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the build's handler does not outlive it

    def no_pool(workers):
        raise AssertionError("a pool was started for a build with nothing left to do")

    monkeypatch.setattr(build_module, "_worker_pool", no_pool)
    assert run_cli("build", "synthetic:shapes?n=6", out, "--max-res", 8, "--workers", 1, "--resume") == 0


def test_pool_workers_start_with_their_own_stop_handlers_and_nothing_blocked():
    # The main process blocks the stop signals only while forking; the workers unblock them once their handlers
    # are set, so a terminate() right after the start cannot reach a worker still running the parent's handler.
    with build_module._worker_pool(2) as pool:
        blocked = pool.apply(signal.pthread_sigmask, (signal.SIG_BLOCK, []))
        term, interrupt = (
            pool.apply(signal.getsignal, (signal.SIGTERM,)),
            pool.apply(signal.getsignal, (signal.SIGINT,)),
        )
    assert not {signal.SIGINT, signal.SIGTERM} & set(blocked)
    assert term == signal.SIG_DFL and interrupt == signal.SIG_IGN
    assert not {signal.SIGINT, signal.SIGTERM} & signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the main process


def test_synthetic_raw_format_is_exact_and_holdout_comes_first(tmp_path):
    out = tmp_path / "db"
    arguments = ["--max-res", 16, "--min-res", 8, "--format", "raw", "--holdout", 3, "--workers", 2]
    assert run_cli("build", "synthetic:shapes?n=10&seed=4", out, *arguments) == 0
    metadata = read_metadata(out)
    assert metadata["count"] == {"train": 7, "holdout": 3} and metadata["resolutions"] == [8, 16]
    holdout = LMDBImageDataset(out, 16, split="holdout")
    train = LMDBImageDataset(out, 16)
    for index in range(3):
        expected = torch.from_numpy(render_shape_image(index, 16, seed=4)).permute(2, 0, 1).float() / 127.5 - 1
        assert torch.equal(holdout[index], expected)
    expected = torch.from_numpy(render_shape_image(3, 16, seed=4)).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(train[0], expected)
    # The 8x8 level is the 2x2 average of the 16x16 one.
    train.set_resolution(8)
    assert torch.allclose(train[0], torch.nn.functional.avg_pool2d(expected[None], 2)[0], atol=1 / 127.5)


def test_lanczos_filter_and_jpeg_format(tmp_path):
    out = tmp_path / "db"
    arguments = ["--max-res", 32, "--filter", "lanczos", "--format", "jpeg", "--workers", 1]
    assert run_cli("build", "synthetic:shapes?n=4", out, *arguments) == 0
    metadata = read_metadata(out)
    assert metadata["filter"] == "lanczos" and metadata["image_format"] == "jpeg"
    dataset = LMDBImageDataset(out, 32)
    for resolution in RESOLUTIONS:
        dataset.set_resolution(resolution)
        assert dataset[3].shape == (3, resolution, resolution)
    dataset.set_resolution(32)
    expected = torch.from_numpy(render_shape_image(3, 32)).permute(2, 0, 1).float() / 127.5 - 1
    assert (dataset[3] - expected).abs().mean() < 0.05  # JPEG at quality 95


def test_zip_source(tmp_path):
    archive_path = tmp_path / "images.zip"
    damaged = make_valid_png(32, (9, 9, 9))
    with zipfile.ZipFile(archive_path, "w") as archive:
        for i in range(4):
            archive.writestr(f"folder/{i}.png", make_valid_png(32, (0, 60 * i, 0)))
        archive.writestr("folder/readme.txt", "ignored")
        archive.writestr("folder/broken.png", b"not a png")
        archive.writestr("folder/crc.png", damaged)  # stored uncompressed, then one byte flipped: bad CRC
    contents = archive_path.read_bytes()
    at = contents.index(damaged) + len(damaged) // 2
    archive_path.write_bytes(contents[:at] + bytes([contents[at] ^ 0xFF]) + contents[at + 1 :])

    out = tmp_path / "db"
    assert run_cli("build", archive_path, out, "--max-res", 16, "--workers", 2) == 0
    assert read_metadata(out)["count"]["train"] == 4 and read_metadata(out)["skipped"] == 2
    assert "folder/crc.png\tunreadable: OSError: zip member unreadable" in (out / "report.txt").read_text()
    dataset = LMDBImageDataset(out, 16)
    assert torch.allclose(dataset[2][1], torch.full((16, 16), to_unit(120)))


def cifar_labels(name: str, count: int) -> list[int]:
    """The labels `make_cifar_tarball` gives a batch: a different run of classes per batch."""
    return [(row + 3 * CIFAR_BATCHES.index(name)) % 10 for row in range(count)]


def make_cifar_tarball(path, train_per_batch: int, test_count: int) -> dict[str, np.ndarray]:
    """A cifar-10-python.tar.gz with the real pickle layout (channel-major uint8 rows) but few images."""
    rng = np.random.default_rng(0)
    batches = {}
    with tarfile.open(path, "w:gz") as archive:
        for name in CIFAR_BATCHES:
            count = test_count if name == "test_batch" else train_per_batch
            rows = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
            batches[name] = rows
            payload = pickle.dumps(
                {
                    b"batch_label": name.encode(),
                    b"labels": cifar_labels(name, count),
                    b"data": rows,
                    b"filenames": [b"x.png"] * count,
                },
                protocol=2,
            )
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return batches


def test_cifar_tarball_keeps_test_batch_apart(tmp_path, capsys):
    tarball = tmp_path / "cifar-10-python.tar.gz"
    batches = make_cifar_tarball(tarball, train_per_batch=3, test_count=2)
    out = tmp_path / "db"
    assert run_cli("build", tarball, out, "--max-res", 32, "--workers", 2) == 0
    assert read_metadata(out)["count"] == {"train": 15, "holdout": 2}
    holdout = LMDBImageDataset(out, 32, split="holdout")
    pixels = batches["test_batch"][1].reshape(3, 32, 32)
    assert torch.equal(holdout[1], torch.from_numpy(pixels).float() / 127.5 - 1)
    train = LMDBImageDataset(out, 32)
    pixels = batches["data_batch_2"][0].reshape(3, 32, 32)
    assert torch.equal(train[3], torch.from_numpy(pixels).float() / 127.5 - 1)
    metadata = read_metadata(out)
    assert metadata["class_names"][:3] == ["airplane", "automobile", "bird"] and len(metadata["class_names"]) == 10
    assert metadata["channels"] == 3
    assert read_labels(out, "train").tolist() == sum((cifar_labels(n, 3) for n in CIFAR_BATCHES[:5]), [])
    assert read_labels(out, "holdout").tolist() == cifar_labels("test_batch", 2)
    assert run_cli("verify", out, "--full") == 0

    assert run_cli("build", tarball, tmp_path / "limited", "--max-res", 32, "--workers", 1, "--limit", 4) == 0
    assert read_metadata(tmp_path / "limited")["count"] == {"train": 4, "holdout": 2}
    assert run_cli("build", tarball, tmp_path / "other", "--max-res", 32, "--holdout", 5) == 2
    assert "held-out split" in capsys.readouterr().err


def test_map_grows_from_a_tiny_start(tmp_path, monkeypatch):
    monkeypatch.setattr(build_module, "INITIAL_MAP_SIZE", 64 * 1024)
    out = tmp_path / "db"
    assert run_cli("build", "synthetic:shapes?n=40", out, "--max-res", 64, "--format", "raw", "--workers", 2) == 0
    assert read_metadata(out)["count"]["train"] == 40
    assert (out / "data.mdb").stat().st_size > 40 * 64 * 64 * 3
    assert run_cli("verify", out, "--full") == 0


def test_verify_finds_missing_and_corrupt_values(tmp_path, capsys):
    out = tmp_path / "db"
    assert run_cli("build", "synthetic:shapes?n=5", out, "--max-res", 16, "--workers", 1) == 0
    assert run_cli("verify", out, "--full") == 0
    env = lmdb.open(str(out))
    with env.begin(write=True) as txn:
        txn.delete(image_key("train", 8, 2))
        txn.put(image_key("train", 16, 4), b"garbage")
    env.close()
    capsys.readouterr()
    assert run_cli("verify", out) == 1
    report = capsys.readouterr().out
    assert "train/8/00000002: missing" in report and "train/16/00000004" in report

    # A well-formed image that differs from what was built is only caught by the fingerprint.
    out = tmp_path / "swapped"
    assert run_cli("build", "synthetic:shapes?n=5", out, "--max-res", 16, "--workers", 1) == 0
    env = lmdb.open(str(out))
    with env.begin(write=True) as txn:
        txn.put(image_key("train", 16, 0), encode_image(render_shape_image(99, 16), "png"))
    env.close()
    assert run_cli("verify", out) == 0
    assert run_cli("verify", out, "--full") == 1
    assert "fingerprint" in capsys.readouterr().out


def test_info_prints_metadata(tmp_path, capsys):
    out = tmp_path / "db"
    assert run_cli("build", "synthetic:shapes?n=3&seed=2", out, "--max-res", 8, "--workers", 1) == 0
    capsys.readouterr()
    assert run_cli("info", out) == 0
    text = capsys.readouterr().out
    assert "synthetic:shapes?n=3&seed=2" in text and "resolutions: 4, 8" in text and "train 3" in text
    assert run_cli("info", tmp_path / "nothing") == 2


def test_metadata_is_one_json_key(tmp_path):
    out = tmp_path / "db"
    assert run_cli("build", "synthetic:shapes?n=2", out, "--max-res", 8, "--workers", 1) == 0
    env = lmdb.open(str(out), readonly=True, lock=False)
    with env.begin() as txn:
        keys = [key for key, _ in txn.cursor()]
    env.close()
    assert META_KEY in keys
    assert sorted(k for k in keys if k != META_KEY) == sorted(image_key("train", r, i) for r in (4, 8) for i in (0, 1))


def test_crop_center_takes_the_middle_and_none_keeps_everything(tmp_path):
    source = tmp_path / "wide"
    source.mkdir()
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:, :16, 0] = 255  # left quarter red, the rest blue: a centred square sees no red
    pixels[:, 16:, 2] = 255
    Image.fromarray(pixels).save(source / "wide.png")
    for crop in ("center", "none"):
        assert run_cli("build", source, tmp_path / crop, "--max-res", 16, "--crop", crop, "--workers", 1) == 0
    centred = LMDBImageDataset(tmp_path / "center", 16)[0]
    stretched = LMDBImageDataset(tmp_path / "none", 16)[0]
    assert centred[0].max() == -1.0 and centred[2].min() == 1.0
    assert stretched[0, :, :3].min() > 0.95 and stretched[2, :, -3:].min() > 0.95  # Lanczos rings slightly


def test_bench_refuses_no_workers(capsys):
    assert run_cli("bench", "--workers", "0") == 2
    assert capsys.readouterr().err == "error: --workers must be at least 1, got 0\n"


def test_limit_on_a_huge_synthetic_source_lists_only_what_it_builds(tmp_path):
    command = [sys.executable, "-m", "datasets_prep", "build", "synthetic:shapes?n=100000000", str(tmp_path / "db"),
               "--max-res", "8", "--limit", "2", "--workers", "1", "--no-progress"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=180)  # a listing of 1e8 items would not fit
    assert read_metadata(tmp_path / "db")["count"] == {"train": 2, "holdout": 0}


def test_a_build_that_kept_no_image_is_replaced_without_overwrite(tmp_path, capsys):
    bad, good, out = tmp_path / "bad", tmp_path / "good", tmp_path / "db"
    bad.mkdir()
    good.mkdir()
    (bad / "broken.png").write_bytes(b"not a png")
    Image.new("RGB", (8, 8), (10, 200, 30)).save(good / "fine.png")
    assert run_cli("build", bad, out, "--max-res", 8, "--workers", 1) == 2
    assert "no usable image" in capsys.readouterr().err
    assert run_cli("build", good, out, "--max-res", 8, "--workers", 1) == 0
    assert read_metadata(out)["count"]["train"] == 1
    assert run_cli("build", bad, out, "--max-res", 8, "--workers", 1) == 2  # but one with images is kept
    assert "already exists" in capsys.readouterr().err


def test_a_second_build_into_the_same_output_is_refused(tmp_path, capsys):
    from datasets_prep.locking import DirectoryLock

    out = tmp_path / "db"
    out.mkdir()
    lock = DirectoryLock(out)  # stands for a build in another process
    lock.acquire()
    try:
        assert run_cli("build", "synthetic:shapes?n=4", out, "--max-res", 8, "--workers", 1, "--resume") == 2
    finally:
        lock.release()
    assert f"is being built by process {os.getpid()} on " in capsys.readouterr().err
    assert run_cli("build", "synthetic:shapes?n=4", out, "--max-res", 8, "--workers", 1, "--resume") == 0


def test_a_build_on_a_full_disk_is_one_line_and_resumes(tmp_path):
    def small_files_only():  # a data.mdb may not grow past 200 kB: a disk that fills up during the build
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    command = [sys.executable, "-m", "datasets_prep", "build", "synthetic:shapes?n=400", str(tmp_path / "db"),
               "--max-res", "16", "--workers", "1", "--no-progress", "--commit-every", "16"]  # fmt: skip
    full = subprocess.run(command, capture_output=True, text=True, timeout=120, preexec_fn=small_files_only)
    assert full.returncode == 2, full.stderr
    (line,) = full.stderr.strip().splitlines()
    assert line.startswith(f"error: building {tmp_path / 'db'} failed (") and line.endswith("with --resume")
    assert 0 < sum(read_metadata(tmp_path / "db")["count"].values()) < 400  # committed windows are kept
    subprocess.run([*command, "--resume"], check=True, capture_output=True, timeout=120)
    subprocess.run([*command[:5], str(tmp_path / "straight"), *command[6:]], check=True, capture_output=True)
    assert read_metadata(tmp_path / "db")["fingerprint"] == read_metadata(tmp_path / "straight")["fingerprint"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("count", {"train": "many"}),
        ("resolutions", [4, 6]),
        ("image_format", "gif"),
        ("complete", None),
        ("class_names", "T-shirt"),
        ("channels", 2),
        ("channels", True),  # equal to 1 in Python, but not a channel count
    ],
)
def test_a_malformed_metadata_record_is_named(tmp_path, capsys, field, value):
    out = tmp_path / "db"
    assert run_cli("build", "synthetic:shapes?n=3", out, "--max-res", 8, "--workers", 1) == 0
    metadata = read_metadata(out)
    env = lmdb.open(str(out))
    with env.begin(write=True) as txn:
        txn.put(META_KEY, json.dumps({**metadata, field: value}).encode())
    env.close()
    capsys.readouterr()
    assert run_cli("info", out) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {out}: metadata field {field!r} is ") and error.count("\n") == 1
    assert run_cli("verify", out) == 1
    assert "the __meta__ record is damaged" in capsys.readouterr().out


def test_huge_sources_are_skipped_by_size_and_large_ones_build_without_warnings(tmp_path, capfd):
    folder = tmp_path / "clipart"
    folder.mkdir()
    Image.new("1", (12000, 12000)).save(folder / "huge.png")  # 144 Mpx, above MAX_SOURCE_PIXELS
    Image.new("1", (10000, 10000)).save(folder / "large.png")  # 100 Mpx: Pillow alone would warn
    Image.new("RGB", (16, 16), (1, 2, 3)).save(folder / "small.png")
    assert run_cli("build", folder, tmp_path / "db", "--max-res", 16, "--workers", 1) == 0
    assert "DecompressionBomb" not in capfd.readouterr().err
    report = (tmp_path / "db" / "report.txt").read_text()
    assert "huge.png\ttoo large: 12000x12000 is above 134217728 pixels" in report
    assert read_metadata(tmp_path / "db")["count"]["train"] == 2

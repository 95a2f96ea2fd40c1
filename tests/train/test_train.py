"""The main job, launch/train.py: dry runs, what a run writes, recipes, progress lines, bad input, bf16.

Resuming, signals, non-finite values, several processes, trackers and --compile have files of their own here."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import TINY, final_checkpoint
from conftest import run_train_main as train

from progressive.objective import recipe_config
from progressive.train.checkpoint import list_checkpoints


def test_dry_run_prints_configuration_and_schedule_and_writes_nothing(tmp_path, capsys):
    assert train([*TINY, "--out", str(tmp_path / "runs"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("{\n") and "  fade    16      4" in printed
    assert train([*TINY, "--out", str(tmp_path / "runs"), "--batch", "auto", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)  # one JSON object, nothing else on stdout
    assert plan["config"]["schedule"]["max_resolution"] == 16 and plan["config"]["preset"] == "tiny"
    assert [(p["phase"], p["resolution"], p["batch_size"]) for p in plan["phases"]][-2:] == [
        ("fade", 16, 4),
        ("stable", 16, 4),
    ]
    assert plan["training_kimg"] == 0.24 and plan["notes"] == ["batch sizes as the preset's (no GPU memory to fit)"]
    assert not (tmp_path / "runs").exists()


def test_dry_run_shows_the_learning_rates_at_the_end_and_where_the_ramp_down_lies(tmp_path, capsys):
    ramp = ["--lr-decay", "1", "--lr-rampdown-start-kimg", "0.12", "--lr-rampdown-kimg", "0.12"]
    assert train([*TINY, "--out", str(tmp_path / "runs"), *ramp, "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["learning_rates_at_end"] == pytest.approx({"energy": 1e-5, "inference": 3e-5, "generator": 3e-5})
    assert plan["notes"][-1] == "learning rates ramp down from 0.12 to 0.24 kimg, to 0.1 of their value"
    assert train([*TINY, "--out", str(tmp_path / "runs"), *ramp, "--kimg", "0.2", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    # at 0.2 kimg two thirds of the ramp are done: 0.1 + 0.9 * (1 + cos(2 pi / 3)) / 2 = 0.325 of the rates
    assert "learning rates at the end (E, I, G): 3.25e-05, 9.75e-05, 9.75e-05\n" in printed
    assert "the training ends (0.2 kimg) before the ramp-down does" in printed
    assert train([*TINY, "--out", str(tmp_path / "runs"), *ramp, "--kimg", "0.1", "--dry-run", "--json"]) == 0
    never = json.loads(capsys.readouterr().out)["notes"][-1]
    assert never.endswith("after the training's end (0.1 kimg), so never in this run")


def test_dry_run_projects_the_training_time_from_a_benchmark(tmp_path, capsys):
    measured = tmp_path / "speed.json"
    speed = {"4": 0.0048, "8": 0.0096}  # images/s: 48 images at 4x4 take 10,000 s
    measured.write_text(json.dumps({"device": "test", "processes": 1, "images_per_second": speed}))
    assert train([*TINY, "--res", "8", "--kimg", "0.192", "--dry-run", "--throughput", str(measured)]) == 0
    printed = capsys.readouterr().out
    # 48 images at 4x4, 48 fading in 8x8, 96 at 8x8: 10,000 + 5,000 + 10,000 s.
    assert "stable     4      4       0.000     0.048  " in printed and printed.count("    2.78\n") == 2
    assert "projected training time at the measured speed (1 x test, None): 6.9 h\n" in printed
    assert "2x: 3.5 h, 4x: 1.7 h" in printed
    assert train([*TINY, "--res", "8", "--kimg", "0.192", "--dry-run", "--json", "--throughput", str(measured)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [round(p["hours"], 2) for p in plan["phases"]] == [2.78, 1.39, 2.78] and plan["unmeasured_resolutions"] == []
    assert round(plan["projected_hours"], 2) == 6.94
    assert train([*TINY, "--res", "16", "--dry-run", "--throughput", str(measured)]) == 0
    assert "(without resolutions [16], not measured)" in capsys.readouterr().out
    measured.write_text("[]")
    assert train([*TINY, "--dry-run", "--throughput", str(measured)]) == 2
    assert "not a benchmark_train.py --json file" in capsys.readouterr().err


def test_run_writes_config_log_events_snapshots_and_checkpoints(tmp_path, lmdb16):
    out = tmp_path / "runs"
    metrics = ["--metrics", "recon,energy", "--metric-kimg", "0.12", "--metric-images", "8"]
    assert train([*TINY, "--data", str(lmdb16), "--out", str(out), "--kimg", "0.24", *metrics]) == 0
    (run_dir,) = out.iterdir()
    assert run_dir.name == "00000-tiny-16"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"] == str(lmdb16) and config["recipe"] == "triangle"
    assert config["objective"] == dataclasses.asdict(recipe_config("triangle"))
    log = (run_dir / "log.txt").read_text()
    assert "res   16" in log and "sec/kimg" in log
    # Named with the 8 held-out images (and 8 samples) they saw, never as the commands' 10k figures.
    assert log.count("metrics at kimg") == 2 and "recon8/mse" in log and "energy8/auroc" in log
    assert list(run_dir.glob("tensorboard/events.out.tfevents.*"))
    snapshots = {p.name for p in (run_dir / "snapshots").iterdir()}
    assert {"reals.png", "samples-000000240.png", "reconstructions-000000240.png"} <= snapshots
    state = final_checkpoint(out)
    assert state["images_shown"] == 240 and state["skipped"] == {"energy": 0, "inference": 0, "generator": 0}
    assert len(list_checkpoints(run_dir / "checkpoints")) == 3  # 96, 192 and the final 240


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--res", "12"], "power of two"),
        (["--data", "{missing}"], "missing"),
        (["--data", "{lmdb}", "--res", "32"], "has [4, 8, 16]; train to --res 16, or rebuild with --max-res 32"),
        (["--data", "{from8}", "--res", "16"], "has [8, 16]; start the schedule there with --min-resolution 8"),
        (["--data", "{corrupt}"], "corrupt"),
        (["--resume", "latest"], "no checkpoint"),
        (["--metrics", "recon,fidd"], "unknown metrics ['fidd']"),
        (["--metrics", "recon,classifier"], "--metrics classifier needs the domain classifier"),
        (["--recipe", "nope"], "unknown recipe 'nope'"),
        (["--energy-penalty", "-1"], "energy_penalty must be a finite number >= 0"),
        (["--logvar-bound", "nan"], "logvar_bound must be a finite number >= 0"),
        (["--recipe", "vae", "--weight-recon", "0"], "the generator has no loss"),
        (["--config", "{missing}"], "cannot read configuration"),
        (["--kimg", "nan"], "--kimg must be a finite number > 0"),
        (["--kimg", "0"], "--kimg must be a finite number > 0"),
        (["--kimg", "-1"], "--kimg must be a finite number > 0"),
        (["--checkpoint-kimg", "-1"], "--checkpoint-kimg must be a finite number > 0"),
        (["--workers", "-1"], "--workers must be a finite number >= 0"),
        (["--out", "{file}"], "is a file, not a folder"),
        (["--out", "{file}/runs"], "is a file, not a folder"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, lmdb16, capsys, extra, message):
    corrupt = tmp_path / "corrupt.lmdb"
    corrupt.mkdir()
    (corrupt / "data.mdb").write_bytes(b"not an lmdb" * 100)
    (tmp_path / "a-file").write_text("")
    if "{from8}" in extra:
        from datasets_prep.__main__ import main as datasets_main

        build = ["build", "synthetic:shapes?n=4", str(tmp_path / "from8"), "--max-res", "16", "--min-res", "8"]
        assert datasets_main([*build, "--workers", "1", "--no-progress"]) == 0
    paths = {"missing": str(tmp_path / "missing.lmdb"), "lmdb": str(lmdb16), "corrupt": str(corrupt),
             "file": str(tmp_path / "a-file"), "from8": str(tmp_path / "from8")}  # fmt: skip
    args = [a.format(**paths) for a in extra]
    out = tmp_path / "runs"
    assert train([*TINY, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    if message != "corrupt":
        assert message in err
    assert not out.exists()


def _dry_run_config(capsys, args: list[str]) -> dict:
    assert train([*TINY, *args, "--dry-run", "--json"]) == 0
    return json.loads(capsys.readouterr().out)["config"]


def test_recipes_resolve_from_the_flag_a_config_file_or_the_default(tmp_path, capsys):
    assert _dry_run_config(capsys, [])["objective"] == dataclasses.asdict(recipe_config("triangle"))
    vae = _dry_run_config(capsys, ["--recipe", "vae", "--weight-recon", "7"])
    assert vae["recipe"] == "vae" and vae["objective"] == dataclasses.asdict(recipe_config("vae", weight_recon=7.0))
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"recipe": "reference", "objective": {"weight_kl": 0.5}}))
    reference = _dry_run_config(capsys, ["--config", str(partial)])
    assert reference["objective"] == dataclasses.asdict(recipe_config("reference", weight_kl=0.5))
    # A --config that is not a JSON object, or names an unknown key, is one line and exit 2.
    for name, text, message in [
        ("not.json", "{oops", "cannot read configuration"),
        ("list.json", "[1, 2]", "must hold a JSON object"),
        ("unknown.json", '{"objective": {"weight_klx": 1}}', "unknown TriangleConfig keys: weight_klx"),
    ]:
        (tmp_path / name).write_text(text)
        assert train([*TINY, "--config", str(tmp_path / name), "--dry-run"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    # The 512-channel presets train at a tenth of the objective's rates; --lr-multipliers edits that table.
    celebahq = _dry_run_config(capsys, ["--preset", "celebahq", "--res", "64", "--lr-multipliers", "64:0.05"])
    multipliers = celebahq["schedule"]["lr_multipliers"]
    assert multipliers["64"] == 0.05 and all(multipliers[str(r)] == 0.1 for r in (4, 8, 16, 32, 128, 1024))


def test_default_recipe_trains_without_non_finite_steps_or_collapse(tmp_path, lmdb16):
    """A regression guard on the tiny preset (not a quality claim): bounded energies, diverse samples."""
    out = tmp_path / "runs"
    assert train([*TINY, "--data", str(lmdb16), "--out", str(out)]) == 0
    state = final_checkpoint(out)
    assert state["images_shown"] == 240 and sum(state["skipped"].values()) == 0
    health = state["health"]
    assert health["energy_abs_max"] < 10.0, health
    assert -5.0 < health["logvar_min"] <= health["logvar_max"] < 5.0, health
    assert health["diversity_min"] > 0.2, health


def test_first_status_line_comes_after_ten_iterations_not_at_the_first_tick(tmp_path, lmdb16):
    out = tmp_path / "runs"
    assert train([*TINY, "--data", str(lmdb16), "--out", str(out), "--kimg", "0.1", "--tick-kimg", "100"]) == 0
    (run_dir,) = out.iterdir()
    status = [line for line in (run_dir / "log.txt").read_text().splitlines() if " sec/kimg " in line]
    assert len(status) == 2 and "kimg     0.04 " in status[0] and "kimg     0.10 " in status[1], status
    assert not [line for line in (run_dir / "log.txt").read_text().splitlines() if "next tick in" in line]


def test_progress_lines_keep_moving_between_ticks(tmp_path, lmdb16):
    out = tmp_path / "runs"
    args = ["--kimg", "0.1", "--tick-kimg", "100", "--progress-seconds", "1e-9"]  # a progress line every iteration
    assert train([*TINY, "--data", str(lmdb16), "--out", str(out), *args]) == 0
    (run_dir,) = out.iterdir()
    lines = (run_dir / "log.txt").read_text().splitlines()
    progress = [line for line in lines if "next tick in" in line]
    status = [line for line in lines if " sec/kimg " in line]
    assert len(progress) + len(status) == 100 // 4  # one line per iteration of 4 images, either kind
    assert "kimg     0.00 " in progress[0] and "img/s" in progress[0] and "eta run" in progress[0]


def test_bf16_autocasts_and_fp16_on_the_cpu_is_refused(tmp_path, lmdb16, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    low, full = tmp_path / "bf16", tmp_path / "fp32"
    assert train([*TINY, "--data", str(lmdb16), "--out", str(low), "--kimg", "0.1"]) == 0
    (run_dir,) = low.iterdir()
    assert "mixed precision bf16" in (run_dir / "log.txt").read_text()
    state = final_checkpoint(low)
    for weights in state["networks"].values():
        assert all(torch.isfinite(v).all() for v in weights.values())
    assert all(not scaler for scaler in state["scalers"].values())  # bf16 has float32's range: no loss scaling
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert train([*TINY, "--data", str(lmdb16), "--out", str(full), "--kimg", "0.1"]) == 0
    a, b = state["networks"]["generator"], final_checkpoint(full)["networks"]["generator"]
    difference = max((a[k] - b[k]).abs().max().item() for k in b if b[k].is_floating_point())
    assert 0 < difference < 0.1  # the convolutions did run in bfloat16, and it is still the same training

    # Accelerate only autocasts to float16 on accelerators; on the CPU it would silently train in float32.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert train([*TINY, "--data", str(lmdb16), "--out", str(tmp_path / "fp16"), "--kimg", "0.1"]) == 2
    assert "fp16 mixed precision needs a GPU" in capsys.readouterr().err
    assert not (tmp_path / "fp16").exists()

    # The flag of plain `python launch/train.py` does the same and overrides the environment.
    flagged = tmp_path / "flag"
    assert (
        train([*TINY, "--data", str(lmdb16), "--out", str(flagged), "--kimg", "0.1", "--mixed-precision", "bf16"]) == 0
    )
    assert "mixed precision bf16" in next(flagged.iterdir()).joinpath("log.txt").read_text()
    torch.testing.assert_close(final_checkpoint(flagged)["networks"]["generator"], a, rtol=0, atol=0)

"""The main job, launch/train.py: runs, resumes exactly, survives bad input, non-finite values and two processes."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from conftest import run_train_main as train

from progressive.objective import recipe_config
from progressive.train.checkpoint import list_checkpoints, load_checkpoint, prune_checkpoints, save_atomically

# 4x4 stable, 8x8 fade + stable, 16x16 fade + stable: two resolution changes in 240 images.
TINY = [
    "--preset", "tiny", "--res", "16", "--fade-images", "48", "--stable-images", "48", "--batch", "4",
    "--workers", "0", "--tick-kimg", "0.048", "--snapshot-kimg", "0.096", "--checkpoint-kimg", "0.096",
]  # fmt: skip


@pytest.fixture(scope="module")
def lmdb16(tmp_path_factory, build_shapes_lmdb) -> Path:
    return build_shapes_lmdb(tmp_path_factory.mktemp("data") / "shapes16.lmdb", 48, max_res=16, holdout=8)


def _final_checkpoint(out: Path, images: int | None = None) -> dict:
    """The newest run's last checkpoint, or its checkpoint at `images` images shown."""
    runs = sorted(p for p in out.iterdir() if p.is_dir() and p.name[:5].isdigit())
    if images is not None:
        return load_checkpoint(runs[-1] / "checkpoints" / f"checkpoint-{images:09d}.pt")
    return load_checkpoint(list_checkpoints(runs[-1] / "checkpoints")[-1])


def _assert_same_training_state(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a["images_shown"] == b["images_shown"]
    for group in ("networks",):
        for name in a[group]:
            for key, value in a[group][name].items():
                torch.testing.assert_close(value, b[group][name][key], rtol=0, atol=atol, msg=f"{group}.{name}.{key}")
    for key, value in a["generator_ema"].items():
        torch.testing.assert_close(value, b["generator_ema"][key], rtol=0, atol=atol, msg=f"generator_ema.{key}")


def test_dry_run_prints_configuration_and_schedule_and_writes_nothing(tmp_path, capsys):
    assert train([*TINY, "--out", str(tmp_path / "runs"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    config = json.loads(printed[: printed.index("\n}\n") + 2])
    assert config["schedule"]["max_resolution"] == 16 and config["preset"] == "tiny"
    assert "  fade    16      4" in printed
    assert not (tmp_path / "runs").exists()


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
    assert log.count("metrics at kimg") == 2 and "recon/mse" in log and "energy/auroc" in log
    assert list(run_dir.glob("tensorboard/events.out.tfevents.*"))
    snapshots = {p.name for p in (run_dir / "snapshots").iterdir()}
    assert {"reals.png", "samples-000000240.png", "reconstructions-000000240.png"} <= snapshots
    state = _final_checkpoint(out)
    assert state["images_shown"] == 240 and state["skipped"] == {"energy": 0, "inference": 0, "generator": 0}
    assert len(list_checkpoints(run_dir / "checkpoints")) == 3  # 96, 192 and the final 240


def test_resume_mid_fade_equals_an_uninterrupted_run(tmp_path, lmdb16):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert train([*TINY, "--data", str(lmdb16), "--out", str(straight), "--kimg", "0.24"]) == 0
    # Stop at 168 images: half-way through the 16x16 fade-in.
    assert train([*TINY, "--data", str(lmdb16), "--out", str(interrupted), "--kimg", "0.168"]) == 0
    assert _final_checkpoint(interrupted)["images_shown"] == 168
    assert train([*TINY, "--data", str(lmdb16), "--out", str(interrupted), "--kimg", "0.24", "--resume", "latest"]) == 0
    assert [p.name for p in interrupted.iterdir() if p.name[:5].isdigit()] == ["00000-tiny-16"]  # same run dir
    a, b = _final_checkpoint(straight), _final_checkpoint(interrupted)
    _assert_same_training_state(a, b)
    for name in a["optimizers"]:
        for index, state in a["optimizers"][name]["state"].items():
            for key, value in state.items():
                torch.testing.assert_close(value, b["optimizers"][name]["state"][index][key], rtol=0, atol=0)


def test_resume_with_another_configuration_or_dataset_says_what_differs(tmp_path, lmdb16, capsys):
    out = tmp_path / "runs"
    assert train([*TINY, "--data", str(lmdb16), "--out", str(out), "--kimg", "0.1"]) == 0
    assert train([*TINY, "--data", str(lmdb16), "--out", str(out), "--resume", "latest", "--weight-kl", "2"]) == 2
    assert "objective.weight_kl: 1.0 -> 2.0" in capsys.readouterr().err
    assert train([*TINY, "--out", str(out), "--resume", "latest"]) == 2  # synthetic data instead of the LMDB
    assert "was trained on dataset" in capsys.readouterr().err
    assert len(list(out.iterdir())) == 1  # nothing new was written
    # The same data under another path (moved, or spelled relative instead of absolute) is the same dataset.
    moved = shutil.copytree(lmdb16, tmp_path / "elsewhere" / "data")
    assert train([*TINY, "--data", str(moved), "--out", str(out), "--resume", "latest", "--kimg", "0.104"]) == 0


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


def test_resume_from_a_damaged_checkpoint_is_one_line_exit_2(tmp_path, lmdb16, capsys):
    out = tmp_path / "runs"
    assert train([*TINY, "--data", str(lmdb16), "--out", str(out), "--kimg", "0.1"]) == 0
    checkpoint = list_checkpoints(out / "00000-tiny-16" / "checkpoints")[-1]
    state = load_checkpoint(checkpoint)
    missing, reshaped = dict(state), dict(state)
    missing["networks"] = {k: v for k, v in state["networks"].items() if k != "energy"}
    reshaped["generator_ema"] = {k: v[..., :1] if v.ndim else v for k, v in state["generator_ema"].items()}
    capsys.readouterr()
    for name, damaged, kind in [("missing", missing, "KeyError"), ("reshaped", reshaped, "RuntimeError")]:
        path = tmp_path / f"{name}.pt"
        torch.save(damaged, path)
        assert train([*TINY, "--data", str(lmdb16), "--out", str(tmp_path / name), "--resume", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: checkpoint {path} is damaged or incomplete: {kind}: ") and "\n" not in err
        assert not (tmp_path / name).exists()


def _dry_run_config(capsys, args: list[str]) -> dict:
    assert train([*TINY, *args, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    return json.loads(printed[: printed.index("\n}\n") + 2])


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
    state = _final_checkpoint(out)
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


def test_nan_batch_is_skipped_and_counted(tmp_path, lmdb16):
    out = tmp_path / "runs"
    assert train([*TINY, "--data", str(lmdb16), "--out", str(out), "--kimg", "0.1", "--debug-nan-iterations", "3"]) == 0
    state = _final_checkpoint(out)
    assert state["skipped"] == {"energy": 1, "inference": 1, "generator": 1}
    for weights in state["networks"].values():
        assert all(torch.isfinite(v).all() for v in weights.values())


def test_repeated_nans_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, lmdb16, capsys):
    out = tmp_path / "runs"
    args = [*TINY, "--data", str(lmdb16), "--out", str(out), "--kimg", "0.24", "--checkpoint-kimg", "0.048"]
    assert train([*args, "--debug-nan-iterations", "20,21,22,23,24", "--max-nonfinite", "4"]) == 3
    assert "4 consecutive iterations with non-finite gradients" in capsys.readouterr().err
    (run_dir,) = out.iterdir()
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    assert checkpoints[-1].name == "checkpoint-000000048.pt"  # iteration 20 starts at 80 images
    state = load_checkpoint(checkpoints[-1])
    for weights in state["networks"].values():
        assert all(torch.isfinite(v).all() for v in weights.values())


def test_ctrl_c_checkpoints_at_the_iteration_boundary_and_resume_is_exact(tmp_path, lmdb16):
    """SIGINT to the whole process group (as Ctrl-C sends it), DataLoader workers included."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    # Separate processes throughout: weights are compared bit for bit, and this test process's
    # threading differs from a fresh one's.
    command = [sys.executable, str(ROOT / "launch" / "train.py"), *TINY, "--data", str(lmdb16), "--kimg", "0.24",
               "--workers", "2"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([*command, "--out", str(stopped)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, cwd=ROOT, start_new_session=True)  # fmt: skip
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "stage: 8 x 8" in line:
            os.killpg(process.pid, signal.SIGINT)
            break
    lines += process.stdout.readlines()
    output = "".join(lines)
    assert process.wait(timeout=300) == 128 + signal.SIGINT, output
    assert "stopped by SIGINT at" in output and "continue with --resume latest" in output
    state = _final_checkpoint(stopped)
    assert 48 <= state["images_shown"] < 240  # a checkpoint where it stopped, not at the end
    assert f"checkpoint-{state['images_shown']:09d}.pt" in output

    for args in (["--out", str(stopped), "--resume", "latest"], ["--out", str(straight)]):
        subprocess.run([*command, *args], check=True, capture_output=True, env=env, cwd=ROOT, timeout=300)
    _assert_same_training_state(_final_checkpoint(straight), _final_checkpoint(stopped))


def test_a_save_killed_half_way_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    directory = tmp_path / "checkpoints"
    good = {"kind": "divergence-triangle-checkpoint", "version": 1, "weights": torch.arange(10.0)}
    save_atomically(good, directory / "checkpoint-000000100.pt")

    def torn_save(state, handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is interrupted in the middle of writing

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        save_atomically({**good, "weights": torch.zeros(10)}, directory / "checkpoint-000000100.pt")
    monkeypatch.undo()
    assert [p.name for p in directory.iterdir()] == ["checkpoint-000000100.pt"]
    torch.testing.assert_close(load_checkpoint(directory / "checkpoint-000000100.pt")["weights"], torch.arange(10.0))
    for images in (200, 300, 400):
        save_atomically(good, directory / f"checkpoint-{images:09d}.pt")
    prune_checkpoints(directory, keep=2)
    assert [p.name for p in list_checkpoints(directory)] == ["checkpoint-000000300.pt", "checkpoint-000000400.pt"]


def _accelerate(accelerate_command, args: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    command, env = accelerate_command(args, processes)
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_two_processes_stay_in_sync_and_match_one_process(tmp_path, lmdb16, accelerate_command):
    two, one = tmp_path / "two", tmp_path / "one"
    result = _accelerate(accelerate_command, [*TINY, "--data", str(lmdb16), "--out", str(two), "--kimg", "0.24"])
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = two.iterdir()
    assert list(run_dir.glob("tensorboard/events.out.tfevents.*")) and (run_dir / "snapshots" / "reals.png").exists()
    state = _final_checkpoint(two)
    digests = state["rank_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # both ranks hold identical weights
    assert "res   16" in (run_dir / "log.txt").read_text()
    # Resuming with two processes reads the checkpoint the main process wrote, on every rank.
    resumed = _accelerate(
        accelerate_command, [*TINY, "--data", str(lmdb16), "--out", str(two), "--kimg", "0.288", "--resume", "latest"]
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = _final_checkpoint(two)
    assert state["images_shown"] == 288 and state["rank_digests"][0] == state["rank_digests"][1]
    straight = tmp_path / "two-straight"
    result = _accelerate(accelerate_command, [*TINY, "--data", str(lmdb16), "--out", str(straight), "--kimg", "0.288"])
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_training_state(_final_checkpoint(straight), state)  # exact: same processes, same reductions

    assert train([*TINY, "--data", str(lmdb16), "--out", str(one), "--kimg", "0.24"]) == 0
    # Compared after both fade-ins (192 images, 48 iterations). Float rounding differs between one global
    # batch and two all-reduced halves; the 16x16 stable phase of this tiny network amplifies any rounding
    # difference about tenfold every two iterations (two single-process runs with 1 and 2 threads end 5e-4
    # apart at 240 images), so the final weights are only checked for agreement between the ranks.
    _assert_same_training_state(_final_checkpoint(one, images=192), _final_checkpoint(two, images=192), atol=1e-4)

    # A global batch that the processes cannot split is refused before anything is written. Each process
    # exits with 2; `accelerate launch` itself reports that in its summary and exits with 1.
    refused = _accelerate(
        accelerate_command, [*TINY, "--data", str(lmdb16), "--out", str(tmp_path / "odd"), "--batch", "3"]
    )
    assert refused.returncode != 0 and "exitcode  : 2" in refused.stderr
    assert refused.stderr.count("error: batch size 3 at 4x4 is not divisible by the 2 processes") == 1
    assert not (tmp_path / "odd").exists()


def test_bf16_autocasts_and_fp16_on_the_cpu_is_refused(tmp_path, lmdb16, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    low, full = tmp_path / "bf16", tmp_path / "fp32"
    assert train([*TINY, "--data", str(lmdb16), "--out", str(low), "--kimg", "0.1"]) == 0
    (run_dir,) = low.iterdir()
    assert "mixed precision bf16" in (run_dir / "log.txt").read_text()
    state = _final_checkpoint(low)
    for weights in state["networks"].values():
        assert all(torch.isfinite(v).all() for v in weights.values())
    assert all(not scaler for scaler in state["scalers"].values())  # bf16 has float32's range: no loss scaling
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert train([*TINY, "--data", str(lmdb16), "--out", str(full), "--kimg", "0.1"]) == 0
    a, b = state["networks"]["generator"], _final_checkpoint(full)["networks"]["generator"]
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
    torch.testing.assert_close(_final_checkpoint(flagged)["networks"]["generator"], a, rtol=0, atol=0)


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_iteration(tmp_path, lmdb16, accelerate_command):
    out = tmp_path / "runs"
    command, env = accelerate_command([*TINY, "--data", str(lmdb16), "--out", str(out), "--kimg", "0.24"])
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                cwd=ROOT, start_new_session=True)  # fmt: skip
    lines = []
    for line in launcher.stdout:
        lines.append(line)
        if "stage: 8 x 8" in line:
            # One worker of the torchrun agent (which runs inside the launcher) is signalled; the other
            # learns of it only through the per-iteration all-reduce.
            pgrep = ["pgrep", "-P", str(launcher.pid), "-f", "train.py"]
            workers = subprocess.run(pgrep, capture_output=True, text=True).stdout.split()
            assert len(workers) == 2, workers
            os.kill(int(workers[0]), signal.SIGTERM)
            break
    lines += launcher.stdout.readlines()
    launcher.wait(timeout=300)
    output = "".join(lines)
    assert output.count("stopped by SIGTERM at") == 1, output[-3000:]  # logged once, by rank 0
    state = _final_checkpoint(out)
    assert 48 <= state["images_shown"] < 240
    digests = state["rank_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # both ranks took part in the same final save


def test_two_machines_simulated_on_one_stop_on_sigterm_and_resume(tmp_path, lmdb16):
    """Two `accelerate launch --num_machines 2` (one process each), as on two nodes of a cluster."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "runs"

    def launch(machine_rank: int, *args: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
                   "--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1", "--main_process_port",
                   str(port), "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
                   str(ROOT / "launch" / "train.py"), *TINY, "--data", str(lmdb16), "--out", str(out),
                   *args]  # fmt: skip
        env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen(command, env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    nodes = [launch(0, "--kimg", "100"), launch(1, "--kimg", "100")]
    for line in nodes[0].stdout:
        if "stage: 8 x 8" in line:
            break
    for node in nodes:  # what a scheduler does at the end of a job's time: SIGTERM to each node's launcher
        node.send_signal(signal.SIGTERM)
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert "stopped by SIGTERM at" in outputs[0], outputs[0][-3000:]
    stopped_at = _final_checkpoint(out)["images_shown"]
    assert 48 <= stopped_at < 100_000

    nodes = [launch(rank, "--kimg", f"{(stopped_at + 8) / 1000}", "--resume", "latest") for rank in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:]
    state = _final_checkpoint(out)
    assert state["images_shown"] == stopped_at + 8 and len(state["rank_digests"]) == 2
    assert state["rank_digests"][0] == state["rank_digests"][1]
    assert sorted(p.name for p in out.iterdir()) == ["00000-tiny-16"]


def test_benchmark_train_counts_operator_calls_and_writes_its_speeds(tmp_path):
    out = tmp_path / "speed.json"
    command = [sys.executable, str(ROOT / "launch" / "benchmark_train.py"), "--preset", "tiny", "--res", "8",
               "--iterations", "1", "--warmup", "0", "--count-ops", "--channels-last", "--json", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.split() and line.split()[0] in ("4", "8")]
    calls = [(int(row[-2]), int(row[-1])) for row in rows]  # all ATen calls, the kernel-launching ones
    assert len(calls) == 2 and all(100 < launching < total for total, launching in calls), calls
    written = json.loads(out.read_text())
    assert set(written["images_per_second"]) == {"4", "8"} and written["channels_last"] is True


def test_batch_norm_statistics_cover_the_batch_of_every_process(tmp_path, build_shapes_lmdb, accelerate_command):
    """The cifar10 networks (batch norm in the generator): 2 processes train as 1 with the same global batch."""
    data = build_shapes_lmdb(tmp_path / "shapes32", 32, max_res=32, holdout=0)
    args = ["--preset", "cifar10-tiny", "--res", "32", "--batch", "8", "--workers", "0", "--kimg", "0.024",
            "--recipe", "reference", "--tick-kimg", "1", "--snapshot-kimg", "1", "--data", str(data)]  # fmt: skip
    command, env = accelerate_command([*args, "--out", str(tmp_path / "two")])
    two = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert train([*args, "--out", str(tmp_path / "one")]) == 0
    a, b = _final_checkpoint(tmp_path / "two"), _final_checkpoint(tmp_path / "one")
    assert any(key.endswith("running_var") for key in a["networks"]["generator"])
    _assert_same_training_state(a, b, atol=2e-5)  # 3 iterations; per-process statistics drifted by 2e-3
    assert a["rank_digests"][0] == a["rank_digests"][1]  # parameters and running statistics equal on both ranks


def test_trackers_get_scalars_images_and_the_configuration(tmp_path, lmdb16, capsys, monkeypatch):
    """TensorBoard by default (scalars, image grids, hyperparameters); --report-to none writes no events; a
    tracker that is unknown or not installed is refused before anything is written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "runs"
    args = [*TINY, "--data", str(lmdb16), "--out", str(out), "--kimg", "0.1"]
    assert train(args) == 0
    (run_dir,) = out.iterdir()
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert {"loss/energy", "terms/recon_inference", "health/sample_spread"} <= set(events.Tags()["scalars"])
    assert {"samples", "reconstructions", "reals"} <= set(events.Tags()["images"])
    (hparams,) = run_dir.glob("tensorboard/*/hparams.yml")
    assert "objective.weight_recon: 50.0" in hparams.read_text()
    log = (run_dir / "log.txt").read_text()
    assert "generator: " in log and " parameters (4: " in log and "generator average: half-life 10,000 images" in log

    assert train([*args, "--report-to", "none", "--out", str(tmp_path / "quiet")]) == 0
    (quiet,) = (tmp_path / "quiet").iterdir()
    assert not (quiet / "tensorboard").exists() and (quiet / "snapshots" / "reals.png").exists()

    capsys.readouterr()
    assert train([*args, "--report-to", "tensorbord", "--out", str(tmp_path / "typo")]) == 2
    assert "unknown tracker tensorbord" in capsys.readouterr().err and not (tmp_path / "typo").exists()
    import accelerate.tracking

    monkeypatch.setattr(
        accelerate.tracking, "get_available_trackers", lambda: [accelerate.utils.LoggerType.TENSORBOARD]
    )
    assert train([*args, "--report-to", "tensorboard,wandb", "--out", str(tmp_path / "missing")]) == 2
    assert "the wandb package is not installed (pip install wandb)" in capsys.readouterr().err


def test_wandb_receives_the_image_grids(tmp_path, lmdb16, monkeypatch):
    """With wandb installed (not a dependency), an offline run logs every snapshot grid as a wandb image."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "runs"
    assert train([*TINY, "--data", str(lmdb16), "--out", str(out), "--kimg", "0.1", "--report-to", "wandb"]) == 0
    (run_dir,) = out.iterdir()
    images = {p.name.split("_")[0] for p in run_dir.glob("wandb/offline-run-*/files/media/images/*.png")}
    assert images == {"samples", "reconstructions", "reals"} and not (run_dir / "tensorboard").exists()


def test_compiled_networks_train_as_eager_ones_through_every_stage(tmp_path, lmdb16):
    """--compile: three phases (4 stable, 8 fade, 8 stable) with snapshots and metrics stay compiled (an exhausted
    recompilation budget would end the run: it is an error, not a silent fall-back) and end where eager
    training ends. A separate process: dynamo's caches and limits are process-wide."""
    args = ["--preset", "tiny", "--res", "8", "--fade-images", "48", "--stable-images", "48", "--batch", "4",
            "--workers", "0", "--tick-kimg", "0.048", "--snapshot-kimg", "0.096", "--checkpoint-kimg", "1",
            "--kimg", "0.144", "--metrics", "recon", "--metric-kimg", "0.096", "--metric-images", "8",
            "--data", str(lmdb16)]  # fmt: skip
    command = [sys.executable, str(ROOT / "launch" / "train.py"), *args, "--compile", "default"]
    compiled = subprocess.run([*command, "--out", str(tmp_path / "compiled")], capture_output=True, text=True,
                              cwd=ROOT, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert train([*args, "--out", str(tmp_path / "eager")]) == 0
    _assert_same_training_state(_final_checkpoint(tmp_path / "compiled"), _final_checkpoint(tmp_path / "eager"), 1e-5)


def test_accelerates_own_dynamo_backend_is_refused_with_the_alternative(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")
    assert train([*TINY, "--out", str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err
    assert "dynamo backend (inductor)" in error and "--compile" in error and error.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_an_exhausted_recompilation_budget_is_one_line_not_a_silent_fallback(tmp_path, capsys, monkeypatch):
    """With a budget of one compilation per function the second shape the energy model meets exhausts it: the run
    ends with one line naming the way on, where torch's default would have fallen back to eager silently."""
    import torch._dynamo

    import progressive.train.compile

    monkeypatch.setattr(progressive.train.compile, "GRAPHS_PER_PHASE", 0)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    args = [*TINY, "--res", "4", "--kimg", "0.008", "--out", str(tmp_path / "runs"), "--compile", "default"]
    assert train(args) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]  # (and dynamo's log)
    assert len(errors) == 1 and "recompilation budget exhausted" in errors[0] and "--compile no" in errors[0]

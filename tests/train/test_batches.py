"""Batch sizes fitted to a GPU's memory (`--batch auto`), the legacy table, and the documented tables."""

import json

import pytest
from conftest import ROOT, run_train_main

from progressive.cli.train import main
from progressive.nets.layers import resolutions
from progressive.presets import preset
from progressive.train.batches import fitted_batch_sizes, memory_table, usable_gib
from progressive.train.checkpoint import saved_schedule
from progressive.train.schedule import LEGACY_BATCH_SIZES, ScheduleConfig

CELEBAHQ = ScheduleConfig.for_preset("celebahq")
MEMORY = preset("celebahq").memory


def test_the_512_channel_presets_start_from_batch_16_everywhere():
    for name in ("celebahq", "lsun"):
        schedule = ScheduleConfig.for_preset(name)
        assert {schedule.batch_size_at(r) for r in resolutions(4, schedule.max_resolution)} == {16}
        assert preset(name).memory is not None


@pytest.mark.parametrize("total_gib", [15.8, 22.0, 39.4, 79.1, 139.8])
@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("processes", [1, 2, 3, 4])
def test_batches_are_kept_where_they_fit_else_the_largest_that_fits(total_gib, precision, processes):
    fitted = fitted_batch_sizes(CELEBAHQ, MEMORY, total_gib, processes, precision)
    budget = usable_gib(total_gib)
    assert sorted(fitted) == resolutions(4, 1024)
    for resolution, batch in fitted.items():
        wanted = CELEBAHQ.batch_size_at(resolution)
        if batch == wanted:  # kept, also where 3 processes cannot split 16 (check_batches refuses that)
            assert MEMORY.peak_gib(resolution, -(-wanted // processes), precision) <= budget
        else:  # lowered to a multiple of the processes: the largest whose peak fits
            per_process = batch // processes
            assert batch % processes == 0 and 1 <= per_process and batch < wanted
            assert MEMORY.peak_gib(resolution, per_process, precision) <= budget
            assert MEMORY.peak_gib(resolution, per_process + 1, precision) > budget


def test_a_batch_the_processes_cannot_split_is_not_lowered_for_it():
    assert fitted_batch_sizes(CELEBAHQ, MEMORY, 139.8, 3, "bf16") == {r: 16 for r in resolutions(4, 1024)}
    assert fitted_batch_sizes(CELEBAHQ, MEMORY, 15.8, 3, "bf16")[1024] == 12  # 4 per process


def test_what_the_measurements_say_fits_an_80_gb_gpu_and_float32_needs_more():
    # Measured on one H100 80GB in bf16: batch 16 at 1024x1024 peaked at 45.3 GiB (docs/benchmarks.md).
    assert fitted_batch_sizes(CELEBAHQ, MEMORY, 79.1, 1, "bf16") == {r: 16 for r in resolutions(4, 1024)}
    assert MEMORY.peak_gib(1024, 16, "bf16") == pytest.approx(45.4, abs=0.1)
    assert MEMORY.peak_gib(1024, 3, "bf16") == pytest.approx(9.65, abs=0.1)
    on_40 = fitted_batch_sizes(CELEBAHQ, MEMORY, 39.4, 1, "bf16")
    assert on_40[1024] < 16 and on_40[512] == 16
    in_float32 = fitted_batch_sizes(CELEBAHQ, MEMORY, 39.4, 1, "no")
    assert all(in_float32[r] <= on_40[r] for r in on_40) and in_float32[1024] < on_40[1024]


def test_a_gpu_too_small_for_one_image_is_refused():
    with pytest.raises(ValueError, match="one image per process at 1024x1024 .* lower --res$"):
        fitted_batch_sizes(CELEBAHQ, MEMORY, 5.0, 1, "bf16")
    with pytest.raises(ValueError, match="one image per process at 1024x1024 .* or with --mixed-precision bf16$"):
        fitted_batch_sizes(CELEBAHQ, MEMORY, 8.0, 1, "no")


def dry_run(capsys, *flags: str) -> tuple[int, dict, str, str]:
    code = main(["--res", "1024", "--dry-run", *flags])
    out, err = capsys.readouterr()
    if code == 0:  # the same again as JSON: the configuration as resolved
        assert main(["--res", "1024", "--dry-run", "--json", *flags]) == 0
    config = json.loads(capsys.readouterr().out)["config"] if code == 0 else {}
    return code, config, out, err


def test_dry_run_fits_the_batches_to_the_gpu_memory_given(capsys):
    code, config, out, _ = dry_run(capsys)
    assert code == 0 and config["schedule"]["batch_sizes"] == {}  # no GPU: the preset's, said so
    assert "batch sizes as the preset's (no GPU memory to fit)" in out

    code, config, out, _ = dry_run(capsys, "--batch", "", "--gpu-memory-gib", "15.8", "--mixed-precision", "bf16")
    expected = fitted_batch_sizes(CELEBAHQ, MEMORY, 15.8, 1, "bf16")
    lowered = {str(r): b for r, b in expected.items() if b != 16}
    assert code == 0 and config["schedule"]["batch_sizes"] == lowered and lowered
    assert "batch sizes fitted to 15.8 GiB per GPU (bf16, 1 process(es)): " in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["fade"], ["stable"])]
    assert {int(row[1]): int(row[2]) for row in rows} == expected


def test_legacy_and_explicit_batches_are_kept_with_a_warning_where_they_would_not_fit(capsys):
    code, config, out, _ = dry_run(capsys, "--batch", "legacy", "--gpu-memory-gib", "15.8", "--mixed-precision", "no")
    assert code == 0
    assert config["schedule"]["batch_size"] == 16
    assert config["schedule"]["batch_sizes"] == {str(r): b for r, b in LEGACY_BATCH_SIZES.items()}
    warnings = [line for line in out.splitlines() if line.startswith("warning: --batch legacy: ")]
    assert any("batch 3 at 1024x1024" in line for line in warnings)

    code, config, out, _ = dry_run(capsys, "--batch", "8", "--gpu-memory-gib", "139.8")
    assert code == 0 and config["schedule"]["batch_size"] == 8 and "warning" not in out


@pytest.mark.parametrize(
    ("flags", "precision", "message"),
    [
        (["--batch", "auto,8:3"], "no", "--batch 'auto,8:3' is not auto, legacy, N or R:N,R:N"),
        (["--gpu-memory-gib", "0"], "no", "--gpu-memory-gib must be a positive number of GiB, got 0.0"),
        (["--gpu-memory-gib", "inf"], "no", "--gpu-memory-gib must be a positive number of GiB, got inf"),
        (["--gpu-memory-gib", "3"], "no", "--batch auto: one image per process at 128x128 needs about"),
        ([], "fp32", "mixed precision 'fp32' (ACCELERATE_MIXED_PRECISION) is not no, fp16 or bf16"),
    ],
)
def test_bad_batch_input_is_one_line_and_exit_2(capsys, monkeypatch, flags, precision, message):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", precision)  # what `accelerate launch` sets
    code, _, _, err = dry_run(capsys, *flags)
    assert code == 2
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


@pytest.mark.slow
def test_training_writes_the_fitted_batches_and_a_resumed_run_keeps_them(tmp_path, capsys):
    # celebahq's networks trained at 4x4 only, on a pretend GPU that fits 4 images (CPU: the fit is by the flag).
    def train(*flags: str) -> int:
        return run_train_main(
            ["--preset", "celebahq", "--res", "4", "--out", str(tmp_path), "--mixed-precision", "no", *flags]
            + ["--workers", "0", "--tick-kimg", "0.004", "--snapshot-kimg", "1", "--checkpoint-kimg", "1"]
            + ["--synthetic-images", "32", "--grid-images", "4"]
        )

    assert train("--gpu-memory-gib", "3", "--kimg", "0.008") == 0
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert json.loads((run / "config.json").read_text())["schedule"]["batch_sizes"] == {"4": 4}
    assert "batch sizes fitted to 3.0 GiB per GPU (float32, 1 process(es)): 4: 4" in (run / "log.txt").read_text()

    # On a GPU that would fit 16, the resumed run keeps its 4 (a new fit would change the training).
    assert train("--gpu-memory-gib", "100", "--kimg", "0.016", "--resume", "latest") == 0
    assert json.loads((run / "config.json").read_text())["schedule"]["batch_sizes"] == {"4": 4}
    assert "batch sizes as the resumed run's (--batch auto)" in (run / "log.txt").read_text()
    capsys.readouterr()

    assert train("--batch", "8", "--kimg", "0.024", "--resume", "latest") == 2
    err = capsys.readouterr().err
    assert "schedule.batch_size: 16 -> 8" in err and "(without --batch, a resumed run keeps its batch sizes)" in err


def test_the_documented_tables_are_what_the_model_gives():
    text = (ROOT / "docs" / "training.md").read_text()
    for precision in ("bf16", "no"):
        table = "\n".join(memory_table("celebahq", precision))
        assert table in text, f"docs/training.md lacks the {precision} table of python -m progressive.train.batches"


def test_the_projection_marks_speeds_measured_at_another_batch(tmp_path, capsys):
    measured = tmp_path / "speeds.json"
    speeds = {str(r): 100.0 for r in resolutions(4, 1024)}
    measured.write_text(json.dumps({"images_per_second": speeds, "batch_sizes": {"256": 14, "1024": 16}}))
    code, _, out, _ = dry_run(capsys, "--throughput", str(measured))
    assert code == 0
    rows = [line for line in out.splitlines() if line.split()[:1] in (["fade"], ["stable"])]
    assert [row.split()[1] for row in rows if "(measured at batch 14)" in row] == ["256", "256"]
    assert "resolutions [256] measured at other batch sizes" in out
    measured.write_text(json.dumps({"images_per_second": speeds, "batch_sizes": {"256": "many"}}))
    assert dry_run(capsys, "--throughput", str(measured))[0] == 2


def test_a_checkpoints_schedule_is_read_only_when_its_batch_sizes_are_sound():
    def state(schedule) -> dict:
        return {"config": json.dumps({"schedule": schedule})}

    sound = {"batch_size": 16, "batch_sizes": {"1024": 3}}
    assert saved_schedule(state(sound)) == sound
    for damaged in (
        {"batch_size": 16, "batch_sizes": {"1024": "x"}},
        {"batch_size": 16, "batch_sizes": {"a": 3}},
        {"batch_size": None, "batch_sizes": {}},
        {"batch_size": 16, "batch_sizes": []},
        {"batch_size": 16},
    ):
        assert saved_schedule(state(damaged)) is None, damaged
    assert saved_schedule({"config": "not json"}) is None and saved_schedule({}) is None

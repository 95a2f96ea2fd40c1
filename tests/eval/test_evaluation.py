"""evaluate_run: evaluating a run from Python gives what triangle-evaluate writes; bad requests raise BadInput."""

import json

import pytest

from progressive.cli import evaluate
from progressive.errors import BadInput
from progressive.evaluation import EvaluationOptions, evaluate_run, report_lines
from progressive.pretrained import open_trained


@pytest.fixture(scope="module")
def checkpoint(tiny_run):
    return tiny_run / "checkpoints" / "checkpoint-000000240.pt"


def test_evaluate_run_from_python_equals_the_command(checkpoint, tmp_path, capsys):
    run = open_trained(checkpoint.parent.parent, "cpu")  # a run directory: its newest checkpoint
    report = evaluate_run(run, metrics="recon,swd,energy", swd_patches=16)
    assert capsys.readouterr().out.splitlines() == ["[1/3] recon ...", "[2/3] swd ...", "[3/3] energy ..."]
    out = tmp_path / "e.json"
    command = [str(checkpoint), "--metrics", "recon,swd,energy", "--swd-patches", "16", "--out", str(out)]
    assert evaluate.main(command) == 0
    written = json.loads(out.read_text())
    capsys.readouterr()
    assert written["metrics"] == report["metrics"]  # the same seeds, the same images: the same figures
    assert written["settings"] == report["settings"] and written["held_out"] == report["held_out"]
    # Options as a value, changes on top; quiet when asked.
    options = EvaluationOptions(metrics="recon", images=4)
    quiet = evaluate_run(run, options, progress=None, note=None)
    assert capsys.readouterr().out == "" and quiet["held_out"]["images"] == 4 and set(quiet["metrics"]) == {
        "recon/mse", "recon/mse_01", "recon/psnr"}  # fmt: skip


def test_evaluate_run_opens_a_path_and_prints_what_the_command_prints(checkpoint, tmp_path, capsys):
    opened = evaluate_run(open_trained(checkpoint), metrics="recon,energy", images=8, progress=None)
    report = evaluate_run(checkpoint.parent.parent, metrics="recon,energy", images=8, device="cpu")
    loaded = capsys.readouterr().out.splitlines()[0]
    assert loaded.startswith(f"loaded {checkpoint}: 16x16 at 0.2 kimg, on cpu (")
    assert report["metrics"] == opened["metrics"] and report["checkpoint"] == str(checkpoint)
    assert report["run_directory"] == str(checkpoint.parent.parent)  # the command's default folder for the JSON
    out = tmp_path / "e.json"  # not the default beside the checkpoint: the tiny run is shared with other tests
    assert evaluate.main([str(checkpoint), "--metrics", "recon,energy", "--images", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"wrote {out}"
    assert printed[-1 - len(report["metrics"]) : -1] == report_lines(report)
    assert report_lines(report)[0] == f"{'recon/mse':<24} {report['metrics']['recon/mse']:.6g}"
    with pytest.raises(BadInput, match="does not exist"):
        evaluate_run(tmp_path / "missing.pt", metrics="recon", progress=None)
    with pytest.raises(BadInput, match="unknown"):  # refused before the checkpoint is looked for
        evaluate_run(tmp_path / "missing.pt", metrics="sharpness", progress=None)


def test_evaluate_run_refuses_what_it_cannot_do_with_bad_input(checkpoint, tmp_path):
    run = open_trained(checkpoint)
    with pytest.raises(BadInput, match="unknown"):
        evaluate_run(run, metrics="recon,sharpness", progress=None)
    with pytest.raises(BadInput, match="protocol 'mnist'"):
        evaluate_run(run, protocol="mnist", progress=None)
    with pytest.raises(BadInput, match="--metrics classifier: .* for the classifier"):  # named, and unavailable
        evaluate_run(run, metrics="classifier", progress=None)
    with pytest.raises(BadInput, match="does not exist"):
        open_trained(tmp_path / "missing.pt")

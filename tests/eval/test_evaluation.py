"""evaluate_run: evaluating a run from Python gives what triangle-evaluate writes; bad requests raise BadInput."""

import json

import pytest

from progressive.cli import evaluate
from progressive.errors import BadInput
from progressive.eval.evaluation import EvaluationOptions, evaluate_run
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

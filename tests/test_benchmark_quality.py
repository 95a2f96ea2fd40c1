"""launch/benchmark_quality.py: configurations side by side, one table, grids and a JSON of every figure."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("benchmark_quality", ROOT / "launch" / "benchmark_quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lmdb8(tmp_path_factory, build_shapes_lmdb) -> Path:
    return build_shapes_lmdb(tmp_path_factory.mktemp("data") / "shapes8.lmdb", 40, max_res=8, holdout=8, seed=1)


def test_two_configurations_give_a_table_grids_and_json(tmp_path, lmdb8, capsys):
    out = tmp_path / "quality"
    train_args = "--fade-images 16 --stable-images 16 --batch 4 --workers 0 --tick-kimg 0.016"
    code = _benchmark_module().main(
        ["--data", str(lmdb8), "--preset", "tiny", "--res", "8", "--kimg", "0.048", "--images", "8",
         "--configs", "triangle", "vae-sigma1=vae,weight_recon=0.5", "--out", str(out), "--train-args", train_args]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    header, rule, *rows = [line for line in printed.splitlines() if line.startswith("|")]
    assert "recon MSE" in header and "SWD" in header and "AUROC noise" in header and len(rows) == 2
    assert rows[0].startswith("| triangle | no / 0 |") and rows[1].startswith("| vae-sigma1 | no / 0 |")
    results = json.loads((out / "results.json").read_text())
    triangle, vae = results["rows"]
    assert triangle["kimg"] == pytest.approx(0.048) and 0 <= triangle["metrics"]["recon/mse"] < 4
    assert triangle["health"]["energy_abs_max"] > 0 and "energy/auroc_noise" in triangle["metrics"]
    # The VAE part trains no energy model: no energies during training and no energy figures.
    assert vae["changes"] == {"weight_recon": "0.5"} and vae["health"]["energy_abs_max"] == 0
    assert "energy/auroc_noise" not in vae["metrics"] and "recon/mse" in vae["metrics"]
    assert [cell.strip() for cell in rows[1].split("|")[-5:-2]] == ["–", "–", "–"]  # the three AUROC columns
    for name in ("triangle", "vae-sigma1"):
        assert (out / f"{name}-samples.png").stat().st_size > 0
        assert (out / f"{name}-reconstructions.png").stat().st_size > 0
        assert (out / f"{name}.log").exists()


@pytest.mark.parametrize(
    ("configs", "message"),
    [
        (["nope"], "unknown recipe 'nope'"),
        (["x=triangle,weight_klx=1"], "'weight_klx=1' is not key=value with a TriangleConfig key"),
        (["triangle", "triangle"], "distinct names"),
        (["triangle,energy_penalty=1"], "name it, e.g. mine=triangle,energy_penalty=1"),
    ],
)
def test_bad_configurations_are_one_line_exit_2(tmp_path, lmdb8, capsys, configs, message):
    code = _benchmark_module().main(["--data", str(lmdb8), "--out", str(tmp_path / "q"), "--configs", *configs])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "q").exists()

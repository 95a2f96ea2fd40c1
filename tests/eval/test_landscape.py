"""Energy-landscape mapping against a hand-made 2-D energy whose minima and barriers are known from a grid."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, idx_bytes, run_train_main
from conftest import TINY_RUN as TINY

from progressive.eval.landscape import (
    LandscapeSettings,
    barrier_matrix,
    basin_purity,
    class_histograms,
    clustering_view,
    descend,
    descend_in_batches,
    energy_and_gradient,
    kmeans_groups,
    merge_minima,
    merge_tree,
    naming_summary,
    nearest_minima,
    plot_disconnectivity,
    relaxed_path,
    with_gaussian_prior,
)

# Three Gaussian wells: A and B deep and far apart, C shallower, above the line between them.
CENTRES = torch.tensor([[-0.6, 0.0], [0.6, 0.0], [0.0, 0.55]], dtype=torch.float64)
DEPTHS = torch.tensor([1.0, 1.0, 0.8], dtype=torch.float64)
WIDTH = 0.3


def wells(points: torch.Tensor) -> torch.Tensor:
    squared = (points[:, None, :] - CENTRES[None]).pow(2).sum(dim=-1)
    return -(DEPTHS * torch.exp(-squared / (2 * WIDTH**2))).sum(dim=1)


def grid_truth(size: int = 401) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grid coordinates, energies, the lowest barrier between every two wells by flooding the grid)."""
    axis = torch.linspace(-1, 1, size, dtype=torch.float64)
    points = torch.cartesian_prod(axis, axis)
    values = wells(points).numpy().reshape(size, size)
    parent = np.arange(size * size)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    cells = [int(np.argmin(((points.numpy() - c.numpy()) ** 2).sum(1))) for c in CENTRES]
    barriers = np.full((3, 3), np.nan)
    flooded = np.zeros(size * size, dtype=bool)
    for index in np.argsort(values, axis=None):  # water rises: the level at which two wells connect
        flooded[index] = True
        row, col = divmod(int(index), size)
        for r, c in ((row - 1, col), (row + 1, col), (row, col - 1), (row, col + 1)):
            if 0 <= r < size and 0 <= c < size and flooded[r * size + c]:
                parent[find(r * size + c)] = find(int(index))
        for i in range(3):
            for j in range(i + 1, 3):
                if np.isnan(barriers[i, j]) and find(cells[i]) == find(cells[j]):
                    barriers[i, j] = barriers[j, i] = values.flat[index]
    return points.numpy(), values, barriers


def test_minima_barriers_and_basins_of_three_wells():
    settings = LandscapeSettings(descent_steps=400, step_size=0.01, path_points=21, path_steps=600,
                                 path_step_size=0.005, merge_distance=0.05)  # fmt: skip
    starts = torch.rand(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    ends = descend(wells, starts, settings)
    energies, _ = energy_and_gradient(wells, ends)
    kept, owner = merge_minima(ends, energies, settings.merge_distance)
    minima = ends[kept]
    assert len(kept) == 3 and sorted(owner) == sorted(owner) and set(owner) == {0, 1, 2}

    points, values, truth = grid_truth()
    # Each minimum is the lowest grid point near its well, to the grid's resolution.
    for minimum in minima:
        nearest = int(np.argmin(((points - minimum.numpy()) ** 2).sum(1)))
        local = ((points - minimum.numpy()) ** 2).sum(1) < 0.05**2
        assert values.flat[nearest] == pytest.approx(values.flat[local].min(), abs=1e-4)
    well = [int(torch.argmin((CENTRES - m).pow(2).sum(1))) for m in minima]  # which well each minimum is
    barriers = barrier_matrix(wells, minima, settings).numpy()
    for i in range(3):
        for j in range(i + 1, 3):
            exact = truth[well[i], well[j]]
            assert exact - 1e-3 <= barriers[i, j] <= exact + 5e-3, (well[i], well[j], barriers[i, j], exact)

    # A and B: the relaxed band goes round by C's side, far below the straight line's highest point.
    a, b = well.index(0), well.index(1)
    straight = wells(torch.stack([(1 - t) * minima[a] + t * minima[b] for t in torch.linspace(0, 1, 101)])).max()
    assert barriers[a, b] < float(straight) - 0.1

    own = torch.tensor([barriers[i, i] for i in range(3)])
    merges, basins = merge_tree(own, torch.tensor(barriers), threshold=10.0)
    assert [m.height for m in merges] == sorted(m.height for m in merges) and len(merges) == 2
    assert len(set(basins)) == 1  # a generous threshold: one basin
    merges, basins = merge_tree(own, torch.tensor(barriers), threshold=0.01)
    assert len(set(basins)) == 3 and not any(m.same_basin for m in merges)  # a strict one: each well alone


def test_a_gaussian_prior_gives_a_falling_energy_its_minimum_and_the_descent_says_whether_it_converged():
    slope = torch.tensor([1.0, -2.0], dtype=torch.float64)

    def falling(z: torch.Tensor) -> torch.Tensor:  # a plane: no minimum, |gradient| sqrt(5) everywhere
        return z @ slope

    settings = LandscapeSettings(descent_steps=2000, step_size=0.01, bounds=None)
    starts = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ends, energies, gradients = descend_in_batches(with_gaussian_prior(falling), starts, settings, batch_size=2)
    # z.a + |z|^2/2 is lowest at z = -a, where it is -|a|^2/2 = -2.5; the descent got there: its gradient is ~0
    torch.testing.assert_close(ends, -slope.expand(5, 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(energies, torch.full((5,), -2.5, dtype=torch.float64), atol=1e-9, rtol=0)
    assert float(gradients.max()) < 1e-6
    ends, _, gradients = descend_in_batches(falling, starts, settings, batch_size=2)  # it never stops falling
    torch.testing.assert_close(ends, starts - 2000 * 0.01 * slope, atol=1e-9, rtol=0)
    torch.testing.assert_close(gradients, torch.full((5,), 2.5**0.5, dtype=torch.float64), atol=1e-12, rtol=0)


def test_a_band_between_two_points_of_one_well_stays_in_it():
    settings = LandscapeSettings(path_points=9, path_steps=100)
    a, b = CENTRES[0] + torch.tensor([0.05, 0.0], dtype=torch.float64), CENTRES[0] - torch.tensor([0.05, 0.0])
    path, values = relaxed_path(wells, a, b.double(), settings)
    assert path.shape == (9, 2) and torch.equal(path[0], a) and values.max() < -0.9


# ----------------------------------------------------------------------------- basins' purity and named minima


def double_well(points: torch.Tensor) -> torch.Tensor:
    """Two wells at (-0.5, 0) and (0.5, 0), energy 0, joined by a pass of height 1 at the origin."""
    x, y = points[:, 0], points[:, 1]
    return 16 * (x**2 - 0.25) ** 2 + y**2


def test_purity_counts_each_groups_majority():
    groups, labels = [0, 0, 0, 7, 7], [0, 0, 1, 2, 2]
    assert class_histograms(groups, labels, classes=3) == {0: [2, 1, 0], 7: [0, 0, 2]}
    assert basin_purity(groups, labels) == pytest.approx((2 + 2) / 5)
    assert basin_purity([0] * 5, labels) == pytest.approx(2 / 5)  # one basin: the largest class's share
    assert basin_purity(list(range(5)), labels) == 1.0  # one point per group


def test_kmeans_reference_recovers_separated_blobs_and_repeats_with_its_seed():
    rng = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 5.0]])
    labels = [k % 3 for k in range(90)]
    points = centres[labels] + 0.3 * torch.randn(90, 3, generator=rng)
    groups = kmeans_groups(points.view(90, 1, 3), 3, seed=1)  # any shape: flattened after the batch dimension
    assert len(set(groups)) == 3 and basin_purity(groups, labels) == 1.0
    assert kmeans_groups(points, 3, seed=1) == groups
    assert kmeans_groups(points, 1) == [0] * 90  # one cluster: the purity floor, as one basin
    assert basin_purity(kmeans_groups(points, 2, seed=3), labels) == pytest.approx(60 / 90)  # two blobs share one
    twice = kmeans_groups(torch.cat([centres, centres]), 4)  # fewer distinct points than clusters
    assert twice[:3] == twice[3:] and len(set(twice)) == 3  # equal points share a cluster; one cluster stays empty
    with pytest.raises(AssertionError, match="clusters of"):
        kmeans_groups(points, 91)


def test_large_images_are_clustered_at_32_pixels_a_side_and_codes_as_they_are():
    large = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    small = clustering_view(large)
    assert small.shape == (2, 3, 32, 32)
    assert torch.allclose(small[0, 0, 0, 0], large[0, 0, :2, :2].mean())  # each pixel the mean of a 2 x 2 block
    assert torch.equal(clustering_view(large[:, :, :32, :32]), large[:, :, :32, :32])
    codes = torch.randn(5, 64, 1, 1)
    assert torch.equal(clustering_view(codes), codes)


def test_purity_of_a_double_well_whose_sides_carry_their_own_labels():
    settings = LandscapeSettings(descent_steps=400, step_size=0.01, path_points=11, path_steps=200)
    rng = torch.Generator().manual_seed(0)
    starts = torch.rand(32, 2, generator=rng, dtype=torch.float64) * 2 - 1
    ends = descend(double_well, starts, settings)
    energies, _ = energy_and_gradient(double_well, ends)
    kept, _ = merge_minima(ends, energies, settings.merge_distance)
    minima = ends[kept]
    assert len(kept) == 2 and torch.allclose(minima[:, 0].abs(), torch.tensor(0.5, dtype=torch.float64), atol=1e-3)
    barriers = barrier_matrix(double_well, minima, settings)
    assert float(barriers[0, 1]) == pytest.approx(1.0, abs=1e-2)  # the pass at the origin

    # Labelled points, away from the ridge x = 0: label 0 on the left, 1 on the right.
    points = torch.rand(200, 2, generator=rng, dtype=torch.float64) * 2 - 1
    points = points[points[:, 0].abs() > 0.05]
    left = (points[:, 0] < 0).long()
    labels = (1 - left).tolist()
    nearest, distance = nearest_minima(descend(double_well, points, settings), minima, chunk=7)
    assert (distance < settings.merge_distance).all()
    left_minimum = int(torch.argmin(minima[:, 0]))
    assert ((nearest == left_minimum) == left.bool()).all()  # each point descends into its own side's well

    _, split = merge_tree(energies[kept], barriers, threshold=0.5)  # the pass rises 1 above both: two basins
    basin_of = [split[i] for i in nearest.tolist()]
    assert len(set(split)) == 2 and basin_purity(basin_of, labels) == 1.0
    # Mixed labels on the right: every other right-hand point is relabelled 0; the right basin's majority is
    # whichever is commoner there, the left stays pure.
    mixed = [0 if is_left or k % 2 else 1 for k, is_left in enumerate(left.tolist())]
    right = [m for m, is_left in zip(mixed, left.tolist(), strict=True) if not is_left]
    expected = (int(left.sum()) + max(right.count(0), right.count(1))) / len(mixed)
    assert basin_purity(basin_of, mixed) == pytest.approx(expected) and expected < 1
    _, joined = merge_tree(energies[kept], barriers, threshold=10.0)  # a generous threshold: one basin
    one = [joined[i] for i in nearest.tolist()]
    assert basin_purity(one, labels) == pytest.approx(max(labels.count(0), labels.count(1)) / len(labels))


class BrightnessNetwork(torch.nn.Module):
    """A stand-in classifier network: its one feature is the image's mean; 'bright' above 0, 'dark' below,
    more confident the further the mean is from 0."""

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().mean(dim=(1, 2, 3))[:, None]

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([-10 * features, 10 * features], dim=1)

    def parameters(self, recurse: bool = True):
        return iter([torch.zeros(1)])


def test_minima_are_named_with_their_confidence_and_summarised():
    from progressive.eval.classifier import TrainedClassifier, name_classes

    classifier = TrainedClassifier(BrightnessNetwork(), ["dark", "bright"], 1.0, 0.0, "stand-in")
    means = [0.8, -0.6, 0.05, 0.9]  # confident bright, confident dark, unsure bright, confident bright
    images = torch.stack([torch.full((3, 4, 4), m) for m in means])
    named = name_classes(classifier, images)
    assert [n for n, _ in named] == ["bright", "dark", "bright", "bright"]
    assert named[2][1] == pytest.approx(1 / (1 + np.exp(-1.0))) and min(named[0][1], named[1][1]) > 0.99
    summary = naming_summary(named, threshold=0.9)
    assert summary == {"threshold": 0.9, "minima": 4, "confident": 3, "named_share": 0.75, "classes": 2,
                       "classes_confident": 2, "counts": {"bright": 3, "dark": 1}}  # fmt: skip
    assert naming_summary(named[2:3], 0.9)["classes_confident"] == 0


def test_the_graph_draws_a_thumbnail_and_caption_under_each_minimum(tmp_path):
    pytest.importorskip("matplotlib")
    energies = torch.tensor([-2.0, -1.0, -1.5])
    barriers = torch.tensor([[-2.0, 0.0, -1.2], [0.0, -1.0, 0.5], [-1.2, 0.5, -1.5]])
    merges, basins = merge_tree(energies, barriers, threshold=0.4)
    gray = [np.full((16, 16), 60 * i, dtype=np.uint8) for i in range(3)]
    path = tmp_path / "graph.png"
    plot_disconnectivity(energies.tolist(), merges, [1, 2, 3], str(path), gray, ["a\n0.99", "b\n0.50", "c"], basins)
    from PIL import Image

    width, height = Image.open(path).size
    assert width > 300 and height > 400  # the thumbnails and captions under the axis are inside the picture


# ----------------------------------------------------------------------------- the command on a labelled run


def write_bars_idx(folder: Path, split: str, count: int, seed: int) -> None:
    """Fashion-MNIST's IDX files of `count` 28x28 images, each a horizontal bar (label 0) or a vertical one (1)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 30, (count, 28, 28)).astype(np.uint8)
    labels = (np.arange(count) % 2).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        at = rng.integers(4, 20)
        image[at : at + 3, 4:-4] = 255 if label == 0 else image[at : at + 3, 4:-4]
        image[4:-4, at : at + 3] = 255 if label == 1 else image[4:-4, at : at + 3]
    for kind, array, magic in (("images-idx3", images, 0x803), ("labels-idx1", labels, 0x801)):
        (folder / f"{split}-{kind}-ubyte").write_bytes(idx_bytes(array, magic))


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory) -> dict[str, Path]:
    """A 16x16 tiny grayscale run trained for 240 images on a labelled Fashion-MNIST-format LMDB of bars."""
    root = tmp_path_factory.mktemp("labelled-landscape")
    (root / "idx").mkdir()
    write_bars_idx(root / "idx", "train", 64, seed=0)
    write_bars_idx(root / "idx", "t10k", 16, seed=1)
    data = root / "bars.lmdb"
    command = [sys.executable, "-m", "datasets_prep", "build", f"fashion-mnist:{root / 'idx'}", str(data),
               "--max-res", "32", "--workers", "1", "--no-progress"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    assert run_train_main([*TINY, "--data", str(data), "--out", str(root / "runs")]) == 0
    return {"data": data, "checkpoint": root / "runs" / "00000-tiny-16" / "checkpoints" / "checkpoint-000000240.pt"}


@pytest.mark.slow
def test_the_command_names_minima_and_measures_the_basins_purity(labelled_run, unlabelled16, tmp_path, capsys):
    from PIL import Image

    from progressive.cli import energy_landscape

    small = ["--count", "6", "--descent-steps", "10", "--path-steps", "5", "--path-points", "4", "--purity-images",
             "20", "--real-images", "8", "--batch", "4", "--classifier-cache", str(tmp_path / "cache")]  # fmt: skip
    for space in ("image", "latent"):
        out = tmp_path / space
        args = [str(labelled_run["checkpoint"]), "--out", str(out), "--space", space, *small]
        assert energy_landscape.main(args) == 0
        report = json.loads((out / "landscape.json").read_text())
        minima, naming, purity = report["minima"], report["naming"], report["purity"]
        assert report["skipped"] == {} and 1 <= len(minima) <= 6
        assert all(m["class"] in naming["classifier"]["classes"] and 0.1 <= m["confidence"] <= 1 for m in minima)
        confident = sum(m["confidence"] >= 0.9 for m in minima)
        assert naming["confident"] == confident and naming["named_share"] == confident / len(minima)
        assert 1 <= naming["classes"] <= len(minima) and naming["classes_confident"] <= naming["classes"]
        assert 0 <= naming["confident_real"] <= 1 and naming["real_images"] == 8
        assert purity["images"] == 20 and purity["basins"] == report["basins"] == len(purity["per_basin"])
        assert sum(b["images"] for b in purity["per_basin"]) == 20 == sum(m["training_images"] for m in minima)
        majority = sum(max(b["counts"].values()) for b in purity["per_basin"])
        assert purity["purity"] == pytest.approx(majority / 20) and purity["one_basin"] == 0.5  # labels alternate
        assert purity["one_basin"] <= purity["purity"] <= purity["purity_minima"] <= 1
        for name in ("kmeans_starts", "kmeans_starts_minima", "kmeans_ends", "kmeans_ends_minima"):
            assert purity["one_basin"] <= purity[name] <= 1, name
        assert Image.open(out / "minima.png").mode == "L"  # a grayscale run's minima
        if importlib.util.find_spec("matplotlib") is not None:
            assert Image.open(out / "disconnectivity.png").size[1] > 400
        printed = capsys.readouterr().out
        line = next(line for line in printed.splitlines() if line.startswith("figure 11: "))
        assert "named with confidence >= 0.9" in line and "real test images" in line and "basin purity" in line
    # Without labels the rest is written, and the summary line says why there are no names and no purity.
    shapes = unlabelled16
    args = [str(labelled_run["checkpoint"]), "--out", str(tmp_path / "unlabelled"), "--data", str(shapes), *small]
    assert energy_landscape.main(args) == 0
    report = json.loads((tmp_path / "unlabelled" / "landscape.json").read_text())
    assert report["naming"] is None and report["purity"] is None and "class" not in report["minima"][0]
    assert report["skipped"] == {"naming": f"{shapes} has no class labels", "purity": f"{shapes} has no class labels"}
    captured = capsys.readouterr()
    assert f"figure 11: minima not named ({shapes} has no class labels); no basin purity" in captured.out
    assert "note: minima not named, no basin purity" in captured.err
    assert energy_landscape.main([str(labelled_run["checkpoint"]), "--purity-images", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --purity-images must be >= 0 and --real-images >= 1"

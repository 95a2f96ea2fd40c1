"""Energy-landscape mapping against a hand-made 2-D energy whose minima and barriers are known from a grid."""

import numpy as np
import pytest
import torch

from progressive.eval.landscape import (
    LandscapeSettings,
    barrier_matrix,
    descend,
    energy_and_gradient,
    merge_minima,
    merge_tree,
    relaxed_path,
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


def test_a_band_between_two_points_of_one_well_stays_in_it():
    settings = LandscapeSettings(path_points=9, path_steps=100)
    a, b = CENTRES[0] + torch.tensor([0.05, 0.0], dtype=torch.float64), CENTRES[0] - torch.tensor([0.05, 0.0])
    path, values = relaxed_path(wells, a, b.double(), settings)
    assert path.shape == (9, 2) and torch.equal(path[0], a) and values.max() < -0.9

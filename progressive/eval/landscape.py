"""Mapping an energy landscape (section 4.3 and Figure 11 of the paper, after Hill, Nijkamp & Zhu 2018).

1. **Minima.** Start from images (generated or held out) and descend the energy: gradient descent, or
   Langevin dynamics at a low temperature, in image space (clamped to [-1, 1]) or in the generator's
   latent space through E(g(z)). Minima closer than `merge_distance` (root-mean-square over the
   coordinates) are one minimum, kept at its lowest member.
2. **Barriers.** Between two minima, the highest energy along a path joining them, the path lowered by a
   nudged elastic band: the interior points of a discretised path move down the energy gradient's
   component across the path, while springs along it keep them evenly spaced. The barrier is the highest
   energy on the relaxed path: an upper bound on the true one (the lowest possible maximum), tight when
   the band has found the mountain pass.
3. **Basins and the disconnectivity graph.** Minima sorted from lowest energy up; two groups merge at the
   barrier joining them (single linkage, lowest barriers first), which gives the merge tree the graph draws.
   A basin is a group whose internal merges all rise less than `barrier_threshold` above the higher of the
   two minima they join: the paper's "sequentially group images if the energy barrier between two minima
   satisfies some threshold".

4. **What the basins hold** (Figure 11 on a labelled set). Labelled points (training images) descend with the
   same settings and join the basin of the nearest minimum found (root-mean-square distance); the basins' purity
   is the share of points whose basin's most common class is their own, read against as many k-means clusters
   of the same points (no energy in them). A classifier names each minimum.

Everything takes an energy function on a batch of points (B, ...) -> (B,), so it runs on a trained energy
model, on E(g(z)), or on a hand-written energy (the tests check it against analytic minima and barriers).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

EnergyFunction = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LandscapeSettings:
    """Every knob of the mapping (docs/landscape.md)."""

    descent_steps: int = 300  # gradient (or Langevin) steps from each start to its minimum
    step_size: float = 0.01  # size of each descent step, per unit of gradient
    temperature: float = 0.0  # Langevin temperature of the descent; 0 is plain gradient descent
    bounds: tuple[float, float] | None = (-1.0, 1.0)  # points are clamped to this box (images); None: no box
    merge_distance: float = 0.05  # minima closer than this (root-mean-square over coordinates) are one
    path_points: int = 16  # points of each path between two minima, both ends included
    path_steps: int = 200  # nudged-elastic-band iterations per path
    path_step_size: float = 0.01  # size of each band step
    spring: float = 1.0  # stiffness of the springs that keep the band's points evenly spaced
    barrier_threshold: float = 1.0  # minima join one basin when their barrier rises less than this above them


def energy_and_gradient(energy: EnergyFunction, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E at each point (B,) and its gradient with respect to the points (B, ...)."""
    with torch.enable_grad():
        x = points.detach().requires_grad_(True)
        values = energy(x)
        (gradient,) = torch.autograd.grad(values.sum(), x)
    return values.detach(), gradient


def descend(
    energy: EnergyFunction,
    start: torch.Tensor,  # (B, ...) points
    settings: LandscapeSettings,
    seed: int = 0,  # the Langevin noise's generator
    noise: torch.Tensor | None = None,  # (descent_steps, B, ...) standard normal noise to use instead of drawing it
) -> torch.Tensor:
    """Each start moved down the energy for `descent_steps` steps (Langevin noise when temperature > 0)."""
    assert noise is None or noise.shape == (settings.descent_steps, *start.shape), "noise: one per step and point"
    generator = torch.Generator(device=start.device).manual_seed(seed)
    x = start.detach().clone()
    for step in range(settings.descent_steps):
        _, gradient = energy_and_gradient(energy, x)
        x = x - settings.step_size * gradient
        if settings.temperature > 0:
            if noise is None:
                drawn = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            else:
                drawn = noise[step].to(x)
            x = x + (2 * settings.step_size * settings.temperature) ** 0.5 * drawn
        if settings.bounds is not None:
            x = x.clamp(*settings.bounds)
    return x


def rms_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Root-mean-square distance between every row of a (N, ...) and of b (M, ...): (N, M)."""
    return torch.cdist(a.flatten(1).double(), b.flatten(1).double()) / a[0].numel() ** 0.5


def descend_in_batches(
    energy: EnergyFunction,
    starts: torch.Tensor,  # (N, ...) points to descend
    settings: LandscapeSettings,
    batch_size: int,  # starts descended together: bounds the memory of the energy's backward pass
    seed: int = 0,  # batch k draws its Langevin noise from seed + k
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the ends of `descend` from every start (N, ...), their energies (N,), the root-mean-square over the
    coordinates of the energy's gradient at each end (N,): near 0 where the descent reached a stationary point),
    `batch_size` starts at a time.

    With N <= batch_size it is `descend(energy, starts, settings, seed)` itself, so results do not depend on it.
    """
    ends, energies, gradients = [], [], []
    for k, start in enumerate(range(0, len(starts), batch_size)):
        end = descend(energy, starts[start : start + batch_size], settings, seed=seed + k)
        value, gradient = energy_and_gradient(energy, end)
        ends.append(end)
        energies.append(value)
        gradients.append(gradient.flatten(1).pow(2).mean(1).sqrt())
    return torch.cat(ends), torch.cat(energies), torch.cat(gradients)


def with_gaussian_prior(energy: EnergyFunction) -> EnergyFunction:
    """energy(z) + |z|^2 / 2: in latent space, E(g(z)) becomes the energy of p(z) exp(-E(g(z))) with p = N(0, I),
    the latent distribution that the energy model's tilt of the generator defines (Che et al. 2020's
    discriminator-driven latent sampling). Its minima stay where the prior has mass; E(g(z)) alone may keep falling
    as z leaves it."""
    return lambda z: energy(z) + 0.5 * z.flatten(1).pow(2).sum(1)


def nearest_minima(points: torch.Tensor, minima: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of each point's nearest minimum (N,) int64, the root-mean-square distance to it (N,) float64).

    `chunk` points at a time: the distances are computed in float64, which for large images is large.
    """
    indices, distances = [], []
    for start in range(0, len(points), chunk):
        gaps = rms_distance(points[start : start + chunk], minima)
        distance, index = gaps.min(dim=1)
        indices.append(index.cpu())
        distances.append(distance.cpu())
    return torch.cat(indices), torch.cat(distances)


def merge_minima(points: torch.Tensor, energies: torch.Tensor, distance: float) -> tuple[list[int], list[int]]:
    """(indices of the distinct minima, lowest energy first; the distinct minimum each point belongs to)."""
    order = torch.argsort(energies).tolist()
    kept: list[int] = []
    owner = [0] * len(order)
    for index in order:
        if kept:
            gaps = rms_distance(points[index : index + 1], points[kept])[0]
            nearest = int(torch.argmin(gaps))
            if float(gaps[nearest]) < distance:
                owner[index] = nearest
                continue
        owner[index] = len(kept)
        kept.append(index)
    return kept, owner


def relaxed_path(
    energy: EnergyFunction, a: torch.Tensor, b: torch.Tensor, settings: LandscapeSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """A nudged elastic band from a to b: (the path's points (P, ...), their energies (P,)); ends stay fixed."""
    weights = torch.linspace(0, 1, settings.path_points, dtype=a.dtype, device=a.device).view(-1, *[1] * a.ndim)
    path = (1 - weights) * a + weights * b
    for _ in range(settings.path_steps):
        _, gradient = energy_and_gradient(energy, path[1:-1])
        forward, backward = path[2:] - path[1:-1], path[1:-1] - path[:-2]
        tangent = forward + backward
        tangent = tangent / tangent.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * a.ndim)
        along = (gradient * tangent).flatten(1).sum(dim=1).view(-1, *[1] * a.ndim)
        stretch = forward.flatten(1).norm(dim=1) - backward.flatten(1).norm(dim=1)
        move = -(gradient - along * tangent) + settings.spring * stretch.view(-1, *[1] * a.ndim) * tangent
        interior = path[1:-1] + settings.path_step_size * move
        if settings.bounds is not None:
            interior = interior.clamp(*settings.bounds)
        path = torch.cat([path[:1], interior, path[-1:]])
    values, _ = energy_and_gradient(energy, path)
    return path, values


def barrier_matrix(energy: EnergyFunction, minima: torch.Tensor, settings: LandscapeSettings) -> torch.Tensor:
    """Barrier (highest energy on the relaxed path) between every two minima: symmetric (N, N), minima's own
    energies on the diagonal."""
    count = len(minima)
    own, _ = energy_and_gradient(energy, minima)
    barriers = torch.diag(own.double())
    for i in range(count):
        for j in range(i + 1, count):
            _, values = relaxed_path(energy, minima[i], minima[j], settings)
            barriers[i, j] = barriers[j, i] = float(values.max())
    return barriers


@dataclass(frozen=True)
class Merge:
    """Two groups of minima (by their lowest member) join at `height` in the disconnectivity graph."""

    height: float
    lower: int  # the group whose lowest minimum is lower; it names the merged group
    higher: int
    same_basin: bool  # the barrier rose less than the threshold above the higher group's minimum


def merge_tree(energies: torch.Tensor, barriers: torch.Tensor, threshold: float) -> tuple[list[Merge], list[int]]:
    """(the merges, lowest barrier first; the basin of every minimum, named by its lowest minimum).

    Single linkage on the barrier matrix: the barrier between two groups is the lowest between their members.
    """
    count = len(energies)
    group = list(range(count))  # representative (lowest minimum) of each minimum's current group
    basin = list(range(count))

    def find(parents: list[int], i: int) -> int:
        while parents[i] != i:
            parents[i] = parents[parents[i]]
            i = parents[i]
        return i

    pairs = sorted((float(barriers[i, j]), i, j) for i in range(count) for j in range(i + 1, count))
    merges = []
    for height, i, j in pairs:
        a, b = find(group, i), find(group, j)
        if a == b:
            continue
        lower, higher = (a, b) if energies[a] <= energies[b] else (b, a)
        same = height - float(energies[higher]) < threshold
        merges.append(Merge(height, lower, higher, same))
        group[higher] = lower
        if same:
            basin[find(basin, higher)] = find(basin, lower)
    return merges, [find(basin, i) for i in range(count)]


def class_histograms(groups: Sequence[int], labels: Sequence[int], classes: int) -> dict[int, list[int]]:
    """How many points of each class every group holds: {group: [count of class 0, class 1, ...]}, groups sorted.

    groups[i] is point i's group (its basin, or its minimum), labels[i] its class in 0..classes-1.
    """
    assert len(groups) == len(labels), f"{len(groups)} groups for {len(labels)} labels"
    counts: dict[int, list[int]] = {}
    for group, label in zip(groups, labels, strict=True):
        assert 0 <= int(label) < classes, f"label {label} outside 0..{classes - 1}"
        counts.setdefault(int(group), [0] * classes)[int(label)] += 1
    return dict(sorted(counts.items()))


def basin_purity(groups: Sequence[int], labels: Sequence[int]) -> float:
    """Purity of a partition of labelled points: sum over groups b of (size_b / N) (majority_b / size_b), i.e.
    (sum_b majority_b) / N, where majority_b is the count of group b's most common class.

    1 when every group holds a single class; one group for all points gives the largest class's share, the
    floor any partition reaches.
    """
    assert len(groups) == len(labels) > 0, "need one group per label, and at least one point"
    per_group: dict[int, Counter] = {}
    for group, label in zip(groups, labels, strict=True):
        per_group.setdefault(int(group), Counter())[int(label)] += 1
    return sum(max(counter.values()) for counter in per_group.values()) / len(labels)


CLUSTER_SIDE = 32  # images are clustered at most this many pixels a side (see clustering_view)


def clustering_view(points: torch.Tensor) -> torch.Tensor:
    """Points as the k-means reference clusters them, on the CPU: images (B, C, H, W) larger than CLUSTER_SIDE a side
    averaged down to it, anything else (latent codes, small images) as it is. A thousand images of 1024 x 1024 would
    otherwise hold gigabytes twice over (before and after the descent) for a reference read at a glance."""
    if points.dim() == 4 and max(points.shape[-2:]) > CLUSTER_SIDE:
        points = torch.nn.functional.adaptive_avg_pool2d(points.detach(), CLUSTER_SIDE)
    return points.detach().cpu()


def kmeans_groups(points: torch.Tensor, groups: int, seed: int = 0, iterations: int = 100) -> list[int]:
    """Each point's cluster among `groups` by k-means (Lloyd's iterations from k-means++ seeds, Euclidean distance
    over the flattened coordinates, float64), the same `seed` giving the same clusters.

    A reference partition with no energy in it: the purity of the basins reads against the purity of as many
    clusters of the same points by distance alone.
    """
    flat = points.detach().flatten(1).to("cpu", torch.float64)
    assert 1 <= groups <= len(flat), f"{groups} clusters of {len(flat)} points"
    rng = torch.Generator().manual_seed(seed)
    centres = flat[torch.randint(len(flat), (1,), generator=rng)]
    while len(centres) < groups:  # k-means++: the next seed drawn in proportion to its squared distance
        gap = torch.cdist(flat, centres).min(dim=1).values.pow(2)
        if float(gap.sum()) == 0:  # fewer distinct points than clusters: the rest are duplicates
            gap = torch.ones_like(gap)
        centres = torch.cat([centres, flat[torch.multinomial(gap, 1, generator=rng)]])
    assignment = torch.cdist(flat, centres).argmin(dim=1)
    for _ in range(iterations):
        for k in range(groups):
            members = flat[assignment == k]
            if len(members):  # an emptied cluster keeps its centre
                centres[k] = members.mean(dim=0)
        updated = torch.cdist(flat, centres).argmin(dim=1)
        if torch.equal(updated, assignment):
            break
        assignment = updated
    return assignment.tolist()


def naming_summary(named: Sequence[tuple[str, float]], threshold: float) -> dict:
    """What a classifier says of the minima, from (class name, confidence) per minimum: how many are named with
    confidence >= threshold and their share, how many distinct classes all minima and the confident ones show,
    and the count of each class."""
    confident = [name for name, confidence in named if confidence >= threshold]
    return {
        "threshold": threshold,
        "minima": len(named),
        "confident": len(confident),
        "named_share": len(confident) / len(named) if named else 0.0,
        "classes": len({name for name, _ in named}),
        "classes_confident": len(set(confident)),
        "counts": dict(Counter(name for name, _ in named).most_common()),
    }


THUMBNAIL_POINTS = 40.0  # width of each minimum's thumbnail in the graph, in points (columns are 54 points apart)


def plot_disconnectivity(
    energies: list[float],  # each minimum's energy
    merges: list[Merge],  # merge_tree's merges, lowest first
    sizes: list[int],  # starts that ended at each minimum: the circles' areas
    path: str,  # the PNG to write
    thumbnails: Sequence[np.ndarray] | None = None,  # each minimum's image, uint8 (H, W) gray or (H, W, 3)
    captions: Sequence[str] | None = None,  # a short line or two under each thumbnail (its class, confidence)
    basins: Sequence[int] | None = None,  # each minimum's basin: circles and thumbnail frames coloured by it
) -> None:
    """Draw the graph (matplotlib, an optional extra): one column per minimum ordered by energy, a vertical line
    from each minimum up to where it merges, a horizontal line at each merge, circles sized by members; under
    the axis, each minimum's thumbnail and caption in its column (Figure 11 of the paper)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    count = len(energies)
    order = sorted(range(count), key=lambda i: energies[i])
    column = {index: position for position, index in enumerate(order)}
    x = {i: float(column[i]) for i in range(count)}
    top = {i: energies[i] for i in range(count)}
    palette = plt.get_cmap("tab10").colors
    basin_rank = {b: k for k, b in enumerate(sorted(set(basins)))} if basins is not None else {}

    def colour(i: int):
        return palette[basin_rank[basins[i]] % len(palette)] if basins is not None else "tab:blue"

    figure, axes = plt.subplots(figsize=(max(4.0, 0.75 * count + 1.5), 4))
    for merge in merges:
        for side in (merge.lower, merge.higher):
            axes.plot([x[side], x[side]], [top[side], merge.height], color="black", linewidth=1)
        axes.plot([x[merge.lower], x[merge.higher]], [merge.height, merge.height], color="black", linewidth=1)
        x[merge.lower] = (x[merge.lower] + x[merge.higher]) / 2
        top[merge.lower] = merge.height
    for i in range(count):
        axes.scatter([column[i]], [energies[i]], s=20 + 20 * sizes[i], color=colour(i), zorder=3)
    axes.set_xticks(range(count), [str(i) for i in order])
    axes.set_xlim(-0.6, count - 0.4)
    axes.set_xlabel("minimum (by energy)", labelpad=4)
    axes.set_ylabel("energy")
    below = 20.0  # points under the axis where the thumbnails start: below the tick labels
    for i in range(count) if thumbnails is not None else ():
        picture = thumbnails[i]
        zoom = THUMBNAIL_POINTS / picture.shape[1]
        gray = {"cmap": "gray", "norm": Normalize(0, 255)} if picture.ndim == 2 else {}  # black is 0, not the min
        image = OffsetImage(picture, zoom=zoom, interpolation="nearest", **gray)
        box = AnnotationBbox(
            image,
            (column[i], 0.0),
            xycoords=("data", "axes fraction"),
            xybox=(0.0, -below),
            boxcoords="offset points",
            box_alignment=(0.5, 1.0),
            pad=0.1,
            annotation_clip=False,
            bboxprops={"edgecolor": colour(i), "linewidth": 1.5},
        )
        axes.add_artist(box)
        if captions is not None:
            axes.annotate(
                captions[i],
                (column[i], 0.0),
                xycoords=("data", "axes fraction"),
                xytext=(0.0, -below - zoom * picture.shape[0] - 4),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize=6,
                annotation_clip=False,
            )
    if thumbnails is not None:
        axes.xaxis.set_label_position("top")  # the thumbnails take the space under the axis
    figure.tight_layout()
    figure.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(figure)

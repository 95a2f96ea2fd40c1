"""Procedurally rendered images ("synthetic:shapes"): deterministic, anti-aliased, any resolution.

Image i of a seed depends only on (seed, i), so any subset can be rendered in any order by any
number of workers and always gives the same pixels. Used by the demo and the tests; no download.
"""

from __future__ import annotations

import numpy as np


def _coverage(signed_distance: np.ndarray, pixel: float) -> np.ndarray:
    """Anti-aliased coverage from a signed distance (negative inside), one pixel wide edge."""
    return np.clip(0.5 - signed_distance / pixel, 0.0, 1.0)


def render_shape_image(index: int, resolution: int, seed: int = 0) -> np.ndarray:
    """Image `index` of the shapes source as uint8 (resolution, resolution, 3).

    A two-colour gradient background with one to three shapes (discs, rotated squares, rings)
    of random colours; edges are anti-aliased analytically, so every resolution looks the same.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    rng = np.random.default_rng([seed, index])
    coords = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    pixel = 1.0 / resolution

    top, bottom = rng.uniform(0.0, 1.0, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (xs - 0.5) * np.cos(angle) + (ys - 0.5) * np.sin(angle), 0.0, 1.0)[..., None]
    image = top * (1 - t) + bottom * t

    for _ in range(rng.integers(1, 4)):
        kind = rng.integers(0, 3)
        cx, cy = rng.uniform(0.2, 0.8, size=2)
        size = rng.uniform(0.1, 0.3)
        colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        dx, dy = xs - cx, ys - cy
        if kind == 0:  # disc
            distance = np.sqrt(dx * dx + dy * dy) - size
        elif kind == 1:  # rotated square
            theta = rng.uniform(0, np.pi / 2)
            u = np.abs(dx * np.cos(theta) + dy * np.sin(theta)) - size * 0.8
            v = np.abs(-dx * np.sin(theta) + dy * np.cos(theta)) - size * 0.8
            outside = np.sqrt(np.maximum(u, 0) ** 2 + np.maximum(v, 0) ** 2)
            distance = outside + np.minimum(np.maximum(u, v), 0)
        else:  # ring
            distance = np.abs(np.sqrt(dx * dx + dy * dy) - size) - size * 0.3
        alpha = _coverage(distance, pixel)[..., None]
        image = image * (1 - alpha) + colour * alpha

    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def render_shapes(count: int, resolution: int, seed: int = 0, start: int = 0) -> np.ndarray:
    """Images start .. start+count-1 as uint8 (count, resolution, resolution, 3)."""
    return np.stack([render_shape_image(i, resolution, seed) for i in range(start, start + count)])


def shapes_tensor(count: int, resolution: int, seed: int = 0):
    """The same images as a float tensor (count, 3, R, R) in [-1, 1], ready for training."""
    import torch

    from datasets_prep.pixels import pixels_to_signed

    images = torch.from_numpy(render_shapes(count, resolution, seed))
    return pixels_to_signed(images.permute(0, 3, 1, 2))

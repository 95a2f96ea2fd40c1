"""Latent interpolation videos: paths through latent space, frames rendered in batches, streamed to an encoder.

A path is a sequence of keyframe latents per grid cell. A loop visits seeded keyframes and comes back to the
first, so the frame after the last one is the first frame again and the video repeats without a jump. A
segment goes from one latent to another (e.g. the encodings of two images) and stops there.

Frames are produced by a generator function, one batch of frames at a time, and handed one by one to the
writer: memory holds one batch however long the video is. MP4 is H.264 (libx264, yuv420p, even sizes)
through imageio's ffmpeg plugin and the ffmpeg binary of the imageio-ffmpeg package; GIF goes through imageio
with Pillow (GIF frames are kept until the file is closed, so GIF is meant for short, small loops).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datasets_prep.pixels import signed_to_pixels
from progressive.io import write_atomically

INTERPOLATIONS = ("slerp", "lerp")
EASINGS = ("cosine", "linear")
VIDEO_EXTRA = "pip install 'divergence-triangle[video]'"


class VideoUnavailable(ValueError):
    """The requested output format cannot be written here (a missing optional dependency, an unknown suffix)."""


# ----------------------------------------------------------------------------- latent paths


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(1 - t) a + t b, with t broadcast over the last dimension."""
    return a + (b - a) * t[..., None]


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation along the great circle from a to b (norms interpolated linearly).

    Gaussian latents concentrate on a sphere; a straight line between two of them passes through the
    low-probability interior, which the generator has rarely seen. Nearly parallel pairs use lerp, to
    which slerp tends there, because their angle is too small to divide by.
    """
    a_norm, b_norm = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    a_unit, b_unit = a / a_norm.clamp_min(1e-12), b / b_norm.clamp_min(1e-12)
    cosine = (a_unit * b_unit).sum(dim=-1).clamp(-1.0, 1.0)
    angle = torch.acos(cosine)
    t = t.to(a.dtype)
    sine = torch.sin(angle).clamp_min(1e-7)
    weight_a = torch.where(angle > 1e-4, torch.sin((1.0 - t) * angle) / sine, 1.0 - t)
    weight_b = torch.where(angle > 1e-4, torch.sin(t * angle) / sine, t)
    direction = weight_a[..., None] * a_unit + weight_b[..., None] * b_unit
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return direction * lerp(a_norm, b_norm, t)


@dataclass
class LatentPath:
    """Keyframe latents (K, cells, D) visited in order; a loop returns from the last keyframe to the first."""

    keyframes: torch.Tensor  # (K, cells, latent_dim)
    loop: bool  # True: K segments, back to keyframe 0; False: K - 1 segments, ending on the last keyframe
    interpolation: str = "slerp"  # "slerp" or "lerp" between consecutive keyframes
    easing: str = "cosine"  # "cosine": speed eases to zero at each keyframe (no kinks); "linear": constant speed

    def __post_init__(self) -> None:
        assert self.keyframes.ndim == 3, f"expected keyframes (K, cells, D), got {tuple(self.keyframes.shape)}"
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.easing not in EASINGS:
            raise ValueError(f"easing must be one of {EASINGS}, got {self.easing!r}")
        if self.keyframes.shape[0] < 2:
            raise ValueError(f"a path needs at least 2 keyframes, got {self.keyframes.shape[0]}")

    @property
    def cells(self) -> int:
        return self.keyframes.shape[1]

    @property
    def segments(self) -> int:
        return self.keyframes.shape[0] if self.loop else self.keyframes.shape[0] - 1

    def positions(self, frames: int) -> torch.Tensor:
        """Where each of `frames` frames lies, in keyframe units: [0, K) for a loop, [0, K - 1] for a segment.

        A loop's frames are evenly spaced with the first frame's position also one step after the last
        frame's, so playing the video on repeat moves at the same pace across the seam.
        """
        if frames < 2:
            raise ValueError(f"a path needs at least 2 frames, got {frames}")
        steps = torch.arange(frames, dtype=torch.float64)
        return steps * self.segments / (frames if self.loop else frames - 1)

    def at(self, positions: torch.Tensor) -> torch.Tensor:
        """Latents (n, cells, D) at `positions` (n,) in keyframe units."""
        count = self.keyframes.shape[0]
        start = torch.floor(positions).long().clamp(0, self.segments - 1)
        fraction = (positions - start).clamp(0.0, 1.0)
        if self.easing == "cosine":
            fraction = (1.0 - torch.cos(math.pi * fraction)) / 2.0
        a = self.keyframes[start % count]
        b = self.keyframes[(start + 1) % count]
        weight = fraction.to(self.keyframes.dtype)[:, None].expand(-1, self.cells)
        blend = slerp if self.interpolation == "slerp" else lerp
        return blend(a, b, weight)


def seeded_loop(
    seed: int,  # the same seed gives the same video
    keyframes: int,  # random latents visited per loop
    cells: int,  # images per frame (grid cells), each with its own keyframes
    latent_dim: int,  # dimension of z
    interpolation: str = "slerp",  # "slerp" or "lerp"
    easing: str = "cosine",  # "cosine" or "linear"
) -> LatentPath:
    """A loop through `keyframes` latents z ~ N(0, I) per cell drawn from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(keyframes, cells, latent_dim, generator=generator)
    return LatentPath(latents, loop=True, interpolation=interpolation, easing=easing)


def segment(
    start: torch.Tensor,  # (D,) first latent
    end: torch.Tensor,  # (D,) last latent (the turning point with there_and_back)
    interpolation: str = "slerp",  # "slerp" or "lerp"
    easing: str = "linear",  # speed profile within the segment
    there_and_back: bool = False,  # go back to `start`: a seamless loop of two segments
) -> LatentPath:
    """The path from latent `start` to latent `end`, one cell; with `there_and_back`, a loop back to `start`."""
    assert start.ndim == 1 and start.shape == end.shape, f"expected two latents (D,), got {start.shape}, {end.shape}"
    latents = torch.stack([start, end])[:, None]
    return LatentPath(latents, loop=there_and_back, interpolation=interpolation, easing=easing)


# ----------------------------------------------------------------------------- frames


def parse_grid(text: str) -> tuple[int, int]:
    """'3x2' -> (3 columns, 2 rows)."""
    columns, separator, rows = text.lower().partition("x")
    if not separator or not columns.isdigit() or not rows.isdigit() or int(columns) < 1 or int(rows) < 1:
        raise ValueError(f"grid must be COLUMNSxROWS with positive numbers (e.g. 3x2), got {text!r}")
    return int(columns), int(rows)


def tile_frames(images: torch.Tensor, columns: int, rows: int, size: int) -> np.ndarray:
    """Images (n * rows * columns, 3, R, R) in [-1, 1] -> n frames (n, H, W, 3) uint8, H and W even.

    Cells are resized to `size` (area averaging when smaller). yuv420p stores colour at half resolution,
    so an odd side gets one more row or column copied from the edge.
    """
    assert images.ndim == 4 and images.shape[0] % (rows * columns) == 0, (
        f"expected a multiple of {rows * columns} images (B, 3, R, R), got {tuple(images.shape)}"
    )
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="area" if size < images.shape[-1] else "bilinear")
    frames = images.shape[0] // (rows * columns)
    grid = images.reshape(frames, rows, columns, 3, size, size).permute(0, 1, 4, 2, 5, 3)
    grid = grid.reshape(frames, rows * size, columns * size, 3)
    pad_rows, pad_columns = grid.shape[1] % 2, grid.shape[2] % 2
    if pad_rows or pad_columns:
        grid = F.pad(grid.permute(0, 3, 1, 2), (0, pad_columns, 0, pad_rows), mode="replicate").permute(0, 2, 3, 1)
    pixels = signed_to_pixels(grid).cpu()
    # A copy owned by numpy: each frame lives only as long as the writer keeps it.
    return np.array(pixels.numpy(), copy=True)


@torch.no_grad()
def render_frames(
    generator: nn.Module,  # g(z) at the stage to show; runs on the device of its parameters
    path: LatentPath,  # the latents to visit
    positions: torch.Tensor,  # (frames,) where on the path each frame lies (path.positions(frames) for a video)
    columns: int,  # grid columns (path.cells == columns * rows)
    rows: int,  # grid rows
    size: int,  # side of each cell in the video, in pixels
    batch_frames: int = 8,  # frames rendered per generator forward
) -> Iterator[np.ndarray]:
    """Frames (H, W, 3) uint8 one by one, rendering `batch_frames` at a time: one batch in memory at most."""
    if path.cells != columns * rows:
        raise ValueError(f"the path has {path.cells} cells but the grid {columns}x{rows} needs {columns * rows}")
    assert positions.ndim == 1, f"expected positions (frames,), got {tuple(positions.shape)}"
    device = next(generator.parameters()).device
    for start in range(0, positions.shape[0], batch_frames):
        latents = path.at(positions[start : start + batch_frames])
        images = generator(latents.flatten(0, 1).to(device)).float()
        yield from tile_frames(images, columns, rows, size)


# ----------------------------------------------------------------------------- writing


@dataclass
class VideoTarget:
    """What will be written: the file, its format, and a note when it is not what was asked for."""

    path: Path  # file to write
    format: str  # "mp4" or "gif"
    note: str | None  # announced to the user when the format had to change


def choose_target(path: str | os.PathLike) -> VideoTarget:
    """The format for `path` from its suffix; GIF (announced in `note`) when H.264 needs a missing package.

    Raises VideoUnavailable naming the extra to install when nothing can be written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise VideoUnavailable(f"video output must end in .mp4 or .gif, got {path.name!r}")
    if importlib.util.find_spec("imageio") is None:
        raise VideoUnavailable(f"writing video needs imageio: {VIDEO_EXTRA}")
    if suffix == ".gif":
        return VideoTarget(path=path, format="gif", note=None)
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        fallback = path.with_suffix(".gif")
        note = f"imageio-ffmpeg is not installed ({VIDEO_EXTRA}), so writing GIF {fallback} instead of H.264 {path}"
        return VideoTarget(path=fallback, format="gif", note=note)
    return VideoTarget(path=path, format="mp4", note=None)


def _open_writer(path: Path, video_format: str, fps: float, quality: float):
    import imageio.v2 as imageio

    if video_format == "mp4":
        # macro_block_size=2: frames are already even-sized; imageio's default (16) would rescale them.
        return imageio.get_writer(
            path,
            format="FFMPEG",
            fps=fps,
            codec="libx264",
            pixelformat="yuv420p",
            macro_block_size=2,
            quality=quality,
        )
    return imageio.get_writer(path, mode="I", duration=1000.0 / fps, loop=0)


def write_video(
    frames: Iterable[np.ndarray],  # (H, W, 3) uint8 frames, consumed one at a time
    target: VideoTarget,  # from choose_target
    fps: float,  # frames per second
    quality: float = 8.0,  # H.264 quality 0..10 (imageio's scale; 10 is best)
) -> int:
    """Encode `frames` into target.path; returns the number of frames written.

    The file appears only when complete: frames go to a temporary file beside it, renamed at the end, so an
    interrupted export leaves any earlier file of that name as it was.
    """
    written = 0

    def encode(temporary: Path) -> None:
        nonlocal written
        writer = _open_writer(temporary, target.format, fps, quality)
        try:
            for frame in frames:
                assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8, (
                    f"expected frames (H, W, 3) uint8, got {frame.shape} {frame.dtype}"
                )
                writer.append_data(frame)
                written += 1
        finally:
            writer.close()

    write_atomically(target.path, encode)
    return written


def frame_strip(frames: Iterable[np.ndarray]) -> np.ndarray:
    """Frames side by side in one row (H, n * W, 3)."""
    return np.concatenate(list(frames), axis=1)

"""Latent paths, frame tiling and the streaming video writer: decodes back, loops seamlessly, memory stays flat."""

from __future__ import annotations

import importlib.util
import tracemalloc

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from torch import nn

from progressive.eval import video
from progressive.eval.video import (
    LatentPath,
    VideoUnavailable,
    choose_target,
    render_frames,
    seeded_loop,
    segment,
    slerp,
    tile_frames,
    write_video,
)

LATENT_DIM = 6


class StandInGenerator(nn.Module):
    """A smooth random map z -> 16x16 images in [-1, 1]: nearby latents give nearby images."""

    def __init__(self, resolution: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.resolution = resolution
        self.linear = nn.Linear(LATENT_DIM, 3 * 4 * 4)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        coarse = torch.tanh(self.linear(z)).view(-1, 3, 4, 4)
        return nn.functional.interpolate(coarse, size=self.resolution, mode="bilinear", align_corners=False)


def test_slerp_keeps_the_endpoints_and_the_norm_of_equal_norm_latents():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, LATENT_DIM, generator=generator)
    b = b / b.norm(dim=-1, keepdim=True) * a.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(slerp(a, b, torch.zeros(5)), a)
    torch.testing.assert_close(slerp(a, b, torch.ones(5)), b)
    middle = slerp(a, b, torch.full((5,), 0.5))
    torch.testing.assert_close(middle.norm(dim=-1), a.norm(dim=-1))
    torch.testing.assert_close(slerp(a, a, torch.full((5,), 0.3)), a)  # parallel: no division by a zero angle


def test_a_loop_comes_back_to_its_first_frame_after_the_last():
    path = seeded_loop(seed=1, keyframes=3, cells=2, latent_dim=LATENT_DIM)
    frames = 12
    positions = path.positions(frames)
    step = positions[1] - positions[0]
    successor_of_last = path.at(positions[-1:] + step)
    torch.testing.assert_close(successor_of_last, path.at(positions[:1]))
    torch.testing.assert_close(path.at(positions[:1])[0], path.keyframes[0])
    # Every keyframe is visited exactly at its position.
    torch.testing.assert_close(path.at(torch.tensor([1.0, 2.0], dtype=torch.float64)), path.keyframes[1:])


def test_a_segment_starts_and_ends_on_its_endpoints():
    start, end = torch.randn(2, LATENT_DIM, generator=torch.Generator().manual_seed(2))
    path = segment(start, end, interpolation="lerp")
    latents = path.at(path.positions(5))
    torch.testing.assert_close(latents[0, 0], start)
    torch.testing.assert_close(latents[-1, 0], end)
    torch.testing.assert_close(latents[2, 0], (start + end) / 2)


def test_there_and_back_turns_at_the_end_and_loops_to_the_start():
    start, end = torch.randn(2, LATENT_DIM, generator=torch.Generator().manual_seed(3))
    path = segment(start, end, interpolation="lerp", there_and_back=True)
    positions = path.positions(8)  # 0, 0.25, ..., 1.75 keyframe units: the turn at frame 4
    latents = path.at(positions)[:, 0]
    torch.testing.assert_close(latents[0], start)
    torch.testing.assert_close(latents[4], end)
    torch.testing.assert_close(latents[2], (start + end) / 2)
    torch.testing.assert_close(latents[6], (start + end) / 2)  # the same way back
    torch.testing.assert_close(path.at(positions[-1:] + (positions[1] - positions[0]))[0, 0], start)


def test_tiles_are_laid_out_in_rows_and_padded_to_even_sides():
    images = torch.stack([torch.full((3, 5, 5), value) for value in (-1.0, -0.5, 0.0, 0.5, 1.0, 0.25)])
    (frame,) = tile_frames(images, columns=3, rows=2, size=5)
    assert frame.shape == (10, 16, 3) and frame.dtype == np.uint8  # 10 x 15, one replicated column added
    assert frame[0, 0, 0] == 0 and frame[0, 5, 0] == 64 and frame[9, 14, 0] == 159 and frame[9, 15, 0] == 159
    assert frame[5, 0, 0] == 191 and frame[5, 5, 0] == 255


def test_mp4_decodes_back_with_its_frame_count_and_size_and_loops_seamlessly(tmp_path):
    generator = StandInGenerator()
    path = seeded_loop(seed=0, keyframes=3, cells=6, latent_dim=LATENT_DIM)
    frames = 30
    target = choose_target(tmp_path / "loop.mp4")
    assert target.format == "mp4" and target.note is None
    rendered = render_frames(generator, path, path.positions(frames), columns=3, rows=2, size=9, batch_frames=4)
    assert write_video(rendered, target, fps=10) == frames
    decoded = iio.imread(target.path, plugin="FFMPEG")
    assert decoded.shape == (frames, 18, 28, 3)  # 2 x 9 rows, 3 x 9 = 27 columns padded to 28
    assert iio.immeta(target.path, plugin="FFMPEG")["codec"] == "h264"
    first, last, middle = (decoded[i].astype(float) for i in (0, -1, frames // 2))
    seam = np.abs(first - last).mean()
    assert seam < 0.25 * np.abs(first - middle).mean()
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed into place


def _frames(count: int):
    generator = StandInGenerator(resolution=32)
    path = seeded_loop(seed=0, keyframes=4, cells=6, latent_dim=LATENT_DIM)
    return render_frames(generator, path, path.positions(count), columns=3, rows=2, size=32, batch_frames=5)


def _peak_traced_bytes_while_writing(count: int, out) -> int:
    """Peak Python-heap bytes (numpy frames included) while rendering and encoding `count` frames to mp4."""
    tracemalloc.start()
    try:
        assert write_video(_frames(count), choose_target(out), fps=25) == count
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_however_many_frames_are_streamed(tmp_path):
    frame_bytes = 64 * 96 * 3
    short = _peak_traced_bytes_while_writing(10, tmp_path / "short.mp4")
    long = _peak_traced_bytes_while_writing(200, tmp_path / "long.mp4")
    assert iio.imread(tmp_path / "long.mp4", plugin="FFMPEG").shape == (200, 64, 96, 3)
    # Holding every frame would add 190 frames (about 3.5 MB); streaming adds nothing that grows with length.
    assert long < short + 20 * frame_bytes, (short, long)
    tracemalloc.start()
    kept = list(_frames(200))
    hoarding_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(kept) == 200 and hoarding_peak > short + 150 * frame_bytes  # the measurement sees frames that pile up


def test_write_video_streams_into_the_encoder_and_keeps_an_earlier_file_on_failure(tmp_path):
    target = choose_target(tmp_path / "clip.mp4")
    target.path.write_bytes(b"earlier video")

    def frames_then_failure():
        yield np.zeros((16, 16, 3), np.uint8)
        raise RuntimeError("rendering failed")

    with pytest.raises(RuntimeError, match="rendering failed"):
        write_video(frames_then_failure(), target, fps=5)
    assert target.path.read_bytes() == b"earlier video"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_gif_is_written_and_the_fallback_to_gif_is_announced(tmp_path, monkeypatch):
    generator = StandInGenerator()
    path = seeded_loop(seed=0, keyframes=2, cells=1, latent_dim=LATENT_DIM)
    gif = choose_target(tmp_path / "loop.gif")
    assert write_video(render_frames(generator, path, path.positions(6), 1, 1, 16), gif, fps=6) == 6
    assert iio.imread(gif.path).shape == (6, 16, 16, 3)

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        video.importlib.util, "find_spec", lambda name: None if name == "imageio_ffmpeg" else real_find_spec(name)
    )
    fallback = choose_target(tmp_path / "loop.mp4")
    assert fallback.format == "gif" and fallback.path.name == "loop.gif"
    assert "imageio-ffmpeg is not installed" in fallback.note and "divergence-triangle[video]" in fallback.note
    monkeypatch.setattr(video.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(VideoUnavailable, match=r"divergence-triangle\[video\]"):
        choose_target(tmp_path / "loop.mp4")
    with pytest.raises(VideoUnavailable, match=".mp4 or .gif"):
        choose_target(tmp_path / "loop.avi")


def test_paths_refuse_bad_settings():
    with pytest.raises(ValueError, match="interpolation"):
        LatentPath(torch.zeros(2, 1, 3), loop=True, interpolation="cubic")
    with pytest.raises(ValueError, match="at least 2 keyframes"):
        LatentPath(torch.zeros(1, 1, 3), loop=True)
    with pytest.raises(ValueError, match="grid"):
        video.parse_grid("3by2")

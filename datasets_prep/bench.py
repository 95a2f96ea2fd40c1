"""`bench`: build throughput on the synthetic source, cost of each preparation stage, read throughput per resolution.

Everything runs in a temporary directory that is removed afterwards. Figures for 2 CPU cores are
recorded in docs/datasets.md.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from datasets_prep.build import BuildOptions, build_dataset
from datasets_prep.images import ImageSettings, box_pyramid, prepare_square
from datasets_prep.lmdb_format import encode_image
from datasets_prep.sources import open_source
from datasets_prep.synthetic import render_shape_image

STAGE_SAMPLES = 20  # images timed per stage: enough for a stable mean, quick at 1024
READ_BATCH = 64


def _mean_seconds(action, inputs: list) -> tuple[float, list]:
    started = time.perf_counter()
    outputs = [action(x) for x in inputs]
    return (time.perf_counter() - started) / len(inputs), outputs


def stage_costs(max_res: int, image_format: str) -> Iterator[str]:
    """Per-image milliseconds of each stage, single process, on JPEG "photos" 1.5 times the target size.

    1.5 times, not 2: from twice the size libjpeg would decode at half scale and no resize would be left to time.
    """
    settings = ImageSettings(max_res, 4, "center", "box", image_format, False)
    side = max_res * 3 // 2
    render_s, _ = _mean_seconds(lambda index: render_shape_image(index, max_res), list(range(STAGE_SAMPLES)))
    photos = []
    for index in range(STAGE_SAMPLES):
        buffer = io.BytesIO()
        Image.fromarray(render_shape_image(index, side)).save(buffer, format="JPEG", quality=95)
        photos.append(buffer.getvalue())

    def decode(data: bytes) -> Image.Image:
        with Image.open(io.BytesIO(data)) as image:
            return prepare_square(image, settings)

    decode_s, squares = _mean_seconds(decode, photos)
    resize_s, tops = _mean_seconds(
        lambda s: np.asarray(s.resize((max_res, max_res), Image.Resampling.LANCZOS)), squares
    )
    box_s, pyramids = _mean_seconds(lambda top: box_pyramid(top, 4), tops)
    lanczos_s, _ = _mean_seconds(
        lambda s: [s.resize((r, r), Image.Resampling.LANCZOS) for r in settings.resolutions], squares
    )
    encode_top_s, _ = _mean_seconds(lambda top: encode_image(top, image_format), tops)
    encode_all_s, _ = _mean_seconds(lambda levels: [encode_image(x, image_format) for x in levels], pyramids)
    yield f"stages at {max_res} (ms per image, one process, JPEG input {side}x{side}):"
    yield f"  (synthetic source only: render {render_s * 1e3:.2f})"
    yield f"  decode+orient+crop {decode_s * 1e3:.2f}, resize to {max_res} {resize_s * 1e3:.2f}"
    yield f"  box pyramid {box_s * 1e3:.2f} (lanczos pyramid from source instead: {lanczos_s * 1e3:.2f})"
    yield f"  encode {image_format}: top level {encode_top_s * 1e3:.2f}, all levels {encode_all_s * 1e3:.2f}"


def read_throughput(path: Path, resolution: int, workers: int) -> float:
    """Images per second through a shuffling DataLoader (decode and float conversion included)."""
    from torch.utils.data import DataLoader

    from datasets_prep.reader import LMDBImageDataset

    dataset = LMDBImageDataset(path, resolution)
    loader = DataLoader(dataset, batch_size=READ_BATCH, shuffle=True, num_workers=workers, drop_last=True)
    batches = iter(loader)
    next(batches)  # worker start-up is not read throughput
    started = time.perf_counter()
    images = sum(len(batch) for batch in batches)
    return images / (time.perf_counter() - started)


def run_benchmark(workers: int, count: int, max_res: int, image_format: str) -> Iterator[str]:
    """Lines of the report, produced as each measurement finishes."""
    settings = ImageSettings(max_res, 4, "center", "box", image_format, False)
    options = BuildOptions(workers=workers, holdout=0, commit_every=256, resume=False, overwrite=False, progress=False)
    source = open_source(f"synthetic:shapes?n={count}&seed=0", max_res)
    with tempfile.TemporaryDirectory(prefix="triangle-bench-") as directory:
        out = Path(directory) / "bench.lmdb"
        summary = build_dataset(source, out, settings, options)
        per_resolution = summary.metadata["bytes_per_resolution"]
        yield (
            f"build: {count} synthetic images at 4..{max_res} ({image_format}), {workers} workers: "
            f"{count / summary.seconds:.0f} images/s ({summary.seconds:.1f}s)"
        )
        yield "stored bytes per image: " + ", ".join(f"{r}: {n / count:.0f}" for r, n in per_resolution.items())
        yield from stage_costs(max_res, image_format)
        for resolution in settings.resolutions:
            if count >= 2 * READ_BATCH:
                rate = read_throughput(out, resolution, workers)
                yield f"read {resolution}x{resolution}: {rate:.0f} images/s ({workers} DataLoader workers)"

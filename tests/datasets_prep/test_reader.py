"""datasets_prep.reader: the LMDB reader the trainer uses (workers, distributed shards, pickling, old LMDBs)."""

from __future__ import annotations

import io
import pickle

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from datasets_prep.__main__ import main
from datasets_prep.lmdb_format import read_metadata
from datasets_prep.reader import LMDBImageDataset
from datasets_prep.synthetic import render_shape_image

COUNT = 24
HOLDOUT = 4
SEED = 7


@pytest.fixture(scope="module")
def shapes_lmdb(tmp_path_factory):
    out = tmp_path_factory.mktemp("reader") / "shapes"
    arguments = ["--max-res", 16, "--holdout", HOLDOUT, "--workers", 2, "--no-progress"]
    assert main(["build", f"synthetic:shapes?n={COUNT}&seed={SEED}", str(out), *map(str, arguments)]) == 0
    return out


def expected_image(source_index: int, resolution: int = 16) -> torch.Tensor:
    pixels = render_shape_image(source_index, resolution, seed=SEED)
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1.0


def test_metadata_and_resolution_switching(shapes_lmdb):
    metadata = read_metadata(shapes_lmdb)
    assert metadata["resolutions"] == [4, 8, 16] and metadata["count"] == {"train": COUNT - HOLDOUT, "holdout": HOLDOUT}
    dataset = LMDBImageDataset(shapes_lmdb, resolution=16)
    assert len(dataset) == COUNT - HOLDOUT and dataset.fingerprint == metadata["fingerprint"]
    assert torch.equal(dataset[0], expected_image(HOLDOUT))
    for resolution in (4, 8, 16):
        dataset.set_resolution(resolution)
        image = dataset[5]
        assert image.shape == (3, resolution, resolution) and image.dtype == torch.float32
        assert -1.0 <= image.min() and image.max() <= 1.0
    holdout = LMDBImageDataset(shapes_lmdb, resolution=16, split="holdout")
    assert len(holdout) == HOLDOUT and torch.equal(holdout[3], expected_image(3))
    with pytest.raises(IndexError):
        holdout[HOLDOUT]


def test_clear_errors(shapes_lmdb, tmp_path):
    with pytest.raises(ValueError, match="no dataset LMDB"):
        LMDBImageDataset(tmp_path / "missing", resolution=16)
    with pytest.raises(ValueError, match="no resolution 32"):
        LMDBImageDataset(shapes_lmdb, resolution=32)
    with pytest.raises(ValueError, match="no 'validation' split"):
        LMDBImageDataset(shapes_lmdb, resolution=16, split="validation")
    dataset = LMDBImageDataset(shapes_lmdb, resolution=8)
    with pytest.raises(ValueError, match="no resolution 2"):
        dataset.set_resolution(2)
    (tmp_path / "not_lmdb").mkdir()
    (tmp_path / "not_lmdb" / "data.mdb").write_bytes(b"definitely not an LMDB" * 400)
    with pytest.raises(ValueError, match="not a readable LMDB"):
        read_metadata(tmp_path / "not_lmdb")


def test_hflip_mirrors_some_images(shapes_lmdb):
    dataset = LMDBImageDataset(shapes_lmdb, resolution=16, hflip=True)
    plain = expected_image(HOLDOUT)
    torch.manual_seed(0)
    seen = [dataset[0] for _ in range(20)]
    assert all(torch.equal(image, plain) or torch.equal(image, plain.flip(-1)) for image in seen)
    assert any(torch.equal(image, plain.flip(-1)) for image in seen)
    assert any(torch.equal(image, plain) for image in seen)


def test_pickles_without_its_handle_and_reads_after_unpickling(shapes_lmdb):
    dataset = LMDBImageDataset(shapes_lmdb, resolution=8)
    first = dataset[1]  # opens the LMDB in this process
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.resolution == 8 and torch.equal(copy[1], first)


def identify(images: torch.Tensor, expected: dict[bytes, int]) -> list[int]:
    return [expected[image.numpy().tobytes()] for image in images]


def test_two_workers_two_ranks_cover_every_image_once(shapes_lmdb):
    dataset = LMDBImageDataset(shapes_lmdb, resolution=16)
    expected = {expected_image(HOLDOUT + i).numpy().tobytes(): i for i in range(len(dataset))}
    dataset[0]  # the parent has the LMDB open when the workers fork: each must open its own
    seen_by_rank = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=3)
        loader = DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=2, multiprocessing_context="fork")
        seen_by_rank.append([index for batch in loader for index in identify(batch, expected)])
    first, second = seen_by_rank
    assert len(first) == len(second) == len(dataset) // 2
    assert set(first).isdisjoint(second)
    assert sorted(first + second) == list(range(len(dataset)))


def test_reads_prepare_data_lmdbs(tmp_path):
    """The progressive-GAN prepare_data.py layout: "{size}-{index:05d}" keys, a length key, JPEG values."""
    path = tmp_path / "legacy"
    env = lmdb.open(str(path), map_size=2**24)
    with env.begin(write=True) as txn:
        for index in range(3):
            for size in (8, 16, 32):
                buffer = io.BytesIO()
                Image.fromarray(render_shape_image(index, size)).save(buffer, format="JPEG", quality=100)
                txn.put(f"{size}-{str(index).zfill(5)}".encode(), buffer.getvalue())
        txn.put(b"length", b"3")
    env.close()

    metadata = read_metadata(path)
    assert metadata["layout"] == "prepare_data" and metadata["resolutions"] == [8, 16, 32]
    dataset = LMDBImageDataset(path, resolution=32)
    assert len(dataset) == 3
    expected = torch.from_numpy(render_shape_image(2, 32)).permute(2, 0, 1).float() / 127.5 - 1.0
    assert (dataset[2] - expected).abs().mean() < 0.03  # JPEG, quality 100 but chroma subsampled
    dataset.set_resolution(8)
    assert dataset[0].shape == (3, 8, 8)
    assert main(["verify", str(path), "--no-progress"]) == 0


def test_raw_values_come_back_exactly(tmp_path):
    out = tmp_path / "raw"
    assert main(["build", "synthetic:shapes?n=3", str(out), "--max-res", "8", "--format", "raw", "--no-progress"]) == 0
    dataset = LMDBImageDataset(out, resolution=8)
    pixels = render_shape_image(2, 8)
    assert torch.equal(dataset[2], torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1) / 127.5 - 1.0)

"""`info` and `verify`: describe a dataset LMDB, and check that every image it promises is there and sound."""

from __future__ import annotations

import os
from pathlib import Path

import lmdb
import numpy as np
from tqdm import tqdm

from datasets_prep.lmdb_format import (
    READERS,
    DatasetFormatError,
    accumulate_fingerprint,
    decode_image,
    finish_fingerprint,
    image_digest,
    key_for,
    label_key,
    labels_from_env,
    metadata_from_env,
    stored_size,
)


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TiB"


def describe(path: Path, metadata: dict) -> list[str]:
    """Human-readable lines for `info`."""
    count = metadata["count"]
    lines = [
        f"path: {path}",
        f"layout: {metadata['layout']} (format version {metadata['format_version']})",
        f"source: {metadata['source']}",
        f"resolutions: {', '.join(str(r) for r in metadata['resolutions'])}",
        "images: "
        + ", ".join(f"{split} {count[split]}" for split in sorted(count, reverse=True))
        + f" (skipped {metadata.get('skipped', 0)})",
        f"image format: {metadata['image_format']}; filter: {metadata.get('filter', '?')}; "
        f"crop: {metadata.get('crop', '?')}",
        "channels: "
        + ("1 (grayscale, stored as three equal RGB channels)" if metadata["channels"] == 1 else "3 (colour)"),
        f"fingerprint: {metadata['fingerprint']}",
        f"complete: {'yes' if metadata['complete'] else 'no (interrupted; finish it with build --resume)'}",
    ]
    if metadata["class_names"] is not None:
        lines += _label_lines(path, metadata)
    per_resolution = metadata.get("bytes_per_resolution")
    if per_resolution:
        lines.append(
            "stored bytes: "
            + ", ".join(f"{r}: {human_bytes(per_resolution[str(r)])}" for r in metadata["resolutions"])
            + f"; total {human_bytes(sum(per_resolution.values()))}"
        )
    data_file = path / "data.mdb" if path.is_dir() else path
    lines.append(f"file size: {human_bytes(os.path.getsize(data_file))}")
    return lines


def _label_lines(path: Path, metadata: dict) -> list[str]:
    """The classes, and how many images of each class every split holds."""
    names = metadata["class_names"]
    lines = [f"classes ({len(names)}): " + ", ".join(f"{i} {name}" for i, name in enumerate(names))]
    with READERS.borrowed(path) as env:
        for split, count in sorted(metadata["count"].items(), reverse=True):
            labels = labels_from_env(env, str(path), split, count, len(names))
            per_class = np.bincount(labels, minlength=len(names))
            lines.append(f"labels {split}: {count}; per class " + ", ".join(str(n) for n in per_class))
    return lines


def verify(path: Path, full: bool, progress: bool) -> list[str]:
    """Problems found in the LMDB at `path` (empty when sound).

    Checks that every image key of every split and resolution exists and that its header gives the
    right size; `full` decodes every image and recomputes the content fingerprint as well.
    """
    try:
        with READERS.borrowed(path) as env:
            return _verify_env(env, path, full, progress)
    except DatasetFormatError as error:
        return [str(error)]


def _verify_env(env, path: Path, full: bool, progress: bool) -> list[str]:
    metadata = metadata_from_env(env, str(path))
    problems = [] if metadata["complete"] else ["build incomplete: finish it with build --resume"]
    accumulator = 0
    total = sum(metadata["count"].values())
    bar = tqdm(total=total, unit="img", desc="verify", disable=None if progress else True)
    with env.begin() as txn, bar:
        for split, count in metadata["count"].items():
            for index in range(count):
                try:
                    values = _check_image(txn, metadata, split, index, full, problems)
                    label = _check_label(txn, metadata, split, index, problems)
                except lmdb.Error as error:  # damaged page structure; the transaction cannot read on
                    problems.append(f"{split} image {index}: {error}; the LMDB is damaged, copy it again or rebuild it")
                    return problems
                if full and values is not None:
                    accumulator = accumulate_fingerprint(accumulator, split, index, image_digest(values), label)
                bar.update(1)
    if metadata["layout"] == "multires":
        labelled = metadata["class_names"] is not None
        expected_entries = 1 + total * (len(metadata["resolutions"]) + labelled) + metadata["skipped"]
        entries = env.stat()["entries"]
        if entries != expected_entries:
            problems.append(f"{entries} keys, expected {expected_entries}: stray or missing entries")
        if full and metadata["complete"]:
            recomputed = finish_fingerprint(
                accumulator, metadata["resolutions"], metadata["image_format"], metadata["count"]
            )
            if recomputed != metadata["fingerprint"]:
                problems.append(f"fingerprint {recomputed} recomputed, {metadata['fingerprint']} stored")
    return problems


def _check_label(txn, metadata: dict, split: str, index: int, problems: list[str]) -> int | None:
    """The image's label in a labelled LMDB (None otherwise, or when it is unusable: then a problem is added)."""
    if metadata["class_names"] is None:
        return None
    key = label_key(split, index)
    value = txn.get(key)
    if value is None:
        problems.append(f"{key.decode()}: missing")
        return None
    classes = len(metadata["class_names"])
    try:
        label = int(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        label = -1
    if not 0 <= label < classes:
        problems.append(f"{key.decode()}: {value[:20]!r} is not a class index below {classes}")
        return None
    return label


def _check_image(txn, metadata: dict, split: str, index: int, full: bool, problems: list[str]) -> list[bytes] | None:
    values = []
    for resolution in metadata["resolutions"]:
        key = key_for(metadata, split, resolution, index)
        value = txn.get(key)
        if value is None:
            problems.append(f"{key.decode()}: missing")
            return None
        try:
            if full:
                decode_image(value, metadata["image_format"], resolution)
            elif stored_size(value, metadata["image_format"]) != (resolution, resolution):
                problems.append(f"{key.decode()}: size {stored_size(value, metadata['image_format'])}")
        except (DatasetFormatError, OSError, SyntaxError, ValueError) as error:
            problems.append(f"{key.decode()}: {error}")
        values.append(value)
    return values

"""On-disk layout of a multi-resolution image LMDB, shared by the builder and the reader.

One LMDB environment (a directory holding data.mdb and lock.mdb) holds every resolution:

    __meta__                      JSON metadata (fields in docs/datasets.md), rewritten by every build transaction
    {split}/{res}/{index:08d}     one image: PNG, JPEG or raw RGB bytes (H, W, 3) uint8
    {split}/label/{index:08d}     its class label, an ASCII decimal index into the metadata's `class_names`
    __skipped__/{source:08d}      "name<TAB>reason" for each source item the build could not use

Splits are "train" and "holdout"; indices are dense from 0 in each split. Labels exist for every image
when `class_names` is a list, for none when it is null; they are written in the same transaction as their
image, so an interrupted build and its `--resume` keep them consistent. Grayscale sets are stored as RGB
with three equal channels and `"channels": 1` in the metadata. LMDBs written before labels existed lack
`class_names` and `channels`: `read_metadata` fills in null and 3. LMDBs written by the progressive-GAN
`prepare_data.py` convention ("{res}-{index:05d}" keys, a "length" key, JPEG values) are read too;
`read_metadata` describes them with `layout == "prepare_data"`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

import lmdb
import numpy as np
from PIL import Image, UnidentifiedImageError

FORMAT_VERSION = 1
META_KEY = b"__meta__"
SKIPPED_PREFIX = b"__skipped__/"
LABEL_SEGMENT = "label"  # {split}/label/{index}: cannot clash with {split}/{res}/{index}, res being a number
LEGACY_LENGTH_KEY = b"length"
SPLITS = ("train", "holdout")
IMAGE_FORMATS = ("png", "jpeg", "raw")
# Pillow's default zlib level is 6; level 3 encodes about 40% faster for a few percent more bytes on photos.
PNG_COMPRESS_LEVEL = 3
# High enough that JPEG artefacts stay well below what the models can resolve.
JPEG_QUALITY = 95
# Resolutions probed when describing a prepare_data.py LMDB, which stores no list of them.
LEGACY_PROBE_RESOLUTIONS = tuple(2**k for k in range(1, 15))


class DatasetFormatError(ValueError):
    """The path is not a readable dataset LMDB, or it lacks what was asked for."""


def image_key(split: str, resolution: int, index: int) -> bytes:
    """Key of image `index` of `split` at `resolution` in an LMDB written by this package."""
    return f"{split}/{resolution}/{index:08d}".encode()


def label_key(split: str, index: int) -> bytes:
    """Key of the class label of image `index` of `split`."""
    return f"{split}/{LABEL_SEGMENT}/{index:08d}".encode()


def legacy_image_key(resolution: int, index: int) -> bytes:
    """Key of image `index` at `resolution` in a progressive-GAN prepare_data.py LMDB."""
    return f"{resolution}-{index:05d}".encode()


def key_for(metadata: dict, split: str, resolution: int, index: int) -> bytes:
    """Key of an image in the LMDB that `metadata` describes, whichever layout it uses."""
    if metadata["layout"] == "prepare_data":
        return legacy_image_key(resolution, index)
    return image_key(split, resolution, index)


def skipped_key(source_index: int) -> bytes:
    """Key recording why source item `source_index` was not written."""
    return SKIPPED_PREFIX + f"{source_index:08d}".encode()


def is_power_of_two(value: int) -> bool:
    """True for the ints 1, 2, 4, 8, ... (False for anything else, floats included)."""
    return isinstance(value, int) and value > 0 and value & (value - 1) == 0


def resolution_ladder(min_res: int, max_res: int) -> list[int]:
    """Every power of two from min_res to max_res inclusive, ascending."""
    ladder = [max_res]
    while ladder[-1] > min_res:
        ladder.append(ladder[-1] // 2)
    return sorted(ladder)


def encode_image(pixels: np.ndarray, image_format: str) -> bytes:
    """Encode uint8 (H, W, 3) pixels as stored in the LMDB."""
    if image_format == "raw":
        return np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    if image_format == "png":
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    elif image_format == "jpeg":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        raise ValueError(f"unknown image format {image_format!r}; expected one of {IMAGE_FORMATS}")
    return buffer.getvalue()


def decode_image(data: bytes, image_format: str, resolution: int) -> np.ndarray:
    """Decode a stored value to uint8 (resolution, resolution, 3); DatasetFormatError if damaged or of a wrong shape."""
    if image_format == "raw":
        expected = resolution * resolution * 3
        if len(data) != expected:
            raise DatasetFormatError(f"raw value has {len(data)} bytes, expected {expected}")
        return np.frombuffer(data, dtype=np.uint8).reshape(resolution, resolution, 3)
    try:
        with Image.open(io.BytesIO(data), formats=[image_format.upper()]) as image:
            pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except UnidentifiedImageError:
        raise DatasetFormatError(f"value is not a {image_format.upper()} image") from None
    except (OSError, SyntaxError, ValueError) as error:  # what Pillow raises for damaged bytes
        raise DatasetFormatError(f"value is a damaged {image_format.upper()} image ({error})") from None
    if pixels.shape != (resolution, resolution, 3):
        raise DatasetFormatError(f"value decodes to {pixels.shape}, expected {(resolution, resolution, 3)}")
    return pixels


def stored_size(data: bytes, image_format: str) -> tuple[int, int]:
    """(width, height) of a stored value from its header alone (raw values are square by construction)."""
    if image_format == "raw":
        side = int(round((len(data) / 3) ** 0.5))
        if side * side * 3 != len(data):
            raise DatasetFormatError(f"raw value of {len(data)} bytes is not a square RGB image")
        return side, side
    with Image.open(io.BytesIO(data), formats=[image_format.upper()]) as image:
        return image.size


def image_digest(values: list[bytes]) -> bytes:
    """Digest of one image's stored values, all resolutions in ascending order."""
    digest = hashlib.sha256()
    for value in values:
        digest.update(len(value).to_bytes(8, "little"))
        digest.update(value)
    return digest.digest()


def accumulate_fingerprint(accumulator: int, split: str, index: int, digest: bytes, label: int | None = None) -> int:
    """Add one image (and its label) to the running content sum; order-free, so it survives an interrupted and
    resumed build. Unlabelled images hash as before labels existed, so older LMDBs still verify."""
    labelled = b"" if label is None else f"label:{label}".encode()
    entry = hashlib.sha256(f"{split}/{index}".encode() + digest + labelled).digest()
    return (accumulator + int.from_bytes(entry, "big")) % 2**256


def finish_fingerprint(accumulator: int, resolutions: list[int], image_format: str, count: dict) -> str:
    """Short content fingerprint from the running sum and what shapes the content."""
    summary = json.dumps(
        {"sum": f"{accumulator:064x}", "resolutions": resolutions, "format": image_format, "count": count},
        sort_keys=True,
    )
    return hashlib.sha256(summary.encode()).hexdigest()[:16]


def open_readonly(path: str | os.PathLike) -> lmdb.Environment:
    """Open an existing dataset LMDB for reading, without locking (readers never share it with a writer)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatasetFormatError(f"no dataset LMDB at {path}")
    subdir = os.path.isdir(path)  # prepare_data.py and this package write directories; a bare file works too
    try:
        env = lmdb.open(
            path,
            subdir=subdir,
            readonly=True,
            lock=False,  # no lock file needed (or writable) when nothing writes concurrently
            readahead=False,  # random access: OS readahead would only waste page cache
            meminit=False,
            max_readers=1024,  # generous: one reader slot per DataLoader worker and thread
        )
    except lmdb.Error as error:
        raise DatasetFormatError(f"{path} is not a readable LMDB ({error})") from error
    # A truncated file (an interrupted copy or download) would kill the process with SIGBUS at the first
    # read past its end. Opening reads only the meta pages, which record the last page in use: compare.
    data_file = os.path.join(path, "data.mdb") if subdir else path
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = os.path.getsize(data_file)
    if size < needed:
        env.close()
        raise DatasetFormatError(
            f"{data_file} is truncated: {size} bytes, but its pages need {needed}; copy it again or rebuild it"
        )
    return env


def metadata_from_env(env: lmdb.Environment, path: str) -> dict:
    """The metadata of an open dataset LMDB, synthesised for prepare_data.py LMDBs."""
    try:
        return _metadata_from_txn(env, path)
    except lmdb.Error as error:  # CorruptedError, PageNotFoundError, ...: damaged page structure
        raise DatasetFormatError(f"{path} is damaged ({error}); copy it again or rebuild it") from error


def _metadata_from_txn(env: lmdb.Environment, path: str) -> dict:
    with env.begin() as txn:
        raw_meta = txn.get(META_KEY)
        if raw_meta is not None:
            try:
                metadata = json.loads(raw_meta)
            except json.JSONDecodeError as error:
                raise DatasetFormatError(f"{path}: metadata is not valid JSON ({error})") from error
            if not isinstance(metadata, dict) or metadata.get("format_version") != FORMAT_VERSION:
                version = metadata.get("format_version") if isinstance(metadata, dict) else None
                raise DatasetFormatError(f"{path}: format version {version} is not {FORMAT_VERSION}; rebuild it")
            _check_metadata(metadata, path)
            return with_defaults(metadata)
        length = txn.get(LEGACY_LENGTH_KEY)
        if length is None:
            raise DatasetFormatError(f"{path}: neither a {META_KEY.decode()} nor a 'length' key; not a dataset LMDB")
        return with_defaults(_legacy_metadata(txn, int(length.decode())))


def with_defaults(metadata: dict) -> dict:
    """The metadata with the fields that LMDBs built before them lack: no class names, three channels."""
    return {"class_names": None, "channels": 3, **metadata}


def _check_metadata(metadata: dict, path: str) -> None:
    """DatasetFormatError naming the first field of a metadata record that readers could not use."""

    def bad(field: str, expected: str) -> DatasetFormatError:
        return DatasetFormatError(
            f"{path}: metadata field {field!r} is {metadata.get(field, 'missing')!r}, expected {expected}; "
            "the __meta__ record is damaged, rebuild the LMDB"
        )

    resolutions = metadata.get("resolutions")
    if (
        not isinstance(resolutions, list)
        or not resolutions
        or not all(isinstance(r, int) and is_power_of_two(r) for r in resolutions)
    ):
        raise bad("resolutions", "a list of powers of two")
    count = metadata.get("count")
    if (
        not isinstance(count, dict)
        or set(count) != set(SPLITS)
        or not all(isinstance(n, int) and n >= 0 for n in count.values())
    ):
        raise bad("count", f"a count per split {SPLITS}")
    if metadata.get("image_format") not in IMAGE_FORMATS:
        raise bad("image_format", f"one of {IMAGE_FORMATS}")
    if metadata.get("layout") != "multires":
        raise bad("layout", "'multires'")
    if not isinstance(metadata.get("complete"), bool):
        raise bad("complete", "true or false")
    if metadata["complete"] and not isinstance(metadata.get("fingerprint"), str):
        raise bad("fingerprint", "a string")
    names = metadata.get("class_names")
    if names is not None and (not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names)):
        raise bad("class_names", "null or a list of names")
    channels = metadata.get("channels", 3)
    # `true in (1, 3)` holds in Python (and 1.0 == 1): only the integers 1 and 3 are a channel count.
    if type(channels) is not int or channels not in (1, 3):
        raise bad("channels", "1 or 3")


def _legacy_metadata(txn: lmdb.Transaction, length: int) -> dict:
    resolutions = [r for r in LEGACY_PROBE_RESOLUTIONS if txn.get(legacy_image_key(r, 0)) is not None]
    # No content fingerprint is stored; hash the count and the first and last image of every resolution.
    digest = hashlib.sha256(f"prepare_data:{length}:{resolutions}".encode())
    for resolution in resolutions:
        for index in (0, length - 1):
            digest.update(txn.get(legacy_image_key(resolution, index)) or b"missing")
    return {
        "format_version": 0,
        "layout": "prepare_data",
        "resolutions": resolutions,
        "count": {"train": length, "holdout": 0},
        "image_format": "jpeg",
        "source": "progressive-GAN prepare_data.py LMDB",
        "complete": True,
        "fingerprint": digest.hexdigest()[:16],
    }


class ReadonlyEnvironments:
    """The read-only LMDB environments open in this process, one per LMDB, shared by every reader.

    py-lmdb refuses to open the same files twice in one process, and a process forked from one that
    had them open inherits that refusal. So readers in a process share one handle per LMDB, and the
    first use in a forked child closes the inherited handles (opened without locks, they hold only
    this process's own mapping and descriptor) before opening its own.
    """

    def __init__(self):
        self._pid = os.getpid()  # process that opened the handles below
        self._environments: dict[str, lmdb.Environment] = {}  # by real path: one handle per file
        self._as_given: dict[str, lmdb.Environment] = {}  # by the path callers pass, to skip realpath per read

    def _drop_inherited(self) -> None:
        if self._pid != os.getpid():
            for env in self._environments.values():
                env.close()
            self._environments = {}
            self._as_given = {}
            self._pid = os.getpid()

    def shared(self, path: str | os.PathLike) -> lmdb.Environment:
        """This process's handle on the LMDB at `path`, opened on first use and kept open."""
        self._drop_inherited()
        env = self._as_given.get(os.fspath(path))
        if env is None:
            key = os.path.realpath(path)
            if key not in self._environments:
                self._environments[key] = open_readonly(path)
            env = self._as_given[os.fspath(path)] = self._environments[key]
        return env

    @contextmanager
    def borrowed(self, path: str | os.PathLike) -> Iterator[lmdb.Environment]:
        """The shared handle if one is open, else a handle closed again on exit (so writers can open later)."""
        self._drop_inherited()
        key = os.path.realpath(path)
        if key in self._environments:
            yield self._environments[key]
            return
        env = open_readonly(path)
        try:
            yield env
        finally:
            env.close()

    def release(self, path: str | os.PathLike) -> None:
        """Close this process's handle on `path`, if any, before the LMDB is written or replaced."""
        self._drop_inherited()
        env = self._environments.pop(os.path.realpath(path), None)
        if env is not None:
            self._as_given = {given: held for given, held in self._as_given.items() if held is not env}
            env.close()


# Process-wide by nature: the one-handle-per-LMDB rule it enforces is py-lmdb's, and it is per process.
READERS = ReadonlyEnvironments()


def read_metadata(path: str | os.PathLike) -> dict:
    """Metadata of the dataset LMDB at `path` (cheap: one key read); DatasetFormatError if it is not one.

    Always has `class_names` (a list, or None without labels) and `channels` (1 for grayscale sets, else 3).
    """
    with READERS.borrowed(path) as env:
        return metadata_from_env(env, os.fspath(path))


def labels_from_env(env: lmdb.Environment, path: str, split: str, count: int, classes: int) -> np.ndarray:
    """The `count` labels of `split`, in index order, as int64; DatasetFormatError if any is missing, damaged or
    not below `classes`. One cursor walk over the split's label keys, which sort in index order."""
    prefix = f"{split}/{LABEL_SEGMENT}/".encode()
    keys, values = [], []
    try:
        with env.begin() as txn:
            cursor = txn.cursor()
            if count and cursor.set_range(prefix):
                for key, value in cursor:
                    if len(keys) == count or not key.startswith(prefix):
                        break
                    keys.append(key)
                    values.append(value)
    except lmdb.Error as error:
        raise DatasetFormatError(f"{path} is damaged ({error}); copy it again or rebuild it") from error
    expected = [label_key(split, index) for index in range(count)]
    if keys != expected:  # one comparison of the lists, not one per key in Python: twice as fast
        missing = next(key for key, found in zip(expected, [*keys, None], strict=False) if key != found)
        raise DatasetFormatError(
            f"{path}: {missing.decode()} is missing ({count} {split} images should have labels); "
            "run `python -m datasets_prep verify`"
        )
    try:
        labels = np.array(values, dtype=np.bytes_).astype(np.int64)
    except ValueError:
        labels = np.array([_parse_label(value, path, key) for key, value in zip(keys, values, strict=True)])
    outside = np.flatnonzero((labels < 0) | (labels >= classes))
    if outside.size:
        key = expected[outside[0]].decode()
        raise DatasetFormatError(f"{path}: {key} is {labels[outside[0]]}, not a class index below {classes}")
    return labels.astype(np.int64, copy=False).reshape(count)


def _parse_label(value: bytes, path: str, key: bytes) -> int:
    """One stored label; DatasetFormatError naming the key when it is not a decimal integer."""
    try:
        return int(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise DatasetFormatError(f"{path}: {key.decode()} holds {value[:20]!r}, not a label") from None

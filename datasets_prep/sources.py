"""Where images come from: a folder, a zip, a CIFAR-10 python tarball, the Fashion-MNIST IDX files, synthetic
shapes, or the emoji of a font.

`open_source(spec, max_res)` lists a source's items in a fixed order (sorted names; emoji in a fixed hashed order),
so a build and its `--resume` see the same sequence. Items are small picklable records that a worker
process turns into a PIL image with `item.open()`; zip members are read by the main process
(`Source.for_worker`) so workers never re-parse a large zip's directory.

Labelled sources (CIFAR-10, Fashion-MNIST) name their classes in `Source.class_names` and give every item a
`label` (an index into those names); the others have no class names and items without labels. A source whose
images are all gray by nature (Fashion-MNIST) says so with `Source.grayscale`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFont

from datasets_prep.images import composite_on
from datasets_prep.synthetic import render_shape_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
SYNTHETIC_PREFIX = "synthetic:"
EMOJI_PREFIX = "emoji:"
NOTO_EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
NOTO_EMOJI_PACKAGE = "fonts-noto-color-emoji"
# The one size at which Noto Color Emoji's CBDT bitmaps exist (136x128 pixels each).
NOTO_EMOJI_SIZE = 109
# The label names of the CIFAR-10 batches' `labels` (as in its batches.meta).
CIFAR_CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_PREFIX = "fashion-mnist:"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist installs it
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
_REINSTALL_FASHION_MNIST = f"reinstall it: apt-get install --reinstall {FASHION_MNIST_PACKAGE}"
FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# (images, labels) file names of each split, as in the upstream release; each may also end in .gz.
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "holdout": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX magic numbers: two zero bytes, 0x08 (unsigned bytes), the number of dimensions.
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
IDX_IMAGE_SIDE = 28
# 28 + 2 + 2 = 32: a power of two that the builder halves down to 4 without resizing the digits' strokes.
IDX_PAD = 2


class SourceError(ValueError):
    """The source is missing, empty or of a kind this package cannot read."""


@dataclass(frozen=True, slots=True)
class FileItem:
    """An image file on disk."""

    name: str  # path relative to the source folder, for the report
    split: str | None  # None: the build assigns train or holdout
    path: str

    def open(self) -> Image.Image:
        return Image.open(self.path)


@dataclass(frozen=True, slots=True)
class ZipMemberItem:
    """A member of a zip; `Source.for_worker` replaces it by an EncodedItem before it leaves the main process."""

    name: str
    split: str | None
    member: str


@dataclass(frozen=True, slots=True)
class EncodedItem:
    """An encoded image file already read into memory."""

    name: str
    split: str | None
    data: bytes

    def open(self) -> Image.Image:
        return Image.open(io.BytesIO(self.data))


@dataclass(frozen=True, slots=True)
class UnreadableItem:
    """An item the main process could not even read (a damaged zip member); its worker reports why."""

    name: str
    split: str | None
    reason: str

    def open(self) -> Image.Image:
        raise OSError(self.reason)


@dataclass(frozen=True, slots=True)
class PixelItem:
    """Decoded uint8 (H, W, 3) pixels, as CIFAR-10 stores them, and their class label."""

    name: str
    split: str | None
    pixels: np.ndarray
    label: int | None = None

    def open(self) -> Image.Image:
        return Image.fromarray(self.pixels)


@dataclass(frozen=True, slots=True)
class GrayPixelItem:
    """Decoded uint8 (H, W) gray pixels (Fashion-MNIST), padded with `pad` black pixels on every side when opened.

    Kept at 28x28 until opened: the items of all 70,000 images then take 55 MB in the main process, not 215.
    """

    name: str
    split: str | None
    pixels: np.ndarray
    label: int | None = None
    pad: int = 0

    def open(self) -> Image.Image:
        return Image.fromarray(np.pad(self.pixels, self.pad))  # mode "L"; the builder replicates it to RGB


@dataclass(frozen=True, slots=True)
class ShapeItem:
    """Image `index` of the synthetic shapes source, rendered directly at the build's largest resolution."""

    name: str
    split: str | None
    seed: int
    index: int
    resolution: int

    def open(self) -> Image.Image:
        return Image.fromarray(render_shape_image(self.index, self.resolution, self.seed))


class ShapeItems(Sequence):
    """The items of synthetic:shapes, made on access: `n` can be large without a listing in memory."""

    def __init__(self, count: int, seed: int, max_res: int):
        self.count, self.seed, self.max_res = count, seed, max_res

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        if not -self.count <= index < self.count:
            raise IndexError(index)
        index %= self.count
        return ShapeItem(f"shape {index}", None, self.seed, index, self.max_res)


@dataclass(frozen=True, slots=True)
class EmojiItem:
    """One character of a colour emoji font, rendered by the worker, centred on a square of `background`."""

    name: str  # emoji-1F600
    split: str | None
    codepoint: int
    font: str
    background: tuple[int, int, int]

    def open(self) -> Image.Image:
        glyph = render_glyph(self.font, self.codepoint)
        side = max(glyph.size)
        square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
        return composite_on(square, self.background)


class Source:
    """An ordered list of items plus what the report and the metadata say about them."""

    def __init__(
        self,
        description: str,
        items: Sequence,
        ignored: list[str] | None = None,
        has_splits: bool = False,
        class_names: Sequence[str] | None = None,
        grayscale: bool = False,
    ):
        self.description = description  # stored in the metadata; a resumed build must see the same
        self.items = items
        self.ignored = ignored or []  # files passed over because their extension is not an image's
        self.has_splits = has_splits  # items come with their own train/holdout split (CIFAR-10, Fashion-MNIST)
        self.class_names = tuple(class_names) if class_names is not None else None  # None: items have no label
        self.grayscale = grayscale  # every image is gray by nature (the builder detects it for other sources)

    def __len__(self) -> int:
        return len(self.items)

    def listing_digest(self) -> str:
        """Hash of the item names in order: a resumed build refuses a source that changed since."""
        digest = hashlib.sha256()
        for item in self.items:
            digest.update(f"{item.split}:{item.name}\n".encode())
        return digest.hexdigest()[:16]

    def limited(self, limit: int | None) -> Source:
        """The first `limit` items of each predefined split (of the whole source when it has none)."""
        if limit is None:
            return self
        if not self.has_splits:  # a slice: never walks a long (or lazily generated) listing
            return self._with_items(list(self.items[:limit]))
        taken: dict[str | None, int] = {}
        kept = []
        for item in self.items:
            if taken.get(item.split, 0) < limit:
                taken[item.split] = taken.get(item.split, 0) + 1
                kept.append(item)
        return self._with_items(kept)

    def _with_items(self, items: list) -> Source:
        return Source(self.description, items, self.ignored, self.has_splits, self.class_names, self.grayscale)

    def for_worker(self, items: list) -> list:
        """The items as a worker process needs them (overridden where the main process must read first)."""
        return items


class ZipSource(Source):
    """Images inside a zip archive, read member by member by the main process."""

    def __init__(self, path: str, description: str, items: list, ignored: list[str]):
        super().__init__(description, items, ignored)
        self.path = path

    def _with_items(self, items: list) -> Source:
        return ZipSource(self.path, self.description, items, self.ignored)

    def for_worker(self, items: list) -> list:
        with zipfile.ZipFile(self.path) as archive:
            return [self._read_member(archive, item) for item in items]

    @staticmethod
    def _read_member(archive: zipfile.ZipFile, item: ZipMemberItem) -> EncodedItem | UnreadableItem:
        try:
            return EncodedItem(item.name, item.split, archive.read(item.member))
        # A damaged member (bad CRC or deflate stream, unsupported compression) is one bad image, not a bad build.
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError) as error:
            return UnreadableItem(item.name, item.split, f"zip member unreadable: {error}")


def has_image_extension(name: str) -> bool:
    """True when the name ends with one of the image extensions this package reads (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def item_label(item) -> int | None:
    """The class label of a source item; None for the item types that never carry one (files, shapes, emoji)."""
    return getattr(item, "label", None)


def open_source(spec: str, max_res: int) -> Source:
    """The source named by `spec`: a folder, a .zip, a CIFAR-10 tarball or folder, `synthetic:shapes?n=&seed=`,
    `emoji:noto?bg=&font=` (the colour emoji of Noto Color Emoji, or of another CBDT font), or
    `fashion-mnist:DIR` (the four IDX files of Fashion-MNIST; DIR defaults to Debian's copy)."""
    if spec.startswith(SYNTHETIC_PREFIX):
        source = _synthetic_source(spec, max_res)
    elif spec.startswith(EMOJI_PREFIX):
        source = _emoji_source(spec)
    elif spec.startswith(FASHION_MNIST_PREFIX):
        source = _fashion_mnist_source(spec)
    else:
        path = Path(spec)
        if not path.exists():
            raise SourceError(f"source not found: {spec}")
        if path.is_dir() and (path / CIFAR_TEST_BATCH).is_file():
            source = _cifar_source(path, _read_cifar_dir(path))
        elif path.is_dir():
            source = _folder_source(path)
        elif zipfile.is_zipfile(path):
            source = _zip_source(path)
        elif tarfile.is_tarfile(path):
            source = _cifar_source(path, _read_cifar_tarball(path))
        else:
            raise SourceError(
                f"{spec} is not a folder, a zip, a CIFAR-10 tarball, a synthetic:, emoji: or fashion-mnist: source"
            )
    if len(source) == 0:
        raise SourceError(f"no images in {spec} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return source


def _folder_source(root: Path) -> Source:
    images, ignored = [], []
    for directory, _subdirectories, files in os.walk(root):
        for file in files:
            relative = (Path(directory) / file).relative_to(root).as_posix()
            (images if has_image_extension(file) else ignored).append(relative)
    items = [FileItem(name, None, str(root / name)) for name in sorted(images)]
    return Source(f"folder:{root.resolve()}", items, sorted(ignored))


def _zip_source(path: Path) -> Source:
    with zipfile.ZipFile(path) as archive:
        members = [info.filename for info in archive.infolist() if not info.is_dir()]
    items = [ZipMemberItem(m, None, m) for m in sorted(members) if has_image_extension(m)]
    ignored = sorted(m for m in members if not has_image_extension(m))
    return ZipSource(str(path), f"zip:{path.resolve()}", items, ignored)


def _synthetic_source(spec: str, max_res: int) -> Source:
    parts = urlsplit(spec[len(SYNTHETIC_PREFIX) :])
    if parts.path != "shapes":
        raise SourceError(f"unknown synthetic source {parts.path!r}; the one built in is synthetic:shapes")
    query = parse_qs(parts.query)
    unknown = set(query) - {"n", "seed"}
    if unknown:
        raise SourceError(f"unknown synthetic:shapes parameter(s) {sorted(unknown)}; use n and seed")
    try:
        count = int(query.get("n", ["1000"])[-1])
        seed = int(query.get("seed", ["0"])[-1])
    except ValueError as error:
        raise SourceError(f"synthetic:shapes parameters must be integers ({error})") from error
    if count < 1:
        raise SourceError(f"synthetic:shapes needs n >= 1, got {count}")
    return Source(f"synthetic:shapes?n={count}&seed={seed}", ShapeItems(count, seed, max_res))


def _emoji_source(spec: str) -> Source:
    # Not urlsplit: it would take the `#` of `bg=#rrggbb` for the start of a fragment.
    name, _, query_string = spec[len(EMOJI_PREFIX) :].partition("?")
    if name != "noto":
        raise SourceError(f"unknown emoji source {name!r}; the one built in is emoji:noto")
    query = parse_qs(query_string, keep_blank_values=True)
    unknown = set(query) - {"bg", "font"}
    if unknown:
        raise SourceError(f"unknown emoji:noto parameter(s) {sorted(unknown)}; use bg and font")
    colour = query.get("bg", ["white"])[-1]
    try:
        background = ImageColor.getrgb(colour)[:3]
    except ValueError as error:
        raise SourceError(f"emoji:noto bg={colour!r} is not a colour name or #rrggbb") from error
    font = query.get("font", [NOTO_EMOJI_FONT])[-1]
    if not Path(font).is_file():
        raise SourceError(f"emoji:noto needs the font {font}: apt-get install {NOTO_EMOJI_PACKAGE}")
    font = str(Path(font).resolve())
    try:
        codepoints = emoji_codepoints(font)
    except (OSError, struct.error) as error:
        raise SourceError(f"cannot read {font} as a TrueType font ({error})") from error
    if not codepoints:
        raise SourceError(f"{font} draws none of the characters it maps")
    # A fixed pseudo-random order (by a hash of the code point), not code-point order: the first images become
    # the holdout, and code-point order would put only keycaps and symbols there.
    codepoints = sorted(codepoints, key=lambda c: hashlib.blake2b(c.to_bytes(4, "little"), digest_size=8).digest())
    items = [EmojiItem(f"emoji-{c:04X}", None, c, font, background) for c in codepoints]
    hex_colour = "#" + "".join(f"{value:02x}" for value in background)
    return Source(f"emoji:noto?bg={hex_colour}&font={font}", items)


@lru_cache(maxsize=4)
def _emoji_font(path: str) -> ImageFont.FreeTypeFont:
    """The font at the bitmaps' size, loaded once per process (workers included)."""
    try:
        # The basic layout draws single characters the same with or without libraqm installed.
        return ImageFont.truetype(path, size=NOTO_EMOJI_SIZE, layout_engine=ImageFont.Layout.BASIC)
    except OSError as error:
        raise SourceError(f"cannot load {path} as a {NOTO_EMOJI_SIZE}-pixel colour font ({error})") from error


def render_glyph(font: str, codepoint: int) -> Image.Image:
    """The character's RGBA bitmap, cropped to the font's box for it (136x128 for Noto); 0x0 when it has none."""
    face = _emoji_font(font)
    left, top, right, bottom = face.getbbox(chr(codepoint))
    glyph = Image.new("RGBA", (max(right - left, 0), max(bottom - top, 0)), (0, 0, 0, 0))
    if glyph.width and glyph.height:
        ImageDraw.Draw(glyph).text((-left, -top), chr(codepoint), font=face, embedded_color=True)
    return glyph


@lru_cache(maxsize=4)
def emoji_codepoints(font: str) -> tuple[int, ...]:
    """The font's characters, ascending, without those that draw nothing (space, joiners, selectors, tags)."""
    return tuple(c for c in cmap_codepoints(font) if render_glyph(font, c).getbbox(alpha_only=True))


def cmap_codepoints(path: str) -> list[int]:
    """Sorted code points that a TrueType font's `cmap` maps to a glyph other than 0 (.notdef).

    Reads the format 12 subtable (all of Unicode) when there is one, else format 4 (the BMP).
    Layouts: https://learn.microsoft.com/typography/opentype/spec/cmap; all numbers are big-endian.
    """
    with open(path, "rb") as file:
        (tables,) = struct.unpack(">4xH6x", file.read(12))  # sfnt version, numTables, 3 search fields
        directory = file.read(16 * tables)  # per table: tag, checksum, offset, length
        records = {directory[i : i + 4]: struct.unpack_from(">8xII", directory, i) for i in range(0, 16 * tables, 16)}
        if b"cmap" not in records:
            raise SourceError(f"{path} is not a TrueType/OpenType font with a cmap table")
        offset, length = records[b"cmap"]
        file.seek(offset)
        cmap = file.read(length)
    (count,) = struct.unpack_from(">2xH", cmap)  # version, numTables
    subtables = {}  # format -> offset within cmap, of the Unicode encodings (platform 0, or Windows 1 and 10)
    for platform, encoding, start in struct.iter_unpack(">HHI", cmap[4 : 4 + 8 * count]):
        if platform == 0 or (platform == 3 and encoding in (1, 10)):
            subtables.setdefault(struct.unpack_from(">H", cmap, start)[0], start)
    codepoints = set()
    if 12 in subtables:
        # format, reserved, length, language, numGroups; then groups of (startChar, endChar, startGlyph).
        start = subtables[12]
        (groups,) = struct.unpack_from(">12xI", cmap, start)
        for first, last, glyph in struct.iter_unpack(">III", cmap[start + 16 : start + 16 + 12 * groups]):
            codepoints.update(c for c in range(first, last + 1) if glyph + c - first)
    elif 4 in subtables:
        # format, length, language, segCountX2, 3 search fields; then arrays endCode, pad, startCode,
        # idDelta, idRangeOffset (segCount entries each) and the glyphIdArray that idRangeOffset points into.
        start = subtables[4]
        segments = struct.unpack_from(">6xH", cmap, start)[0] // 2
        ends = struct.unpack_from(f">{segments}H", cmap, start + 14)
        starts = struct.unpack_from(f">{segments}H", cmap, start + 16 + 2 * segments)
        deltas = struct.unpack_from(f">{segments}h", cmap, start + 16 + 4 * segments)
        range_at = start + 16 + 6 * segments  # idRangeOffset[0]; offsets count from their own position
        ranges = struct.unpack_from(f">{segments}H", cmap, range_at)
        for i, (first, last, delta, offset) in enumerate(zip(starts, ends, deltas, ranges, strict=True)):
            for c in range(first, min(last, 0xFFFE) + 1):  # the last segment is a 0xFFFF sentinel
                if offset == 0:
                    glyph = (c + delta) & 0xFFFF
                else:
                    glyph = struct.unpack_from(">H", cmap, range_at + 2 * i + offset + 2 * (c - first))[0]
                    glyph = (glyph + delta) & 0xFFFF if glyph else 0
                if glyph:
                    codepoints.add(c)
    else:
        raise SourceError(f"{path} has no Unicode cmap subtable of format 4 or 12")
    return sorted(codepoints)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10 batches (dicts, lists, numpy arrays) and refuses anything else a tarball could smuggle."""

    allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell a bytes object
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"CIFAR-10 batch refers to {module}.{name}, which a batch never needs")
        return super().find_class(module, name)


@dataclass(frozen=True)
class CifarBatch:
    """One CIFAR-10 batch: uint8 (N, 32, 32, 3) pixels and their N labels."""

    pixels: np.ndarray
    labels: np.ndarray


def _unpickle_batch(data: bytes, name: str) -> CifarBatch:
    try:
        batch = _ArrayOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
        rows = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, EOFError, TypeError, ValueError) as error:
        raise SourceError(f"CIFAR-10 batch {name} is unreadable ({error})") from error
    if rows.ndim != 2 or rows.shape[1] != 3 * 32 * 32:
        raise SourceError(f"CIFAR-10 batch {name} has data of shape {rows.shape}, expected (N, 3072)")
    _check_labels(labels, len(rows), len(CIFAR_CLASS_NAMES), f"CIFAR-10 batch {name}")
    # Rows are channel-major (1024 red, 1024 green, 1024 blue values).
    return CifarBatch(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)


def _check_labels(labels: np.ndarray, count: int, classes: int, what: str, hint: str = "") -> None:
    """SourceError unless `labels` is one class index in 0..classes-1 per image."""
    if labels.shape != (count,):
        raise SourceError(f"{what} has {labels.size} labels for {count} images{hint}")
    outside = labels[(labels < 0) | (labels >= classes)]
    if outside.size:
        raise SourceError(f"{what} has label {outside[0]}, outside 0..{classes - 1}{hint}")


def _read_cifar_tarball(path: Path) -> dict[str, CifarBatch]:
    batches = {}
    try:
        with tarfile.open(path) as archive:
            for member in archive.getmembers():
                name = Path(member.name).name
                if member.isfile() and name in (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH):
                    batches[name] = _unpickle_batch(archive.extractfile(member).read(), name)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:  # a truncated or damaged download
        raise SourceError(f"{path} is truncated or damaged ({error}); download it again") from error
    if not batches:
        raise SourceError(f"{path} holds no CIFAR-10 batches (data_batch_1..5, test_batch)")
    return batches


def _read_cifar_dir(path: Path) -> dict[str, CifarBatch]:
    names = [n for n in (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH) if (path / n).is_file()]
    return {name: _unpickle_batch((path / name).read_bytes(), name) for name in names}


def _cifar_source(path: Path, batches: dict[str, CifarBatch]) -> Source:
    items = []
    for name in (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH):
        if name not in batches:
            continue
        split = "holdout" if name == CIFAR_TEST_BATCH else "train"
        batch = batches[name]
        for row, (pixels, label) in enumerate(zip(batch.pixels, batch.labels, strict=True)):
            items.append(PixelItem(f"{name}[{row}]", split, np.ascontiguousarray(pixels), int(label)))
    return Source(f"cifar10:{path.resolve()}", items, has_splits=True, class_names=CIFAR_CLASS_NAMES)


def _fashion_mnist_source(spec: str) -> Source:
    """The 60,000 training images as `train`, the 10,000 test images as `holdout`, with their labels."""
    folder = Path(spec[len(FASHION_MNIST_PREFIX) :] or FASHION_MNIST_DIR)
    if not folder.is_dir():
        raise SourceError(
            f"fashion-mnist: {folder} is not a folder of the four IDX files; "
            f"Debian's copy (in {FASHION_MNIST_DIR}): apt-get install {FASHION_MNIST_PACKAGE}"
        )
    items = []
    for split, (images_name, labels_name) in FASHION_MNIST_FILES.items():
        images_path, labels_path = _idx_path(folder, images_name), _idx_path(folder, labels_name)
        images = read_idx(images_path, IDX_IMAGES_MAGIC, (IDX_IMAGE_SIDE, IDX_IMAGE_SIDE))
        labels = read_idx(labels_path, IDX_LABELS_MAGIC, ()).astype(np.int64)
        hint = f" (in {images_path}); {_REINSTALL_FASHION_MNIST}"
        _check_labels(labels, len(images), len(FASHION_MNIST_CLASS_NAMES), str(labels_path), hint)
        items += [
            GrayPixelItem(f"{images_name}[{row}]", split, pixels, int(label), IDX_PAD)
            for row, (pixels, label) in enumerate(zip(images, labels, strict=True))
        ]
    return Source(
        f"fashion-mnist:{folder.resolve()}",
        items,
        has_splits=True,
        class_names=FASHION_MNIST_CLASS_NAMES,
        grayscale=True,
    )


def _idx_path(folder: Path, name: str) -> Path:
    """`folder/name`, or `folder/name.gz` when only the gzipped file is there (as upstream and Debian ship it)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise SourceError(f"{folder / name}[.gz] is missing; {_REINSTALL_FASHION_MNIST}")


def read_idx(path: Path, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 array of an IDX file (http://yann.lecun.com/exdb/mnist/), checked against its header.

    Header: the big-endian int32 magic number, then one big-endian int32 per dimension; then the bytes.
    """
    data = _read_possibly_gzipped(path)
    dimensions = 1 + len(item_shape)
    header = 4 * (1 + dimensions)
    if len(data) < header:
        raise SourceError(f"{path} is truncated ({len(data)} bytes, less than its header); {_REINSTALL_FASHION_MNIST}")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise SourceError(
            f"{path} is not an IDX file of {dimensions}-dimensional unsigned bytes (magic 0x{found:08x}, "
            f"expected 0x{magic:08x}); {_REINSTALL_FASHION_MNIST}"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=dimensions, offset=4))
    if shape[1:] != item_shape or shape[0] < 1:
        raise SourceError(f"{path} has shape {shape}, expected (N>0, {item_shape}); {_REINSTALL_FASHION_MNIST}")
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "damaged"
        raise SourceError(
            f"{path} is {state} ({len(data)} bytes, its header says {expected}); {_REINSTALL_FASHION_MNIST}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _read_possibly_gzipped(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data
    # BadGzipFile (an OSError), EOFError (a cut stream) and zlib.error (damaged deflate data).
    except (OSError, EOFError, zlib.error) as error:
        raise SourceError(f"{path} is truncated or damaged ({error}); {_REINSTALL_FASHION_MNIST}") from error

"""Turning one source image into its stored pyramid: orient, RGB, crop, resize, downsample, encode; is it gray.

`process_item` runs in worker processes. It never raises for a bad image: whatever goes wrong with
one file comes back as `Skipped(reason)` so the build can report it and carry on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from datasets_prep.lmdb_format import encode_image, image_digest, resolution_ladder

CROPS = ("center", "none")
FILTERS = ("box", "lanczos")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
WHITE = (255, 255, 255)
# Largest source image a build decodes: 2**27 pixels (e.g. 11585 x 11585) take 512 MiB as RGBA, per worker.
# Larger ones are skipped with their size in the report. Builds replace Pillow's own check (a warning per
# image above 89 Mpx, an error above 179 Mpx) by this one, see `use_build_pixel_limit`.
MAX_SOURCE_PIXELS = 2**27


@dataclass(frozen=True)
class ImageSettings:
    """How every image of a build is prepared; stored in the metadata and checked again on --resume."""

    max_res: int  # side of the largest stored image
    min_res: int  # side of the smallest stored image
    crop: str  # "center": the largest centred square; "none": the whole image, stretched to a square
    filter: str  # "box": each level averages 2x2 pixels of the next one up; "lanczos": each level from the source
    image_format: str  # stored encoding: "png", "jpeg" or "raw"
    upscale: bool  # enlarge images smaller than max_res instead of skipping them

    @property
    def resolutions(self) -> list[int]:
        return resolution_ladder(self.min_res, self.max_res)


@dataclass(frozen=True)
class Encoded:
    """One image at every resolution, ascending, ready to store."""

    values: list[bytes]
    digest: bytes  # `image_digest(values)`, computed here so the main process only writes
    gray: bool = False  # its three channels are equal (the builder marks a set of such images "channels": 1)


@dataclass(frozen=True)
class Skipped:
    """An item that could not be used, and why (one line for the report)."""

    reason: str


class SkipImage(Exception):
    """Raised inside processing for an image that is readable but unusable (too small, unsupported mode)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: transparency composited on white, 16-bit channels scaled (not clipped) to 8 bits."""
    if image.mode == "F":
        raise SkipImage("32-bit float images have no defined 0..255 range; convert them first")
    if image.mode in SIXTEEN_BIT_MODES:
        # Pillow's own conversion clips 16-bit values at 255; keep the top 8 bits instead.
        wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        return Image.fromarray((wide >> 8).astype(np.uint8)).convert("RGB")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        return composite_on(image, WHITE)
    return image.convert("RGB")


def composite_on(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGB image of `image` (any mode, transparency included) composited on an opaque background colour."""
    rgba = image.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def crop_square(image: Image.Image, crop: str) -> Image.Image:
    """The centred square of the image ("center") or the image as it is ("none")."""
    if crop == "none":
        return image
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def box_pyramid(top: np.ndarray, min_res: int) -> list[np.ndarray]:
    """`top` and each half-size level down to min_res, ascending; each level averages 2x2 of the one above.

    Averaging runs in float32 on the unrounded level above, as the progressive GAN dataset tool does,
    so rounding errors do not pile up down the chain (sums of 2x2 blocks of dyadic fractions below 256
    stay exact in float32 down to 4x4 from 1024).
    """
    levels = [top]
    current = top.astype(np.float32)
    while current.shape[0] > min_res:
        rows = current[0::2] + current[1::2]  # rows, then columns: fewer strided temporaries
        current = rows[:, 0::2] + rows[:, 1::2]
        current *= 0.25
        levels.append(np.rint(current).clip(0, 255).astype(np.uint8))
    return levels[::-1]


def use_build_pixel_limit() -> None:
    """In a build's worker process: MAX_SOURCE_PIXELS, checked by `prepare_square`, instead of Pillow's limit."""
    Image.MAX_IMAGE_PIXELS = None


def prepare_square(image: Image.Image, settings: ImageSettings) -> Image.Image:
    """Oriented, RGB, cropped image, checked to be large enough (not yet resized)."""
    if image.width * image.height > MAX_SOURCE_PIXELS:  # known from the header, before anything is decoded
        raise SkipImage(
            f"too large: {image.width}x{image.height} is above {MAX_SOURCE_PIXELS} pixels (memory per worker)"
        )
    if image.format == "JPEG":
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still leaves at least max_res pixels per side.
        image.draft(None, (settings.max_res, settings.max_res))
    oriented = ImageOps.exif_transpose(image)
    square = crop_square(to_rgb(oriented), settings.crop)
    width, height = square.size
    if min(width, height) < settings.max_res and not settings.upscale:
        raise SkipImage(
            f"too small: {image.size[0]}x{image.size[1]} gives {width}x{height} after cropping, "
            f"below --max-res {settings.max_res} (--upscale enlarges it)"
        )
    return square


def pyramid(square: Image.Image, settings: ImageSettings) -> list[np.ndarray]:
    """uint8 (r, r, 3) arrays for every resolution of the build, ascending."""
    if settings.filter == "lanczos":
        return [np.asarray(square.resize((r, r), Image.Resampling.LANCZOS)) for r in settings.resolutions]
    side = settings.max_res
    top = square if square.size == (side, side) else square.resize((side, side), Image.Resampling.LANCZOS)
    return box_pyramid(np.asarray(top), settings.min_res)


def load_image(path, resolution: int, crop: str = "center") -> np.ndarray:
    """One image file as a build stores it at `resolution` (uint8, (r, r, 3)): oriented, transparency on white,
    cropped, resized with Lanczos (enlarged if smaller). The exports read their input images with this, so a
    model sees them as it saw its training data. Raises what Pillow raises, or SkipImage."""
    settings = ImageSettings(
        max_res=resolution, min_res=resolution, crop=crop, filter="lanczos", image_format="png", upscale=True
    )
    with Image.open(path) as image:
        return pyramid(prepare_square(image, settings), settings)[0]


def has_equal_channels(pixels: np.ndarray) -> bool:
    """True when an (H, W, 3) image is gray: its red, green and blue values are equal everywhere."""
    return bool(np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2]))


def process_item(item, settings: ImageSettings) -> Encoded | Skipped:
    """Read, prepare and encode one source item; any failure becomes a Skipped with its reason."""
    try:
        with item.open() as image:
            levels = pyramid(prepare_square(image, settings), settings)
        values = [encode_image(level, settings.image_format) for level in levels]
        # The largest level decides: every lower one is made from it (box) or from the same gray square (Lanczos).
        gray = has_equal_channels(levels[-1])
    except SkipImage as unusable:
        return Skipped(str(unusable))
    except UnidentifiedImageError:
        return Skipped("unreadable: not an image any decoder recognises (empty, damaged or another kind of file)")
    except Exception as error:  # noqa: BLE001 -- untrusted files make decoders raise nearly anything; report it
        detail = str(error).splitlines()[0] if str(error) else "no message"
        return Skipped(f"unreadable: {type(error).__name__}: {detail}")
    return Encoded(values, image_digest(values), gray)

"""The `emoji:noto` source: cmap listing, rendering on a background, builds, and its one-line errors.

Tests that render need Debian's fonts-noto-color-emoji and are skipped without it; the error tests need no font.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from datasets_prep.__main__ import main
from datasets_prep.lmdb_format import read_metadata
from datasets_prep.reader import LMDBImageDataset
from datasets_prep.sources import NOTO_EMOJI_FONT, SourceError, cmap_codepoints, emoji_codepoints, open_source

needs_font = pytest.mark.skipif(not Path(NOTO_EMOJI_FONT).exists(), reason=f"{NOTO_EMOJI_FONT} is not installed")


def build(*args: str) -> int:
    return main(["build", *map(str, args), "--workers", "1", "--no-progress"])


@needs_font
def test_listing_is_deterministic_and_large():
    first = open_source("emoji:noto", 32)
    emoji_codepoints.cache_clear()  # list the font again rather than reuse this process's listing
    second = open_source("emoji:noto?bg=white", 32)
    names = [item.name for item in first.items]
    assert len(names) > 1000
    assert names == [item.name for item in second.items]
    assert first.listing_digest() == second.listing_digest()
    codepoints = [item.codepoint for item in first.items]
    assert len(set(codepoints)) == len(codepoints)
    # A hashed order, so the first images (the holdout) are a sample of every kind of glyph, not only keycaps.
    assert codepoints != sorted(codepoints) and max(codepoints[:128]) > 0x1F000 and min(codepoints[:128]) < 0x1F000
    assert "emoji-1F600" in names and "emoji-0020" not in names and "emoji-200D" not in names  # space, ZWJ: blank
    assert first.description.startswith("emoji:noto?bg=#ffffff&font=")
    assert open_source("emoji:noto?bg=%23FFFFFF", 32).description == first.description  # canonical colour


@needs_font
def test_item_renders_rgb_glyph_on_the_background():
    item = next(i for i in open_source("emoji:noto?bg=black", 32).items if i.name == "emoji-1F600")
    item = pickle.loads(pickle.dumps(item))  # what a worker receives
    with item.open() as image:
        pixels = np.asarray(image)
    assert image.mode == "RGB" and pixels.shape == (136, 136, 3)
    assert (pixels[0, 0] == 0).all() and (pixels[-1, -1] == 0).all()  # padding and glyph margins show bg
    assert (pixels.max(axis=2) > 0).mean() > 0.3  # the yellow face covers much of the square


@needs_font
def test_tiny_build_through_the_cli(tmp_path, capsys):
    out = tmp_path / "emoji.lmdb"
    assert build("emoji:noto?bg=#102030", out, "--max-res", 16, "--limit", 8, "--holdout", 2) == 0
    assert "wrote 8 images (train 6, holdout 2)" in capsys.readouterr().out
    metadata = read_metadata(out)
    assert metadata["complete"] and metadata["skipped"] == 0 and metadata["resolutions"] == [4, 8, 16]
    image = LMDBImageDataset(out, resolution=16, split="holdout")[0]  # emoji-0023, "#": grey on dark blue
    assert image.shape == (3, 16, 16)
    corner = (image[:, 0, 0] + 1) * 127.5
    assert np.allclose(corner.numpy(), (16, 32, 48), atol=1)
    assert image.std() > 0.05


def test_missing_font_is_one_line_naming_the_package(tmp_path, capsys):
    spec = f"emoji:noto?font={tmp_path / 'absent.ttf'}"
    assert build(spec, tmp_path / "out", "--max-res", 8) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: emoji:noto needs the font ")
    assert "apt-get install fonts-noto-color-emoji" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("emoji:noto?bg=notacolour", "emoji:noto bg='notacolour' is not a colour"),
        ("emoji:noto?bg=", "emoji:noto bg='' is not a colour"),
        ("emoji:noto?size=64", "unknown emoji:noto parameter(s) ['size']"),
        ("emoji:twemoji", "unknown emoji source 'twemoji'"),
    ],
)
def test_bad_spec_exits_2_with_one_line(tmp_path, capsys, spec, message):
    assert build(spec, tmp_path / "out", "--max-res", 8) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error


def test_not_a_font_is_a_source_error(tmp_path):
    fake = tmp_path / "fake.ttf"
    fake.write_bytes(b"\0" * 12)
    with pytest.raises(SourceError, match="cmap"):
        open_source(f"emoji:noto?font={fake}", 8)


def test_cmap_format_4_reader(tmp_path):
    # Segments: 'A'..'C' by idDelta; 'a'..'b' through glyphIdArray [7, 0] ('b' maps to .notdef); the 0xFFFF sentinel.
    starts, ends, deltas = (0x41, 0x61, 0xFFFF), (0x43, 0x62, 0xFFFF), (-0x40, 0, 1)
    ranges = (0, 4, 0)  # from idRangeOffset[1] to glyphIdArray[0]: skip idRangeOffset[1], [2]
    segments = len(starts)
    body = struct.pack(f">{segments}H", *ends) + b"\0\0" + struct.pack(f">{segments}H", *starts)
    body += struct.pack(f">{segments}h", *deltas) + struct.pack(f">{segments}H", *ranges) + struct.pack(">2H", 7, 0)
    subtable = struct.pack(">7H", 4, 14 + len(body), 0, 2 * segments, 0, 0, 0) + body
    cmap = struct.pack(">HH", 0, 1) + struct.pack(">HHI", 3, 1, 12) + subtable
    font = struct.pack(">IH6x", 0x00010000, 1) + struct.pack(">4sIII", b"cmap", 0, 28, len(cmap)) + cmap
    path = tmp_path / "tiny.ttf"
    path.write_bytes(font)
    assert cmap_codepoints(str(path)) == [0x41, 0x42, 0x43, 0x61]

"""The one conversion between stored pixels (uint8, 0..255) and the networks' scale (float32, [-1, 1]).

x = p / 127.5 - 1 on the way in; p = round((x + 1) * 127.5), clipped to 0..255, on the way out (how a generated
image is saved, and what the Inception network and the video encoder are given). Any layout: the conversion
is elementwise.
"""

from __future__ import annotations

import numpy as np
import torch


def pixels_to_signed(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 as float32 in [-1, 1] (a new tensor)."""
    if pixels.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got {pixels.dtype}")
    return pixels.to(torch.float32).div_(127.5).sub_(1.0)


def signed_to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] as uint8 pixels 0..255, rounded to nearest, values outside clipped."""
    return images.float().add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)


def image_array_to_signed(pixels: np.ndarray) -> torch.Tensor:
    """An (H, W, 3) uint8 array (decoded, possibly read-only or flipped) as a (3, H, W) float32 tensor in [-1, 1].

    One copy does it all (the data loader's hot path): HWC uint8 to a contiguous, writable CHW float32 array.
    """
    if pixels.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {pixels.dtype}")
    return torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32)).div_(127.5).sub_(1.0)

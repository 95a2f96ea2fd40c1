"""Grayscale networks: a generator that draws one channel shown as three, at every stage, for energy and
inference models that take three channels (tests/train/test_grayscale_runs.py: training, resuming, exports)."""

from __future__ import annotations

import pytest
import torch
from conftest import is_gray

from progressive.presets import build_models


@pytest.mark.parametrize("preset", ["tiny", "cifar10-tiny"])
def test_a_grayscale_generator_draws_three_equal_channels_at_every_stage(preset):
    torch.manual_seed(0)
    gray, colour = build_models(preset, image_channels=1), build_models(preset)
    assert gray.image_channels == 1 and colour.image_channels == 3
    z = torch.randn(5, gray.latent_dim)
    # Every stable phase and mid-fade points, where the old and new to-RGB layers are blended.
    stages = [(4, 1.0), (8, 0.0), (8, 0.37), (8, 1.0), (16, 0.5), (32, 0.01), (32, 0.9), (32, 1.0)]
    for resolution, alpha in stages if preset == "tiny" else [(32, 1.0)]:
        for models in (gray, colour):
            models.set_stage(resolution, alpha)
        images = gray.generator(z)
        assert images.shape == (5, 3, resolution, resolution) and is_gray(images), (resolution, alpha)
        assert not is_gray(colour.generator(z))
        # The energy and inference models take the (B, 3, R, R) images as they are, and gradients reach g.
        (gray.energy(images).sum() + gray.inference(images)[0].sum()).backward()
    if preset == "tiny":
        to_rgb = {r: layer.weight.shape[:2] for r, layer in gray.generator.to_rgb.items()}
        assert to_rgb == {r: (1, c) for r, c in zip(("4", "8", "16", "32"), (4, 4, 4, 2), strict=True)}
        assert gray.energy.from_rgb["32"][0].weight.shape[1] == 3  # the downward networks keep three inputs
    assert all(p.grad is not None for p in gray.generator.parameters() if p.requires_grad)
    for bad in (2, 4, 0, True, 1.0):
        with pytest.raises(ValueError, match="image_channels must be 1"):
            build_models(preset, image_channels=bad)

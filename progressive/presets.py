"""Named presets, one table: each preset's networks, growth schedule and training defaults (`PRESETS`).

`build_models(name, image_channels=3)` builds a preset's three networks (1: a grayscale generator; the progressive
presets' widths can be overridden: `ProgressiveNetworks`);
`train.schedule.ScheduleConfig.for_preset` and `train.config.preset_config` read its schedule and training defaults
from the same entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from progressive.models import TriangleModels
from progressive.nets.layers import check_image_channels, resolutions
from progressive.nets.networks import ProgressiveEnergy, ProgressiveGenerator, ProgressiveInference
from progressive.nets.reference import ReferenceEnergy, ReferenceGenerator, ReferenceInference


def _cifar10(image_channels: int) -> TriangleModels:
    latent_dim = 100
    return TriangleModels(
        generator=ReferenceGenerator(
            latent_dim=latent_dim, channels=(512, 512, 256, 128), image_channels=image_channels
        ),
        energy=ReferenceEnergy(channels=(64, 128, 256, 256)),
        inference=ReferenceInference(latent_dim=latent_dim, channels=(64, 128, 256, 512)),
        latent_dim=latent_dim,
        resolution=32,
        image_channels=image_channels,
    )


def _cifar10_tiny(image_channels: int) -> TriangleModels:
    """The cifar10 architecture with 1/8 of the channels: for tests and quick CPU checks."""
    latent_dim = 16
    return TriangleModels(
        generator=ReferenceGenerator(latent_dim=latent_dim, channels=(64, 64, 32, 16), image_channels=image_channels),
        energy=ReferenceEnergy(channels=(8, 16, 32, 32)),
        inference=ReferenceInference(latent_dim=latent_dim, channels=(8, 16, 32, 64)),
        latent_dim=latent_dim,
        resolution=32,
        image_channels=image_channels,
    )


def _reference64(width: int, batch_norm: bool, image_channels: int) -> TriangleModels:
    """Section 4.1's 64x64 networks: the cifar10 networks with one more block at 64x64, `width` times the channels,
    batch norm in the energy and inference models too when `batch_norm` (the generator always has it)."""
    latent_dim = 100

    def wide(*channels: int) -> tuple[int, ...]:
        return tuple(width * c for c in channels)

    return TriangleModels(
        generator=ReferenceGenerator(
            latent_dim=latent_dim, channels=wide(512, 512, 256, 128, 64), image_channels=image_channels
        ),
        energy=ReferenceEnergy(channels=wide(32, 64, 128, 256, 256), batch_norm=batch_norm),
        inference=ReferenceInference(
            latent_dim=latent_dim, channels=wide(32, 64, 128, 256, 512), batch_norm=batch_norm
        ),
        latent_dim=latent_dim,
        resolution=64,
        image_channels=image_channels,
    )


def _celeba64(image_channels: int) -> TriangleModels:
    """CelebA 64x64: batch norm in the generator only, as the cifar10 networks."""
    return _reference64(width=1, batch_norm=False, image_channels=image_channels)


def _lsun64(image_channels: int) -> TriangleModels:
    """LSUN 64x64: "twice the number of channels and batch normalization is used in all three models"."""
    return _reference64(width=2, batch_norm=True, image_channels=image_channels)


def _progressive(
    latent_dim: int,  # dimension of z
    max_resolution: int,  # last resolution of the growth
    channel_base: int,  # channels at resolution r: clamp(channel_base // r, channel_min, channel_max)
    channel_max: int,  # upper clamp of the channel rule
    channel_min: int = 1,  # lower clamp of the channel rule
    equalized: bool = False,  # equalised learning rate; off: the reference's Adam rates assume plain weights
    image_channels: int = 3,  # 1: the generator's to-RGB layers draw one channel (gray samples); E and I take 3
) -> TriangleModels:
    """The three progressive networks with one channel rule and the default normalisations (docs/architecture.md)."""
    rule = {
        "channel_base": channel_base,
        "channel_max": channel_max,
        "channel_min": channel_min,
        "equalized": equalized,
    }
    span = {"min_resolution": 4, "max_resolution": max_resolution}
    return TriangleModels(
        generator=ProgressiveGenerator(latent_dim=latent_dim, image_channels=image_channels, **span, **rule),
        energy=ProgressiveEnergy(**span, **rule),
        inference=ProgressiveInference(latent_dim=latent_dim, **span, **rule),
        latent_dim=latent_dim,
        resolution=max_resolution,
        min_resolution=4,
        image_channels=image_channels,
    )


@dataclass(frozen=True)
class ProgressiveNetworks:
    """A progressive preset's three networks: one channel rule, clamp(channel_base // r, 1, channel_max) channels at
    resolution r, and z of `latent_dim` dimensions. `channel_base`, `channel_max` and `latent_dim` can be overridden
    per run (--channel-base, --channel-max, as stylegan2-ada's --cbase and --cmax; --latent-dim): the same
    architecture, wider or narrower, with a larger or smaller latent space."""

    latent_dim: int  # dimension of z
    max_resolution: int  # last resolution of the growth
    channel_base: int  # channels at resolution r: channel_base // r, clamped
    channel_max: int  # upper clamp of the channel rule

    def __call__(
        self,
        image_channels: int,
        channel_base: int | None = None,
        channel_max: int | None = None,
        latent_dim: int | None = None,
    ) -> TriangleModels:
        return _progressive(
            latent_dim=self.latent_dim if latent_dim is None else latent_dim,
            max_resolution=self.max_resolution,
            channel_base=self.channel_base if channel_base is None else channel_base,
            channel_max=self.channel_max if channel_max is None else channel_max,
            image_channels=image_channels,
        )


# celebahq: 4 -> 1024 with the progressive-GAN channels, 512 up to 32x32, halving after (16 at 1024).
_celebahq = ProgressiveNetworks(latent_dim=512, max_resolution=1024, channel_base=16384, channel_max=512)
# lsun: 4 -> 256 with the same channel rule as celebahq.
_lsun = ProgressiveNetworks(latent_dim=512, max_resolution=256, channel_base=16384, channel_max=512)
# demo: 4 -> 32 with 64 channels up to 8x8, 32 at 16x16, 16 at 32x32: the CPU demo.
_demo = ProgressiveNetworks(latent_dim=64, max_resolution=32, channel_base=512, channel_max=64)
# tiny: 4 -> 32 with 4 channels (2 at 32x32): fast tests.
_tiny = ProgressiveNetworks(latent_dim=8, max_resolution=32, channel_base=64, channel_max=4)
# tiny1024: 4 -> 1024 with 4 channels up to 16x16, 2 at 32x32, 1 from 64x64: shape tests at every resolution.
_tiny1024 = ProgressiveNetworks(latent_dim=8, max_resolution=1024, channel_base=64, channel_max=4)


# A tenth of the optimiser's rates at every resolution of the 512-channel presets: Adam moves each plain weight by
# about the learning rate, so a layer's output changes in proportion to rate x fan-in, and these networks are 8x
# wider than the demo's, for which the reference rates were tuned. With the full rates even the VAE part alone
# un-learns at 8x8 (docs/objective.md, "Where the default departs").
PROGRESSIVE_512_LR_MULTIPLIER = 0.1


# Per-image activation memory in float32 over bf16/fp16 autocast: the bytes autograd saves for the backward
# passes in one celebahq iteration, measured on the CPU at 64x64 and 128x128, were 2.1x and 1.8x (the larger kept).
FLOAT32_FACTOR = 2.1


@dataclass(frozen=True)
class PeakMemory:
    """Peak device memory of one training iteration of a preset's networks, in GiB, under bf16/fp16 autocast."""

    static_gib: float  # parameters, gradients, both Adam moments and the generator average, all resolutions active
    per_image_gib: dict[int, float]  # each image on a process, by resolution

    def peak_gib(self, resolution: int, images: int, mixed_precision: str) -> float:
        """Predicted peak with `images` per process at `resolution` (mixed precision "no", "fp16" or "bf16")."""
        per_image = self.per_image_gib[resolution] * (FLOAT32_FACTOR if mixed_precision == "no" else 1.0)
        return self.static_gib + images * per_image


# The 512-channel progressive networks (celebahq, lsun), from one H100 80GB in bf16 (docs/benchmarks.md, "GPU"):
# peak 9.6 GiB at 1024x1024 with batch 3 and 45.3 GiB with batch 16 give the static part (1.4) and 2.75 GiB per
# image; every other resolution's per-image memory is its measured peak less that static part, over its batch,
# rounded up. Below 64x64 only 4 and 32 were measured; 32x32's figure serves for all (memory never limits there).
_PROGRESSIVE_512_MEMORY = PeakMemory(
    static_gib=1.4,
    per_image_gib={4: 0.035, 8: 0.035, 16: 0.035, 32: 0.035, 64: 0.13, 128: 0.30, 256: 0.64, 512: 1.32, 1024: 2.75},
)


@dataclass(frozen=True)
class Preset:
    """Everything a preset decides: its networks, its growth schedule and its training defaults."""

    models: Callable[..., TriangleModels]  # (image_channels[, widths]) -> the networks (weights: global torch seed)
    schedule: dict[str, Any]  # ScheduleConfig values: resolutions, phase lengths, batch sizes, rate multipliers
    training: dict[str, Any] = field(default_factory=dict)  # TrainConfig values on top of its defaults
    memory: PeakMemory | None = None  # peak memory per resolution and image, for --batch auto (train/batches.py)


def _growing_512(last: int) -> dict[str, Any]:
    """Batch 16 at every resolution (--batch auto lowers it where a GPU's memory is short; --batch legacy gives
    progressive GANs' 16 GB table), a tenth of the optimiser's rates."""
    return {
        "min_resolution": 4,
        "max_resolution": last,
        "batch_size": 16,
        "batch_sizes": {},
        "lr_multipliers": {r: PROGRESSIVE_512_LR_MULTIPLIER for r in resolutions(4, last)},
    }


def _fixed(resolution: int) -> dict[str, Any]:
    """The schedule of the paper's fixed-resolution networks: one stable phase at batch 64."""
    return {"min_resolution": resolution, "max_resolution": resolution, "batch_size": 64}


_HIGH_RESOLUTION = {"hflip": True, "tick_kimg": 4.0, "snapshot_kimg": 40.0, "checkpoint_kimg": 200.0}
_FIXED_RESOLUTION = {"kimg": 25_000.0, "tick_kimg": 10.0, "snapshot_kimg": 100.0}

PRESETS: dict[str, Preset] = {
    "cifar10": Preset(
        _cifar10,
        schedule=_fixed(32),
        training={"resolution": 32, **_FIXED_RESOLUTION},
    ),
    "cifar10-tiny": Preset(
        _cifar10_tiny,
        schedule=_fixed(32),
    ),
    "celeba64": Preset(
        _celeba64,
        schedule=_fixed(64),
        training={"resolution": 64, **_FIXED_RESOLUTION},
    ),
    "lsun64": Preset(
        _lsun64,
        schedule=_fixed(64),
        training={"resolution": 64, **_FIXED_RESOLUTION},
    ),
    "celebahq": Preset(
        _celebahq,
        schedule=_growing_512(1024),
        training={"resolution": 1024, **_HIGH_RESOLUTION},
        memory=_PROGRESSIVE_512_MEMORY,
    ),
    "lsun": Preset(
        _lsun,
        schedule=_growing_512(256),
        training={"resolution": 256, **_HIGH_RESOLUTION},
        memory=_PROGRESSIVE_512_MEMORY,
    ),
    "demo": Preset(
        _demo,  # about five minutes on two CPU cores (docs/architecture.md)
        schedule={"min_resolution": 4, "max_resolution": 32, "fade_images": 2_000, "stable_images": 2_000},
        training={"resolution": 32, "tick_kimg": 0.5, "snapshot_kimg": 2.0, "checkpoint_kimg": 4.0, "grid_images": 32},
    ),
    "tiny": Preset(
        _tiny,
        schedule={"min_resolution": 4, "max_resolution": 32, "fade_images": 64, "stable_images": 64, "batch_size": 4},
        training={"resolution": 32, "tick_kimg": 0.064, "snapshot_kimg": 0.128, "checkpoint_kimg": 0.128, "workers": 0},
    ),
    "tiny1024": Preset(
        _tiny1024,
        schedule={"min_resolution": 4, "max_resolution": 1024, "fade_images": 32, "stable_images": 32, "batch_size": 2},
    ),
}


def preset(name: str) -> Preset:
    """The preset called `name`; ValueError naming the known ones otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def network_overrides(
    name: str, channel_base: int | None, channel_max: int | None, latent_dim: int | None = None
) -> dict[str, int]:
    """The overrides given (None: the preset's) as build_models keywords; ValueError for a value that is not a
    positive integer, or for an override given to a preset with fixed networks (the paper's fixed-resolution ones)."""
    given = {"channel_base": channel_base, "channel_max": channel_max, "latent_dim": latent_dim}
    overrides = {key: value for key, value in given.items() if value is not None}
    for key, value in overrides.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be a positive integer, got {value!r}")
    if overrides and not isinstance(preset(name).models, ProgressiveNetworks):
        progressive = sorted(key for key, entry in PRESETS.items() if isinstance(entry.models, ProgressiveNetworks))
        flags = ", ".join(f"--{key.replace('_', '-')}" for key in overrides)
        raise ValueError(
            f"{flags}: progressive presets only ({', '.join(progressive)}); "
            f"preset {name} has the paper's fixed networks"
        )
    return overrides


def build_models(
    name: str,  # preset (PRESETS)
    image_channels: int = 3,  # 1: a generator whose samples are gray by construction (docs/architecture.md)
    channel_base: int | None = None,  # progressive presets only: the channel rule's base instead of the preset's
    channel_max: int | None = None,  # progressive presets only: the channel rule's clamp instead of the preset's
    latent_dim: int | None = None,  # progressive presets only: the dimension of z instead of the preset's
) -> TriangleModels:
    """Build the generator, energy model and inference model of preset `name` (ValueError: network_overrides). The
    energy and inference models are the same whatever `image_channels`."""
    check_image_channels(image_channels)
    overrides = network_overrides(name, channel_base, channel_max, latent_dim)
    return preset(name).models(image_channels, **overrides)


def default_preset(resolution: int | None) -> str:
    """The preset used when none is named: by the final resolution."""
    if resolution is None or resolution <= 32:
        return "demo"
    return "lsun" if resolution <= 256 else "celebahq"

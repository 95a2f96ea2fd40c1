"""Growth schedule: the training stage as a pure function of the number of real images shown.

The first resolution has a stable phase only; every later resolution r first fades in (alpha rising
linearly from 0 to 1 over fade_images[r] real images) and then trains stably for stable_images[r].
The last resolution's stable phase never ends. Because `stage_at` depends on nothing but the
configuration and `images_shown`, a resumed run needs only that counter to continue where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from progressive.nets.layers import blend_reals, check_resolution_range, is_power_of_two, resolutions
from progressive.presets import PRESETS
from progressive.train.optim import REFERENCE_OPTIMIZER, OptimizerConfig

PHASES = ("stable", "fade")


# Progressive GANs' CelebA-HQ table for 16 GB GPUs: 16 up to 128x128, then smaller batches to fit in memory. The
# default of a bare ScheduleConfig, and `--batch legacy`; the 512-channel presets now start from 16 everywhere.
LEGACY_BATCH_SIZES = {256: 14, 512: 6, 1024: 3}


def _default_batch_sizes() -> dict[int, int]:
    return dict(LEGACY_BATCH_SIZES)


@dataclass
class ScheduleConfig:
    """Per-resolution phase lengths (in real images), batch sizes and learning-rate multipliers."""

    min_resolution: int = 4  # first resolution: a stable phase only
    max_resolution: int = 1024  # last resolution: its stable phase lasts until training ends
    fade_images: int | dict[int, int] = 600_000  # images while r fades in; a dict gives each r > min_resolution
    stable_images: int | dict[int, int] = 600_000  # images at r with alpha = 1; a dict gives each r (see total_images)
    batch_size: int = 16  # batch size at resolutions not in batch_sizes
    batch_sizes: dict[int, int] = field(default_factory=_default_batch_sizes)  # per-resolution batch sizes
    lr_multipliers: dict[int, float] = field(default_factory=dict)  # per-resolution factor on all three rates

    def __post_init__(self) -> None:
        check_resolution_range(self.min_resolution, self.max_resolution)
        growing = resolutions(self.min_resolution, self.max_resolution)
        self._check_images("fade_images", self.fade_images, growing[1:])
        self._check_images("stable_images", self.stable_images, growing)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        for name, table in (("batch_sizes", self.batch_sizes), ("lr_multipliers", self.lr_multipliers)):
            # Keys outside the range are allowed so that one table can serve several presets.
            bad = [r for r in table if not is_power_of_two(r)]
            if bad:
                raise ValueError(f"{name} keys must be powers of two, got {bad}")
        bad_batches = {r: b for r, b in self.batch_sizes.items() if not isinstance(b, int) or b < 1}
        if bad_batches:
            raise ValueError(f"batch_sizes values must be positive ints, got {bad_batches}")
        bad_multipliers = {r: m for r, m in self.lr_multipliers.items() if not m >= 0}
        if bad_multipliers:
            raise ValueError(f"lr_multipliers values must be non-negative, got {bad_multipliers}")

    @staticmethod
    def _check_images(name: str, images: int | dict[int, int], needed: list[int]) -> None:
        if isinstance(images, dict):
            missing = [r for r in needed if r not in images]
            extra = [r for r in images if r not in needed]
            if missing or extra:
                raise ValueError(f"{name} must give exactly the resolutions {needed}; missing {missing}, extra {extra}")
            values = list(images.values())
        else:
            values = [images]
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
            raise ValueError(f"{name} must be non-negative ints, got {images!r}")

    def fade_images_at(self, resolution: int) -> int:
        """Real images over which `resolution` fades in (0 for the first resolution)."""
        if resolution == self.min_resolution:
            return 0
        return self.fade_images[resolution] if isinstance(self.fade_images, dict) else self.fade_images

    def stable_images_at(self, resolution: int) -> int:
        """Real images of the stable phase at `resolution` (for the last one: the suggested length only)."""
        return self.stable_images[resolution] if isinstance(self.stable_images, dict) else self.stable_images

    def batch_size_at(self, resolution: int) -> int:
        return self.batch_sizes.get(resolution, self.batch_size)

    def lr_multiplier_at(self, resolution: int) -> float:
        return float(self.lr_multipliers.get(resolution, 1.0))

    @property
    def total_images(self) -> int:
        """All phases back to back, counting the last stable phase as stable_images: a default training length."""
        growing = resolutions(self.min_resolution, self.max_resolution)
        return sum(self.fade_images_at(r) + self.stable_images_at(r) for r in growing)

    @classmethod
    def for_preset(cls, name: str) -> ScheduleConfig:
        """The default schedule of preset `name` (its entry in progressive/presets.py)."""
        if name not in PRESETS:
            raise ValueError(f"no default schedule for preset {name!r}; expected one of: {', '.join(sorted(PRESETS))}")
        return cls(**PRESETS[name].schedule)


def per_resolution(text: str) -> dict[int, int | float]:
    """A per-resolution schedule value as typed on the command line: '8:1000,16:2000' -> {8: 1000, 16: 2000}."""
    table: dict[int, int | float] = {}
    for item in text.split(","):
        key, _, value = item.partition(":")
        table[int(key)] = float(value) if "." in value else int(value)
    return table


def images_or_per_resolution(text: str) -> int | dict[int, int | float]:
    """'2000' (every resolution) or '8:1000,16:2000' (per resolution)."""
    return per_resolution(text) if ":" in text else int(text)


def learning_rates(config: OptimizerConfig, images_shown: int) -> dict[str, float]:
    """Per-network learning rates after `images_shown` real images.

    base * lr_decay ** (images_shown // lr_decay_images) * rampdown_factor: a pure function of the images shown.
    """
    factor = config.lr_decay ** (images_shown // config.lr_decay_images) * rampdown_factor(config, images_shown)
    return {
        "energy": config.lr_energy * factor,
        "inference": config.lr_inference * factor,
        "generator": config.lr_generator * factor,
    }


def rampdown_factor(config: OptimizerConfig, images_shown: int) -> float:
    """1 before the ramp-down, a half cosine from 1 to lr_rampdown_floor during it, the floor after it.

    Placed by images shown (start and length in kimg), not by the run's length, so that a run extended past its
    end keeps the rates it ended with and a resumed run follows the same course as an uninterrupted one.
    """
    if config.lr_rampdown_kimg <= 0:
        return 1.0
    done = (images_shown - config.lr_rampdown_start_kimg * 1000) / (config.lr_rampdown_kimg * 1000)
    done = min(max(done, 0.0), 1.0)
    floor = config.lr_rampdown_floor
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done))


@dataclass(frozen=True)
class Stage:
    """What to train at a given number of images shown."""

    resolution: int  # active resolution r: real batches, generator output and E/I inputs are r x r
    alpha: float  # fade-in weight of resolution r's new layers; 1.0 in a stable phase
    batch_size: int  # real images per iteration at this resolution
    phase: str  # "fade" or "stable"
    phase_start_images: int  # images shown when this phase began
    phase_end_images: int | None  # images shown when it ends; None for the last resolution's stable phase
    learning_rates: dict[str, float]  # keys "energy", "inference", "generator"


def _phases(schedule: ScheduleConfig) -> list[tuple[int, str, int, int | None]]:
    """(resolution, phase, start, end) of every non-empty phase, in order; the last one has end None."""
    phases = []
    start = 0
    growing = resolutions(schedule.min_resolution, schedule.max_resolution)
    for r in growing:
        for phase, length in (("fade", schedule.fade_images_at(r)), ("stable", schedule.stable_images_at(r))):
            if r == schedule.max_resolution and phase == "stable":
                phases.append((r, phase, start, None))
            elif length > 0:
                phases.append((r, phase, start, start + length))
                start += length
    return phases


def _stage(
    schedule: ScheduleConfig,
    phase: tuple[int, str, int, int | None],
    images_shown: int,
    optimizer: OptimizerConfig,
) -> Stage:
    resolution, name, start, end = phase
    alpha = (images_shown - start) / (end - start) if name == "fade" else 1.0
    multiplier = schedule.lr_multiplier_at(resolution)
    rates = learning_rates(optimizer, images_shown)
    return Stage(
        resolution=resolution,
        alpha=alpha,
        batch_size=schedule.batch_size_at(resolution),
        phase=name,
        phase_start_images=start,
        phase_end_images=end,
        learning_rates={net: rate * multiplier for net, rate in rates.items()},
    )


def stage_at(
    schedule: ScheduleConfig,  # the growth: phases, batch sizes, per-resolution rate multipliers
    images_shown: int,  # real images shown so far
    optimizer: OptimizerConfig = REFERENCE_OPTIMIZER,  # the run's base learning rates and their decay
) -> Stage:
    """The stage after `images_shown` real images: resolution, alpha, batch size, phase, learning rates.

    Learning rates are learning_rates(optimizer, images_shown) times the resolution's multiplier.
    """
    if isinstance(images_shown, bool) or not isinstance(images_shown, int) or images_shown < 0:
        raise ValueError(f"images_shown must be a non-negative int, got {images_shown!r}")
    for phase in _phases(schedule):
        end = phase[3]
        if end is None or images_shown < end:
            return _stage(schedule, phase, images_shown, optimizer)
    raise AssertionError("the last phase has no end, so every count falls in a phase")


def schedule_table(schedule: ScheduleConfig, optimizer: OptimizerConfig = REFERENCE_OPTIMIZER) -> list[Stage]:
    """One Stage per non-empty phase, as it is when the phase begins (for printing a dry run)."""
    return [_stage(schedule, phase, phase[2], optimizer) for phase in _phases(schedule)]


__all__ = ["LEGACY_BATCH_SIZES", "PHASES", "ScheduleConfig", "Stage", "blend_reals", "schedule_table", "stage_at"]

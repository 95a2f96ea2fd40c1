"""The resolved training configuration: preset defaults, then a JSON file, then command-line values.

`TrainConfig` is written as JSON into every run directory and stored in every checkpoint; resuming
compares it with the checkpoint's and names every value that differs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from progressive import presets
from progressive.nets.layers import check_image_channels, is_power_of_two
from progressive.objective import DEFAULT_RECIPE, TriangleConfig, recipe_config
from progressive.train.compile import COMPILE_MODES
from progressive.train.optim import OPTIMIZER_KEYS, OptimizerConfig
from progressive.train.schedule import ScheduleConfig

# Values that may change between a checkpoint and its resumption without changing the training itself.
RESUMABLE_CHANGES = frozenset(
    {
        "kimg",
        "out",
        "data",  # the dataset is compared by its content fingerprint, whatever path it is found under
        "workers",
        "tick_kimg",
        "progress_seconds",
        "snapshot_kimg",
        "checkpoint_kimg",
        "keep_checkpoints",
        "max_nonfinite",
        "collective_timeout_min",
        "metrics",
        "metric_kimg",
        "metric_images",
        "inception",
        "report_to",
        "tracker_project",
        "compile",  # the same computation, compiled or not
        "ema_kimg",  # the moving average is a read-out of the generator: it feeds nothing back into training
        "ema_rampup",
    }
)


@dataclass
class TrainConfig:
    """Everything a training run depends on (one keyword per line, as written to config.json)."""

    preset: str = "demo"  # model preset (progressive/presets.py)
    channel_base: int | None = None  # progressive presets: channel_base // r channels at resolution r; None: preset's
    channel_max: int | None = None  # progressive presets: at most this many channels at any resolution; None: preset's
    latent_dim: int | None = None  # progressive presets: dimension of z; None: the preset's (demo 64, celebahq 512)
    resolution: int = 32  # final resolution (--res); growth stops here
    data: str | None = None  # dataset LMDB; None trains on the built-in synthetic shapes
    synthetic_images: int = 4096  # size of the synthetic dataset used without --data
    image_channels: int = 3  # 1 grayscale, 3 colour: the data's (LMDB metadata `channels`), set by triangle-train
    out: str = "runs"  # root of the auto-numbered run directories
    kimg: float | None = None  # training length in thousands of real images; None: the schedule's total
    seed: int = 0  # global seed: weights, latents, data order and fixed snapshot latents derive from it
    workers: int = 2  # DataLoader worker processes per training process
    hflip: bool = False  # mirror augmentation (left-right flips of real images, decided per image from the seed)
    channels_last: bool = False  # NHWC memory format for the networks and images: same maths, faster convs on GPUs
    compile: str = "no"  # torch.compile the networks: no, default, reduce-overhead (CUDA graphs), max-autotune
    ema_kimg: float = 10.0  # half-life of the generator's exponential moving average, in kimg
    ema_rampup: float | None = 0.05  # early on, the half-life is at most this fraction of the images shown
    report_to: str = (
        "tensorboard"  # trackers (Accelerate): tensorboard, wandb, aim, mlflow, ..., a comma list, all, none
    )
    tracker_project: str = "divergence-triangle"  # the trackers' project; each run is named after its run directory
    tick_kimg: float = 4.0  # status line and tracker scalars every this many kimg
    progress_seconds: float = 60.0  # between ticks, a short progress line at most this often; 0 turns it off
    snapshot_kimg: float = 40.0  # sample and reconstruction grids every this many kimg
    checkpoint_kimg: float = 200.0  # checkpoint every this many kimg (and always at the end)
    keep_checkpoints: int = 3  # older checkpoints are deleted
    grid_images: int = 32  # images in the fixed-latent sample grid and the reconstruction grid
    max_nonfinite: int = 20  # stop after this many consecutive iterations with a non-finite gradient
    collective_timeout_min: float = 30.0  # how long ranks wait for each other (while the main process saves)
    metrics: list[str] = field(default_factory=list)  # evaluated during training: recon, swd, energy, fid, is
    metric_kimg: float = 0.0  # evaluate `metrics` every this many kimg (and at the end); 0 turns it off
    metric_images: int = 256  # held-out (or training) images, and as many samples, per evaluation
    inception: str | None = None  # TorchScript Inception weights for fid/is (docs/evaluation.md)
    debug_nan_iterations: list[int] = field(default_factory=list)  # testing aid: replace these batches by NaN
    recipe: str = DEFAULT_RECIPE  # named configuration the `objective` values started from (objective.RECIPES)
    objective: TriangleConfig = field(default_factory=lambda: recipe_config(DEFAULT_RECIPE))  # weights, forms
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)  # Adam, learning rates, clipping
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # growth: phases, batch sizes

    def __post_init__(self) -> None:
        """ValueError naming the option for a value no run can use (a NaN or zero length, negative counts)."""
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        check_image_channels(self.image_channels)
        self.network_overrides()
        positive = ["tick_kimg", "snapshot_kimg", "checkpoint_kimg", "ema_kimg", "keep_checkpoints", "max_nonfinite"]
        positive += ["grid_images", "metric_images", "collective_timeout_min"] + ([] if self.kimg is None else ["kimg"])
        for name in [*positive, "workers", "metric_kimg", "synthetic_images", "progress_seconds"]:
            value, zero_allowed = getattr(self, name), name not in positive
            number = not isinstance(value, bool) and isinstance(value, int | float) and value < math.inf
            if not (number and (value >= 0 if zero_allowed else value > 0)):
                bound = ">= 0" if zero_allowed else "> 0"
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number {bound}, got {value!r}")
        from progressive.eval.metrics import METRIC_NAMES, NEEDS_CLASSIFIER

        unknown = [m for m in self.metrics if m not in METRIC_NAMES]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; expected some of {', '.join(METRIC_NAMES)}")
        judged = [m for m in self.metrics if m in NEEDS_CLASSIFIER]
        if judged:  # the trainer loads no classifier: these run after training, with triangle-evaluate
            raise ValueError(f"--metrics {','.join(judged)} needs the domain classifier; run it with triangle-evaluate")

    @property
    def total_images(self) -> int:
        """Real images to show in the whole run."""
        if self.kimg is None:
            return self.schedule.total_images
        return int(round(self.kimg * 1000))

    def network_overrides(self) -> dict[str, int]:
        """The run's --channel-base, --channel-max and --latent-dim that it sets (None: the preset's), as
        build_models keywords (ValueError: presets.network_overrides)."""
        return presets.network_overrides(self.preset, self.channel_base, self.channel_max, self.latent_dim)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def preset_config(preset: str, recipe: str = DEFAULT_RECIPE) -> TrainConfig:
    """TrainConfig with preset `preset`'s defaults (its entry in progressive/presets.py) and objective `recipe`."""
    values = dict(presets.preset(preset).training)
    return TrainConfig(
        preset=preset,
        schedule=ScheduleConfig.for_preset(preset),
        recipe=recipe,
        objective=recipe_config(recipe),
        **values,
    )


def _int_keys(table: dict) -> dict:
    return {int(k): v for k, v in table.items()}


def _from_plain(config_cls, values: dict) -> Any:
    """Build a config dataclass from JSON values (int keys restored for per-resolution tables)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} keys: {', '.join(unknown)}")
    values = dict(values)
    for key, value in values.items():
        if isinstance(value, dict) and key in ("fade_images", "stable_images", "batch_sizes", "lr_multipliers"):
            values[key] = _int_keys(value)
    return config_cls(**values)


SECTIONS = ("objective", "optimizer", "schedule")  # the nested objects of config.json


def with_optimizer_section(values: dict[str, Any]) -> dict[str, Any]:
    """A configuration written before the optimiser had its own section (its keys were under "objective") in
    today's layout; a newer one unchanged. Applied to config files and to the configuration of checkpoints."""
    objective = values.get("objective")
    if not isinstance(objective, dict) or not OPTIMIZER_KEYS & set(objective):
        return values
    optimizer = {key: value for key, value in objective.items() if key in OPTIMIZER_KEYS}
    if isinstance(values.get("optimizer"), dict):
        optimizer |= values["optimizer"]
    objective = {key: value for key, value in objective.items() if key not in OPTIMIZER_KEYS}
    return {**values, "objective": objective, "optimizer": optimizer}


def merge_config(base: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """`base` with the (possibly partial) values of a JSON configuration applied on top (either layout:
    with_optimizer_section)."""
    merged = base.to_dict()
    for key, value in with_optimizer_section(values).items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"{key} must be an object, got {type(value).__name__}")
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    objective = _from_plain(TriangleConfig, merged.pop("objective"))
    optimizer = _from_plain(OptimizerConfig, merged.pop("optimizer"))
    schedule = _from_plain(ScheduleConfig, merged.pop("schedule"))
    return _from_plain(TrainConfig, {**merged, "objective": objective, "optimizer": optimizer, "schedule": schedule})


def resolve_config(
    preset: str,  # model preset (progressive/presets.py)
    recipe: str | None,  # objective recipe; None: the one of `file_values`, else the default
    file_values: dict[str, Any],  # a JSON configuration (a run's config.json, complete or partial); {}: none
    values: dict[str, Any],  # on top (the command line's flags): keys of TrainConfig, SECTIONS as nested dicts
) -> TrainConfig:
    """The preset's defaults and the recipe's objective, then `file_values`, then `values`; ValueError naming the
    first problem. Per-resolution `schedule.lr_multipliers` entries change the preset's table rather than replace
    it; `resolution` also ends the schedule (its max_resolution)."""
    config = preset_config(preset, recipe or file_values.get("recipe", DEFAULT_RECIPE))
    if file_values:
        config = merge_config(config, file_values)
    schedule = dict(values.get("schedule", {}))
    if "lr_multipliers" in schedule:
        schedule["lr_multipliers"] = {**config.schedule.lr_multipliers, **schedule["lr_multipliers"]}
    resolution = values.get("resolution", config.resolution)
    if not is_power_of_two(resolution) or not 4 <= resolution <= 1024:
        raise ValueError(f"--res must be a power of two between 4 and 1024, got {resolution}")
    schedule["max_resolution"] = resolution
    return merge_config(config, {**values, "schedule": schedule})


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The JSON object in `path` (a resolved config.json or a partial one); ValueError if unreadable."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read configuration {path}: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"configuration {path} must hold a JSON object")
    return values


# Values added after checkpoints were first written, with the value that reproduces the older behaviour:
# a checkpoint without them resumes as if it had them.
ADDED_LATER: dict[str, dict[str, Any]] = {
    "": {
        "recipe": "reference",
        "channels_last": False,
        "compile": "no",
        "image_channels": 3,
        "channel_base": None,
        "channel_max": None,
        "latent_dim": None,
    },
    "objective": {
        "energy_penalty": 0.0,
        "logvar_bound": 0.0,
        "weight_recon_generator": None,
        "weight_latent_generator": None,
        "generator_steps": 1,
        "noise_negatives": 0.0,
        "noise_octaves": 0,
        "real_energy_variance": 0.0,
        "reconstruction_negatives": 0.0,
        "weight_prior_mmd": 0.0,
        "langevin_steps": 0,
        "langevin_step_size": 2.0,  # inert without Langevin steps: the default, so an old checkpoint compares equal
        "langevin_noise": 0.01,
    },
    "optimizer": {
        "lr_rampdown_start_kimg": 0.0,
        "lr_rampdown_kimg": 0.0,
        "lr_rampdown_floor": 0.1,  # inert without a ramp-down: the default, so an old checkpoint compares equal
    },
}


RAMPDOWN_KEYS = frozenset(ADDED_LATER["optimizer"])  # the learning-rate ramp-down's values


def rampdown_begun(optimizer: dict[str, Any], images_shown: int) -> bool:
    """Whether a run with these optimizer values took any of its first `images_shown` images' steps at ramped rates."""
    length, start = optimizer.get("lr_rampdown_kimg", 0.0), optimizer.get("lr_rampdown_start_kimg", 0.0)
    return length > 0 and start * 1000 < images_shown


def config_changes(
    saved: dict[str, Any], current: dict[str, Any], images_shown: int | None = None
) -> dict[str, tuple[Any, Any]]:
    """{key: (saved, current)} for every value that differs, ignoring RESUMABLE_CHANGES; nested keys as 'a.b'.

    Both sides are compared as JSON (so per-resolution tables compare equal whatever their key type);
    values missing from `saved` that ADDED_LATER knows take their older-behaviour value; a `saved` of the
    layout before the optimiser section is read in today's (with_optimizer_section). Given the `images_shown` of
    a checkpoint, the learning-rate ramp-down's values are ignored too where neither side's ramp-down has begun
    by then: every step taken so far had the same rates under both, so the resumed run is the one `current`
    would have trained from the start.
    """
    saved, current = json.loads(json.dumps(with_optimizer_section(saved))), json.loads(json.dumps(current))
    saved = {**ADDED_LATER[""], **saved}
    for section in ("objective", "optimizer"):
        if isinstance(saved.get(section), dict):
            saved[section] = {**ADDED_LATER[section], **saved[section]}
    changes: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE_CHANGES:
            continue
        a, b = saved.get(key, "<missing>"), current.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            for inner in sorted(set(a) | set(b)):
                if a.get(inner, "<missing>") != b.get(inner, "<missing>"):
                    changes[f"{key}.{inner}"] = (a.get(inner, "<missing>"), b.get(inner, "<missing>"))
        elif a != b:
            changes[key] = (a, b)
    if images_shown is not None and not any(
        rampdown_begun(values.get("optimizer", {}), images_shown) for values in (saved, current)
    ):
        changes = {key: change for key, change in changes.items() if key.partition(".")[2] not in RAMPDOWN_KEYS}
    return changes


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: saved -> current' for every value that differs (config_changes), for messages."""
    return [f"{key}: {a!r} -> {b!r}" for key, (a, b) in config_changes(saved, current).items()]

"""The training loop: the divergence triangle grown progressively, on any number of processes.

Everything that changes over a run is a function of `images_shown` and the configuration: the stage
(resolution, fade alpha, batch size, learning rates), the data order (progressive/data.py) and all
noise (latents, reparameterisation noise, flips), which is drawn from a generator seeded by
(seed, images_shown). A checkpoint therefore needs the counter plus the optimiser, scaler and
moving-average states, and a resumed run retraces an uninterrupted one exactly.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from PIL import Image
from torchvision.utils import make_grid, save_image

from progressive.data import STOP_SIGNALS, StreamBatchSampler, loader_batches, make_loader
from progressive.models import bare, update_ema
from progressive.nets.layers import batch_statistics_over_processes, global_batch_norms, running_statistics_frozen
from progressive.objective import STAT_NAMES, triangle_step
from progressive.train.checkpoint import (
    CheckpointContents,
    CheckpointError,
    ConfigurationMismatch,
    checkpoint_name,
    prune_checkpoints,
    save_atomically,
)
from progressive.train.compile import recompilation_budget
from progressive.train.config import TrainConfig, config_changes
from progressive.train.noise import IterationNoise, draw_noise
from progressive.train.optim import apply_learning_rates
from progressive.train.prepare import prepare_training
from progressive.train.report import Tick, crossed, progress_line, run_description, tick_report
from progressive.train.schedule import Stage, blend_reals, schedule_table, stage_at
from progressive.train.trackers import log_images

log = logging.getLogger("progressive.train")


FIRST_REPORT_ITERATIONS = 10  # iterations after a start or resume before the first status line


class NonFiniteError(RuntimeError):
    """Training kept producing non-finite gradients; the run stops without writing NaN weights."""


class Stopped(Exception):
    """A stop signal arrived; the run wrote a checkpoint at the iteration boundary and stopped."""

    def __init__(self, signal_number: int, images_shown: int):
        super().__init__(f"stopped by {signal.Signals(signal_number).name} at {images_shown / 1000:.3f} kimg")
        self.signal_number = signal_number
        self.images_shown = images_shown


# ----------------------------------------------------------------------------- moving average of the generator


def check_checkpoint_belongs(
    state: dict[str, Any], config: TrainConfig, dataset_fingerprint: str, source: Path
) -> None:
    """ConfigurationMismatch unless a loaded checkpoint was trained with `config` (RESUMABLE_CHANGES and a ramp-down
    not yet begun aside), CheckpointError unless on the dataset of `dataset_fingerprint`; KeyError for a damaged one."""
    saved = CheckpointContents.from_dict(state)
    changes = config_changes(json.loads(saved.config), config.to_dict(), saved.images_shown)
    if changes:
        raise ConfigurationMismatch(source, changes)
    if saved.dataset_fingerprint != dataset_fingerprint:
        raise CheckpointError(f"{source} was trained on dataset {saved.dataset_fingerprint}, not {dataset_fingerprint}")


def ema_beta(config: TrainConfig, batch: int, images_shown: int) -> float:
    """Per-iteration decay giving a half-life of `ema_kimg` thousand images.

    With `ema_rampup`, the half-life is at most that fraction of the images shown so far, so early
    snapshots are not an average dominated by the random initial weights.
    """
    half_life = config.ema_kimg * 1000.0
    if config.ema_rampup is not None:
        half_life = min(half_life, images_shown * config.ema_rampup)
    return 0.5 ** (batch / max(half_life, 1e-8))


# ----------------------------------------------------------------------------- the run


@dataclass
class RunState:
    """What a checkpoint restores besides the networks."""

    images_shown: int = 0
    iteration: int = 0
    consecutive_nonfinite: int = 0
    # Extremes of the tick statistics over the whole run (largest |E|, log-variance range, lowest diversity).
    health: dict[str, float] = field(default_factory=dict)


class Trainer:
    """Builds models, optimisers and data for `config` and trains them; see `run`."""

    def __init__(
        self,
        config: TrainConfig,  # the resolved configuration
        accelerator: Accelerator,  # devices, processes, mixed precision, trackers
        dataset,  # training images: LMDBImageDataset or SyntheticShapesDataset
        run_dir: Path | None,  # where snapshots and checkpoints go; None writes nothing
        holdout=None,  # held-out images for the reconstruction grid; None uses the training images
    ):
        self.config = config
        self.accelerator = accelerator
        self.dataset = dataset
        self.holdout = holdout if holdout is not None else dataset
        self.run_dir = run_dir
        self.device = accelerator.device
        self.rank = accelerator.process_index
        self.world = accelerator.num_processes

        prepared = prepare_training(
            config.preset,
            config.optimizer,
            accelerator,
            config.seed,
            channels_last=config.channels_last,
            compile_mode=config.compile,
            image_channels=config.image_channels,
            **config.network_overrides(),
        )
        self.models, self.optimizers = prepared.models, prepared.optimizers
        self.ema = prepared.models.generator_ema  # the generator's moving average
        self.update, self.memory_format = prepared.update, prepared.memory_format
        self.batch_norms = global_batch_norms(*self.models.networks().values())  # synchronised in each step
        # Frozen during snapshots (main process only) and evaluations (every process, its share of the batches).
        self.batch_norms_with_ema = self.batch_norms + global_batch_norms(self.ema)
        self.state = RunState()
        self.noise_generator = torch.Generator(device=self.device)
        self.inception = None  # loaded on first use by a fid/is evaluation
        self.stop_signal: int | None = None  # set by `stop_on_signals`
        grid_generator = torch.Generator().manual_seed(config.seed + 1)
        self.grid_latents = torch.randn(config.grid_images, self.models.latent_dim, generator=grid_generator).to(
            self.device
        )

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        return self._contents().to_dict()

    def _contents(self, rank_digests: list[list[float]] | None = None) -> CheckpointContents:
        return CheckpointContents(
            config=self.config.to_json(),
            dataset_fingerprint=self.dataset.fingerprint,
            images_shown=self.state.images_shown,
            iteration=self.state.iteration,
            networks={name: bare(net).state_dict() for name, net in self.models.networks().items()},
            generator_ema=self.ema.state_dict(),
            optimizers={name: opt.state_dict() for name, opt in self.optimizers.items()},
            scalers={name: scaler.state_dict() for name, scaler in self.update.scalers.items()},
            skipped=dict(self.update.skipped),
            consecutive_nonfinite=self.state.consecutive_nonfinite,
            health=dict(self.state.health),
            rank_digests=rank_digests,
        )

    def load_state_dict(self, state: dict[str, Any], source: Path) -> None:
        """Restore a checkpoint after checking it belongs to this configuration and dataset."""
        check_checkpoint_belongs(state, self.config, self.dataset.fingerprint, source)
        saved = CheckpointContents.from_dict(state)
        for name, net in self.models.networks().items():
            bare(net).load_state_dict(saved.networks[name])
        self.ema.load_state_dict(saved.generator_ema)
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(saved.optimizers[name])
        for name, scaler in self.update.scalers.items():
            if saved.scalers[name]:
                scaler.load_state_dict(saved.scalers[name])
        self.update.skipped = dict(saved.skipped)
        self.state = RunState(
            images_shown=saved.images_shown,
            iteration=saved.iteration,
            consecutive_nonfinite=saved.consecutive_nonfinite,
            health=dict(saved.health),
        )

    @torch.no_grad()
    def rank_digests(self) -> list[list[float]]:
        """Per rank, (sum, sum of squares) of each network's parameters and buffers (batch-norm running
        statistics): rows agree while ranks are in sync."""
        values = []
        for net in self.models.networks().values():
            flat = torch.cat([t.detach().double().flatten() for t in (*net.parameters(), *net.buffers())])
            values += [flat.sum(), flat.pow(2).sum()]
        gathered = self.accelerator.gather(torch.stack(values)[None])  # (world, 6)
        return gathered.cpu().tolist()

    def save_checkpoint(self) -> None:
        digests = self.rank_digests()  # a collective: every rank takes part
        if self.accelerator.is_main_process and self.run_dir is not None:
            directory = self.run_dir / "checkpoints"
            path = directory / checkpoint_name(self.state.images_shown)
            save_atomically(self._contents(rank_digests=digests).to_dict(), path)
            prune_checkpoints(directory, self.config.keep_checkpoints)
            log.info("checkpoint %s", path)
        self.accelerator.wait_for_everyone()

    # ---------------------------------------------------------------- data

    def _loader(self, stage: Stage):
        self.dataset.set_resolution(stage.resolution)
        sampler = StreamBatchSampler(
            dataset_size=len(self.dataset),
            global_batch=stage.batch_size,
            start=self.state.images_shown,
            seed=self.config.seed,
            rank=self.rank,
            world_size=self.world,
        )
        loader = make_loader(self.dataset, sampler, self.config.workers, pin_memory=self.device.type == "cuda")
        return loader_batches(loader)

    def _real_batch(self, batch: torch.Tensor, stage: Stage, noise: IterationNoise) -> torch.Tensor:
        x = batch.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        if self.config.hflip:
            x = torch.where(noise.flip[:, None, None, None], x.flip(-1), x)
        x = blend_reals(x, stage.alpha)
        if self.state.iteration in self.config.debug_nan_iterations:
            x = torch.full_like(x, float("nan"))
        return x

    # ---------------------------------------------------------------- the loop

    def run(self) -> None:
        """Train until `config.total_images` real images have been shown, then write a final checkpoint."""
        phases = len(schedule_table(self.config.schedule))
        with recompilation_budget(phases) if self.config.compile != "no" else nullcontext():
            self._run()

    def _run(self) -> None:
        config = self.config
        total = config.total_images
        stats_sum = torch.zeros(len(STAT_NAMES), device=self.device)
        stats_count = 0
        loader_key, batches = None, None
        tick = Tick(time.time(), self.state.images_shown)
        last_progress = tick.time
        saved_at = None  # images shown at the last checkpoint this call wrote
        # A first status line a few iterations in (speed and ETAs within seconds), not only at the first tick.
        first_report = self.state.iteration + FIRST_REPORT_ITERATIONS
        if self.state.images_shown == 0:
            first = stage_at(config.schedule, 0, config.optimizer)
            self._set_stage(first)
            self.write_snapshot(first, reals=True)

        while self.state.images_shown < total:
            signal_number = self._agreed_stop_signal()
            if signal_number:
                if saved_at != self.state.images_shown:  # not when the periodic save just wrote this state
                    self.save_checkpoint()
                raise Stopped(signal_number, self.state.images_shown)
            images_shown = self.state.images_shown
            stage = stage_at(config.schedule, images_shown, config.optimizer)
            check_range = False
            if loader_key != (stage.resolution, stage.batch_size):
                batches = self._loader(stage)
                loader_key = (stage.resolution, stage.batch_size)
                check_range = True  # one host-side range check per loader, not per step
                log.info(
                    "stage: %d x %d, batch %d, %s phase",
                    stage.resolution,
                    stage.resolution,
                    stage.batch_size,
                    stage.phase,
                )
            self._set_stage(stage)
            apply_learning_rates(self.optimizers, stage.learning_rates)
            noise = draw_noise(
                self.noise_generator,
                config.seed,
                images_shown,
                stage.batch_size,
                self.models.latent_dim,
                self.rank,
                self.world,
                noise_images=(self.config.image_channels, stage.resolution)
                if config.objective.noise_negatives
                else None,
                noise_octaves=config.objective.noise_octaves,
            )
            x = self._real_batch(next(batches), stage, noise)

            self.update.skipped_this_iteration = False
            with batch_statistics_over_processes(self.batch_norms):
                stats = triangle_step(
                    self.models,
                    self.optimizers,
                    x,
                    z=noise.z,
                    eps=noise.eps,
                    noise_images=noise.noise_images,
                    config=config.objective,
                    update=self.update,
                    check_range=check_range,
                )
            if self.update.skipped_this_iteration:
                self.state.consecutive_nonfinite += 1
                if self.state.consecutive_nonfinite >= config.max_nonfinite:
                    raise NonFiniteError(
                        f"{self.state.consecutive_nonfinite} consecutive iterations with non-finite gradients at "
                        f"{images_shown / 1000:.1f} kimg (skipped updates: {self.update.skipped}); stopping without "
                        "saving. Lower the learning rates or use bf16 instead of fp16, then --resume latest."
                    )
            else:
                self.state.consecutive_nonfinite = 0
                update_ema(self.ema, bare(self.models.generator), ema_beta(config, stage.batch_size, images_shown))
                stats_sum += stats
                stats_count += 1

            self.state.images_shown += stage.batch_size
            self.state.iteration += 1
            now = self.state.images_shown
            if crossed(images_shown, now, config.tick_kimg) or now >= total or self.state.iteration == first_report:
                tick_report(
                    self.accelerator,
                    stage,
                    tick,
                    stats_sum,
                    stats_count,
                    now,
                    total,
                    self.update.skipped,
                    self.state.health,
                    self.models.latent_dim,
                    config.objective,
                )
                stats_sum.zero_()
                stats_count = 0
                tick = Tick(time.time(), now)
                last_progress = tick.time
            elif config.progress_seconds and time.time() - last_progress >= config.progress_seconds:
                if self.accelerator.is_main_process:  # no collective: ranks need not agree on when
                    progress_line(stage, tick, now, total, config.tick_kimg)
                last_progress = time.time()
            if crossed(images_shown, now, config.snapshot_kimg) or now >= total:
                self.write_snapshot(stage_at(config.schedule, now, config.optimizer))
            if (
                config.metrics
                and config.metric_kimg > 0
                and (crossed(images_shown, now, config.metric_kimg) or now >= total)
            ):
                self.evaluate(stage_at(config.schedule, now, config.optimizer))
            if crossed(images_shown, now, config.checkpoint_kimg) and now < total:
                self.save_checkpoint()
                saved_at = now
        self.save_checkpoint()

    @contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """While inside, SIGTERM, SIGINT and SIGUSR1 make `run` checkpoint and raise `Stopped`.

        Only the first signal counts; repeats are ignored, because launchers relay the signal that
        the process group already received (torchrun sends its workers the SIGINT it caught, and
        SIGKILLs them 30 s later). To abort without a checkpoint, use SIGQUIT (Ctrl-\\) or SIGKILL;
        the atomic save keeps the previous checkpoint intact either way.
        """
        previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}

        def request_stop(number, frame):
            if self.stop_signal is None:
                self.stop_signal = number

        for number in STOP_SIGNALS:
            signal.signal(number, request_stop)
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _agreed_stop_signal(self) -> int:
        """The stop signal any rank has received, else 0: all ranks stop at the same iteration.

        Several processes agree through one 1-element all-reduce per iteration (a host sync, small
        next to the three per-network finiteness checks); a single process only reads its flag.
        """
        if self.world == 1:
            return self.stop_signal or 0
        flag = torch.tensor([self.stop_signal or 0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

    def _set_stage(self, stage: Stage) -> None:
        self.models.set_stage(stage.resolution, stage.alpha)  # the average too

    # ---------------------------------------------------------------- what the user sees

    def describe(self) -> list[str]:
        """Lines for the start of a run: parameters per network and resolution, and the generator average's decay."""
        config, now = self.config, self.state.images_shown
        batch = stage_at(config.schedule, now, config.optimizer).batch_size
        decay_now = ema_beta(config, batch, now)
        return run_description(self.models, config.ema_kimg, config.ema_rampup, batch, decay_now)

    @torch.no_grad()
    def write_snapshot(self, stage: Stage, reals: bool = False) -> None:
        """Samples of the averaged generator from the fixed latents, and reconstructions of fixed real images."""
        if not self.accelerator.is_main_process or self.run_dir is None:
            return
        resolution = stage.resolution
        self._set_stage(stage)
        # Networks stay in training mode as in the iteration (batch statistics for batch-norm presets), without
        # touching the running statistics: they are training state, and this runs on the main process only.
        with running_statistics_frozen(self.batch_norms_with_ema):
            samples = self.ema(self.grid_latents).float()
            real = self._fixed_reals(stage, self.config.grid_images)
            mu, _ = bare(self.models.inference)(real)
            reconstructions = bare(self.models.generator)(mu).float()
        pairs = torch.stack([real, reconstructions], dim=1).flatten(0, 1)
        directory = self.run_dir / "snapshots"
        directory.mkdir(exist_ok=True)
        name = f"{self.state.images_shown:09d}"
        grids = {"samples": _grid(samples, resolution), "reconstructions": _grid(pairs, resolution)}
        if reals:
            grids["reals"] = _grid(real, resolution)
        for kind, grid in grids.items():
            _save_grid(grid, directory / (f"{kind}.png" if kind == "reals" else f"{kind}-{name}.png"), self.config)
        log_images(self.accelerator.trackers, grids, step=self.state.images_shown)

    def _fixed_reals(self, stage: Stage, count: int) -> torch.Tensor:
        """The first `count` held-out images (training images without a held-out split) as the networks see them."""
        from progressive.eval.sources import stage_images

        self.holdout.set_resolution(stage.resolution)
        reals = stage_images(self.holdout, count, stage.alpha, self.config.image_channels)
        return torch.cat(list(reals.batches(len(reals), self.device)))

    @torch.no_grad()
    def evaluate(self, stage: Stage) -> None:
        """Run `config.metrics`, every process computing its share of the batches (eval/sampling.py, Shard), and
        log them from the main process (`metrics/...` in the trackers)."""
        from progressive.eval.metrics import evaluate_metric, with_protocol
        from progressive.eval.sampling import Shard

        if self.inception is None and {"fid", "kid", "is"} & set(self.config.metrics):
            from progressive.eval.inception import load_inception

            self.inception = load_inception(self.config.inception, self.device)
        self._set_stage(stage)
        real = self._fixed_reals(stage, self.config.metric_images)
        figures: dict[str, float] = {}
        shard = Shard.of(self.accelerator)
        with running_statistics_frozen(self.batch_norms_with_ema):  # as in write_snapshot
            for name in self.config.metrics:
                figures |= evaluate_metric(
                    name,
                    self.models,
                    self.ema,
                    real,
                    energy_form=self.config.objective.energy_form,
                    batch_size=max(1, stage.batch_size // self.world),  # what a training step holds, at least
                    seed=self.config.seed,
                    inception=self.inception,
                    shard=shard,
                )
        # Named with the count of held-out images (and as many samples) they saw: fid256, recon256/mse, ...
        scores = {with_protocol(key, len(real)): value for key, value in figures.items()}
        if not self.accelerator.is_main_process:
            return
        log.info(
            "metrics at kimg %.2f: %s",
            self.state.images_shown / 1000,
            "  ".join(f"{k} {v:.4g}" for k, v in scores.items()),
        )
        self.accelerator.log({f"metrics/{k}": v for k, v in scores.items()}, step=self.state.images_shown)


def _save_grid(grid: torch.Tensor, path: Path, config: TrainConfig) -> None:
    """A [0, 1] grid (3, H, W) as PNG; single-channel (mode L) for a grayscale run, whose grids have three equal
    channels (samples by construction, reals as stored, the padding), so the first one is written. Not checked here:
    a snapshot must not stop a run, and the export's PNG writer checks the same images (cli/common.save_png)."""
    assert grid.ndim == 3 and grid.shape[0] == 3, f"expected a grid (3, H, W), got {tuple(grid.shape)}"
    if config.image_channels == 3:
        save_image(grid, path)
        return
    # save_image would turn one channel back into three; PIL writes a 2-D uint8 array as mode L. Rounded as save_image.
    Image.fromarray(grid[0].mul(255).add(0.5).clamp(0, 255).to(torch.uint8).numpy()).save(path, format="PNG")


def _grid(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """A [0, 1] image grid; small resolutions are enlarged (nearest) to at least 64 pixels for legibility."""
    scale = max(1, 64 // resolution)
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    columns = max(1, int(math.sqrt(images.shape[0] * 2)) // 2 * 2)
    return make_grid(images.clamp(-1, 1).cpu(), nrow=columns, normalize=True, value_range=(-1, 1))

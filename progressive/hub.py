"""Trained models in the Hugging Face layout, loadable without the training checkpoint format.

    from progressive.hub import PretrainedTriangle
    model = PretrainedTriangle.from_run("runs")          # a checkpoint file, a run directory or a root of runs
    model.save_pretrained("exported")                    # config.json + model.safetensors (+ push_to_hub=True)
    model = PretrainedTriangle.from_pretrained("exported")   # or a Hub repository id
    images = model.sample(seeds=range(16))               # the averaged generator, as `triangle-export sample`

`config.json` holds what rebuilds the networks (the preset and its widths, the image channels, the stage reached, the
energy form) and `model.safetensors` the four networks' weights (generator, its moving average, energy, inference):
the preset code plus these two files are all a user needs. Through huggingface_hub's PyTorchModelHubMixin.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from progressive.eval.sampling import EXPORT_BATCH, energies, generate_from_seeds, reconstruct
from progressive.models import TriangleModels
from progressive.presets import build_models
from progressive.pretrained import TrainedRun, load_trained


class PretrainedTriangle(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="divergence-triangle",
    tags=["divergence-triangle", "energy-based-model", "vae", "progressive-growing", "image-generation"],
):
    """The generator, its moving average, the energy model and the inference model of a trained run, at its stage.

    In training mode, as trained and as `load_trained` returns them (batch-norm presets normalise with
    batch statistics); call `.eval()` for running statistics.
    """

    def __init__(
        self,
        preset: str,  # model preset (progressive/presets.py) the networks were built from
        resolution: int,  # stage resolution reached in training
        alpha: float = 1.0,  # fade-in weight of that resolution's new layers
        energy_form: str = "identity",  # E(x) from the energy network's output (TriangleConfig.energy_form)
        images_shown: int = 0,  # real images shown when the weights were taken (provenance)
        image_channels: int = 3,  # 1: a grayscale run's generator (gray samples); absent from older config.json: 3
        channel_base: int | None = None,  # the run's --channel-base (None, and absent from older exports: preset's)
        channel_max: int | None = None,  # the run's --channel-max (None, and absent from older exports: preset's)
        latent_dim: int | None = None,  # the run's --latent-dim (None, and absent from older exports: preset's)
    ):
        super().__init__()
        models = build_models(preset, image_channels, channel_base, channel_max, latent_dim)
        models.set_stage(resolution, alpha)
        self.generator, self.energy, self.inference = models.generator, models.energy, models.inference
        self.generator_ema = copy.deepcopy(models.generator).requires_grad_(False)
        self.latent_dim, self.image_channels = models.latent_dim, image_channels
        self.preset, self.resolution, self.alpha = preset, resolution, alpha
        self.energy_form, self.images_shown = energy_form, images_shown

    @classmethod
    def from_run(cls, path: str | Path) -> PretrainedTriangle:
        """The networks of a checkpoint (file, run directory or root of runs), on the CPU."""
        return cls.from_trained(load_trained(path))

    @classmethod
    def from_trained(cls, run: TrainedRun) -> PretrainedTriangle:
        """The networks of a loaded run (`progressive.pretrained.load_trained`), copied, on the CPU."""
        model = cls(
            preset=run.config.preset,
            resolution=run.stage.resolution,
            alpha=run.stage.alpha,
            energy_form=run.config.objective.energy_form,
            images_shown=run.images_shown,
            image_channels=run.config.image_channels,
            channel_base=run.config.channel_base,
            channel_max=run.config.channel_max,
            latent_dim=run.config.latent_dim,
        )
        for name, net in run.models.networks().items():
            getattr(model, name).load_state_dict(net.state_dict())
        model.generator_ema.load_state_dict(run.generator_ema.state_dict())
        return model

    @classmethod
    def _from_pretrained(cls, **kwargs) -> PretrainedTriangle:
        # Strict: a file missing a tensor is an error, not a network left at its random initialisation.
        model = super()._from_pretrained(**{**kwargs, "strict": True})
        return model.train()  # the mixin switches to eval mode; keep the mode the networks were trained in

    def models(self) -> TriangleModels:
        """The four networks as TriangleModels (what the metrics and exports take), sharing their modules."""
        return TriangleModels(
            generator=self.generator,
            energy=self.energy,
            inference=self.inference,
            latent_dim=self.latent_dim,
            resolution=self.resolution,
            min_resolution=self.resolution,
            image_channels=self.image_channels,
            generator_ema=self.generator_ema,
        )

    def set_stage(self, resolution: int, alpha: float) -> None:
        """Put the four networks at stage (resolution, alpha) together (TriangleModels.set_stage)."""
        self.models().set_stage(resolution, alpha)

    @torch.no_grad()
    def sample(
        self, seeds: Iterable[int], temperature: float = 1.0, ema: bool = True, batch_size: int = EXPORT_BATCH
    ) -> torch.Tensor:
        """One image per seed, (N, 3, R, R) in [-1, 1] (three identical channels if `image_channels` is 1): what
        `triangle-export sample --seeds` writes with the same --batch (batch-norm generators, in training mode,
        normalise over each batch)."""
        generator = self.generator_ema if ema else self.generator
        device = next(self.parameters()).device
        parts = generate_from_seeds(generator, list(seeds), self.latent_dim, batch_size, device, temperature)
        return torch.cat(list(parts))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu(x), log-variance) of q(z|x) for images (N, 3, R, R) in [-1, 1]."""
        return self.inference(images)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """g(mu(x)) with the trained generator (as the paper's reconstruction error)."""
        return reconstruct(self.inference, self.generator, images)

    def energy_of(self, images: torch.Tensor) -> torch.Tensor:
        """E(x) per image (N,), low for likely images, in the run's energy form."""
        return energies(self.energy, images, self.energy_form)

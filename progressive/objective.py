"""The divergence triangle objective and one joint training iteration.

D = KL(Q||P) + KL(P||Pi) - KL(Q||Pi), maximised over the energy model and minimised over
the generator and the inference model (Han et al., CVPR 2019, eq. 13). docs/objective.md maps
every term below to the paper.

One iteration on a real batch x (B images):
  1. z ~ N(0, I), x_fake = G(z) once.
  2. Energy step:     L_E = mean E(x) - mean E(stopgrad x_fake) + w_pen * mean over both of E^2;
                      options outside D: uniform noise u as more negatives, + w_u (mean E(x) - mean E(u))
                      (noise_negatives; 1 in the named recipes, 0 in `reference`; noise_octaves makes part
                      of u smooth, off in every recipe), x_fake refined by L Langevin steps on E
                      (langevin_steps; off in every recipe), and + w_var * variance of E over the real
                      images (real_energy_variance; off in every recipe), and reconstructions
                      G(z_hat) of the real images as more negatives, + w_r (mean E(x) - mean E(G(z_hat)))
                      (reconstruction_negatives; off in every recipe).
  3. Inference step:  L_I = w_rec * sum||G(z_hat) - x||^2 / B + w_kl * KL(q(z|x) || N(0, I))
                            + w_lat * NLL(z | I(stopgrad x_fake)),   z_hat = mu(x) + exp(s(x)/2) * eps1,
                      with the log-variance s softly bounded to (-c, c) when logvar_bound c > 0.
  4. Generator step:  L_G = w_rec,G * sum||G(z_hat2) - x||^2 / B + w_energy * mean E(x_fake)
                            + w_lat,G * NLL(z | I(x_fake)),   using the just-updated E and I, fresh eps2;
                      w_rec,G = w_rec and w_lat,G = w_lat as in D unless set apart (wake-sleep), and
                      `generator_steps` K > 1 repeats the update K times (Algorithm 1, step 9).
A term whose weight is 0 is not computed (no forward, no backward); its statistic is 0.

Each step back-propagates into its own network's parameters only (`backward(inputs=...)`), so no
gradient of one step can reach another network's update, and under DistributedDataParallel each
network's gradient hooks fire exactly once per iteration. Forwards whose gradients update another
network go through the unwrapped module (`.module`) so they never arm a second DDP reduction.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from progressive.models import bare
from progressive.nets.layers import as_rgb
from progressive.updates import TriangleOptimizers, Update, plain_update

ENERGY_FORMS = ("identity", "softplus", "tanh", "sigmoid")
KL_REDUCTIONS = ("mean", "sum")


@dataclass
class TriangleConfig:
    """Every weight, reduction and form of the objective (defaults: the reference). How the steps are taken
    (Adam, learning rates, clipping) is train/optim.py's OptimizerConfig."""

    energy_form: str = "identity"  # E(x) from the network output s: identity s, or softplus/tanh/sigmoid of -s
    kl_reduction: str = "mean"  # "mean": over batch and latent dims (reference); "sum": over dims, mean over batch
    weight_recon: float = 1.0  # w_rec: reconstruction sum||G(z_hat) - x||^2 / B in L_I (and in L_G, see below)
    weight_kl: float = 1.0  # w_kl: KL(q(z|x) || N(0, I)) in L_I
    weight_latent: float = 0.1  # w_lat: NLL of z under q(z|G(z)) in L_I (and in L_G, see below)
    weight_energy: float = 1.0  # weight of mean E(G(z)) in L_G; 0 turns the energy model off (VAE-like)
    weight_recon_generator: float | None = None  # reconstruction weight in L_G; None: the same as weight_recon
    weight_latent_generator: float | None = None  # latent-NLL weight in L_G; None: the same as weight_latent
    energy_penalty: float = 0.0  # w_pen: mean E^2 over real and generated images in L_E; keeps E bounded
    logvar_bound: float = 0.0  # c > 0: the posterior log-variance s becomes c * tanh(s / c); 0 leaves s unbounded
    nll_eps: float = 1e-6  # added to the variance in the latent NLL, as the reference
    generator_steps: int = 1  # K generator updates per iteration (Algorithm 1, step 9's "multiple-step update")
    noise_negatives: float = 0.0  # w_u > 0: uniform-noise images join L_E as negatives, w_u * (mean E(x) - mean E(u))
    noise_octaves: int = 0  # k > 0: each noise negative is white or drawn 2^j times coarser (j <= k) and smoothed up
    real_energy_variance: float = 0.0  # w_var > 0: + w_var * variance of E over the real batch in L_E
    reconstruction_negatives: float = 0.0  # w_r > 0: G(z_hat) of the real images join L_E as negatives, weight w_r
    langevin_steps: int = 0  # L > 0: the energy step's samples are G(z) refined by L Langevin steps on E
    langevin_step_size: float = 2.0  # lambda: each step is x <- x - lambda * dE/dx + langevin_noise * N(0, I)
    langevin_noise: float = 0.01  # sigma of each step's Gaussian noise, in pixel units ([-1, 1] images)
    weight_prior_mmd: float = 0.0  # w_mmd > 0: + w_mmd * MMD^2(the batch's codes z_hat, its prior draws z) in L_I

    def __post_init__(self) -> None:
        if self.energy_form not in ENERGY_FORMS:
            raise ValueError(f"energy_form must be one of {ENERGY_FORMS}, got {self.energy_form!r}")
        if self.kl_reduction not in KL_REDUCTIONS:
            raise ValueError(f"kl_reduction must be one of {KL_REDUCTIONS}, got {self.kl_reduction!r}")
        weights = ("energy_penalty", "logvar_bound", "weight_recon", "weight_kl", "weight_latent")
        for name in (*weights, "weight_recon_generator", "weight_latent_generator"):
            value = getattr(self, name)
            if value is None and name.endswith("_generator"):
                continue
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.generator_recon_weight == 0 and self.generator_latent_weight == 0 and self.weight_energy == 0:
            raise ValueError(
                "the generator has no loss: weight_recon_generator, weight_latent_generator and weight_energy "
                "are all 0 (recipe 'vae' or 'wake-sleep' train it by reconstruction)"
            )
        for name in (
            "noise_negatives",
            "reconstruction_negatives",
            "real_energy_variance",
            "weight_prior_mmd",
            "langevin_step_size",
            "langevin_noise",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.noise_octaves, int) and self.noise_octaves >= 0):
            raise ValueError(f"noise_octaves must be an integer >= 0, got {self.noise_octaves!r}")
        if not (isinstance(self.langevin_steps, int) and self.langevin_steps >= 0):
            raise ValueError(f"langevin_steps must be an integer >= 0, got {self.langevin_steps!r}")
        if not (isinstance(self.generator_steps, int) and self.generator_steps >= 1):
            raise ValueError(f"generator_steps must be an integer >= 1, got {self.generator_steps!r}")

    @property
    def trains_energy(self) -> bool:
        """The energy model is updated only when the generator's loss uses it."""
        return self.weight_energy != 0

    @property
    def trains_inference(self) -> bool:
        """The inference model is updated only when one of its terms has a weight."""
        return any(w != 0 for w in (self.weight_recon, self.weight_kl, self.weight_latent, self.weight_prior_mmd))

    @property
    def generator_recon_weight(self) -> float:
        """The reconstruction weight of the generator step."""
        return self.weight_recon if self.weight_recon_generator is None else self.weight_recon_generator

    @property
    def generator_latent_weight(self) -> float:
        """The latent-NLL weight of the generator step."""
        return self.weight_latent if self.weight_latent_generator is None else self.weight_latent_generator

    def replace(self, **changes) -> TriangleConfig:
        """A copy with some values changed (validated)."""
        return dataclasses.replace(self, **changes)


# Named configurations (docs/objective.md). Each is a set of changes to TriangleConfig's defaults, which are
# the reference code's values. "triangle" is the default of the training program.
_STABLE: dict[str, Any] = {
    "weight_recon": 5.0,  # 1 / (2 sigma^2), sigma = 0.32; the reference's 1 is sigma^2 = 0.5, noisier than the data
    "kl_reduction": "sum",  # the exact KL of D, not 1/d of it
    "weight_latent": 1.0,  # D's weight of -log q(z|G(z)) (the reference's 0.1 weakens what keeps samples diverse)
    "weight_energy": 10.0,  # the generator sees f = 10 s(x): a bounded s, yet an energy that still moves G
    "energy_penalty": 0.1,  # not in D: pulls |E| towards 1 / (2 * 0.1) = 5 at most, without a gradient penalty
    "logvar_bound": 5.0,  # q's log-variance in (-5, 5): the latent NLL cannot explode through a vanishing variance
    "noise_negatives": 1.0,  # not in D: uniform noise joins L_E's negatives, so noise gets a higher energy than data
}
DEFAULT_RECIPE = "triangle"  # what launch/train.py trains without --recipe
_NO_ENERGY: dict[str, Any] = {"weight_energy": 0.0}
_NO_VAE: dict[str, Any] = {"weight_recon": 0.0, "weight_kl": 0.0}
RECIPES: dict[str, dict[str, Any]] = {
    # D = KL(Q||P) + KL(P||Pi) - KL(Q||Pi) with the stabilising terms: the default.
    "triangle": _STABLE,
    # Section 3.2.1: min over G and I of KL(Q||P) alone (reconstruction and KL in both steps); no energy model.
    "vae": {**_STABLE, **_NO_ENERGY, "weight_latent": 0.0},
    # Section 3.2.1's wake-sleep: G by KL(Q||P) on real images (wake: reconstruction), I by KL(P||Q) on dreams
    # (sleep: the NLL of z under q(z|G(z)) only). Two objectives, not one.
    "wake-sleep": {**_STABLE, **_NO_ENERGY, **_NO_VAE, "weight_recon_generator": 5.0, "weight_latent_generator": 0.0},
    # Section 3.2.2, the tractable ACD: max over E, min over G and I of KL(P||Pi) - KL(Q||Pi); G's entropy comes
    # through I's latent NLL on generated images (eq. 18). No reconstruction, no KL to the prior.
    "acd": {**_STABLE, **_NO_VAE},
    # E and G alone, the generator minimising mean E(G(z)) without any entropy term: eq. (16) with the
    # intractable entropy of p_theta dropped (what energy-based GANs do), not the paper's ACD.
    "adversarial": {**_STABLE, **_NO_VAE, "weight_latent": 0.0},
    # The paper's code exactly (enijkamp/triangle, train_cifar10.py).
    "reference": {},
}


def recipe_config(name: str, **changes) -> TriangleConfig:
    """TriangleConfig of the named recipe, with `changes` on top; ValueError for an unknown name."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of: {', '.join(RECIPES)}")
    return TriangleConfig(**{**RECIPES[name], **changes})


# ----------------------------------------------------------------------------- loss terms


def _full_precision(t: torch.Tensor) -> torch.Tensor:
    """Upcast half-precision values (autocast outputs) to float32; float32 and float64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def energy_from_output(output: torch.Tensor, form: str = "identity") -> torch.Tensor:
    """E(x) from the energy network's raw output s (low energy = likely image), in float32."""
    s = _full_precision(output)
    if form == "identity":
        return s
    if form == "softplus":
        return F.softplus(-s)
    if form == "tanh":
        return torch.tanh(-s)
    if form == "sigmoid":
        return torch.sigmoid(-s)
    raise ValueError(f"energy_form must be one of {ENERGY_FORMS}, got {form!r}")


def reconstruction_loss(reconstruction: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum ||reconstruction - x||^2 / B: squared error summed over pixels, averaged over the batch."""
    return (_full_precision(reconstruction) - _full_precision(x)).pow(2).sum() / x.shape[0]


def kl_to_prior(mu: torch.Tensor, logvar: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)).

    "mean": -1/2 * mean over batch and latent dims of (1 + s - mu^2 - e^s), the reference's reduction.
    "sum":  the same summed over latent dims, averaged over the batch (the exact per-sample KL).
    """
    mu, logvar = _full_precision(mu), _full_precision(logvar)
    elementwise = -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp())
    if reduction == "mean":
        return elementwise.mean()
    if reduction == "sum":
        return elementwise.sum(dim=1).mean()
    raise ValueError(f"kl_reduction must be one of {KL_REDUCTIONS}, got {reduction!r}")


def latent_nll(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """-log q(z|x) up to a constant: mean over batch of 1/2 sum_j s_j + 1/2 sum_j (z_j - mu_j)^2 / (e^{s_j} + eps)."""
    z, mu, logvar = _full_precision(z), _full_precision(mu), _full_precision(logvar)
    per_sample = 0.5 * logvar.sum(dim=1) + 0.5 * ((z - mu).pow(2) / (logvar.exp() + eps)).sum(dim=1)
    return per_sample.mean()


def bound_logvar(logvar: torch.Tensor, bound: float) -> torch.Tensor:
    """c * tanh(s / c): the log-variance s kept inside (-c, c), unchanged near 0; s itself when c is 0.

    Without a bound, the latent NLL of generated images can fall without limit by shrinking the variance
    (s -> -inf makes (z - mu)^2 / e^s explode), and a large s makes reparameterised latents meaningless.
    """
    if bound == 0:
        return logvar
    return bound * torch.tanh(_full_precision(logvar) / bound)


def posterior(inference: nn.Module, x: torch.Tensor, config: TriangleConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, s) of q(z|x) with the configuration's log-variance bound applied."""
    mu, logvar = inference(x)
    return mu, bound_logvar(logvar, config.logvar_bound)


Posterior = tuple[torch.Tensor, torch.Tensor]  # (mu, logvar) of q(z|x)


class InferenceForward(NamedTuple):
    """The inference step's forward, as far as its weights ask (triangle_step)."""

    real: Posterior  # (mu, logvar) of the real images (of an empty batch without reconstruction and KL)
    fake: Posterior  # (mu, logvar) of the generated images (of an empty batch without the latent NLL)
    logvar_all: torch.Tensor  # every log-variance computed, for the health statistics
    reconstruction: torch.Tensor | None  # G(z_hat), z_hat ~ q(z|x); None without reconstruction
    codes: torch.Tensor | None  # z_hat ~ q(z|x) of the real images; None without reconstruction and prior MMD


def posterior_of(
    inference: nn.Module, real: torch.Tensor | None, fake: torch.Tensor | None, config: TriangleConfig
) -> tuple[Posterior, Posterior, torch.Tensor]:
    """((mu, logvar) of `real`, (mu, logvar) of `fake`, every logvar) from one forward of the images given (one DDP
    reduction); the pair of an image set not given is empty. At least one must be given."""
    inputs = [images for images in (real, fake) if images is not None]
    mu_all, logvar_all = posterior(inference, torch.cat(inputs) if len(inputs) > 1 else inputs[0], config)
    real_count = real.shape[0] if real is not None else 0
    return (
        (mu_all[:real_count], logvar_all[:real_count]),
        (mu_all[real_count:], logvar_all[real_count:]),
        logvar_all,
    )


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z_hat = mu + exp(logvar / 2) * eps."""
    return mu + torch.exp(0.5 * logvar) * eps


# Inverse multiquadratic kernels C / (C + |a - b|^2) at these multiples of C = 2 d (Tolstikhin et al. 2018, WAE):
# heavy tails keep a gradient on codes far from the prior's mass, where a Gaussian kernel's vanishes.
MMD_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def prior_mmd(codes: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 between codes (N, d) and prior draws (M, d), N, M >= 2, with the kernels of MMD_SCALES.

    The aggregate posterior's distance from N(0, I) that the per-image KL does not see: narrow posteriors can each
    pay their KL while all of them crowd into one region of the prior, leaving "holes" where prior samples land
    on codes no image has (InfoVAE, Zhao et al. 2019; WAE-MMD, Tolstikhin et al. 2018).
    """
    codes, prior = _full_precision(codes), _full_precision(prior)
    n, m, d = codes.shape[0], prior.shape[0], codes.shape[1]
    if n < 2 or m < 2:
        raise ValueError(f"prior_mmd needs at least two codes and two prior draws, got {n} and {m}")
    both = torch.cat([codes, prior])
    squared = torch.cdist(both, both).pow(2)
    kernel = sum(c * 2 * d / (c * 2 * d + squared) for c in MMD_SCALES)
    within_codes, within_prior, across = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    off_diagonal = len(MMD_SCALES)  # k(a, a) = 1 at every scale: the diagonal is left out of the unbiased sums
    return (
        (within_codes.sum() - off_diagonal * n) / (n * (n - 1))
        + (within_prior.sum() - off_diagonal * m) / (m * (m - 1))
        - 2 * across.mean()
    )


# ----------------------------------------------------------------------------- the energy step's negatives


@torch.no_grad()
def _reconstructions(
    inference: nn.Module, generator: nn.Module, x: torch.Tensor, eps: torch.Tensor, config: TriangleConfig
) -> torch.Tensor:
    """G(z_hat), z_hat = mu(x) + exp(s(x)/2) * eps: the reconstructions the inference step is about to train on
    (the same eps, the networks before this iteration's updates), as negatives of the energy step: one negative
    of each real image's own class and place, so the contrast is not weighted by where the generator draws."""
    mu, logvar = posterior(bare(inference), x, config)
    return bare(generator)(reparameterize(mu, logvar, eps))


def in_channel_mode(t: torch.Tensor, channels: int) -> torch.Tensor:
    """t (B, 3, R, R) as an image of `channels` distinct channels: its channel mean, three times, when 1."""
    return t if channels == 3 else as_rgb(t.mean(dim=1, keepdim=True))


def uniform_noise(
    batch: int,
    channels: int,  # the run's channel mode: 1 gives grey noise, shown as three equal channels
    resolution: int,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,  # None: the global one
    octaves: int = 0,  # k > 0: each image is white noise or noise on a grid 2^j coarser, j uniform in 0..k
) -> torch.Tensor:
    """(batch, 3, resolution, resolution) uniform noise in [-1, 1]: the energy step's noise negatives.

    White noise alone could teach the energy model that high frequencies mean high energy, so that anything smooth
    (a blurred image) looks likely. With `octaves` k each image is drawn on a grid of resolution / 2^j pixels,
    j uniform in 0..k, and upsampled bilinearly (values stay in [-1, 1]): smooth noise at every scale down to a
    4x4 grid, never a constant image. The white noise is drawn first, so k = 0 draws what it always did. On
    Fashion-MNIST the smooth negatives left the blurred-image AUROC where it was (docs/benchmarks.md): every
    recipe keeps k = 0.
    """
    noise = torch.rand(batch, channels, resolution, resolution, generator=generator, device=device, dtype=dtype)
    if octaves > 0:
        level = torch.randint(0, octaves + 1, (batch, 1, 1, 1), generator=generator, device=device)
        for j in range(1, octaves + 1):
            grid = max(resolution >> j, 4)
            coarse = torch.rand(batch, channels, grid, grid, generator=generator, device=device, dtype=dtype)
            smooth = F.interpolate(coarse, size=(resolution, resolution), mode="bilinear", align_corners=False)
            noise = torch.where(level == j, smooth, noise)
    return as_rgb(noise * 2.0 - 1.0)


def uniform_noise_like(images: torch.Tensor, channels: int, octaves: int = 0) -> torch.Tensor:
    """Uniform noise in [-1, 1] of the images' shape, in their channel mode (grey noise for a grayscale run)."""
    return uniform_noise(images.shape[0], channels, images.shape[-1], images.device, images.dtype, octaves=octaves)


def langevin_refine(energy: nn.Module, images: torch.Tensor, config: TriangleConfig, channels: int = 3) -> torch.Tensor:
    """The images after `langevin_steps` steps x <- x - lambda dE/dx + sigma N(0, I), kept in [-1, 1].

    Cooperative learning's refinement of the generator's samples (the paper's reference [47]): the energy model's
    negatives move towards its own low-energy regions, so a spurious basin near the samples is raised where it
    forms. Gradients reach the images only (not the parameters), through the unwrapped module (no DDP hook); with
    `channels` 1 (a grayscale run) steps and noise stay grey.
    """
    x = images.detach()
    for _ in range(config.langevin_steps):
        x.requires_grad_(True)
        with torch.enable_grad():
            total = energy_from_output(bare(energy)(x), config.energy_form).sum()
            (gradient,) = torch.autograd.grad(total, x)
        # Noise drawn per distinct channel: sigma per pixel in a grayscale run too (a channel mean would shrink it).
        noise = as_rgb(torch.randn(x.shape[0], channels, *x.shape[2:], device=x.device, dtype=x.dtype))
        step = config.langevin_noise * noise - config.langevin_step_size * in_channel_mode(gradient, channels)
        x = (x.detach() + step).clamp_(-1.0, 1.0)
    return x


# ----------------------------------------------------------------------------- one iteration


def validate_batch(x: torch.Tensor, check_range: bool = True) -> None:
    """Raise ValueError unless x is a float image batch (B, 3, R, R) with values in [-1, 1]."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(
            f"expected a floating-point image tensor (B, 3, R, R), got {type(x).__name__} {getattr(x, 'dtype', '')}"
        )
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3] or x.shape[0] < 1:
        raise ValueError(f"expected an image batch of shape (B, 3, R, R), got {tuple(x.shape)}")
    if check_range:
        low, high = torch.aminmax(x.detach())
        if float(low) < -1.0 - 1e-3 or float(high) > 1.0 + 1e-3:
            raise ValueError(f"expected pixel values in [-1, 1], got range [{float(low):.3g}, {float(high):.3g}]")


# The statistics of one iteration, by name, with the tracker tag each is logged under; `triangle_step` returns
# them stacked in this order (one tensor, no host sync), `stats_to_dict` names them again.
STATISTICS: dict[str, str] = {
    "loss_energy": "loss/energy",  # L_E
    "loss_inference": "loss/inference",  # L_I
    "loss_generator": "loss/generator",  # L_G
    "recon": "terms/recon_inference",  # reconstruction term of L_I (unweighted)
    "kl": "terms/kl",  # KL(q(z|x) || N(0, I)) of L_I
    "prior_mmd": "terms/prior_mmd",  # MMD^2 of the codes from the prior (weight_prior_mmd; 0 when off)
    "latent_nll": "terms/latent_nll_inference",  # latent NLL of generated images in L_I
    "energy_real": "energy/real",  # mean E(x) over real images
    "energy_fake": "energy/fake",  # mean E(G(z)) in the energy step
    "recon_generator": "terms/recon_generator",  # reconstruction term of L_G
    "latent_nll_generator": "terms/latent_nll_generator",  # latent NLL term of L_G
    "grad_norm_energy": "grad_norm/energy",  # gradient norms before clipping
    "grad_norm_inference": "grad_norm/inference",
    "grad_norm_generator": "grad_norm/generator",
    "energy_abs_max": "health/energy_abs_max",  # largest |E| of the energy step's images
    "logvar_min": "health/logvar_min",  # posterior log-variance range in the inference step
    "logvar_max": "health/logvar_max",
    "sample_spread": "health/sample_spread",  # per-pixel std across generated images, averaged over pixels
    "data_spread": "health/data_spread",  # the same for the real batch
}
STAT_NAMES = tuple(STATISTICS)


def triangle_step(
    models,
    optimizers: TriangleOptimizers,
    x: torch.Tensor,
    z: torch.Tensor | None = None,
    eps: tuple[torch.Tensor, torch.Tensor] | None = None,
    config: TriangleConfig | None = None,
    *,
    noise_images: torch.Tensor | None = None,
    update: Update = plain_update,
    check_range: bool = True,
) -> torch.Tensor:
    """One joint iteration (module docstring); returns the STATISTICS values, in order, as one float32 tensor.

    Stays on the device: no host synchronisation unless `check_range` (one per call).
    `noise_images` (B, 3, R, R) in [-1, 1] are the uniform-noise negatives when `noise_negatives` is on (drawn here
    when None, like z and eps). `update` turns each network's loss into its parameter update (see `plain_update`).
    """
    config = config or TriangleConfig()
    validate_batch(x, check_range=check_range)
    generator, energy, inference = models.generator, models.energy, models.inference
    batch = x.shape[0]
    device = x.device
    latent_dim = models.latent_dim
    if z is None:
        z = torch.randn(batch, latent_dim, device=device)
    if eps is None:
        eps = (torch.randn(batch, latent_dim, device=device), torch.randn(batch, latent_dim, device=device))
    if z.shape[1:] != (latent_dim,):
        raise ValueError(f"expected z of shape (N, {latent_dim}), got {tuple(z.shape)}")
    for e in eps:
        if e.shape != (batch, latent_dim):
            raise ValueError(f"expected eps of shape ({batch}, {latent_dim}), got {tuple(e.shape)}")
    zero = torch.zeros((), device=device)

    # 1. Samples, once. Their graph is kept for the generator step.
    x_fake = generator(z)
    if x_fake.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"expected real images of shape (B, {', '.join(map(str, x_fake.shape[1:]))}) to match "
            f"the generator's current output, got {tuple(x.shape)}"
        )
    x_fake_const = x_fake.detach()

    def inference_forward() -> InferenceForward:
        """The inference step's forward: only the terms with a weight are computed (real images encoded for the
        reconstruction, the KL and the prior MMD, generated ones for the latent NLL)."""
        encode_real = config.weight_recon != 0 or config.weight_kl != 0 or config.weight_prior_mmd != 0
        encode_fake = config.weight_latent != 0
        real, fake, logvar_all = posterior_of(
            inference, x if encode_real else None, x_fake_const if encode_fake else None, config
        )
        codes = reparameterize(*real, eps[0]) if config.weight_recon != 0 or config.weight_prior_mmd != 0 else None
        reconstruction = bare(generator)(codes) if config.weight_recon != 0 else None
        return InferenceForward(real, fake, logvar_all, reconstruction, codes)

    # The reconstructions the inference step trains on are the energy step's third set of negatives when
    # reconstruction_negatives is on. Nothing in that forward depends on E, so it then runs before the energy step
    # and G(z_hat) is computed once (otherwise it waits, so that its graph does not add to the energy step's memory).
    shares_reconstructions = (
        config.trains_energy
        and config.trains_inference
        and config.weight_recon != 0
        and config.reconstruction_negatives != 0
    )
    encoded = inference_forward() if shares_reconstructions else None

    # 2. Energy step. Real and generated images go through one forward (one DDP reduction); without
    #    batch statistics in the energy model this equals two separate forwards.
    if config.trains_energy:
        samples = (
            x_fake_const
            if config.langevin_steps == 0
            else langevin_refine(energy, x_fake_const, config, models.image_channels)
        )
        more_negatives = []  # (weight, images): sets contrasted with the data beside the samples, each weighed
        if config.noise_negatives != 0:
            if noise_images is None:
                noise_images = uniform_noise_like(x_fake_const, models.image_channels, config.noise_octaves)
            if noise_images.shape != x.shape:
                raise ValueError(f"expected noise_images of shape {tuple(x.shape)}, got {tuple(noise_images.shape)}")
            more_negatives.append((config.noise_negatives, noise_images))
        if config.reconstruction_negatives != 0:
            reconstructions = (
                encoded.reconstruction.detach()
                if encoded is not None
                else _reconstructions(inference, generator, x, eps[0], config)
            )
            more_negatives.append((config.reconstruction_negatives, reconstructions))
        negatives = [samples, *(images for _, images in more_negatives)]
        energies = energy_from_output(energy(torch.cat([x, *negatives])), config.energy_form)
        real_energies, fake_energies, *more_energies = energies.split([batch, *(len(n) for n in negatives)])
        energy_real, energy_fake = real_energies.mean(), fake_energies.mean()
        loss_energy = energy_real - energy_fake
        for (weight, _), set_energies in zip(more_negatives, more_energies, strict=True):
            loss_energy = loss_energy + weight * (energy_real - set_energies.mean())
        if config.energy_penalty != 0:
            loss_energy = loss_energy + config.energy_penalty * energies.pow(2).mean()
        if config.real_energy_variance != 0:
            # Over this process's real images only: the spread of the data's energies, not their level.
            loss_energy = loss_energy + config.real_energy_variance * real_energies.var(unbiased=False)
        grad_norm_energy = update("energy", optimizers.energy, energy, loss_energy, optimizers.grad_clip)
        energy_abs_max = energies.detach().abs().max()
    else:
        energy_real = energy_fake = loss_energy = grad_norm_energy = energy_abs_max = zero

    # 3. Inference step (its forward above, or here).
    recon = kl = mmd = nll = loss_inference = grad_norm_inference = logvar_min = logvar_max = zero
    if config.trains_inference:
        (mu, logvar), (mu_fake, logvar_fake), logvar_all, reconstruction, codes = encoded or inference_forward()
        logvar_min, logvar_max = torch.aminmax(logvar_all.detach())
        if config.weight_recon != 0:
            recon = reconstruction_loss(reconstruction, x)
            loss_inference = loss_inference + config.weight_recon * recon
        if config.weight_kl != 0:
            kl = kl_to_prior(mu, logvar, config.kl_reduction)
            loss_inference = loss_inference + config.weight_kl * kl
        if config.weight_prior_mmd != 0:
            mmd = prior_mmd(codes, z)  # this step's latents of G(z) are the prior draws
            loss_inference = loss_inference + config.weight_prior_mmd * mmd
        if config.weight_latent != 0:
            nll = latent_nll(z, mu_fake, logvar_fake, config.nll_eps)
            loss_inference = loss_inference + config.weight_latent * nll
        grad_norm_inference = update("inference", optimizers.inference, inference, loss_inference, optimizers.grad_clip)

    # 4. Generator step with the updated E and I; gradients reach G through x_fake and G(z_hat2). With
    #    generator_steps K > 1 (Algorithm 1, step 9), K updates from the same z and eps2, each with a fresh G(z);
    #    the statistics are the first step's (what K = 1 reports).
    weight_recon, weight_latent = config.generator_recon_weight, config.generator_latent_weight

    def generator_loss(x_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, recon_g, nll_g = zero, zero, zero
        if weight_recon != 0 or weight_latent != 0:
            (mu, logvar), (mu_fake, logvar_fake), _ = posterior_of(
                bare(inference), x if weight_recon != 0 else None, x_fake if weight_latent != 0 else None, config
            )
            if weight_recon != 0:
                z_hat2 = reparameterize(mu, logvar, eps[1]).detach()
                recon_g = reconstruction_loss(bare(generator)(z_hat2), x)
                loss = loss + weight_recon * recon_g
            if weight_latent != 0:
                nll_g = latent_nll(z, mu_fake, logvar_fake, config.nll_eps)
                loss = loss + weight_latent * nll_g
        if config.trains_energy:
            energy_of_fake = energy_from_output(bare(energy)(x_fake), config.energy_form).mean()
            loss = loss + config.weight_energy * energy_of_fake
        return loss, recon_g, nll_g

    loss_generator, recon_generator, nll_generator = generator_loss(x_fake)
    grad_norm_generator = update("generator", optimizers.generator, generator, loss_generator, optimizers.grad_clip)
    for _ in range(config.generator_steps - 1):
        loss, _, _ = generator_loss(generator(z))
        update("generator", optimizers.generator, generator, loss, optimizers.grad_clip)

    values = {
        "loss_energy": loss_energy,
        "loss_inference": loss_inference,
        "loss_generator": loss_generator,
        "recon": recon,
        "kl": kl,
        "prior_mmd": mmd,
        "latent_nll": nll,
        "energy_real": energy_real,
        "energy_fake": energy_fake,
        "recon_generator": recon_generator,
        "latent_nll_generator": nll_generator,
        "grad_norm_energy": grad_norm_energy,
        "grad_norm_inference": grad_norm_inference,
        "grad_norm_generator": grad_norm_generator,
        "energy_abs_max": energy_abs_max,
        "logvar_min": logvar_min,
        "logvar_max": logvar_max,
        # Diversity: per-pixel standard deviation across the batch, averaged over pixels (samples vs data).
        "sample_spread": x_fake_const.float().std(dim=0).mean() if batch > 1 else zero,
        "data_spread": x.detach().float().std(dim=0).mean() if batch > 1 else zero,
    }
    with torch.no_grad():  # one stack, no graph, no per-value detach/cast/view calls (all are float32 scalars)
        return torch.stack([values[name] for name in STAT_NAMES])


def train_step(
    models,
    optimizers: TriangleOptimizers,
    x: torch.Tensor,
    z: torch.Tensor | None = None,
    eps: tuple[torch.Tensor, torch.Tensor] | None = None,
    config: TriangleConfig | None = None,
    noise_images: torch.Tensor | None = None,
) -> dict[str, float]:
    """One joint iteration of the divergence triangle; returns its losses and statistics as floats.

    With explicit `z` (N, latent_dim), `eps` (a pair of (B, latent_dim) tensors) and, when `noise_negatives` is on,
    `noise_images` (B, 3, R, R) it is deterministic.
    Trainers that must avoid a host sync per step call `triangle_step` instead.
    """
    return stats_to_dict(triangle_step(models, optimizers, x, z, eps, config, noise_images=noise_images))


def stats_to_dict(stats: torch.Tensor) -> dict[str, float]:
    """Name the values returned by `triangle_step` (one host sync)."""
    return dict(zip(STAT_NAMES, stats.tolist(), strict=True))


__all__ = [
    "ENERGY_FORMS",
    "KL_REDUCTIONS",
    "DEFAULT_RECIPE",
    "RECIPES",
    "STATISTICS",
    "STAT_NAMES",
    "TriangleConfig",
    "bound_logvar",
    "posterior",
    "posterior_of",
    "energy_from_output",
    "in_channel_mode",
    "kl_to_prior",
    "langevin_refine",
    "latent_nll",
    "recipe_config",
    "reconstruction_loss",
    "reparameterize",
    "train_step",
    "triangle_step",
    "uniform_noise_like",
    "validate_batch",
]

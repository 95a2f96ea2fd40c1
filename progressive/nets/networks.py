"""Progressive networks: generator, energy model and inference model grown from 4x4 to max_resolution.

Every block up to max_resolution is built at construction; `set_stage(resolution, alpha)` only changes
which of them run, so the parameter set never changes (optimiser state, weight averages, checkpoints and
DistributedDataParallel wrappers stay valid while the networks grow).

While resolution r fades in with weight alpha:
  generator:  (1 - alpha) * upsample(to_rgb[r/2](h)) + alpha * to_rgb[r](block[r](h)),  h = features at r/2
  energy / inference:  features at r/2 = (1 - alpha) * from_rgb[r/2](avg_pool(x)) + alpha * block[r](from_rgb[r](x))
At alpha = 0 each network computes exactly what it computed at stage (r/2, 1), up to the pooling or
upsampling that changes the image size; at alpha = 1 the old path is not evaluated at all.
Images in and out are (B, 3, r, r); a grayscale generator (image_channels=1) draws one channel per to-RGB layer and
repeats it to three after the fade-in and tanh.
docs/architecture.md has the block layout and the reasons for the defaults.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from progressive.nets.layers import (
    LEAKY_SLOPE,
    ScaledConv2d,
    ScaledLinear,
    StagedNetwork,
    as_rgb,
    channels_per_resolution,
    check_image_channels,
    conv_act_norm,
    downsample2,
    fade_in,
    make_norm,
    resolutions,
    upsample2,
)

OUTPUT_ACTIVATIONS = ("tanh", "none")


class _Staged(StagedNetwork):
    """A progressive network: its range of resolutions and the channels of each."""

    def __init__(
        self,
        min_resolution: int,
        max_resolution: int,
        channels: Mapping[int, int] | None,
        channel_rule: tuple[int, int, int],
    ):
        super().__init__(min_resolution, max_resolution)
        if channels is None:
            channels = channels_per_resolution(4, max_resolution, *channel_rule)
        missing = [r for r in resolutions(4, max_resolution) if r not in channels]
        if missing:
            raise ValueError(f"channels must give every resolution from 4 to {max_resolution}; missing {missing}")
        self.channels = {r: int(channels[r]) for r in resolutions(4, max_resolution)}


class _LatentBlock(nn.Module):
    """z (B, latent_dim) -> features (B, C, 4, 4): dense projection, then one 3x3 convolution."""

    def __init__(self, latent_dim: int, channels: int, norm: str, equalized: bool):
        super().__init__()
        self.channels = channels
        self.dense = ScaledLinear(latent_dim, channels * 16, equalized=equalized)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        self.norm = make_norm(norm, channels)
        self.conv = nn.Sequential(*conv_act_norm(channels, channels, norm, equalized))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.act(self.dense(z)).view(z.shape[0], self.channels, 4, 4)
        return self.conv(self.norm(h))


def _up_block(in_channels: int, out_channels: int, norm: str, equalized: bool) -> nn.Sequential:
    """Features at r/2 -> features at r: nearest upsampling, two 3x3 convolutions."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        *conv_act_norm(in_channels, out_channels, norm, equalized),
        *conv_act_norm(out_channels, out_channels, norm, equalized),
    )


def _down_block(in_channels: int, out_channels: int, norm: str, equalized: bool) -> nn.Sequential:
    """Features at r -> features at r/2: two 3x3 convolutions, 2x2 average pooling."""
    return nn.Sequential(
        *conv_act_norm(in_channels, in_channels, norm, equalized),
        *conv_act_norm(in_channels, out_channels, norm, equalized),
        nn.AvgPool2d(2),
    )


def _from_rgb(channels: int, equalized: bool) -> nn.Sequential:
    return nn.Sequential(ScaledConv2d(3, channels, 1, equalized=equalized), nn.LeakyReLU(LEAKY_SLOPE))


class _DownHead(nn.Module):
    """Features (B, C, 4, 4) -> (B, outputs) float32: a 3x3 convolution, then two dense layers."""

    def __init__(self, channels: int, outputs: int, norm: str, equalized: bool):
        super().__init__()
        self.conv = nn.Sequential(*conv_act_norm(channels, channels, norm, equalized))
        self.dense = ScaledLinear(channels * 16, channels, equalized=equalized)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        self.out = ScaledLinear(channels, outputs, gain=1.0, equalized=equalized)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.conv(h)
        # The energy and the posterior parameters are reductions over the whole image: keep them in
        # float32 under autocast, where a float16 sum could overflow and log-variances lose precision.
        with torch.autocast(device_type=h.device.type, enabled=False):
            h = h.float() if h.dtype in (torch.float16, torch.bfloat16) else h
            return self.out(self.act(self.dense(h.flatten(1))))


class ProgressiveGenerator(_Staged):
    """g(z): latent (B, latent_dim) -> image (B, 3, r, r) at the current resolution r, in [-1, 1] with tanh.

    With image_channels=1 every to-RGB layer draws one channel, shown as three identical ones: samples are gray by
    construction, and the energy and inference models keep their 3-channel input (docs/architecture.md)."""

    def __init__(
        self,
        latent_dim: int = 512,  # dimension of z; z is used as drawn (no normalisation, see docs)
        min_resolution: int = 4,  # first resolution trained; has a to-RGB layer and no fade-in
        max_resolution: int = 1024,  # last resolution; every block up to it is built now
        channel_base: int = 16384,  # channels at resolution r: clamp(channel_base // r, channel_min, channel_max)
        channel_max: int = 512,  # upper clamp of the channel rule
        channel_min: int = 1,  # lower clamp of the channel rule
        channels: Mapping[int, int] | None = None,  # explicit channels for 4..max_resolution; overrides the rule
        norm: str = "pixel",  # after every convolution: "pixel", "batch" or "none"
        equalized: bool = False,  # equalised learning rate (weights scaled by their He constant at run time)
        output_activation: str = "tanh",  # "tanh" keeps images in [-1, 1] like the data; "none" is linear
        image_channels: int = 3,  # 3 colour; 1 grayscale: one channel drawn, repeated to three after tanh
    ):
        super().__init__(min_resolution, max_resolution, channels, (channel_base, channel_max, channel_min))
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"output_activation must be one of {OUTPUT_ACTIVATIONS}, got {output_activation!r}")
        check_image_channels(image_channels)
        self.latent_dim = latent_dim
        self.output_activation = output_activation
        self.image_channels = image_channels
        c = self.channels
        self.blocks = nn.ModuleDict({"4": _LatentBlock(latent_dim, c[4], norm, equalized)})
        for r in resolutions(8, max_resolution) if max_resolution >= 8 else []:
            self.blocks[str(r)] = _up_block(c[r // 2], c[r], norm, equalized)
        self.to_rgb = nn.ModuleDict(
            {
                str(r): ScaledConv2d(c[r], image_channels, 1, gain=1.0, equalized=equalized)
                for r in resolutions(min_resolution, max_resolution)
            }
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        assert z.ndim == 2 and z.shape[1] == self.latent_dim, (
            f"expected z of shape (B, {self.latent_dim}), got {tuple(z.shape)}"
        )
        r = self.resolution
        features = self.blocks["4"](z)
        for res in resolutions(8, r // 2) if r >= 16 else []:
            features = self.blocks[str(res)](features)
        if r == 4:
            image = self.to_rgb["4"](features)
        else:
            # `features` are at r/2 here: the old path shows them through the previous to-RGB layer.
            image = fade_in(
                self.alpha,
                old_path=lambda: upsample2(self.to_rgb[str(r // 2)](features)),
                new_path=lambda: self.to_rgb[str(r)](self.blocks[str(r)](features)),
            )
        if self.output_activation == "tanh":
            image = torch.tanh(image)
        assert image.shape[1:] == (self.image_channels, r, r), f"to-RGB gave {tuple(image.shape)}"
        # Repeated last, after the fade-in and tanh, so that nothing can make the three channels differ.
        image = as_rgb(image)
        assert image.shape[1:] == (3, r, r), f"expected generator output (B, 3, {r}, {r}), got {tuple(image.shape)}"
        return image


class _ProgressiveDownward(_Staged):
    """Shared trunk of the energy and inference models: from-RGB at r, blocks down to 4x4, a dense head."""

    def __init__(
        self,
        outputs: int,
        min_resolution: int,
        max_resolution: int,
        channel_rule: tuple[int, int, int],
        channels: Mapping[int, int] | None,
        norm: str,
        equalized: bool,
    ):
        super().__init__(min_resolution, max_resolution, channels, channel_rule)
        c = self.channels
        self.blocks = nn.ModuleDict({"4": _DownHead(c[4], outputs, norm, equalized)})
        for r in resolutions(8, max_resolution) if max_resolution >= 8 else []:
            self.blocks[str(r)] = _down_block(c[r], c[r // 2], norm, equalized)
        self.from_rgb = nn.ModuleDict(
            {str(r): _from_rgb(c[r], equalized) for r in resolutions(min_resolution, max_resolution)}
        )

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        r = self.resolution
        assert x.ndim == 4 and x.shape[1:] == (3, r, r), (
            f"expected images of shape (B, 3, {r}, {r}) at the current stage, got {tuple(x.shape)}"
        )
        if r == 4:
            features = self.from_rgb["4"](x)
        else:
            features = fade_in(
                self.alpha,
                old_path=lambda: self.from_rgb[str(r // 2)](downsample2(x)),
                new_path=lambda: self.blocks[str(r)](self.from_rgb[str(r)](x)),
            )
        for res in reversed(resolutions(8, r // 2)) if r >= 16 else []:
            features = self.blocks[str(res)](features)
        return self.blocks["4"](features)


class ProgressiveEnergy(_ProgressiveDownward):
    """Raw energy output s(x): image (B, 3, r, r) -> (B,) float32. The objective applies the energy form."""

    def __init__(
        self,
        min_resolution: int = 4,  # first resolution trained; has a from-RGB layer and no fade-in
        max_resolution: int = 1024,  # last resolution; every block up to it is built now
        channel_base: int = 16384,  # channels at resolution r: clamp(channel_base // r, channel_min, channel_max)
        channel_max: int = 512,  # upper clamp of the channel rule
        channel_min: int = 1,  # lower clamp of the channel rule
        channels: Mapping[int, int] | None = None,  # explicit channels for 4..max_resolution; overrides the rule
        norm: str = "none",  # "none": real and generated images share one forward in the objective (docs)
        equalized: bool = False,  # equalised learning rate (weights scaled by their He constant at run time)
    ):
        channel_rule = (channel_base, channel_max, channel_min)
        super().__init__(1, min_resolution, max_resolution, channel_rule, channels, norm, equalized)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._trunk(x)[:, 0]


class ProgressiveInference(_ProgressiveDownward):
    """q(z|x): image (B, 3, r, r) -> (mu, logvar), each (B, latent_dim) float32."""

    def __init__(
        self,
        latent_dim: int = 512,  # dimension of z
        min_resolution: int = 4,  # first resolution trained; has a from-RGB layer and no fade-in
        max_resolution: int = 1024,  # last resolution; every block up to it is built now
        channel_base: int = 16384,  # channels at resolution r: clamp(channel_base // r, channel_min, channel_max)
        channel_max: int = 512,  # upper clamp of the channel rule
        channel_min: int = 1,  # lower clamp of the channel rule
        channels: Mapping[int, int] | None = None,  # explicit channels for 4..max_resolution; overrides the rule
        norm: str = "none",  # "none": real and generated images share one forward in the objective (docs)
        equalized: bool = False,  # equalised learning rate (weights scaled by their He constant at run time)
    ):
        channel_rule = (channel_base, channel_max, channel_min)
        super().__init__(2 * latent_dim, min_resolution, max_resolution, channel_rule, channels, norm, equalized)
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._trunk(x)
        return out[:, : self.latent_dim], out[:, self.latent_dim :]


def parameters_per_resolution(net: nn.Module) -> dict[int, int]:
    """Number of parameters of each resolution's block and RGB layer, keyed by resolution."""
    counts: dict[int, int] = {}
    for name, p in net.named_parameters():
        container, key = name.split(".")[:2]
        if container not in ("blocks", "to_rgb", "from_rgb"):
            raise ValueError(f"parameter {name!r} belongs to no resolution")
        counts[int(key)] = counts.get(int(key), 0) + p.numel()
    return dict(sorted(counts.items()))


__all__ = [
    "OUTPUT_ACTIVATIONS",
    "ProgressiveEnergy",
    "ProgressiveGenerator",
    "ProgressiveInference",
    "parameters_per_resolution",
]

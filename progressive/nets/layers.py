"""Building blocks of the progressive networks: scaled convolutions, normalisations, the channel rule.

Equalised learning rate (Karras et al., 2018): weights are stored with unit variance and multiplied by
their He constant at every forward, so Adam's per-parameter step is the same relative change in every
layer, whatever its fan-in. Without it the weights are stored pre-scaled; both start as the same function.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

# The resolution ladder is the dataset format's: an LMDB stores every power of two from its min to its max.
from datasets_prep.lmdb_format import is_power_of_two
from datasets_prep.lmdb_format import resolution_ladder as resolutions

NORMS = ("pixel", "batch", "none")
LEAKY_SLOPE = 0.2
HIDDEN_GAIN = math.sqrt(2.0)  # He gain for layers followed by a LeakyReLU


# Colour (3) or grayscale (1). Images between networks always have three channels; a grayscale generator draws one
# and repeats it (docs/architecture.md, "Grayscale").
IMAGE_CHANNELS = (1, 3)


def check_image_channels(image_channels: int) -> None:
    """ValueError unless `image_channels` is 1 (grayscale) or 3 (colour)."""
    if isinstance(image_channels, bool) or not isinstance(image_channels, int) or image_channels not in IMAGE_CHANNELS:
        raise ValueError(f"image_channels must be 1 (grayscale) or 3 (colour), got {image_channels!r}")


def as_rgb(image: torch.Tensor) -> torch.Tensor:
    """(B, 1 or 3, H, W) -> (B, 3, H, W): one channel is repeated as a view (`expand`, no copy), three pass through.

    The repeated channels share memory: the result must not be written in place (every consumer here reads it)."""
    assert image.ndim == 4 and image.shape[1] in IMAGE_CHANNELS, f"expected (B, 1 or 3, H, W), got {tuple(image.shape)}"
    return image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image


def channels_per_resolution(
    min_resolution: int,
    max_resolution: int,
    channel_base: int,
    channel_max: int,
    channel_min: int = 1,
) -> dict[int, int]:
    """Feature channels at each resolution: clamp(channel_base // resolution, channel_min, channel_max).

    With base 16384 and max 512 this is the progressive-GAN rule: 512 up to 32x32, halving after.
    """
    check_resolution_range(min_resolution, max_resolution)
    if not 1 <= channel_min <= channel_max:
        raise ValueError(f"expected 1 <= channel_min <= channel_max, got {channel_min} and {channel_max}")
    return {
        r: max(channel_min, min(channel_max, channel_base // r)) for r in resolutions(min_resolution, max_resolution)
    }


def check_resolution_range(min_resolution: int, max_resolution: int) -> None:
    """Raise ValueError unless both are powers of two with 4 <= min_resolution <= max_resolution."""
    for name, value in (("min_resolution", min_resolution), ("max_resolution", max_resolution)):
        if not is_power_of_two(value) or value < 4:
            raise ValueError(f"{name} must be a power of two >= 4, got {value!r}")
    if min_resolution > max_resolution:
        raise ValueError(f"min_resolution {min_resolution} exceeds max_resolution {max_resolution}")


class StagedNetwork(nn.Module):
    """A network with a stage: the active resolution and the fade-in weight alpha of its newest layers, plain
    attributes that `set_stage` changes. Progressive networks run at every resolution of their range; a
    fixed-resolution network (min_resolution == max_resolution) at its own with alpha 1, so every holder sets the
    stage of any network the same way."""

    def __init__(self, min_resolution: int, max_resolution: int | None = None):  # None: fixed at min_resolution
        super().__init__()
        max_resolution = min_resolution if max_resolution is None else max_resolution
        check_resolution_range(min_resolution, max_resolution)
        self.min_resolution = min_resolution
        self.max_resolution = max_resolution
        # A freshly built network is fully grown, so sampling from a finished model needs no set_stage.
        self.resolution = max_resolution
        self.alpha = 1.0

    def validate_stage(self, resolution: int, alpha: float) -> None:
        """Raise ValueError unless (resolution, alpha) is a stage this network can run."""
        if self.min_resolution == self.max_resolution and (resolution, alpha) != (self.max_resolution, 1):
            raise ValueError(
                f"{type(self).__name__} runs only at resolution {self.max_resolution} with alpha 1, "
                f"got resolution {resolution}, alpha {alpha}"
            )
        if isinstance(resolution, bool) or not is_power_of_two(resolution):
            raise ValueError(f"resolution must be a power of two, got {resolution!r}")
        if not self.min_resolution <= resolution <= self.max_resolution:
            raise ValueError(f"resolution must lie in [{self.min_resolution}, {self.max_resolution}], got {resolution}")
        if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
        if resolution == self.min_resolution and alpha != 1:
            raise ValueError(f"the first resolution ({resolution}) has no previous stage to fade from: alpha must be 1")

    def set_stage(self, resolution: int, alpha: float) -> None:
        """Run at `resolution`, fading its new layers in with weight `alpha` (1 = fully in)."""
        self.validate_stage(resolution, alpha)
        self.resolution = int(resolution)
        self.alpha = float(alpha)

    @property
    def progressive(self) -> bool:
        """Whether it grows: more than one resolution, each with its own block."""
        return self.min_resolution < self.max_resolution

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, alpha={self.alpha:g}, range={self.min_resolution}..{self.max_resolution}"


class ScaledConv2d(nn.Module):
    """Conv2d with He initialisation; `equalized` moves the He constant from the stored weight to the forward."""

    def __init__(
        self,
        in_channels: int,  # input feature channels
        out_channels: int,  # output feature channels
        kernel_size: int,  # square kernel; padding keeps the spatial size
        gain: float = HIDDEN_GAIN,  # He gain: sqrt(2) before a LeakyReLU, 1 for linear outputs
        equalized: bool = True,  # scale at run time (equalised learning rate) instead of at init
    ):
        super().__init__()
        he_std = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.normal_(self.weight, 0.0, 1.0 if equalized else he_std)
        self.scale = he_std if equalized else 1.0
        self.padding = kernel_size // 2

    def extra_repr(self) -> str:
        out_channels, in_channels, k, _ = self.weight.shape
        return f"{in_channels}, {out_channels}, kernel_size={k}, scale={self.scale:.4g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, _scaled(self.weight, self.scale), self.bias, padding=self.padding)


class ScaledLinear(nn.Module):
    """Linear layer with the same initialisation and equalisation as ScaledConv2d."""

    def __init__(
        self,
        in_features: int,  # input width
        out_features: int,  # output width
        gain: float = HIDDEN_GAIN,  # He gain: sqrt(2) before a LeakyReLU, 1 for linear outputs
        equalized: bool = True,  # scale at run time (equalised learning rate) instead of at init
    ):
        super().__init__()
        he_std = gain / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.normal_(self.weight, 0.0, 1.0 if equalized else he_std)
        self.scale = he_std if equalized else 1.0

    def extra_repr(self) -> str:
        out_features, in_features = self.weight.shape
        return f"{in_features}, {out_features}, scale={self.scale:.4g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _scaled(self.weight, self.scale), self.bias)


def _scaled(weight: torch.Tensor, scale: float) -> torch.Tensor:
    """weight * scale, without the multiplication (a kernel forward and one backward) when the scale is 1: plain
    weights (`equalized=False`, every preset's default) are used as stored, which is the same value bit for bit."""
    return weight if scale == 1.0 else weight * scale


class PixelNorm(nn.Module):
    """Normalise each pixel's feature vector to unit root-mean-square (per sample: no batch statistics)."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _PixelNormFunction.apply(x, self.eps)


class _PixelNormFunction(torch.autograd.Function):
    """y = x * rsqrt(mean_c(x^2) + eps), with its gradient written out: 5 operator calls each way instead of the
    dozen autograd's chain rule makes of the expression (pixel norms are a third of the low-resolution calls).

    dL/dx = r * (g - y * mean_c(g * y)), with r = rsqrt(mean_c(x^2) + eps). Computed in float32: the mean of
    squares overflows float16 once activations pass ~256.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = _at_least_float32(x)
        r = torch.rsqrt(x32.pow(2).mean(dim=1, keepdim=True).add_(eps))
        y = x32 * r
        ctx.save_for_backward(y, r)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        y, r = ctx.saved_tensors
        g = _at_least_float32(grad)
        # As separate multiply and subtract, not one addcmul (a call fewer): addcmul rounds differently, and every
        # figure measured since this gradient was written comes from this order of operations.
        return (r * (g - y * (g * y).mean(dim=1, keepdim=True))).to(grad.dtype), None


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose batch statistics cover the batch of every process, so N processes train exactly as one
    process with the global batch would, and the running statistics stay equal on every rank.

    It synchronises only while `synchronised` is True, which `batch_statistics_over_processes` sets around
    each training iteration: every rank runs the same forwards then, while a forward on one process alone
    (snapshots, evaluations on the main process, exports) must not wait for the others. Otherwise, as with
    one process, it is plain BatchNorm2d. Synchronised, the per-channel sums of x and x^2 and the count go
    through one differentiable all-reduce (torch.distributed.nn), on any backend: unlike torch's
    SyncBatchNorm, which refuses CPU tensors, it also runs under gloo. State dicts are BatchNorm2d's.
    """

    synchronised = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if not (self.synchronised and self.training and distributed and torch.distributed.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        x32 = x.float()
        channels = x.shape[1]
        count = torch.full((1,), x.numel() / channels, device=x.device, dtype=torch.float32)
        totals = all_reduce(torch.cat([x32.sum(dim=(0, 2, 3)), x32.pow(2).sum(dim=(0, 2, 3)), count]))
        n = totals[-1]
        mean = totals[:channels] / n
        var = (totals[channels : 2 * channels] / n - mean.pow(2)).clamp_min(0)  # biased, as BatchNorm2d normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), momentum)  # unbiased, as torch
        scale = torch.rsqrt(var + self.eps)
        y = (x32 - mean[None, :, None, None]) * scale[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def global_batch_norms(*networks: nn.Module) -> list[GlobalBatchNorm2d]:
    """The GlobalBatchNorm2d layers of `networks` (an empty list for networks without batch norm)."""
    return [m for net in networks for m in net.modules() if isinstance(m, GlobalBatchNorm2d)]


@contextmanager
def batch_statistics_over_processes(layers: list[GlobalBatchNorm2d]) -> Iterator[None]:
    """While inside, `layers` take their batch statistics over every process (see GlobalBatchNorm2d)."""
    for layer in layers:
        layer.synchronised = True
    try:
        yield
    finally:
        for layer in layers:
            layer.synchronised = False


@contextmanager
def running_statistics_frozen(layers: list[nn.modules.batchnorm._BatchNorm]) -> Iterator[None]:
    """While inside, batch-norm `layers` still normalise with batch statistics but leave their running
    statistics alone: a snapshot or evaluation on one process must not change training state."""
    tracked = [layer.track_running_stats for layer in layers]
    for layer in layers:
        layer.track_running_stats = False
    try:
        yield
    finally:
        for layer, before in zip(layers, tracked, strict=True):
            layer.track_running_stats = before


def make_norm(kind: str, channels: int) -> nn.Module:
    """The normalisation layer named `kind` (one of NORMS) for `channels` feature maps."""
    if kind == "pixel":
        return PixelNorm()
    if kind == "batch":
        return GlobalBatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


def conv_act_norm(in_channels: int, out_channels: int, norm: str, equalized: bool) -> list[nn.Module]:
    """3x3 convolution, LeakyReLU(0.2), normalisation: the unit every block is made of."""
    return [
        ScaledConv2d(in_channels, out_channels, 3, equalized=equalized),
        nn.LeakyReLU(LEAKY_SLOPE),
        make_norm(norm, out_channels),
    ]


def upsample2(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling (each pixel copied to a 2x2 square)."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downsample2(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling."""
    return F.avg_pool2d(x, 2)


def blend_reals(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Real images at resolution r as the networks see them mid-fade.

    (1 - alpha) * upsample_nearest(avg_pool2(x)) + alpha * x; x itself when alpha == 1. Average pooling
    of the result equals average pooling of x, so the downward models' old path sees the same r/2 images.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if alpha == 1:
        return x
    assert x.ndim == 4 and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0, (
        f"expected images (B, C, H, W) with even H and W, got {tuple(x.shape)}"
    )
    coarse = upsample2(downsample2(x))
    if alpha == 0:
        return coarse
    return (1.0 - alpha) * coarse + alpha * x


def fade_in(alpha: float, old_path: Callable[[], torch.Tensor], new_path: Callable[[], torch.Tensor]) -> torch.Tensor:
    """(1 - alpha) * old_path() + alpha * new_path(), evaluating only the paths with a non-zero weight.

    Skipping the zero-weight path makes alpha = 0 and alpha = 1 exact and saves the unused forward.
    """
    if alpha == 1:
        return new_path()
    if alpha == 0:
        return old_path()
    return (1.0 - alpha) * old_path() + alpha * new_path()

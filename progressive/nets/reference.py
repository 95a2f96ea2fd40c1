"""Fixed-resolution reference networks: the paper's CIFAR-10 networks (32x32, its code) and their 64x64
extension for CelebA and LSUN (section 4.1).

Generator: DCGAN-style transposed convolutions with batch norm (statistics over every process's batch,
`GlobalBatchNorm2d`); energy model and
inference model: strided-convolution trunks with LeakyReLU and no normalisation.
"""

from __future__ import annotations

import torch
from torch import nn

from progressive.nets.layers import GlobalBatchNorm2d, StagedNetwork, as_rgb, check_image_channels


def init_reference_weights(module: nn.Module, std: float = 0.02) -> None:
    """Initialise as the reference: conv weights N(0, std), BN weights N(1, std), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


def _side(channels: tuple[int, ...]) -> int:
    """The image side of a reference network: 4x4, doubled by each entry after the first."""
    return 4 * 2 ** (len(channels) - 1)


def _down_trunk(channels: list[int], slope: float, batch_norm: bool = False) -> nn.Sequential:
    """3x3 stride-1 stem to channels[0], then one 4x4 stride-2 conv per further entry (with batch norm after each
    of those when `batch_norm`, as the paper's 64x64 LSUN networks)."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, channels[0], 3, 1, 1, bias=False),
        nn.LeakyReLU(slope),
    ]
    for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
        layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False)]
        layers += [GlobalBatchNorm2d(c_out)] if batch_norm else []
        layers += [nn.LeakyReLU(slope)]
    return nn.Sequential(*layers)


class ReferenceGenerator(StagedNetwork):
    """g(z): latent (B, latent_dim) -> image (B, 3, 32, 32) in [-1, 1].

    With image_channels=1 the last transposed convolution draws one channel, shown as three identical ones (as the
    progressive generator; docs/architecture.md, "Grayscale")."""

    def __init__(
        self,
        latent_dim: int = 100,  # dimension of z
        channels: tuple[int, ...] = (512, 512, 256, 128),  # 4x4 projection, then one 2x upsampling per further entry
        image_channels: int = 3,  # 3 colour; 1 grayscale: one channel drawn, repeated to three after tanh
    ):
        super().__init__(_side(channels))  # a fixed resolution
        check_image_channels(image_channels)
        self.latent_dim = latent_dim
        self.image_channels = image_channels
        layers: list[nn.Module] = []
        c_prev = latent_dim
        for i, c in enumerate(channels):
            stride, padding = (1, 0) if i == 0 else (2, 1)
            layers += [
                nn.ConvTranspose2d(c_prev, c, 4, stride, padding, bias=False),
                GlobalBatchNorm2d(c),
                nn.ReLU(inplace=True),
            ]
            c_prev = c
        layers += [nn.ConvTranspose2d(c_prev, image_channels, 3, 1, 1, bias=True), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_reference_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        assert z.ndim == 2 and z.shape[1] == self.latent_dim, f"expected z (B, {self.latent_dim}), got {tuple(z.shape)}"
        image = as_rgb(self.net(z[:, :, None, None]))
        assert image.shape[1:] == (3, self.resolution, self.resolution), f"generator gave {tuple(image.shape)}"
        return image


class ReferenceEnergy(StagedNetwork):
    """Raw energy network output s(x): image (B, 3, 32, 32) -> (B,). The objective applies the energy form."""

    def __init__(self, channels: tuple[int, ...] = (64, 128, 256, 256), slope: float = 0.2, batch_norm: bool = False):
        super().__init__(_side(channels))  # a fixed resolution
        self.trunk = _down_trunk(list(channels), slope, batch_norm)
        self.head = nn.Conv2d(channels[-1], 1, 4, 1, 0, bias=True)
        init_reference_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (3, self.resolution, self.resolution), (
            f"expected (B, 3, {self.resolution}, {self.resolution}), got {tuple(x.shape)}"
        )
        return self.head(self.trunk(x)).flatten(1).squeeze(1)


class ReferenceInference(StagedNetwork):
    """q(z|x): image (B, 3, 32, 32) -> (mu, logvar), each (B, latent_dim)."""

    def __init__(
        self,
        latent_dim: int = 100,  # dimension of z
        channels: tuple[int, ...] = (64, 128, 256, 512),  # stem, then one stride-2 block per further entry
        slope: float = 0.2,  # LeakyReLU slope
        batch_norm: bool = False,  # batch norm after each stride-2 convolution
    ):
        super().__init__(_side(channels))  # a fixed resolution
        self.latent_dim = latent_dim
        self.trunk = _down_trunk(list(channels), slope, batch_norm)
        self.head_mu = nn.Conv2d(channels[-1], latent_dim, 4, 1, 0, bias=True)
        self.head_logvar = nn.Conv2d(channels[-1], latent_dim, 4, 1, 0, bias=True)
        init_reference_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert x.shape[1:] == (3, self.resolution, self.resolution), (
            f"expected (B, 3, {self.resolution}, {self.resolution}), got {tuple(x.shape)}"
        )
        h = self.trunk(x)
        return self.head_mu(h).flatten(1), self.head_logvar(h).flatten(1)

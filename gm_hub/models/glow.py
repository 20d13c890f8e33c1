"""Glow [1]: a multi-scale normalizing flow of act-norm, invertible 1x1 convolutions and affine couplings.

Pixels are dequantized with uniform noise, y = (x + u) / 256, and centred (y - 1/2) as in [1]. Each level
squeezes, applies `num_steps` flow steps (act-norm, 1x1 convolution in LU form, channel-wise affine coupling
[1, section 3]), and, except the last, splits off half of its channels under a Gaussian prior predicted from
the other half (the learned split prior of [1]'s code). The density is exact by the change of variables; the
scaling by 1/256 is part of the log-determinant, so `log_prob` is a density over the [0, 256) pixel scale and
its mean over u a lower bound on the discrete log-likelihood (Theis et al. [2]): bits/dim compare with the
VAE's and PixelCNN's.

Act-norm takes its data-dependent initialization from `initialize_from_data`, which the training loop calls
once before training; a loaded model never re-initializes.

Departures from [1]: the coupling's log-scale is scale * tanh(raw) (RealNVP's bound) rather than
log sigmoid(raw + 2); the coupling networks have no act-norm inside; the top prior is a fixed standard normal.

[1] Kingma & Dhariwal, Glow: Generative Flow with Invertible 1x1 Convolutions, 2018. https://arxiv.org/abs/1807.03039
[2] Theis, van den Oord & Bethge, A note on the evaluation of generative models, 2016. https://arxiv.org/abs/1511.01844
"""

import math
from dataclasses import dataclass

import torch

from ..config import ConfigError, ImageShape, check_ranges
from ..distributions import NUM_LEVELS, randn
from ..flows import (
    ActNorm,
    AffineCoupling,
    InvertibleConv1x1,
    MultiScaleFlow,
    Split,
    Squeeze,
    data_dependent_init,
    dequantize,
    quantize,
    standard_normal_log_prob,
)
from ..hub import HubModel

INIT_SEED = 0  # the dequantization noise of the data-dependent initialization: the same on every process


@dataclass
class GlowConfig(ImageShape):
    num_levels: int = 2  # each level squeezes (halving the resolution); all but the last split off half
    num_steps: int = 8  # flow steps (act-norm, 1x1 convolution, coupling) per level
    hidden_channels: int = 64  # width of the coupling networks

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, ("num_levels", 1, 6), ("num_steps", 1, 64), ("hidden_channels", 1, 1024))
        if self.resolution % 2**self.num_levels:
            raise ConfigError(f"resolution must be divisible by 2^num_levels = {2**self.num_levels}, got {self.resolution}")


class Glow(HubModel, family="flow", tags=["image-generation", "normalizing-flow", "glow"]):
    """Glow (Kingma & Dhariwal): exact log-density of dequantized 8-bit images, temperature sampling."""

    def __init__(self, config: GlowConfig):
        super().__init__()
        self.config = config
        channels = config.num_channels
        scales, splits = [], []
        for index in range(config.num_levels):
            layers = [Squeeze()]
            channels *= 4
            for _ in range(config.num_steps):
                layers += [
                    ActNorm(channels),
                    InvertibleConv1x1(channels),
                    AffineCoupling(channels, config.hidden_channels, checkerboard=False, parity=0),
                ]
            scales.append(layers)
            if index < config.num_levels - 1:
                splits.append(Split(channels, learned_prior=True))
                channels -= splits[-1].num_factored
        shape = (config.num_channels, config.resolution, config.resolution)
        self.flow = MultiScaleFlow(shape, scales, splits)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def num_dims(self) -> int:
        return self.config.num_channels * self.config.resolution**2

    def encode_with_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantized images y = (x + u) / 256 in [0, 1), (B, C, H, W) -> z (B, D), log|det dz/dy| (B,)."""
        return self.flow(y - 0.5)  # centring has log-det 0

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        """Dequantized images y = (x + u) / 256 in [0, 1), float (B, C, H, W) -> latents z (B, D)."""
        return self.encode_with_log_det(y)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents z (B, D) -> y (B, C, H, W), the inverse of `encode`."""
        return self.flow.inverse(z) + 0.5

    def log_prob(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """log p(x + u) in nats for one u ~ U[0, 1)^D on the [0, 256) pixel scale: uint8 (B, C, H, W) -> (B,).

        Exact for the dequantized data; with uniform dequantization its mean over u is a lower bound on the
        discrete log P(x) (Theis et al.), so bits/dim from it are an upper bound.
        """
        y, scaling_log_det = dequantize(images.to(self.device), generator)
        z, log_det = self.encode_with_log_det(y)
        return standard_normal_log_prob(z) + log_det + scaling_log_det

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Negative log-likelihood per dimension in nats ("loss") and in bits ("bits_per_dim")."""
        loss = -self.log_prob(batch["images"]).mean() / self.num_dims
        return {"loss": loss, "bits_per_dim": loss / math.log(2)}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.loss(batch)

    @torch.no_grad()
    def initialize_from_data(self, batch: dict[str, torch.Tensor]) -> None:
        """Data-dependent act-norm initialization [1, section 3.1]: each act-norm's output on `batch` gets zero
        mean and unit variance per channel. Call once before training, never on a loaded model."""
        with data_dependent_init(self):
            self.log_prob(batch["images"], generator=torch.Generator().manual_seed(INIT_SEED))

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """z ~ N(0, temperature^2 I), decoded and quantized: (num_samples, C, H, W) uint8.

        A temperature below 1 (0.7 in [1]) trades diversity for cleaner samples.
        """
        z = temperature * randn((num_samples, self.num_dims), generator, self.device)
        return quantize(self.decode(z))

    @torch.no_grad()
    def interpolate(self, image_a: torch.Tensor, image_b: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Decode a straight line in z between two images (bin centres): (C, H, W) uint8 twice -> (steps, C, H, W) uint8."""
        device = self.device
        y = (torch.stack([image_a, image_b]).to(device).float() + 0.5) / NUM_LEVELS
        z = self.encode(y)
        weights = torch.linspace(0, 1, steps, device=device)[:, None]
        return quantize(self.decode((1 - weights) * z[0] + weights * z[1]))  # (steps, D) line

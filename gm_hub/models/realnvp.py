"""RealNVP [1]: a normalizing flow of affine coupling layers, for 8-bit images.

Pixels are dequantized with uniform noise, y = (x + u) / 256, and mapped to an unbounded space by the logit
transform [1, section 4.1]. Each scale but the last has checkerboard couplings, a squeeze, channel-wise
couplings, and factors out half of its channels as standard-normal latents; the last scale has checkerboard
couplings only [1, section 3.6]. The model density is exact by the change of variables; the scaling by 1/256
and the logit are part of the log-determinant, so `log_prob` is a density over the [0, 256) pixel scale, and
its mean over u a lower bound on the discrete log-likelihood (Theis et al. [2]): bits/dim compare with the
VAE's and PixelCNN's.

Departures from [1]: act-norm (Glow [3]) with data-dependent initialization stands in for batch norm after
each coupling (exact, deterministic in eval mode, and device-agnostic); the coupling networks are three
plain convolutions rather than ResNets, which trains fast on a CPU.

[1] Dinh, Sohl-Dickstein & Bengio, Density estimation using Real NVP, 2017. https://arxiv.org/abs/1605.08803
[2] Theis, van den Oord & Bethge, A note on the evaluation of generative models, 2016. https://arxiv.org/abs/1511.01844
[3] Kingma & Dhariwal, Glow: Generative Flow with Invertible 1x1 Convolutions, 2018. https://arxiv.org/abs/1807.03039
"""

import math
from dataclasses import dataclass

import torch

from ..config import ConfigError, ImageShape, check_ranges
from ..distributions import NUM_LEVELS, randn
from ..flows import (
    ActNorm,
    AffineCoupling,
    LogitTransform,
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
class RealNVPConfig(ImageShape):
    num_scales: int = 2  # each scale but the last squeezes (halving the resolution) and factors out half
    num_couplings: int = 3  # checkerboard couplings per scale, as many channel-wise ones after its squeeze
    hidden_channels: int = 64  # width of the coupling networks
    logit_alpha: float = 0.05  # y -> logit(alpha + (1 - 2 alpha) y); [1] uses 0.05 on CIFAR-10

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, ("num_scales", 1, 6), ("num_couplings", 1, 32), ("hidden_channels", 1, 1024),
                     ("logit_alpha", 1e-6, 0.25))
        if self.resolution % 2 ** (self.num_scales - 1):
            raise ConfigError(f"resolution must be divisible by 2^(num_scales - 1) = {2 ** (self.num_scales - 1)}, "
                              f"got {self.resolution}")


class RealNVP(HubModel, family="flow", tags=["image-generation", "normalizing-flow", "realnvp"]):
    """RealNVP (Dinh et al.) with act-norm: exact log-density of dequantized 8-bit images."""

    def __init__(self, config: RealNVPConfig):
        super().__init__()
        self.config = config
        self.logit = LogitTransform(config.logit_alpha)
        channels, width = config.num_channels, config.hidden_channels
        scales, splits = [], []
        for index in range(config.num_scales):
            last = index == config.num_scales - 1
            layers = []
            # Checkerboard couplings of alternating parity, one more on the last scale [1, section 4.1].
            for parity in range(config.num_couplings + last):
                layers += [AffineCoupling(channels, width, checkerboard=True, parity=parity % 2), ActNorm(channels)]
            if not last:
                layers.append(Squeeze())
                channels *= 4
                for parity in range(config.num_couplings):
                    layers += [AffineCoupling(channels, width, checkerboard=False, parity=parity % 2), ActNorm(channels)]
                splits.append(Split(channels, learned_prior=False))
                channels -= splits[-1].num_factored
            scales.append(layers)
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
        h, logit_log_det = self.logit(y)
        z, flow_log_det = self.flow(h)
        return z, logit_log_det + flow_log_det

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        """Dequantized images y = (x + u) / 256 in [0, 1), float (B, C, H, W) -> latents z (B, D)."""
        return self.encode_with_log_det(y)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents z (B, D) -> y (B, C, H, W), the inverse of `encode` (in [0, 1) for z from the model)."""
        return self.logit.inverse(self.flow.inverse(z))

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
        """Data-dependent act-norm initialization [3, section 3.1]: each act-norm's output on `batch` gets zero
        mean and unit variance per channel. Call once before training, never on a loaded model."""
        with data_dependent_init(self):
            self.log_prob(batch["images"], generator=torch.Generator().manual_seed(INIT_SEED))

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """z ~ N(0, temperature^2 I), decoded and quantized: (num_samples, C, H, W) uint8."""
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

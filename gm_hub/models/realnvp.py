"""RealNVP [1]: a normalizing flow of affine coupling layers, for 8-bit images.

Pixels are dequantized with uniform noise (or learned noise, see `gm_hub.flows`), y = (x + u) / 256, and
mapped to an unbounded space by the logit transform [1, section 4.1]. Each scale but the last has checkerboard couplings, a squeeze, channel-wise
couplings, and factors out half of its channels as standard-normal latents; the last scale has checkerboard
couplings only [1, section 3.6]. The model density is exact by the change of variables; the scaling by 1/256
and the logit are part of the log-determinant, so `log_prob` is a density over the [0, 256) pixel scale, and
its mean over u a lower bound on the discrete log-likelihood (Theis et al. [2]): bits/dim compare with the
VAE's and PixelCNN's.

Departures from [1]: act-norm (Glow [3]) with data-dependent initialization stands in for batch norm after
each coupling (exact, deterministic in eval mode, and device-agnostic); the coupling networks are three
plain convolutions rather than ResNets, which trains fast on a CPU.

The density, the loss, sampling, interpolation and the maps between pixels and the latent are
`gm_hub.flows.ImageFlow`'s, shared with Glow; this file is the network and its input transform.

[1] Dinh, Sohl-Dickstein & Bengio, Density estimation using Real NVP, 2017. https://arxiv.org/abs/1605.08803
[2] Theis, van den Oord & Bethge, A note on the evaluation of generative models, 2016. https://arxiv.org/abs/1511.01844
[3] Kingma & Dhariwal, Glow: Generative Flow with Invertible 1x1 Convolutions, 2018. https://arxiv.org/abs/1807.03039
"""

from dataclasses import dataclass

from ..config import ConfigError, check_ranges
from ..flows import (ActNorm, AffineCoupling, ImageFlow, ImageFlowConfig, LogitTransform, MultiScaleFlow, Split, Squeeze,
                     make_dequantizer)


@dataclass
class RealNVPConfig(ImageFlowConfig):
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


class RealNVP(ImageFlow, family="flow", tags=["image-generation", "normalizing-flow", "realnvp"]):
    """RealNVP (Dinh et al.) with act-norm: exact log-density of dequantized 8-bit images."""

    def __init__(self, config: RealNVPConfig):
        super().__init__()
        self.config = config
        self.logit = LogitTransform(config.logit_alpha)
        self.dequantizer = make_dequantizer(config)
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

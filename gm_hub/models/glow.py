"""Glow [1]: a multi-scale normalizing flow of act-norm, invertible 1x1 convolutions and affine couplings.

Pixels are dequantized with uniform (or learned, see `gm_hub.flows`) noise, y = (x + u) / 256, and mapped by
RealNVP's logit transform [3] (or centred, y - 1/2, as in [1], with `logit_alpha=None`). Each level squeezes,
applies `num_steps` flow steps (act-norm, 1x1 convolution in LU form, channel-wise affine coupling [1, section
3]), and, except the last, splits off half of its channels under a Gaussian prior predicted from the other
half (the learned split prior of [1]'s code). The density is exact by the change of variables; the scaling by
1/256 is part of the log-determinant, so `log_prob` is a density over the [0, 256) pixel scale and its mean
over u a lower bound on the discrete log-likelihood (Theis et al. [2]): bits/dim compare with the VAE's and
PixelCNN's.

Act-norm takes its data-dependent initialization from `initialize_from_data`, which the training loop calls
once before training; a loaded model never re-initializes.

Departures from [1]: the logit transform, which spreads MNIST's pixels, piled at 0 and 255, over an unbounded
space (1.72 against 2.12 test bits/dim after 4 CPU minutes); the coupling's log-scale is [1]'s sigmoid shifted to
start at the identity, and its shift is bounded too, so that no test digit's density overflows; the coupling
networks have no act-norm inside; the top prior is a fixed standard normal.

The density, the loss, sampling, interpolation and the maps between pixels and the latent are
`gm_hub.flows.ImageFlow`'s, shared with RealNVP; this file is the network and its input transform.

[1] Kingma & Dhariwal, Glow: Generative Flow with Invertible 1x1 Convolutions, 2018. https://arxiv.org/abs/1807.03039
[2] Theis, van den Oord & Bethge, A note on the evaluation of generative models, 2016. https://arxiv.org/abs/1511.01844
[3] Dinh, Sohl-Dickstein & Bengio, Density estimation using Real NVP, 2017. https://arxiv.org/abs/1605.08803
"""

from dataclasses import dataclass

from ..config import ConfigError, check_ranges
from ..flows import (COUPLING_LOG_SCALES, ActNorm, AffineCoupling, ImageFlow, ImageFlowConfig, InvertibleConv1x1,
                     LogitTransform, MultiScaleFlow, Split, Squeeze, make_dequantizer)


@dataclass
class GlowConfig(ImageFlowConfig):
    num_levels: int = 2  # each level squeezes (halving the resolution); all but the last split off half
    num_steps: int = 8  # flow steps (act-norm, 1x1 convolution, coupling) per level
    hidden_channels: int = 64  # width of the coupling networks
    # "sigmoid" bounds each coupling's scale (the official Glow code); "tanh" is RealNVP's scale * tanh, which
    # let a 16-step Glow map a few test digits to |z| ~ 1e63 (benchmarks/gpu_runs.md)
    coupling_log_scale: str = "sigmoid"
    # A bound on each coupling's shift (None: unbounded); the bounded log-scale alone still let a full-size Glow
    # send one test digit to bits/dim 28,311 through the shift (benchmarks/gpu_runs.md)
    coupling_max_shift: float | None = 5.0
    # None: [1]'s centring, y - 1/2. A number: RealNVP's logit transform with this alpha, which spreads the
    # pixels piled at 0 and 255 over an unbounded space (benchmarks/flow_results.md)
    logit_alpha: float | None = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, ("num_levels", 1, 6), ("num_steps", 1, 64), ("hidden_channels", 1, 1024))
        if self.coupling_max_shift is not None:
            check_ranges(self, ("coupling_max_shift", 0.1, 1000.0))
        if self.logit_alpha is not None:
            check_ranges(self, ("logit_alpha", 1e-6, 0.25))
        if self.coupling_log_scale not in COUPLING_LOG_SCALES:
            raise ConfigError(f"coupling_log_scale must be one of {COUPLING_LOG_SCALES}, got {self.coupling_log_scale!r}")
        if self.resolution % 2**self.num_levels:
            raise ConfigError(f"resolution must be divisible by 2^num_levels = {2**self.num_levels}, got {self.resolution}")


class Glow(ImageFlow, family="flow", tags=["image-generation", "normalizing-flow", "glow"]):
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
                    AffineCoupling(channels, config.hidden_channels, checkerboard=False, parity=0,
                                   log_scale=config.coupling_log_scale, max_shift=config.coupling_max_shift),
                ]
            scales.append(layers)
            if index < config.num_levels - 1:
                splits.append(Split(channels, learned_prior=True))
                channels -= splits[-1].num_factored
        shape = (config.num_channels, config.resolution, config.resolution)
        self.flow = MultiScaleFlow(shape, scales, splits)
        self.logit = LogitTransform(config.logit_alpha) if config.logit_alpha is not None else None
        self.dequantizer = make_dequantizer(config)

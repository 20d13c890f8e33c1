"""Normalizing-flow layers shared by RealNVP [1], Glow [2] and the VAE's flow posterior [3].

Image layers map data towards the latent in `forward(x) -> (y, log_det)` and back in `inverse(y) -> x`;
`log_det` is log|det dy/dx| per example, (B,) in nats. A flow over 8-bit images starts from dequantized
pixels y = (x + u) / 256, u ~ U[0, 1)^D (`dequantize`); E_u[log p(y)] - D log 256 is then a lower bound on
the discrete log P(x) (Theis et al. [4]), and bits/dim computed from it compare with discrete models. With
variational dequantization [5] (`dequantization="variational"`), u ~ q(u | x) is learned with the flow and
E_q[log p(y) - log q(u | x)] - D log 256 is the bound: tighter, since q can put the noise where p is high.

The latent of a multi-scale flow [1, section 3.6] is one flat (B, D) tensor: the halves factored out at each
scale, then the last scale's output (`MultiScaleFlow`). Act-norm [2, section 3.1] starts as the identity and
takes its data-dependent initialization only inside `data_dependent_init`, never lazily on a first forward
(which would re-initialize a loaded model).

`ImageFlow` is the model both image flows are: a `HubModel` with the density, the loss, act-norm's
initialization, temperature sampling, interpolation and the maps between dequantized pixels and the latent
(`encode_with_log_det(y)`, `decode(z)`) written once; RealNVP and Glow add only their network and their input
transform (the logit, or centring).

The VAE's posterior flows act on vectors with parameters the encoder predicts (amortized): planar and radial
flows [3, section 4.1, appendix A].

[1] Dinh, Sohl-Dickstein & Bengio, Density estimation using Real NVP, 2017. https://arxiv.org/abs/1605.08803
[2] Kingma & Dhariwal, Glow: Generative Flow with Invertible 1x1 Convolutions, 2018. https://arxiv.org/abs/1807.03039
[3] Rezende & Mohamed, Variational Inference with Normalizing Flows, 2015. https://arxiv.org/abs/1505.05770
[4] Theis, van den Oord & Bethge, A note on the evaluation of generative models, 2016. https://arxiv.org/abs/1511.01844
[5] Ho et al., Flow++: Improving Flow-Based Generative Models with Variational Dequantization and Architecture
    Design, 2019. https://arxiv.org/abs/1902.00275
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ConfigError, ImageShape, check_ranges
from .distributions import NUM_LEVELS, rand, randn, to_unit_range
from .hub import HubModel

INIT_SEED = 0  # the dequantization noise of the data-dependent initialization: the same on every process

# --- 8-bit pixels <-> the flow's continuous input ---------------------------------------------------------


DEQUANTIZATIONS = ("uniform", "variational")


@dataclass
class ImageFlowConfig(ImageShape):
    """What every image flow's config has besides its network: how 8-bit pixels become continuous."""

    # "uniform": u ~ U[0, 1)^D [4]; "variational": u ~ q(u | x), learned with the flow [5]
    dequantization: str = "uniform"
    dequantizer_channels: int = 32  # width of q(u | x)'s network ("variational" only)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, ("dequantizer_channels", 1, 1024))
        if self.dequantization not in DEQUANTIZATIONS:
            raise ConfigError(f"dequantization must be one of {DEQUANTIZATIONS}, got {self.dequantization!r}")


def dequantize(images: torch.Tensor, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, C, H, W) -> y = (x + u) / 256 in [0, 1], with u = `noise` or u ~ U[0, 1), and the log-det of
    v = x + u -> y, -D log 256 (B,): it turns a density over y into one over the [0, 256) pixel scale."""
    if noise is None:
        noise = rand(tuple(images.shape), generator, images.device)
    y = (images.float() + noise) / NUM_LEVELS
    log_det = torch.full((len(images),), -images[0].numel() * math.log(NUM_LEVELS), device=images.device)
    return y, log_det


class VariationalDequantizer(nn.Module):
    """q(u | x) over u in (0, 1)^D: u = sigmoid(m + s e), e ~ N(0, I), with the mean m and log-scale log s of
    every subpixel from a small convolutional network of the image. Flow++ [5] uses a conditional flow for q;
    this logit-normal is its simplest case, and already lets q follow the model's density inside each bin."""

    def __init__(self, num_channels: int, hidden_channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(num_channels, hidden_channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden_channels, 2 * num_channels, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)  # starts as u = sigmoid(e) for every image, close to uniform
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, C, H, W) -> noise u (B, C, H, W) in (0, 1), log q(u | x) (B,) in nats."""
        mean, log_scale = self.net(to_unit_range(images)).chunk(2, dim=1)
        log_scale = log_scale.clamp(-7.0, 5.0)  # keeps q a proper, finite density
        normal = randn(tuple(mean.shape), generator, images.device)
        h = mean + torch.exp(log_scale) * normal
        # log q(u) = log N(h; m, s^2) + log|dh/du|, with dh/du = 1 / (u (1 - u)) = 1 / (sigmoid(h) sigmoid(-h))
        log_q = standard_normal_log_prob(normal.flatten(1))
        log_q = log_q - _sum_per_example(log_scale + F.logsigmoid(h) + F.logsigmoid(-h))
        return torch.sigmoid(h), log_q


def make_dequantizer(config: ImageFlowConfig) -> VariationalDequantizer | None:
    """The flow's learned dequantizer, or None for uniform noise."""
    if config.dequantization == "uniform":
        return None
    return VariationalDequantizer(config.num_channels, config.dequantizer_channels)


def quantize(y: torch.Tensor) -> torch.Tensor:
    """y in [0, 1) (B, C, H, W) -> the 8-bit bin it falls in, uint8 (values outside are clamped)."""
    return (y * NUM_LEVELS).floor().clamp(0, NUM_LEVELS - 1).to(torch.uint8)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) in nats: (B, D) -> (B,)."""
    return -0.5 * (z**2 + math.log(2 * math.pi)).sum(1)


def _sum_per_example(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,)."""
    return x.flatten(1).sum(1)


class LogitTransform(nn.Module):
    """y in [0, 1] -> logit(alpha + (1 - 2 alpha) y), so the flow works on an unbounded space [1, section 4.1]."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha  # keeps the logit finite at y = 0 and y = 1

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.alpha + (1 - 2 * self.alpha) * y
        z = torch.log(s) - torch.log1p(-s)
        log_det = _sum_per_example(math.log(1 - 2 * self.alpha) - torch.log(s) - torch.log1p(-s))
        return z, log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)


# --- image layers ----------------------------------------------------------------------------------------


class Squeeze(nn.Module):
    """Each 2x2 block of pixels becomes 4 channels: (B, C, H, W) -> (B, 4C, H/2, W/2), log-det 0 [1, section 3.6]."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, channels, height, width = x.shape
        x = x.view(batch, channels, height // 2, 2, width // 2, 2)
        x = x.permute(0, 1, 3, 5, 2, 4).reshape(batch, 4 * channels, height // 2, width // 2)
        return x, x.new_zeros(batch)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = y.shape
        y = y.view(batch, channels // 4, 2, 2, height, width)  # (B, C, 2, 2, H/2, W/2)
        return y.permute(0, 1, 4, 2, 5, 3).reshape(batch, channels // 4, 2 * height, 2 * width)


class ActNorm(nn.Module):
    """y = (x + bias) * exp(log_scale) per channel [2, section 3.1]; identity until `data_dependent_init`."""

    def __init__(self, num_channels: int):
        super().__init__()
        # 1-D, as every bias and norm scale: the loop's weight decay leaves them alone.
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.initializing = False  # set only by data_dependent_init; not saved, so loading never re-initializes

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set bias and log-scale so that the output on x (B, C, H, W) has zero mean and unit variance per channel."""
        mean = x.mean((0, 2, 3))
        std = x.std((0, 2, 3), unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + 1e-6))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.initializing:
            self.initialize(x)
            self.initializing = False
        height, width = x.shape[2:]
        y = (x + self.bias.view(1, -1, 1, 1)) * torch.exp(self.log_scale).view(1, -1, 1, 1)
        return y, (height * width * self.log_scale.sum()).expand(len(x))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale).view(1, -1, 1, 1) - self.bias.view(1, -1, 1, 1)


@contextmanager
def data_dependent_init(model: nn.Module) -> Iterator[None]:
    """Within this block, each ActNorm of `model` initializes itself from the first batch it sees [2, section 3.1]."""
    norms = [module for module in model.modules() if isinstance(module, ActNorm)]
    for norm in norms:
        norm.initializing = True
    try:
        yield
    finally:
        for norm in norms:
            norm.initializing = False


class InvertibleConv1x1(nn.Module):
    """A learned channel mixing y = W x per pixel, W = P L (U + diag(sign * exp(log_s))) [2, section 3.2, LU form].

    P (a permutation) and the signs are fixed at initialization and saved as buffers; log|det W| = sum(log_s).
    """

    def __init__(self, num_channels: int):
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(num_channels, num_channels))[0]  # a random orthogonal start
        permutation, lower, upper = torch.linalg.lu(rotation)
        diagonal = upper.diagonal()
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign", diagonal.sign())
        self.lower = nn.Parameter(lower.tril(-1))
        self.upper = nn.Parameter(upper.triu(1))
        self.log_s = nn.Parameter(diagonal.abs().log())

    def weight(self) -> torch.Tensor:
        """W (C, C)."""
        eye = torch.eye(len(self.log_s), dtype=self.log_s.dtype, device=self.log_s.device)
        lower = self.lower.tril(-1) + eye  # only the strict triangles are free
        upper = self.upper.triu(1) + torch.diag(self.sign * torch.exp(self.log_s))
        return self.permutation @ lower @ upper

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        channels, height, width = x.shape[1:]
        y = F.conv2d(x, self.weight().view(channels, channels, 1, 1))
        return y, (height * width * self.log_s.sum()).expand(len(x))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        channels = y.shape[1]
        return F.conv2d(y, torch.linalg.inv(self.weight()).view(channels, channels, 1, 1))


def zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 3x3 convolution starting at zero, so that the layer it ends starts as the identity [2, section 3.3]."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


COUPLING_LOG_SCALES = ("tanh", "sigmoid")
SIGMOID_SCALE_AT_ZERO = math.log(1 / (1 + math.exp(-2.0)))  # log sigmoid(2): a zero net output leaves x as it is


class AffineCoupling(nn.Module):
    """y_b = x_b * exp(s(x_a)) + t(x_a), y_a = x_a [1, eq. 7-9]; log-det = sum(s).

    The split (a, b) is a checkerboard of pixels or the two halves of the channels [1, section 3.4]; `parity`
    says which part is kept (a). The log-scale s is `log_scale`:
    - "tanh": s = scale * tanh(raw) with a learned scale per channel, as [1]'s implementation;
    - "sigmoid": s = log sigmoid(raw + 2) - log sigmoid(2), the official Glow code's scale shifted to start
      at the identity: s < log(1 / sigmoid(2)) = 0.127, so a coupling stretches no dimension by more than
      1.13x, and an input unlike the training data cannot be blown up step after step.
    With `max_shift`, the shift is max_shift * tanh(raw / max_shift): the identity for small shifts, never
    beyond +-max_shift, so that the translation, too, stays bounded on inputs unlike the training data.
    """

    def __init__(self, num_channels: int, hidden_channels: int, checkerboard: bool, parity: int, log_scale: str = "tanh",
                 max_shift: float | None = None):
        super().__init__()
        if log_scale not in COUPLING_LOG_SCALES:
            raise ValueError(f"log_scale must be one of {COUPLING_LOG_SCALES}, got {log_scale!r}")
        self.checkerboard, self.parity, self.log_scale, self.max_shift = checkerboard, parity, log_scale, max_shift
        if checkerboard:
            # The network sees x * mask and the mask itself (a convolution can't tell kept pixels apart otherwise).
            in_channels, out_channels = num_channels + 1, num_channels
        else:
            first_half = num_channels // 2
            in_channels = first_half if parity == 0 else num_channels - first_half
            out_channels = num_channels - in_channels
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 1), nn.ReLU(),
            zero_conv(hidden_channels, 2 * out_channels),
        )
        if log_scale == "tanh":
            self.scale = nn.Parameter(torch.ones(out_channels))

    def _mask(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 1, H, W): 1 on the kept pixels."""
        height, width = x.shape[2:]
        rows, columns = torch.arange(height, device=x.device), torch.arange(width, device=x.device)
        return ((rows[:, None] + columns[None, :]) % 2 == self.parity).to(x.dtype)[None, None]

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Channels -> (kept, changed)."""
        first, second = x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2 :]
        return (first, second) if self.parity == 0 else (second, first)

    def _join(self, kept: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
        return torch.cat([kept, changed] if self.parity == 0 else [changed, kept], 1)

    def _log_scale_and_shift(self, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw, shift = self.net(condition).chunk(2, 1)
        if self.max_shift is not None:
            shift = self.max_shift * torch.tanh(shift / self.max_shift)
        if self.log_scale == "sigmoid":
            return F.logsigmoid(raw + 2.0) - SIGMOID_SCALE_AT_ZERO, shift
        return self.scale.view(1, -1, 1, 1) * torch.tanh(raw), shift

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.checkerboard:
            mask = self._mask(x)
            log_s, shift = self._log_scale_and_shift(torch.cat([x * mask, mask.expand(len(x), 1, -1, -1)], 1))
            log_s, shift = log_s * (1 - mask), shift * (1 - mask)  # kept pixels pass unchanged
            return x * torch.exp(log_s) + shift, _sum_per_example(log_s)
        kept, changed = self._split(x)
        log_s, shift = self._log_scale_and_shift(kept)
        return self._join(kept, changed * torch.exp(log_s) + shift), _sum_per_example(log_s)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        if self.checkerboard:
            mask = self._mask(y)
            log_s, shift = self._log_scale_and_shift(torch.cat([y * mask, mask.expand(len(y), 1, -1, -1)], 1))
            log_s, shift = log_s * (1 - mask), shift * (1 - mask)
            return (y - shift) * torch.exp(-log_s)
        kept, changed = self._split(y)
        log_s, shift = self._log_scale_and_shift(kept)
        return self._join(kept, (changed - shift) * torch.exp(-log_s))


class Split(nn.Module):
    """Factor out the last half of the channels [1, section 3.6]: (B, C, H, W) -> kept (B, C - C//2, H, W) and
    the factored-out part (B, C//2, H, W) as standard-normal noise.

    With `learned_prior` (Glow [2]), the factored part z has a Gaussian prior N(mean, exp(log_std)^2) predicted from
    the kept part; it leaves as eps = (z - mean) / exp(log_std), a bijection with log-det -sum(log_std).
    """

    def __init__(self, num_channels: int, learned_prior: bool):
        super().__init__()
        self.num_factored = num_channels // 2
        self.prior = zero_conv(num_channels - self.num_factored, 2 * self.num_factored) if learned_prior else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> kept, eps, log_det (B,)."""
        kept, factored = x[:, : x.shape[1] - self.num_factored], x[:, x.shape[1] - self.num_factored :]
        if self.prior is None:
            return kept, factored, x.new_zeros(len(x))
        mean, log_std = self.prior(kept).chunk(2, 1)
        return kept, (factored - mean) * torch.exp(-log_std), -_sum_per_example(log_std)

    def inverse(self, kept: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        if self.prior is None:
            return torch.cat([kept, eps], 1)
        mean, log_std = self.prior(kept).chunk(2, 1)
        return torch.cat([kept, mean + eps * torch.exp(log_std)], 1)


class MultiScaleFlow(nn.Module):
    """Scales of layers with a `Split` after each but the last [1, section 3.6]: (B, C, H, W) <-> z (B, D).

    z holds, flattened, what each split factored out, then the output of the last scale.
    """

    def __init__(self, input_shape: tuple[int, int, int], scales: list[list[nn.Module]], splits: list[Split]):
        super().__init__()
        if len(splits) != len(scales) - 1:
            raise ValueError(f"a multi-scale flow needs one split fewer than scales, got {len(splits)} and {len(scales)}")
        self.scales = nn.ModuleList(nn.ModuleList(layers) for layers in scales)
        self.splits = nn.ModuleList(splits)
        # The shape of each piece of z, followed through the squeezes and splits.
        channels, height, width = input_shape
        self.latent_shapes: list[tuple[int, int, int]] = []
        for index, layers in enumerate(scales):
            num_squeezes = sum(isinstance(layer, Squeeze) for layer in layers)
            channels, height, width = channels * 4**num_squeezes, height // 2**num_squeezes, width // 2**num_squeezes
            if index < len(splits):
                self.latent_shapes.append((splits[index].num_factored, height, width))
                channels -= splits[index].num_factored
        self.latent_shapes.append((channels, height, width))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> z (B, D), log|det dz/dx| (B,)."""
        log_det = x.new_zeros(len(x))
        pieces = []
        for index, layers in enumerate(self.scales):
            for layer in layers:
                x, layer_log_det = layer(x)
                log_det = log_det + layer_log_det
            if index < len(self.splits):
                x, eps, split_log_det = self.splits[index](x)
                pieces.append(eps.flatten(1))
                log_det = log_det + split_log_det
        pieces.append(x.flatten(1))
        return torch.cat(pieces, 1), log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D) -> x (B, C, H, W)."""
        sizes = [math.prod(shape) for shape in self.latent_shapes]
        pieces = [piece.reshape(len(z), *shape) for piece, shape in zip(z.split(sizes, 1), self.latent_shapes)]
        x = pieces[-1]
        for index in reversed(range(len(self.scales))):
            if index < len(self.splits):
                x = self.splits[index].inverse(x, pieces[index])
            for layer in reversed(self.scales[index]):
                x = layer.inverse(x)
        return x


# --- the image-flow model: what RealNVP and Glow share -------------------------------------------------


class ImageFlow(HubModel):
    """A normalizing flow over 8-bit images: exact log-density of dequantized pixels, temperature sampling.

    A subclass keeps its own `__init__(self, config)` (the type hint names its config class) and builds there
    `flow`, its network; `logit`, the map from dequantized pixels y to the network's input: a
    `LogitTransform`, or None for centring, y - 1/2; and `dequantizer`, `make_dequantizer(config)`. The config
    is an `ImageFlowConfig`.
    """

    flow: MultiScaleFlow
    logit: LogitTransform | None
    dequantizer: VariationalDequantizer | None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def num_dims(self) -> int:
        return self.config.num_channels * self.config.resolution**2

    def encode_with_log_det(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantized images y = (x + u) / 256 in [0, 1), (B, C, H, W) -> z (B, D), log|det dz/dy| (B,)."""
        if self.logit is None:
            h, input_log_det = y - 0.5, 0.0  # centring has log-det 0
        else:
            h, input_log_det = self.logit(y)
        z, flow_log_det = self.flow(h)
        return z, input_log_det + flow_log_det

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents z (B, D) -> y (B, C, H, W), the inverse of `encode` (in [0, 1) for z from the model)."""
        h = self.flow.inverse(z)
        return h + 0.5 if self.logit is None else self.logit.inverse(h)

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        """Dequantized images y = (x + u) / 256 in [0, 1), float (B, C, H, W) -> latents z (B, D)."""
        return self.encode_with_log_det(y)[0]

    def log_prob(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """log p(x + u) in nats for one u ~ U[0, 1)^D on the [0, 256) pixel scale: uint8 (B, C, H, W) -> (B,);
        with variational dequantization, log p(x + u) - log q(u | x) for one u ~ q(u | x).

        Exact for the dequantized data; its mean over u is a lower bound on the discrete log P(x) [4, 5], so
        bits/dim from it are an upper bound.
        """
        images = images.to(self.device)
        if self.dequantizer is None:
            y, scaling_log_det = dequantize(images, generator)
            log_q = 0.0
        else:
            noise, log_q = self.dequantizer(images, generator)
            y, scaling_log_det = dequantize(images, noise=noise)
        z, log_det = self.encode_with_log_det(y)
        return standard_normal_log_prob(z) + log_det + scaling_log_det - log_q

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Negative log-likelihood per dimension in nats ("loss") and in bits ("bits_per_dim")."""
        loss = -self.log_prob(batch["images"]).mean() / self.num_dims
        return {"loss": loss, "bits_per_dim": loss / math.log(2)}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.loss(batch)

    @torch.no_grad()
    def initialize_from_data(self, batch: dict[str, torch.Tensor]) -> None:
        """Data-dependent act-norm initialization [2, section 3.1]: each act-norm's output on `batch` gets zero
        mean and unit variance per channel. Call once before training, never on a loaded model."""
        with data_dependent_init(self):
            self.log_prob(batch["images"], generator=torch.Generator().manual_seed(INIT_SEED))

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """z ~ N(0, temperature^2 I), decoded and quantized: (num_samples, C, H, W) uint8.

        A temperature below 1 (0.7 in [2]) trades diversity for cleaner samples.
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


# --- vector flows with amortized parameters (the VAE posterior) -------------------------------------------


class PlanarFlow(nn.Module):
    """f(z) = z + u_hat * tanh(w.z + b), with u_hat constrained so that f is invertible [3, appendix A]."""

    @staticmethod
    def num_parameters(dim: int) -> int:
        """How many numbers the encoder predicts per flow: u, w (D each) and b."""
        return 2 * dim + 1

    @staticmethod
    def unpack(params: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 2D + 1) -> u (B, D), w (B, D), b (B, 1)."""
        return params[:, :dim], params[:, dim : 2 * dim], params[:, 2 * dim :]

    def forward(self, z: torch.Tensor, u: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
        """z, u, w: (B, D); b: (B, 1) -> f(z) (B, D), log|det df/dz| (B,)."""
        w_dot_u = (w * u).sum(1, keepdim=True)
        u_hat = u + (F.softplus(w_dot_u) - 1 - w_dot_u) * w / (w * w).sum(1, keepdim=True).clamp(min=1e-8)
        activation = (w * z).sum(1, keepdim=True) + b
        z = z + u_hat * torch.tanh(activation)
        psi = (1 - torch.tanh(activation) ** 2) * w  # h'(w.z + b) w
        log_det = torch.log((1 + (psi * u_hat).sum(1)).abs() + 1e-8)
        return z, log_det


class RadialFlow(nn.Module):
    """f(z) = z + beta h(alpha, r) (z - z0), h = 1 / (alpha + r), r = |z - z0| [3, section 4.1].

    alpha = softplus(alpha_raw) > 0 and beta = -alpha + softplus(beta_raw) >= -alpha make f invertible [3, appendix A].
    """

    @staticmethod
    def num_parameters(dim: int) -> int:
        """How many numbers the encoder predicts per flow: z0 (D), alpha and beta."""
        return dim + 2

    @staticmethod
    def unpack(params: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, D + 2) -> z0 (B, D), alpha_raw (B, 1), beta_raw (B, 1)."""
        return params[:, :dim], params[:, dim : dim + 1], params[:, dim + 1 :]

    def forward(self, z: torch.Tensor, z0: torch.Tensor, alpha_raw: torch.Tensor, beta_raw: torch.Tensor):
        """z, z0: (B, D); alpha_raw, beta_raw: (B, 1) -> f(z) (B, D), log|det df/dz| (B,)."""
        alpha = F.softplus(alpha_raw)
        slack = F.softplus(beta_raw)  # beta + alpha >= 0
        beta = slack - alpha
        difference = z - z0
        radius = difference.norm(dim=1, keepdim=True)
        z = z + beta / (alpha + radius) * difference
        # det = (1 + beta h)^(D-1) (1 + beta h + beta h'(r) r) with h'(r) = -h^2 [3, eq. 14], written as ratios
        # that stay accurate where beta is close to -alpha: 1 + beta h = (r + slack) / (alpha + r) and
        # 1 + beta alpha h^2 = (r (2 alpha + r) + alpha slack) / (alpha + r)^2.
        log_alpha_radius = torch.log(alpha + radius)
        log_det = (z.shape[1] - 1) * (torch.log(radius + slack) - log_alpha_radius)
        log_det = log_det + torch.log(radius * (2 * alpha + radius) + alpha * slack) - 2 * log_alpha_radius
        return z, log_det.squeeze(1)

"""What several families share about 8-bit pixels: scaling, a discretized likelihood, and noise.

The discretized logistic mixture is the likelihood of PixelCNN++ [1]: each subpixel value k in {0..255}
gets the mass of a logistic mixture on the bin [k - 1/2, k + 1/2] (on the [-1, 1] scale, bin width 2/255),
with the edge bins taking the tails. Unlike [1], channels here are independent given the parameters
(no linear coupling between R, G and B), which is what a latent-variable decoder needs.

Random draws use a CPU `torch.Generator` and are then moved to the device, so a seed gives the same
samples on the CPU and on CUDA.

[1] Salimans et al., PixelCNN++, 2017. https://arxiv.org/abs/1701.05517
"""

import math

import torch
import torch.nn.functional as F

NUM_LEVELS = 256  # 8-bit pixels


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., C, H, W) in 0..255 -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 in 0..255 (rounded, clamped)."""
    return ((images.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal noise drawn on the CPU generator, then moved to `device`."""
    return torch.randn(shape, generator=generator).to(device)


def rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) noise drawn on the CPU generator, then moved to `device`."""
    return torch.rand(shape, generator=generator).to(device)


def split_mixture_params(
    params: torch.Tensor, num_channels: int, num_mixtures: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, 3 * K * C, H, W) network output -> logits, means, log_scales, each (B, K, C, H, W)."""
    batch, _, height, width = params.shape
    params = params.view(batch, 3, num_mixtures, num_channels, height, width)
    logits, means, log_scales = params.unbind(1)
    return logits, means, log_scales.clamp(min=-7.0)  # floor on the scale keeps the bin masses finite


def _log_bin_mass(x: torch.Tensor, logits: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log of the mixture's mass on the bin of each value x in [-1, 1]; x broadcasts against (..., K, C, H, W)
    with the components on dim -4 -> (..., C, H, W)."""
    half_bin = 1.0 / (NUM_LEVELS - 1)
    inv_scale = torch.exp(-log_scales)
    upper = inv_scale * (x - means + half_bin)
    lower = inv_scale * (x - means - half_bin)
    log_cdf_upper = upper - F.softplus(upper)  # log sigmoid(upper), for the bottom bin 0
    log_survival_lower = -F.softplus(lower)  # log(1 - sigmoid(lower)), for the top bin 255
    bin_mass = torch.sigmoid(upper) - torch.sigmoid(lower)
    # Where the bin mass underflows, the density at the centre times the bin width is the accurate value.
    centre = inv_scale * (x - means)
    log_density_centre = centre - log_scales - 2.0 * F.softplus(centre)
    log_mass_inner = torch.where(
        bin_mass > 1e-5,
        torch.log(bin_mass.clamp(min=1e-12)),
        log_density_centre + torch.log(torch.tensor(2 * half_bin, device=x.device)),
    )
    log_mass = torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_survival_lower, log_mass_inner))
    return torch.logsumexp(log_mass + F.log_softmax(logits, dim=-4), dim=-4)


def discretized_logistic_mixture_log_prob(images: torch.Tensor, params: torch.Tensor, num_mixtures: int) -> torch.Tensor:
    """log p(images) in nats, summed over C, H, W.

    images: (B, C, H, W) uint8; params: (B, 3 * K * C, H, W) from the network. Returns (B,).
    """
    logits, means, log_scales = split_mixture_params(params, images.shape[1], num_mixtures)
    x = to_unit_range(images).unsqueeze(1)  # (B, 1, C, H, W), broadcast over the K components
    return _log_bin_mass(x, logits, means, log_scales).flatten(1).sum(1)


def discretized_logistic_mixture_level_log_probs(params: torch.Tensor, num_channels: int, num_mixtures: int) -> torch.Tensor:
    """log p(value) of each of the 256 values of every subpixel: params (B, 3 * K * C, H, W) -> (B, 256, C, H, W)."""
    logits, means, log_scales = (part.unsqueeze(1) for part in split_mixture_params(params.float(), num_channels, num_mixtures))
    levels = to_unit_range(torch.arange(NUM_LEVELS, dtype=torch.uint8, device=params.device))
    return _log_bin_mass(levels.view(1, NUM_LEVELS, 1, 1, 1, 1), logits, means, log_scales)  # (B, 256, C, H, W)


def gumbel_max(logits: torch.Tensor, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw from softmax(logits) along `dim` by the Gumbel-max trick: logits -> int64 indices, `dim` removed."""
    gumbel = -torch.log(-torch.log(rand(logits.shape, generator, logits.device).clamp(1e-6, 1 - 1e-6)))
    return (logits + gumbel).argmax(dim)


def sample_discretized_logistic_mixture(
    params: torch.Tensor, num_channels: int, num_mixtures: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw images from the mixture: params (B, 3 * K * C, H, W) -> (B, C, H, W) uint8."""
    logits, means, log_scales = split_mixture_params(params.float(), num_channels, num_mixtures)
    choice = F.one_hot(gumbel_max(logits, 1, generator), num_mixtures).permute(0, 4, 1, 2, 3).to(means.dtype)
    mean = (means * choice).sum(1)
    log_scale = (log_scales * choice).sum(1)
    u = rand(mean.shape, generator, mean.device).clamp(1e-5, 1 - 1e-5)
    x = mean + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))  # inverse logistic CDF
    return to_uint8(x)


def discretized_logistic_mixture_mode(params: torch.Tensor, num_channels: int, num_mixtures: int) -> torch.Tensor:
    """The mean of the most probable component per subpixel: (B, 3 * K * C, H, W) -> (B, C, H, W) uint8."""
    logits, means, _ = split_mixture_params(params.float(), num_channels, num_mixtures)
    best = logits.argmax(1, keepdim=True)
    return to_uint8(means.gather(1, best).squeeze(1))


def scale_mixture_temperature(params: torch.Tensor, num_channels: int, num_mixtures: int, temperature: float) -> torch.Tensor:
    """Sharpen (T < 1) or flatten (T > 1) a mixture for sampling: logits / T and scales * T.

    params: (B, 3 * K * C, H, W) -> the same shape. T = 1 returns `params` itself (bit for bit).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if temperature == 1.0:
        return params
    batch, _, height, width = params.shape
    logits, means, log_scales = params.view(batch, 3, num_mixtures, num_channels, height, width).unbind(1)
    scaled = torch.stack([logits / temperature, means, log_scales + math.log(temperature)], dim=1)
    return scaled.view(params.shape)

"""Generative adversarial network [1] with DCGAN-style convolutional networks [2], for 8-bit images.

A generator G maps z ~ N(0, I) to an image in [-1, 1]; a discriminator D scores images (a logit: real > 0).
The game is min_G max_D E[log D(x)] + E[log(1 - D(G(z)))] [1, eq. 1]. By default G minimizes the
non-saturating -log D(G(z)) [1, section 3] instead of log(1 - D(G(z))), which gives strong gradients when D
wins early; the hinge loss of [3, 4] is an option, as is spectral normalization of D's weights [3].
What is published and sampled is G (the `Generator` class, whose config names the latent size); `GAN`, the
training module that holds G and D and computes each player's loss, is never published. Sampling offers the
truncation trick of [5]: z is drawn from a normal truncated to [-t, t], trading variety for fidelity.
With few training images, differentiable augmentation [7] (`diff_augment`) shows D randomly translated or
cut-out images, real and generated alike, in both players' losses, so D overfits less and G still learns the
un-augmented images (the augmentations are differentiable, so G's gradient passes through them).

Departures from [2]: the first stage of G is a linear projection of z and the last of D a linear score
(for 28 x 28 images the stages start at 7 x 7, not 4 x 4); with spectral normalization D has no batch norm,
as in [3]; weights start from N(0, 0.02) as in [2].

[1] Goodfellow et al., Generative Adversarial Nets, 2014. https://arxiv.org/abs/1406.2661
[2] Radford, Metz & Chintala, Unsupervised Representation Learning with Deep Convolutional GANs (DCGAN), 2016.
    https://arxiv.org/abs/1511.06434
[3] Miyato et al., Spectral Normalization for Generative Adversarial Networks, 2018. https://arxiv.org/abs/1802.05957
[4] Lim & Ye, Geometric GAN, 2017. https://arxiv.org/abs/1705.02894
[5] Brock, Donahue & Simonyan, Large Scale GAN Training for High Fidelity Natural Image Synthesis (BigGAN), 2019.
    https://arxiv.org/abs/1809.11096
[7] Zhao, Liu, Lin, Zhu & Han, Differentiable Augmentation for Data-Efficient GAN Training, 2020.
    https://arxiv.org/abs/2006.10738
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from ..distributions import to_uint8, to_unit_range
from ..config import ConfigError, ImageShape, check_ranges
from ..hub import HubModel

ADVERSARIAL_LOSSES = ("non_saturating", "hinge")
DISCRIMINATOR, GENERATOR = "discriminator", "generator"  # the players' names in the training loop

def _check_stages(config: ImageShape) -> None:
    if config.resolution % 4 or not 8 <= config.resolution <= 256:
        raise ConfigError(f"resolution must be a multiple of 4 in [8, 256], got {config.resolution}")


@dataclass
class GeneratorConfig(ImageShape):
    latent_dim: int = 100  # size of z ~ N(0, I), as in [2]
    hidden_channels: int = 32  # width of G's stage next to the image, doubled per stage toward 4 x 4 (DCGAN: 64-128)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_stages(self)
        check_ranges(self, ("latent_dim", 1, 4096), ("hidden_channels", 1, 1024))


@dataclass
class DiscriminatorConfig(ImageShape):
    discriminator_channels: int = 32  # width of D's first stage, doubled per stage
    spectral_norm: bool = False  # spectral normalization of D's weights [3] (and no batch norm in D)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_stages(self)
        check_ranges(self, ("discriminator_channels", 1, 1024))


@dataclass
class AdversarialConfig:
    adversarial_loss: str = "non_saturating"  # non_saturating [1] or hinge [3, 4]
    discriminator_steps: int = 1  # D optimizer steps per G optimizer step
    diff_augment: str = ""  # comma-separated DiffAugment policy [7], e.g. "translation,cutout"; "" for none

    def __post_init__(self) -> None:
        if self.adversarial_loss not in ADVERSARIAL_LOSSES:
            raise ConfigError(f"adversarial_loss must be one of {ADVERSARIAL_LOSSES}, got {self.adversarial_loss!r}")
        check_ranges(self, ("discriminator_steps", 1, 100))
        unknown = [name for name in augmentation_names(self.diff_augment) if name not in AUGMENTATIONS]
        if unknown:
            raise ConfigError(f"diff_augment must be comma-separated names from {tuple(AUGMENTATIONS)}, "
                              f"got {self.diff_augment!r}")


def augmentation_names(policy: str) -> list[str]:
    """"translation,cutout" -> ["translation", "cutout"]; "" -> []."""
    return policy.split(",") if policy else []


def random_translation(images: torch.Tensor, ratio: float = 1 / 8) -> torch.Tensor:
    """Shift each image by its own random integer offset (dy, dx), each in [-s, s] with s = round(ratio * size),
    zero-filling the uncovered border as [7]: (B, C, H, W) -> (B, C, H, W), differentiable in `images`."""
    batch, _, height, width = images.shape
    max_shift_y, max_shift_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    device = images.device
    shift_y = torch.randint(-max_shift_y, max_shift_y + 1, (batch, 1, 1), device=device)
    shift_x = torch.randint(-max_shift_x, max_shift_x + 1, (batch, 1, 1), device=device)
    padded = F.pad(images, (max_shift_x, max_shift_x, max_shift_y, max_shift_y))  # (B, C, H + 2 s_y, W + 2 s_x)
    # Output pixel (i, j) reads input pixel (i - dy, j - dx), i.e. padded pixel (i - dy + s_y, j - dx + s_x).
    rows = torch.arange(height, device=device)[None, :, None] - shift_y + max_shift_y  # (B, H, 1)
    cols = torch.arange(width, device=device)[None, None, :] - shift_x + max_shift_x  # (B, 1, W)
    samples = torch.arange(batch, device=device)[:, None, None]  # (B, 1, 1)
    return padded.permute(0, 2, 3, 1)[samples, rows, cols].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def random_cutout(images: torch.Tensor, ratio: float = 1 / 2) -> torch.Tensor:
    """Zero a square of side round(ratio * size) in each image, centred anywhere in it (so it may be clipped by the
    border) as [7]: (B, C, H, W) -> (B, C, H, W), differentiable in `images`."""
    batch, _, height, width = images.shape
    size_y, size_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    device = images.device
    top = torch.randint(0, height + 1 - size_y % 2, (batch, 1, 1), device=device) - size_y // 2
    left = torch.randint(0, width + 1 - size_x % 2, (batch, 1, 1), device=device) - size_x // 2
    rows = torch.arange(height, device=device)[None, :, None]  # (1, H, 1)
    cols = torch.arange(width, device=device)[None, None, :]  # (1, 1, W)
    inside = (rows >= top) & (rows < top + size_y) & (cols >= left) & (cols < left + size_x)  # (B, H, W)
    return images * (~inside).to(images.dtype)[:, None]


AUGMENTATIONS = {"translation": random_translation, "cutout": random_cutout}  # [7]'s colour ones: MNIST is gray


def diff_augment(images: torch.Tensor, policy: str) -> torch.Tensor:
    """Apply the augmentations named in `policy` ("translation,cutout"; "" for none) in order, each with fresh
    random parameters per image from the global RNG [7]: (B, C, H, W) -> (B, C, H, W)."""
    for name in augmentation_names(policy):
        images = AUGMENTATIONS[name](images)
    return images


def stage_layout(resolution: int) -> tuple[int, int]:
    """Number of stride-2 stages and the side of the smallest feature map: 28 -> (2, 7), 32 -> (3, 4), 64 -> (4, 4)."""
    num_stages, side = 0, resolution
    while side % 2 == 0 and side // 2 >= 4:
        num_stages, side = num_stages + 1, side // 2
    return num_stages, side


def sample_latents(num_samples: int, latent_dim: int, generator: torch.Generator | None = None,
                   truncation: float | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """z ~ N(0, I) of shape (num_samples, latent_dim); with `truncation`, each z_i is drawn from the normal
    truncated to [-truncation, truncation] [5], by inverting its CDF (one draw per z_i, however small the
    threshold, where redrawing until |z_i| fits could loop for ever)."""
    if truncation is None:
        return torch.randn((num_samples, latent_dim), generator=generator).to(device)
    if not 0 < truncation < float("inf"):
        raise ValueError(f"truncation must be a positive finite number, got {truncation}")
    u = torch.rand((num_samples, latent_dim), generator=generator, dtype=torch.float64)
    # Phi^-1 of a uniform draw between Phi(-t) and Phi(t), with Phi(x) = (1 + erf(x / sqrt 2)) / 2.
    mass = math.erf(truncation / math.sqrt(2))
    z = math.sqrt(2) * torch.special.erfinv((2 * u - 1) * mass)
    return z.clamp(-truncation, truncation).float().to(device)


def interpolate_latents(z_a: torch.Tensor, z_b: torch.Tensor, steps: int, spherical: bool = False) -> torch.Tensor:
    """`steps` points from z_a to z_b (both (D,)), endpoints included: (steps, D).

    Linear, or spherical (slerp [6]): along the great circle, with the norm interpolated linearly, so every
    point has a norm typical of N(0, I) (a straight line passes through atypically short z).
    [6] Shoemake, Animating Rotation with Quaternion Curves, 1985; White, Sampling Generative Networks, 2016.
    """
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    weights = torch.linspace(0, 1, steps, device=z_a.device, dtype=z_a.dtype)[:, None]  # (steps, 1)
    norm_a, norm_b = z_a.norm(), z_b.norm()
    angle = torch.acos(torch.dot(z_a / norm_a, z_b / norm_b).clamp(-1.0, 1.0))
    if spherical and angle > 1e-4:  # (nearly) parallel vectors: slerp is lerp
        direction = (torch.sin((1 - weights) * angle) * z_a / norm_a + torch.sin(weights * angle) * z_b / norm_b) / torch.sin(angle)
        path = direction * ((1 - weights) * norm_a + weights * norm_b)
    else:
        path = (1 - weights) * z_a + weights * z_b
    path[0], path[-1] = z_a, z_b  # exact endpoints, free of rounding
    return path


def _init_dcgan(module: nn.Module) -> None:
    """Weights from N(0, 0.02), batch-norm scales from N(1, 0.02), biases zero, as in [2]."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class UpBlock(nn.Module):
    """(B, C_in, S, S) -> (B, C_out, 2S, 2S): transposed convolution, batch norm, ReLU [2]."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class DownBlock(nn.Module):
    """(B, C_in, S, S) -> (B, C_out, S/2, S/2): strided convolution, optional batch norm, leaky ReLU (0.2) [2]."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1, bias=not batch_norm)
        self.norm = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.norm(self.conv(x)), 0.2)


class Generator(HubModel, family="gan", tags=["image-generation", "generative-adversarial-network", "dcgan"]):
    """The generator of a DCGAN-style GAN (Goodfellow et al. 2014; Radford et al. 2016): z ~ N(0, I) through a
    linear projection and transposed convolutions with batch norm to an image. Samples come from an
    exponential moving average of the trained weights; `truncation` bounds |z_i| (BigGAN's trick)."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        num_stages, side = stage_layout(config.resolution)
        width = config.hidden_channels * 2 ** (num_stages - 1)
        self.project = nn.Sequential(
            nn.Linear(config.latent_dim, width * side * side, bias=False),
            nn.Unflatten(1, (width, side, side)),  # (B, width * side^2) -> (B, width, side, side)
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.blocks = nn.Sequential(*[UpBlock(width // 2**i, width // 2 ** (i + 1)) for i in range(num_stages - 1)])
        self.to_image = nn.ConvTranspose2d(config.hidden_channels, config.num_channels, 4, stride=2, padding=1)
        self.apply(_init_dcgan)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """z (B, latent_dim) -> images (B, C, H, W) in [-1, 1]."""
        return torch.tanh(self.to_image(self.blocks(self.project(latents))))

    def sample_latents(self, num_samples: int, generator: torch.Generator | None = None,
                       truncation: float | None = None) -> torch.Tensor:
        """z ~ N(0, I), (num_samples, latent_dim) on the model's device; see `sample_latents`."""
        device = next(self.parameters()).device
        return sample_latents(num_samples, self.config.latent_dim, generator, truncation, device)

    @torch.no_grad()
    def generate(self, latents: torch.Tensor) -> torch.Tensor:
        """z (B, latent_dim) -> images (B, C, H, W) uint8, in batches of 256 to bound memory."""
        device = next(self.parameters()).device
        return torch.cat([to_uint8(self(chunk.to(device)).float()) for chunk in latents.split(256)])

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None,
               truncation: float | None = None) -> torch.Tensor:
        """x = G(z), z ~ N(0, I) (optionally truncated): (num_samples, C, H, W) uint8."""
        return self.generate(self.sample_latents(num_samples, generator, truncation))

    @torch.no_grad()
    def interpolate(self, z_a: torch.Tensor, z_b: torch.Tensor, steps: int = 8, spherical: bool = False) -> torch.Tensor:
        """Images along a path from z_a to z_b ((latent_dim,) each), endpoints included: (steps, C, H, W) uint8."""
        return self.generate(interpolate_latents(z_a, z_b, steps, spherical))


class Discriminator(HubModel, family="gan", pipeline_tag="image-classification", tags=["generative-adversarial-network"]):
    """The discriminator of a DCGAN-style GAN: strided convolutions with leaky ReLU and a linear score (a logit,
    real > 0); batch norm after the first stage as in Radford et al. 2016, or spectral norm (Miyato et al. 2018)."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.config = config
        num_stages, side = stage_layout(config.resolution)
        widths = [config.num_channels] + [config.discriminator_channels * 2**i for i in range(num_stages)]
        self.blocks = nn.Sequential(*[
            DownBlock(widths[i], widths[i + 1], batch_norm=i > 0 and not config.spectral_norm) for i in range(num_stages)
        ])
        self.score = nn.Linear(widths[-1] * side * side, 1)
        self.apply(_init_dcgan)
        if config.spectral_norm:  # after the initialization, which must reach the raw weights
            for module in [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]:
                spectral_norm(module)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [-1, 1] -> logits (B,)."""
        return self.score(self.blocks(images).flatten(1)).squeeze(1)  # (B, C', S, S) -> (B, C' S S) -> (B,)


class GAN(nn.Module):
    """The training module: G and D, and each player's loss (never published; publishing writes G alone).

    The training loop calls `forward(batch, player=...)` for "discriminator" and "generator" in turn, one
    optimizer each; sampling and saving delegate to the generator.
    """

    def __init__(self, generator_config: GeneratorConfig, discriminator_config: DiscriminatorConfig,
                 adversarial_config: AdversarialConfig):
        super().__init__()
        for name in ("resolution", "num_channels"):
            if getattr(generator_config, name) != getattr(discriminator_config, name):
                raise ConfigError(f"the generator and discriminator differ in {name}: "
                                  f"{getattr(generator_config, name)} and {getattr(discriminator_config, name)}")
        self.adversarial_config = adversarial_config
        self.generator = Generator(generator_config)
        self.discriminator = Discriminator(discriminator_config)

    @classmethod
    def from_published(cls, generator: Generator) -> "GAN":
        """A training module around a published generator, with a fresh discriminator of its image shape."""
        gan = cls(generator.config, DiscriminatorConfig(resolution=generator.config.resolution,
                                                        num_channels=generator.config.num_channels), AdversarialConfig())
        gan.generator = generator
        return gan

    def discriminator_loss(self, real_images: torch.Tensor) -> dict[str, torch.Tensor]:
        """D's loss on a batch of real images (B, C, H, W) in [-1, 1] and as many fresh samples of G."""
        with torch.no_grad():  # D's step leaves G alone
            z = torch.randn(len(real_images), self.generator.config.latent_dim, device=real_images.device)
            fake_images = self.generator(z)
        # D only ever sees augmented images, real and generated alike, or it would learn the augmentations [7].
        policy = self.adversarial_config.diff_augment
        real_images, fake_images = diff_augment(real_images, policy), diff_augment(fake_images, policy)
        # Real and generated images in separate batches, so that D's batch norm never mixes them [2].
        real_logits, fake_logits = self.discriminator(real_images).float(), self.discriminator(fake_images).float()
        if self.adversarial_config.adversarial_loss == "hinge":  # [4, eq. 9]
            loss = F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
        else:  # -log D(x) - log(1 - D(G(z))) [1, eq. 1], with D = sigmoid(logit)
            loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
        return {"loss": loss, "real_logit": real_logits.mean().detach(), "fake_logit": fake_logits.mean().detach()}

    def generator_loss(self, num_samples: int, device: torch.device) -> dict[str, torch.Tensor]:
        """G's loss on `num_samples` fresh samples."""
        z = torch.randn(num_samples, self.generator.config.latent_dim, device=device)
        fake_images = diff_augment(self.generator(z), self.adversarial_config.diff_augment)  # as D saw them [7]
        fake_logits = self.discriminator(fake_images).float()
        if self.adversarial_config.adversarial_loss == "hinge":  # -D(G(z)) [4]
            loss = -fake_logits.mean()
        else:  # non-saturating -log D(G(z)) [1, section 3]
            loss = F.softplus(-fake_logits).mean()
        return {"loss": loss, "fake_logit": fake_logits.mean().detach()}

    def loss(self, batch: dict[str, torch.Tensor], player: str) -> dict[str, torch.Tensor]:
        """The loss of `player` ("discriminator" or "generator") on a batch of uint8 images (B, C, H, W)."""
        if player == DISCRIMINATOR:
            return self.discriminator_loss(to_unit_range(batch["images"]))
        if player == GENERATOR:
            return self.generator_loss(len(batch["images"]), batch["images"].device)
        raise ValueError(f"player must be {DISCRIMINATOR!r} or {GENERATOR!r}, got {player!r}")

    def forward(self, batch: dict[str, torch.Tensor], player: str) -> dict[str, torch.Tensor]:
        return self.loss(batch, player)

    def sample(self, num_samples: int, generator: torch.Generator | None = None,
               truncation: float | None = None) -> torch.Tensor:
        """Samples of G: (num_samples, C, H, W) uint8."""
        return self.generator.sample(num_samples, generator, truncation)

    def save_pretrained(self, save_directory, **kwargs):
        """Save G (the published model) as `Generator.save_pretrained` does."""
        return self.generator.save_pretrained(save_directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload G as `Generator.push_to_hub` does."""
        return self.generator.push_to_hub(repo_id, **kwargs)

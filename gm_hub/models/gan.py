"""Generative adversarial network [1] with DCGAN-style convolutional networks [2], for 8-bit images.

A generator G maps z ~ N(0, I) to an image in [-1, 1]; a discriminator D scores images (a logit: real > 0).
The game is min_G max_D E[log D(x)] + E[log(1 - D(G(z)))] [1, eq. 1]. By default G minimizes the
non-saturating -log D(G(z)) [1, section 3] instead of log(1 - D(G(z))), which gives strong gradients when D
wins early; the hinge loss of [3, 4] is an option, as is spectral normalization of D's weights [3].
What is published and sampled is G (the `Generator` class, whose config names the latent size); `GAN`, the
training module that holds G and D and computes each player's loss, is never published. Sampling offers the
truncation trick of [5]: z is drawn from a normal truncated to [-t, t], trading variety for fidelity.
With class labels (`num_classes` > 0) the GAN is class-conditional [8]: G takes a learned embedding of the
label beside z, and D scores (image, label) pairs with a projection [9], D(x, y) = psi(phi(x)) + <e_y, phi(x)>,
which asks D whether x is a real image *of class y*; sampling without a label draws labels uniformly.
A conditional G readily learns to ignore z (one image per class: measured here, benchmarks/gan_results.md);
the mode-seeking term [10] (`mode_seeking_weight`) asks two samples of one class to differ as much as their z's.
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
[8] Mirza & Osindero, Conditional Generative Adversarial Nets, 2014. https://arxiv.org/abs/1411.1784
[9] Miyato & Koyama, cGANs with Projection Discriminator, 2018. https://arxiv.org/abs/1802.05637
[10] Mao, Lee, Tseng, Ma & Yang, Mode Seeking Generative Adversarial Networks for Diverse Image Synthesis (MSGAN),
    2019. https://arxiv.org/abs/1903.05628
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from ..config import ConfigError, ImageShape, check_ranges
from ..data import batch_labels
from ..distributions import to_uint8, to_unit_range
from ..errors import UserError
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
    num_classes: int = 0  # class labels to condition on (10 for digits); 0: unconditional

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_stages(self)
        check_ranges(self, ("latent_dim", 1, 4096), ("hidden_channels", 1, 1024), ("num_classes", 0, 1000))


@dataclass
class DiscriminatorConfig(ImageShape):
    discriminator_channels: int = 32  # width of D's first stage, doubled per stage
    spectral_norm: bool = False  # spectral normalization of D's weights [3] (and no batch norm in D)
    num_classes: int = 0  # as the generator's: D then scores (image, label) pairs by projection [9]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_stages(self)
        check_ranges(self, ("discriminator_channels", 1, 1024), ("num_classes", 0, 1000))


@dataclass
class AdversarialConfig:
    adversarial_loss: str = "non_saturating"  # non_saturating [1] or hinge [3, 4]
    discriminator_steps: int = 1  # D optimizer steps per G optimizer step
    diff_augment: str = ""  # comma-separated DiffAugment policy [7], e.g. "translation,cutout"; "" for none
    mode_seeking_weight: float = 0.0  # weight of G's mode-seeking term [10], against G ignoring z; 0 for none

    def __post_init__(self) -> None:
        if self.adversarial_loss not in ADVERSARIAL_LOSSES:
            raise ConfigError(f"adversarial_loss must be one of {ADVERSARIAL_LOSSES}, got {self.adversarial_loss!r}")
        check_ranges(self, ("discriminator_steps", 1, 100), ("mode_seeking_weight", 0.0, 1000.0))
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


def check_labels(labels: torch.Tensor | int | None, num_classes: int, batch_size: int,
                 device: torch.device) -> torch.Tensor | None:
    """Labels for a batch: None, an int or (B,) -> (B,) int64 on `device` (None for an unconditional model)."""
    if num_classes == 0:
        if labels is not None:
            raise UserError("this GAN is unconditional (num_classes 0): sample it without a label")
        return None
    if labels is None:
        raise UserError(f"this GAN is conditional on {num_classes} classes and the data has no labels: "
                        "train with --num_classes 0, or on labelled data")
    return batch_labels(labels, num_classes, batch_size, device)


class Generator(HubModel, family="gan", tags=["image-generation", "generative-adversarial-network", "dcgan"]):
    """The generator of a DCGAN-style GAN (Goodfellow et al. 2014; Radford et al. 2016): z ~ N(0, I) through a
    linear projection and transposed convolutions with batch norm to an image; class-conditional (Mirza &
    Osindero 2014) when `num_classes` > 0. Samples come from an exponential moving average of the trained
    weights; `truncation` bounds |z_i| (BigGAN's trick)."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        num_stages, side = stage_layout(config.resolution)
        width = config.hidden_channels * 2 ** (num_stages - 1)
        # The label's embedding enters beside z, as large as z: the projection learns a class-specific 7 x 7 map.
        self.label_embedding = nn.Embedding(config.num_classes, config.latent_dim) if config.num_classes else None
        self.project = nn.Sequential(
            nn.Linear(self.input_dim, width * side * side, bias=False),
            nn.Unflatten(1, (width, side, side)),  # (B, width * side^2) -> (B, width, side, side)
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.blocks = nn.Sequential(*[UpBlock(width // 2**i, width // 2 ** (i + 1)) for i in range(num_stages - 1)])
        self.to_image = nn.ConvTranspose2d(config.hidden_channels, config.num_channels, 4, stride=2, padding=1)
        self.apply(_init_dcgan)
        if self.label_embedding is not None:  # unit-scale class vectors, as z's entries
            nn.init.normal_(self.label_embedding.weight)

    @property
    def input_dim(self) -> int:
        """Size of G's input: z, and the label's embedding if conditional."""
        return self.config.latent_dim * (2 if self.config.num_classes else 1)

    def inputs(self, latents: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """z (B, latent_dim) and labels (B,) int64 or None -> G's input (B, input_dim)."""
        if self.label_embedding is None:
            return latents
        return torch.cat([latents, self.label_embedding(labels)], dim=1)

    def synthesize(self, inputs: torch.Tensor) -> torch.Tensor:
        """G's input (B, input_dim) -> images (B, C, H, W) in [-1, 1]."""
        return torch.tanh(self.to_image(self.blocks(self.project(inputs))))

    def forward(self, latents: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, latent_dim), labels (B,) int64 (conditional G) or None -> images (B, C, H, W) in [-1, 1]."""
        return self.synthesize(self.inputs(latents, labels))

    def sample_latents(self, num_samples: int, generator: torch.Generator | None = None,
                       truncation: float | None = None) -> torch.Tensor:
        """z ~ N(0, I), (num_samples, latent_dim) on the model's device; see `sample_latents`."""
        device = next(self.parameters()).device
        return sample_latents(num_samples, self.config.latent_dim, generator, truncation, device)

    def sample_labels(self, num_samples: int, label: int | torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor | None:
        """The labels of a conditional G's samples: `label` (an int or (num_samples,)) or, if None, uniform draws
        from `generator`; None for an unconditional G (which refuses a label)."""
        device = next(self.parameters()).device
        if label is None and self.config.num_classes:
            label = torch.randint(self.config.num_classes, (num_samples,), generator=generator)
        return check_labels(label, self.config.num_classes, num_samples, device)

    @torch.no_grad()
    def generate(self, latents: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, latent_dim), labels (B,) or None -> images (B, C, H, W) uint8, in batches of 256 to bound memory."""
        device = next(self.parameters()).device
        return self.render(self.inputs(latents.to(device), None if labels is None else labels.to(device)))

    def render(self, inputs: torch.Tensor) -> torch.Tensor:
        """G's input (B, input_dim) -> images (B, C, H, W) uint8, in batches of 256 to bound memory."""
        return torch.cat([to_uint8(self.synthesize(chunk).float()) for chunk in inputs.split(256)])

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None,
               truncation: float | None = None, label: int | torch.Tensor | None = None) -> torch.Tensor:
        """x = G(z, y), z ~ N(0, I) (optionally truncated): (num_samples, C, H, W) uint8.

        `label` (a conditional G only): an int for all samples, (num_samples,) labels, or None for labels drawn
        uniformly from `generator` after z.
        """
        latents = self.sample_latents(num_samples, generator, truncation)
        return self.generate(latents, self.sample_labels(num_samples, label, generator))

    @torch.no_grad()
    def interpolate(self, z_a: torch.Tensor, z_b: torch.Tensor, steps: int = 8, spherical: bool = False,
                    labels: tuple[int, int] | None = None) -> torch.Tensor:
        """Images along a path from z_a to z_b ((latent_dim,) each), endpoints included: (steps, C, H, W) uint8.

        A conditional G needs `labels` (from, to): the class embedding moves linearly between the two classes'
        while z moves along its path, so (3, 8) morphs a 3 into an 8.
        """
        device = next(self.parameters()).device
        path = interpolate_latents(z_a.to(device), z_b.to(device), steps, spherical)
        if self.label_embedding is None:
            check_labels(labels, 0, steps, device)
            return self.render(path)
        if labels is None:
            raise UserError("this GAN is conditional: give the two classes to interpolate between, labels=(a, b)")
        label_a, label_b = check_labels(torch.tensor(labels), self.config.num_classes, 2, device)
        embeddings = interpolate_latents(self.label_embedding.weight[label_a], self.label_embedding.weight[label_b], steps)
        return self.render(torch.cat([path, embeddings], dim=1))


class Discriminator(HubModel, family="gan", pipeline_tag="image-classification", tags=["generative-adversarial-network"]):
    """The discriminator of a DCGAN-style GAN: strided convolutions with leaky ReLU and a linear score (a logit,
    real > 0); batch norm after the first stage as in Radford et al. 2016, or spectral norm (Miyato et al. 2018);
    a class projection (Miyato & Koyama 2018) when `num_classes` > 0."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.config = config
        num_stages, side = stage_layout(config.resolution)
        widths = [config.num_channels] + [config.discriminator_channels * 2**i for i in range(num_stages)]
        self.blocks = nn.Sequential(*[
            DownBlock(widths[i], widths[i + 1], batch_norm=i > 0 and not config.spectral_norm) for i in range(num_stages)
        ])
        features = widths[-1] * side * side
        self.score = nn.Linear(features, 1)
        # The projection [9]: a learned vector per class, whose inner product with the features is added to the score.
        self.class_projection = nn.Embedding(config.num_classes, features) if config.num_classes else None
        self.apply(_init_dcgan)
        if self.class_projection is not None:
            nn.init.normal_(self.class_projection.weight, 0.0, 0.02)
        if config.spectral_norm:  # after the initialization, which must reach the raw weights
            for module in [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]:
                spectral_norm(module)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, C, H, W) in [-1, 1], labels (B,) int64 (conditional D) or None -> logits (B,)."""
        features = self.blocks(images).flatten(1)  # (B, C', S, S) -> (B, C' S S)
        logits = self.score(features).squeeze(1)  # (B,)
        if self.class_projection is not None:
            logits = logits + (self.class_projection(labels) * features).sum(dim=1)
        return logits


class GAN(nn.Module):
    """The training module: G and D, and each player's loss (never published; publishing writes G alone).

    The training loop calls `forward(batch, player=...)` for "discriminator" and "generator" in turn, one
    optimizer each; sampling and saving delegate to the generator.
    """

    def __init__(self, generator_config: GeneratorConfig, discriminator_config: DiscriminatorConfig,
                 adversarial_config: AdversarialConfig):
        super().__init__()
        for name in ("resolution", "num_channels", "num_classes"):
            if getattr(generator_config, name) != getattr(discriminator_config, name):
                raise ConfigError(f"the generator and discriminator differ in {name}: "
                                  f"{getattr(generator_config, name)} and {getattr(discriminator_config, name)}")
        self.adversarial_config = adversarial_config
        self.generator = Generator(generator_config)
        self.discriminator = Discriminator(discriminator_config)

    @classmethod
    def from_published(cls, generator: Generator) -> "GAN":
        """A training module around a published generator, with a fresh discriminator of its image shape."""
        config = generator.config
        discriminator_config = DiscriminatorConfig(resolution=config.resolution, num_channels=config.num_channels,
                                                   num_classes=config.num_classes)
        gan = cls(config, discriminator_config, AdversarialConfig())
        gan.generator = generator
        return gan

    def discriminator_loss(self, real_images: torch.Tensor, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """D's loss on a batch of real images (B, C, H, W) in [-1, 1] and as many fresh samples of G; a conditional
        GAN's samples get the real batch's labels (B,), so both halves have the data's class frequencies."""
        with torch.no_grad():  # D's step leaves G alone
            z = torch.randn(len(real_images), self.generator.config.latent_dim, device=real_images.device)
            fake_images = self.generator(z, labels)
        # D only ever sees augmented images, real and generated alike, or it would learn the augmentations [7].
        policy = self.adversarial_config.diff_augment
        real_images, fake_images = diff_augment(real_images, policy), diff_augment(fake_images, policy)
        # Real and generated images in separate batches, so that D's batch norm never mixes them [2].
        real_logits = self.discriminator(real_images, labels).float()
        fake_logits = self.discriminator(fake_images, labels).float()
        if self.adversarial_config.adversarial_loss == "hinge":  # [4, eq. 9]
            loss = F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
        else:  # -log D(x) - log(1 - D(G(z))) [1, eq. 1], with D = sigmoid(logit)
            loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
        return {"loss": loss, "real_logit": real_logits.mean().detach(), "fake_logit": fake_logits.mean().detach()}

    def generator_loss(self, num_samples: int, device: torch.device, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """G's loss on `num_samples` fresh samples (of `labels` (B,), for a conditional GAN), with the mode-seeking
        term [10] if weighted: the two halves of the batch then share their labels, pair by pair."""
        weight = self.adversarial_config.mode_seeking_weight
        half = num_samples // 2
        if weight and labels is not None:
            labels = torch.cat([labels[:half], labels[:half], labels[2 * half :]])
        z = torch.randn(num_samples, self.generator.config.latent_dim, device=device)
        images = self.generator(z, labels)
        fake_images = diff_augment(images, self.adversarial_config.diff_augment)  # as D saw them [7]
        fake_logits = self.discriminator(fake_images, labels).float()
        if self.adversarial_config.adversarial_loss == "hinge":  # -D(G(z)) [4]
            loss = -fake_logits.mean()
        else:  # non-saturating -log D(G(z)) [1, section 3]
            loss = F.softplus(-fake_logits).mean()
        outputs = {"fake_logit": fake_logits.mean().detach()}
        if weight and half:
            # [10, eq. 3]: two z's of one label should give images as far apart as the z's are; G maximizes the ratio.
            image_distance = (images[:half] - images[half : 2 * half]).float().abs().mean(dim=(1, 2, 3))
            latent_distance = (z[:half] - z[half : 2 * half]).abs().mean(dim=1)
            mode_seeking = 1 / ((image_distance / latent_distance).mean() + 1e-5)
            loss = loss + weight * mode_seeking
            outputs["mode_seeking"] = mode_seeking.detach()
        return {"loss": loss, **outputs}

    def loss(self, batch: dict[str, torch.Tensor], player: str) -> dict[str, torch.Tensor]:
        """The loss of `player` ("discriminator" or "generator") on a batch of uint8 images (B, C, H, W), with
        their labels (B,) for a conditional GAN."""
        images = batch["images"]
        num_classes = self.generator.config.num_classes
        labels = check_labels(batch.get("labels") if num_classes else None, num_classes, len(images), images.device)
        if player == DISCRIMINATOR:
            return self.discriminator_loss(to_unit_range(images), labels)
        if player == GENERATOR:
            return self.generator_loss(len(images), images.device, labels)
        raise ValueError(f"player must be {DISCRIMINATOR!r} or {GENERATOR!r}, got {player!r}")

    def forward(self, batch: dict[str, torch.Tensor], player: str) -> dict[str, torch.Tensor]:
        return self.loss(batch, player)

    def sample(self, num_samples: int, generator: torch.Generator | None = None,
               truncation: float | None = None, label: int | torch.Tensor | None = None) -> torch.Tensor:
        """Samples of G: (num_samples, C, H, W) uint8."""
        return self.generator.sample(num_samples, generator, truncation, label)

    def save_pretrained(self, save_directory, **kwargs):
        """Save G (the published model) as `Generator.save_pretrained` does."""
        return self.generator.save_pretrained(save_directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload G as `Generator.push_to_hub` does."""
        return self.generator.push_to_hub(repo_id, **kwargs)

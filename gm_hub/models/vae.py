"""Variational autoencoder [1] with an optional normalizing-flow posterior [2], for 8-bit images.

The encoder q(z|x) is a diagonal Gaussian, optionally pushed through K planar or radial flows (`flow_type`,
from `gm_hub/flows.py`) whose parameters the encoder also predicts (amortized, as in [2]); the prior p(z) is
a standard Gaussian or (`prior="mixture"`) a learned mixture of diagonal Gaussians [4], which can follow the
aggregate posterior, so that prior samples land where the decoder was trained; `fit_prior` refits it by EM
to the training set's latents after training (a two-stage fit [5]). The decoder p(x|z) is a
discretized logistic mixture over the 256 pixel levels (as PixelCNN++), so the negative ELBO is an upper bound
on the discrete negative log-likelihood and its bits/dim compare directly with flows and PixelCNN.
`log_prob` is the importance-weighted bound of [3], which tightens as the number of samples k grows.

Departures: the KL term is estimated with the same single Monte-Carlo sample as the reconstruction term
(one code path with or without flows, for either prior), and every term is averaged per dimension for a stable
loss scale.

[1] Kingma & Welling, Auto-Encoding Variational Bayes, 2014. https://arxiv.org/abs/1312.6114
[2] Rezende & Mohamed, Variational Inference with Normalizing Flows, 2015. https://arxiv.org/abs/1505.05770
[3] Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders, 2016. https://arxiv.org/abs/1509.00519
[4] Tomczak & Welling, VAE with a VampPrior, 2018 (its mixture-of-Gaussians baseline). https://arxiv.org/abs/1705.07120
[5] Ghosh, Sajjadi, Vergari, Black & Schoelkopf, From Variational to Deterministic Autoencoders, 2020 (ex-post
    density estimation: a mixture fitted to the latents of the training set after training).
    https://arxiv.org/abs/1903.12436
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import ConfigError, ImageShape, check_ranges
from ..distributions import (
    discretized_logistic_mixture_log_prob,
    discretized_logistic_mixture_mode,
    randn,
    sample_discretized_logistic_mixture,
    to_unit_range,
)
from ..flows import PlanarFlow, RadialFlow
from ..hub import HubModel


@dataclass
class VAEConfig(ImageShape):
    latent_dim: int = 32
    hidden_channels: int = 64  # width after the first stage; the second stage doubles it
    num_mixtures: int = 5  # logistic components per subpixel in the decoder likelihood
    num_flows: int = 0  # flows in the posterior; 0 gives the plain Gaussian VAE
    flow_type: str = "planar"  # "planar" or "radial" posterior flows [2, section 4.1]
    prior: str = "gaussian"  # "gaussian" (N(0, I)) or "mixture" (learned mixture of Gaussians [4])
    prior_components: int = 50  # mixture components when prior="mixture"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.resolution % 4:
            raise ConfigError(f"resolution must be a multiple of 4 (two stride-2 stages), got {self.resolution}")
        check_ranges(self, ("latent_dim", 1, 4096), ("hidden_channels", 1, 1024), ("num_mixtures", 1, 32),
                     ("num_flows", 0, 64), ("prior_components", 1, 4096))
        if self.prior not in ("gaussian", "mixture"):
            raise ConfigError(f"prior must be 'gaussian' or 'mixture', got {self.prior!r}")
        if self.flow_type not in ("planar", "radial"):
            raise ConfigError(f"flow_type must be 'planar' or 'radial', got {self.flow_type!r}")


@dataclass
class PriorFitConfig:
    """The training script's optional second stage (`VAE.fit_prior`): after the last step, the mixture prior refit
    by EM to the training set's latents."""

    prior_fit_iterations: int = 0  # EM iterations (0: the prior stays as trained); needs --prior mixture
    prior_fit_samples_per_image: int = 10  # latents z ~ q(z|x) per training image

    def __post_init__(self) -> None:
        check_ranges(self, ("prior_fit_iterations", 0, 10_000), ("prior_fit_samples_per_image", 1, 1000))


class Encoder(nn.Module):
    """(B, C, H, W) in [-1, 1] -> features (B, out_features)."""

    def __init__(self, config: VAEConfig, out_features: int):
        super().__init__()
        width = config.hidden_channels
        self.net = nn.Sequential(
            nn.Conv2d(config.num_channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 4, stride=2, padding=1), nn.SiLU(),  # H -> H/2
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 4, stride=2, padding=1), nn.SiLU(),  # H/2 -> H/4
            nn.Flatten(),
            nn.Linear(2 * width * (config.resolution // 4) ** 2, out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """z (B, D) -> logistic-mixture parameters (B, 3 * K * C, H, W)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        width, side = config.hidden_channels, config.resolution // 4
        self.net = nn.Sequential(
            nn.Linear(config.latent_dim, 2 * width * side * side), nn.SiLU(),
            nn.Unflatten(1, (2 * width, side, side)),
            nn.ConvTranspose2d(2 * width, 2 * width, 4, stride=2, padding=1), nn.SiLU(),  # H/4 -> H/2
            nn.Conv2d(2 * width, width, 3, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.SiLU(),  # H/2 -> H
            nn.Conv2d(width, 3 * config.num_mixtures * config.num_channels, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I) over (B, D) latents; no parameters."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D) -> log p(z) (B,) in nats."""
        return -0.5 * (z**2 + math.log(2 * math.pi)).sum(1)

    def sample(self, num_samples: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """z ~ N(0, I): (num_samples, D)."""
        return randn((num_samples, self.latent_dim), generator, device)


class MixturePrior(nn.Module):
    """p(z) = sum_k pi_k N(z; mu_k, diag(sigma_k^2)) with learned logits, means and log-scales [4]."""

    def __init__(self, latent_dim: int, num_components: int):
        super().__init__()
        # Means spread a little around 0, scales shrunk to match: the start is close to N(0, I), variance about 1.
        spread = 0.1
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.means = nn.Parameter(spread * torch.randn(num_components, latent_dim))
        self.log_scales = nn.Parameter(torch.full((num_components, latent_dim), 0.5 * math.log(1 - spread**2)))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D) -> log p(z) (B,) in nats."""
        z = z.float()[:, None, :]  # (B, 1, D); float32: bf16 rounds tens of nats to ~0.1
        standardized = (z - self.means) * torch.exp(-self.log_scales)  # (B, K, D)
        log_normal = (-0.5 * (standardized**2 + math.log(2 * math.pi)) - self.log_scales).sum(2)  # (B, K)
        return torch.logsumexp(torch.log_softmax(self.logits, 0) + log_normal, dim=1)

    @torch.no_grad()
    def fit(self, z: torch.Tensor, iterations: int, min_scale: float = 1e-3) -> None:
        """Maximum-likelihood refit to latents z (N, D) by EM [5], starting from the current parameters."""
        z = z.double()
        log_weights, means = torch.log_softmax(self.logits.double(), 0), self.means.double()
        variances = torch.exp(2 * self.log_scales.double())
        for _ in range(iterations):
            # E step: log N(z_n; mu_k, diag(var_k)) for all n, k as matrix products, never an (N, K, D) tensor.
            precisions = 1 / variances  # (K, D)
            squared = (z**2 @ precisions.T - 2 * z @ (means * precisions).T
                       + (means**2 * precisions).sum(1))  # (N, K): sum_d (z_d - mu_kd)^2 / var_kd
            log_normal = -0.5 * (squared + torch.log(variances).sum(1) + z.shape[1] * math.log(2 * math.pi))
            responsibilities = torch.softmax(log_weights + log_normal, dim=1)  # (N, K)
            # M step: weighted counts, means and variances; an empty component keeps a tiny weight.
            counts = responsibilities.sum(0).clamp_min(1e-10)  # (K,)
            log_weights = torch.log(counts / len(z))
            means = responsibilities.T @ z / counts[:, None]
            variances = (responsibilities.T @ z**2 / counts[:, None] - means**2).clamp_min(min_scale**2)
        self.logits.copy_(log_weights)
        self.means.copy_(means)
        self.log_scales.copy_(0.5 * torch.log(variances))

    def sample(self, num_samples: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """A component k ~ pi, then z ~ N(mu_k, diag(sigma_k^2)): (num_samples, D)."""
        # Drawn on the CPU, like `randn`, so that a CPU generator gives the same samples on every device.
        weights = self.logits.detach().softmax(0).cpu()  # (K,)
        components = torch.multinomial(weights, num_samples, replacement=True, generator=generator).to(device)  # (N,)
        noise = randn((num_samples, self.means.shape[1]), generator, device)
        return self.means[components] + torch.exp(self.log_scales[components]) * noise


class VAE(HubModel, family="vae", tags=["image-generation", "variational-autoencoder"]):
    """A convolutional VAE (Kingma & Welling) with an optional planar or radial flow posterior (Rezende & Mohamed), a
    standard normal or learned mixture-of-Gaussians prior (Tomczak & Welling) and a discretized logistic mixture
    decoder over 8-bit pixels; `log_prob` is the IWAE bound (Burda et al.)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        latent = config.latent_dim
        # Planar: f(z) = z + u tanh(w.z + b); radial: f(z) = z + beta (z - z0) / (alpha + |z - z0|).
        self.flow = RadialFlow() if config.flow_type == "radial" else PlanarFlow()
        # The encoder predicts the Gaussian (mean, log-variance) and each flow's parameters.
        self.encoder = Encoder(config, 2 * latent + config.num_flows * self.flow.num_parameters(latent))
        self.decoder = Decoder(config)
        if config.prior == "mixture":
            self.prior = MixturePrior(latent, config.prior_components)
        else:
            self.prior = StandardNormalPrior(latent)

    @property
    def num_dims(self) -> int:
        return self.config.num_channels * self.config.resolution**2

    def encode(self, images: torch.Tensor):
        """uint8 (B, C, H, W) -> posterior mean, log-variance (B, D) and flow parameters, K tuples:
        planar (u, w, b) or radial (z0, alpha_raw, beta_raw)."""
        features = self.encoder(to_unit_range(images))
        latent = self.config.latent_dim
        mean, log_var = features[:, :latent], features[:, latent : 2 * latent].clamp(-12, 8)
        flow_params = features[:, 2 * latent :].view(len(images), self.config.num_flows, self.flow.num_parameters(latent))
        flows = [self.flow.unpack(p, latent) for p in flow_params.unbind(1)]
        return mean, log_var, flows

    def posterior(self, z0: torch.Tensor, flows) -> tuple[torch.Tensor, torch.Tensor]:
        """Push z0 through the flows: z_K (B, D) and the summed log|det| (B,)."""
        total_log_det = torch.zeros(len(z0), device=z0.device)
        for params in flows:
            z0, log_det = self.flow(z0, *params)
            total_log_det = total_log_det + log_det
        return z0, total_log_det

    def log_weights(self, images: torch.Tensor, num_samples: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(x|z) and log p(z) - log q(z|x), each (num_samples, B), for z ~ q(z|x), in nats."""
        mean, log_var, flows = self.encode(images)
        reconstruction, prior_minus_posterior = [], []
        for _ in range(num_samples):
            eps = torch.randn_like(mean)
            z0 = mean + torch.exp(0.5 * log_var) * eps
            z, log_det = self.posterior(z0, flows)
            log_q = -0.5 * (eps**2 + log_var + math.log(2 * math.pi)).sum(1) - log_det
            log_p_z = self.prior.log_prob(z)
            params = self.decoder(z)
            reconstruction.append(discretized_logistic_mixture_log_prob(images, params.float(), self.config.num_mixtures))
            prior_minus_posterior.append(log_p_z - log_q)
        return torch.stack(reconstruction), torch.stack(prior_minus_posterior)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Negative ELBO per dimension in nats ("loss"), and its parts for logging."""
        log_px_z, log_pz_minus_log_qz = self.log_weights(batch["images"])
        elbo = (log_px_z + log_pz_minus_log_qz).mean()
        loss = -elbo / self.num_dims
        return {
            "loss": loss,
            "bits_per_dim": loss / math.log(2),
            "reconstruction": -log_px_z.mean() / self.num_dims,
            "kl": -log_pz_minus_log_qz.mean() / self.num_dims,
        }

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.loss(batch)

    @torch.no_grad()
    def log_prob(self, images: torch.Tensor, num_importance_samples: int = 100) -> torch.Tensor:
        """A lower bound on log p(x) in nats (IWAE with k samples [3]): uint8 (B, C, H, W) -> (B,)."""
        log_px_z, log_pz_minus_log_qz = self.log_weights(images, num_importance_samples)
        return torch.logsumexp(log_px_z + log_pz_minus_log_qz, dim=0) - math.log(num_importance_samples)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None, most_likely_pixels: bool = False) -> torch.Tensor:
        """z ~ p(z) (the prior in use), x ~ p(x|z): (num_samples, C, H, W) uint8.

        The pixels of p(x|z) are independent given z, so true samples carry per-pixel noise;
        `most_likely_pixels=True` shows the decoder's mode instead (what VAE figures usually show).
        """
        device = next(self.parameters()).device
        z = self.prior.sample(num_samples, generator, device)
        params = self.decoder(z)
        if most_likely_pixels:
            return discretized_logistic_mixture_mode(params, self.config.num_channels, self.config.num_mixtures)
        return sample_discretized_logistic_mixture(params, self.config.num_channels, self.config.num_mixtures, generator)

    @torch.no_grad()
    def fit_prior(self, images: torch.Tensor, iterations: int = 100, samples_per_image: int = 10,
                  generator: torch.Generator | None = None, batch_size: int = 500) -> None:
        """The second stage of a two-stage fit [5]: refit the mixture prior by EM to the aggregate posterior
        q(z) = mean_x q(z|x) over `images`, uint8 (N, C, H, W), from `samples_per_image` latents z_K per image,
        so that prior samples land where the decoder was trained. Needs prior="mixture"."""
        if not isinstance(self.prior, MixturePrior):
            raise ConfigError("fit_prior needs prior='mixture' (a standard normal prior has nothing to fit)")
        device = next(self.parameters()).device
        latents = []
        for _ in range(samples_per_image):
            for batch in images.split(batch_size):
                mean, log_var, flows = self.encode(batch.to(device))
                z0 = mean + torch.exp(0.5 * log_var) * randn(mean.shape, generator, device)
                latents.append(self.posterior(z0, flows)[0].float())
        self.prior.fit(torch.cat(latents), iterations)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean (through the flows): uint8 (B, C, H, W) -> most likely uint8 (B, C, H, W)."""
        mean, _, flows = self.encode(images.to(next(self.parameters()).device))
        z, _ = self.posterior(mean, flows)
        return discretized_logistic_mixture_mode(self.decoder(z), self.config.num_channels, self.config.num_mixtures)

    @torch.no_grad()
    def interpolate(self, image_a: torch.Tensor, image_b: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Decode a straight line between two posterior means: (C, H, W) uint8 twice -> (steps, C, H, W) uint8."""
        device = next(self.parameters()).device
        mean, _, flows = self.encode(torch.stack([image_a, image_b]).to(device))
        z, _ = self.posterior(mean, flows)
        weights = torch.linspace(0, 1, steps, device=device)[:, None]
        line = (1 - weights) * z[0] + weights * z[1]  # (steps, D)
        return discretized_logistic_mixture_mode(self.decoder(line), self.config.num_channels, self.config.num_mixtures)

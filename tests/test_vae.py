import math

import pytest
import torch

from gm_hub.distributions import discretized_logistic_mixture_log_prob, sample_discretized_logistic_mixture
from gm_hub.hub import ConfigError
from gm_hub.models.vae import VAE, PlanarFlow, VAEConfig

TINY = VAEConfig(hidden_channels=8, latent_dim=4, num_mixtures=2, num_flows=2)


def test_discretized_logistic_mixture_is_normalized_over_256_levels():
    torch.manual_seed(0)
    params = torch.randn(1, 3 * 3 * 1, 1, 1).repeat(256, 1, 1, 1)  # one pixel, K = 3, all 256 values
    levels = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1)
    total = discretized_logistic_mixture_log_prob(levels, params, num_mixtures=3).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-4)


def test_mixture_samples_follow_the_mixture():
    # A sharp component at 0.5 ([-1, 1] scale) puts almost all samples at level round(1.5 * 127.5) = 191.
    params = torch.zeros(1, 3, 2, 2)
    params[:, 1] = 0.5
    params[:, 2] = -7.0
    samples = sample_discretized_logistic_mixture(params.repeat(64, 1, 1, 1), 1, 1, torch.Generator().manual_seed(0))
    assert samples.dtype == torch.uint8 and samples.shape == (64, 1, 2, 2)
    assert (samples.int() - 191).abs().max() <= 1


def test_planar_flow_log_det_matches_brute_force_jacobian():
    torch.manual_seed(0)
    flow, dim = PlanarFlow(), 3
    z, u, w, b = torch.randn(1, dim), torch.randn(1, dim), torch.randn(1, dim), torch.randn(1, 1)
    _, log_det = flow(z, u, w, b)
    jacobian = torch.autograd.functional.jacobian(lambda x: flow(x[None], u, w, b)[0][0], z[0])
    assert log_det.item() == pytest.approx(torch.linalg.slogdet(jacobian).logabsdet.item(), abs=1e-5)


def test_loss_is_a_per_dimension_negative_elbo_and_trains():
    torch.manual_seed(0)
    model = VAE(TINY)
    batch = {"images": torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)}
    outputs = model(batch)
    assert outputs["loss"].item() == pytest.approx((outputs["reconstruction"] + outputs["kl"]).item(), rel=1e-5)
    assert outputs["bits_per_dim"].item() == pytest.approx(outputs["loss"].item() / math.log(2), rel=1e-6)
    outputs["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_iwae_bound_tightens_with_more_samples():
    torch.manual_seed(0)
    model = VAE(TINY)
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    torch.manual_seed(1)
    bound_1 = model.log_prob(images, num_importance_samples=1).mean()
    torch.manual_seed(1)
    bound_64 = model.log_prob(images, num_importance_samples=64).mean()
    assert bound_64 > bound_1


def test_sample_reconstruct_interpolate_shapes_and_endpoints():
    model = VAE(TINY).eval()
    samples = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (5, 1, 28, 28) and samples.dtype == torch.uint8
    same = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(samples, same)
    modes = model.sample(5, generator=torch.Generator().manual_seed(0), most_likely_pixels=True)
    assert torch.equal(modes, model.sample(5, generator=torch.Generator().manual_seed(0), most_likely_pixels=True))
    assert (modes.float() - samples.float()).abs().mean() > 0  # pixel noise is what separates the two
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    line = model.interpolate(images[0], images[1], steps=6)
    assert line.shape == (6, 1, 28, 28)
    assert torch.equal(line[[0, -1]], model.reconstruct(images))


def test_resolution_32_rgb():
    model = VAE(VAEConfig(resolution=32, num_channels=3, hidden_channels=8, latent_dim=4, num_mixtures=1))
    assert model.sample(2).shape == (2, 3, 32, 32)
    assert model({"images": torch.zeros(2, 3, 32, 32, dtype=torch.uint8)})["loss"].isfinite()


@pytest.mark.parametrize("field, value", [("resolution", 30), ("num_channels", 2), ("latent_dim", 0), ("num_flows", -1)])
def test_bad_config_is_refused_with_the_field_name(field, value):
    with pytest.raises(ConfigError, match=field):
        VAEConfig(**{field: value})


MIXTURE = VAEConfig(hidden_channels=8, latent_dim=4, num_mixtures=2, prior="mixture", prior_components=3)


def _randomize_prior(model: VAE) -> None:
    """Move the mixture well away from its near-N(0, I) start, so that using the wrong prior shows."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        model.prior.logits.copy_(torch.randn(model.prior.logits.shape, generator=generator))
        model.prior.means.copy_(2 * torch.randn(model.prior.means.shape, generator=generator))
        model.prior.log_scales.copy_(0.3 * torch.randn(model.prior.log_scales.shape, generator=generator))


def _reference_mixture(model: VAE) -> torch.distributions.Distribution:
    prior = model.prior
    components = torch.distributions.Independent(torch.distributions.Normal(prior.means, prior.log_scales.exp()), 1)
    return torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=prior.logits), components)


def test_mixture_prior_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    model = VAE(MIXTURE)
    _randomize_prior(model)
    z = 3 * torch.randn(10, 4)
    assert torch.allclose(model.prior.log_prob(z), _reference_mixture(model).log_prob(z), atol=1e-5)
    # At initialization the mixture is close to N(0, I) where N(0, I) puts its mass.
    typical = torch.randn(100, 4)
    start = VAE(MIXTURE).prior.log_prob(typical)
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(typical).sum(1)
    assert (start - standard).abs().max() < 0.2


def test_mixture_prior_kl_estimate_averages_to_the_monte_carlo_kl():
    torch.manual_seed(0)
    model = VAE(MIXTURE)
    _randomize_prior(model)
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    num_samples = 4000
    with torch.no_grad():
        _, log_pz_minus_log_qz = model.log_weights(images, num_samples)  # (N, B)
        # An independent estimate of KL(q || p) = E_q[log q(z) - log p(z)] with torch.distributions.
        mean, log_var, _ = model.encode(images)
        posterior = torch.distributions.Independent(torch.distributions.Normal(mean, (0.5 * log_var).exp()), 1)
        z = posterior.sample((num_samples,))  # (N, B, D)
        reference = posterior.log_prob(z) - _reference_mixture(model).log_prob(z)  # (N, B)
        standard = posterior.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(2)
    kl = -log_pz_minus_log_qz.mean(0)
    standard_error = ((log_pz_minus_log_qz.var(0) + reference.var(0)) / num_samples).sqrt()
    assert ((kl - reference.mean(0)).abs() < 5 * standard_error).all()
    assert ((kl - standard.mean(0)).abs() > 20 * standard_error).all()  # the N(0, I) prior would give another KL
    outputs = model({"images": images})
    outputs["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prior.parameters())


def test_mixture_prior_samples_come_from_the_mixture():
    torch.manual_seed(0)
    model = VAE(MIXTURE).eval()
    with torch.no_grad():  # three sharp components at 10, 20 and 30 with weights 0.2, 0.3 and 0.5
        model.prior.means.copy_(torch.tensor([10.0, 20.0, 30.0])[:, None].expand(3, 4))
        model.prior.log_scales.fill_(math.log(0.01))
        model.prior.logits.copy_(torch.tensor([0.2, 0.3, 0.5]).log())
    latents = []
    model.decoder.register_forward_pre_hook(lambda module, args: latents.append(args[0]))
    samples = model.sample(3000, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3000, 1, 28, 28)
    z = latents[0]
    assert z.shape == (3000, 4)
    nearest = (z[:, :1] - torch.tensor([10.0, 20.0, 30.0])).abs()  # (N, 3)
    assert nearest.min(1).values.max() < 0.1  # every draw lies on one component, in every coordinate
    assert (z - z[:, :1]).abs().max() < 0.1
    shares = torch.bincount(nearest.argmin(1), minlength=3).float() / len(z)
    assert torch.allclose(shares, torch.tensor([0.2, 0.3, 0.5]), atol=0.04)
    assert torch.equal(samples, model.sample(3000, generator=torch.Generator().manual_seed(0)))


def test_mixture_prior_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = VAE(MIXTURE).eval()
    _randomize_prior(model)
    model.save_pretrained(tmp_path)
    loaded = VAE.from_pretrained(tmp_path).eval()
    assert loaded.config == MIXTURE and isinstance(loaded.prior, type(model.prior))
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    torch.manual_seed(1)
    expected = model.log_prob(images, num_importance_samples=8)
    torch.manual_seed(1)
    assert torch.equal(expected, loaded.log_prob(images, num_importance_samples=8))
    generator = torch.Generator()
    assert torch.equal(model.sample(4, generator.manual_seed(3)), loaded.sample(4, generator.manual_seed(3)))


def test_gaussian_prior_has_no_parameters():
    assert not any(name.startswith("prior") for name in VAE(TINY).state_dict())  # shipped checkpoints still load


@pytest.mark.parametrize("field, value", [("prior", "vamp"), ("prior_components", 0)])
def test_bad_prior_config_is_refused_with_the_field_name(field, value):
    with pytest.raises(ConfigError, match=field):
        VAEConfig(**{field: value})


def _mixture_log_likelihood(prior, z: torch.Tensor) -> float:
    with torch.no_grad():
        return prior.log_prob(z).mean().item()


def test_prior_refit_by_em_recovers_a_known_mixture():
    generator = torch.Generator().manual_seed(0)
    means = torch.tensor([[-4.0, 0.0, 0.0, 2.0], [3.0, 3.0, -1.0, 0.0], [0.0, -5.0, 2.0, -2.0]])
    scales = torch.tensor([[0.5, 1.0, 0.3, 0.8], [1.2, 0.4, 0.6, 0.5], [0.7, 0.7, 1.5, 0.2]])
    weights = torch.tensor([0.5, 0.3, 0.2])
    components = torch.multinomial(weights, 6000, replacement=True, generator=generator)
    z = means[components] + scales[components] * torch.randn(6000, 4, generator=generator)
    prior = VAE(MIXTURE).prior  # starts near N(0, I): every component must move
    before = _mixture_log_likelihood(prior, z)
    prior.fit(z, iterations=200)
    order = prior.means[:, 0].argsort()  # components come back in any order: sort by the first coordinate
    assert torch.allclose(prior.means[order], means[[0, 2, 1]], atol=0.1)
    assert torch.allclose(prior.log_scales[order].exp(), scales[[0, 2, 1]], rtol=0.1)
    assert torch.allclose(prior.logits.softmax(0)[order], weights[[0, 2, 1]], atol=0.02)
    assert _mixture_log_likelihood(prior, z) > before + 1.0


def test_fit_prior_moves_only_the_prior_toward_the_aggregate_posterior():
    torch.manual_seed(0)
    model = VAE(VAEConfig(hidden_channels=8, latent_dim=4, num_mixtures=2, num_flows=2, flow_type="radial",
                          prior="mixture", prior_components=3)).eval()
    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    others = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("prior.")}
    with torch.no_grad():  # the aggregate posterior's latents, as fit_prior draws them
        mean, log_var, flows = model.encode(images)
        z, _ = model.posterior(mean + torch.exp(0.5 * log_var) * torch.randn(mean.shape), flows)
    before = _mixture_log_likelihood(model.prior, z)
    model.fit_prior(images, iterations=20, samples_per_image=5, generator=torch.Generator().manual_seed(0))
    assert _mixture_log_likelihood(model.prior, z) > before
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in others.items())
    with pytest.raises(ConfigError, match="prior='mixture'"):
        VAE(TINY).fit_prior(images)

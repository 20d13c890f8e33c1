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

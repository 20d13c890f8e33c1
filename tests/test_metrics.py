import math

import numpy as np
import pytest
import torch
from scipy import linalg

from gm_hub.data import ImageDataConfig, ImageDataset, load_image_datasets
from gm_hub.metrics import (
    EvaluationConfig,
    PixelGaussianBaseline,
    class_shares,
    classifier_fid,
    conditional_metrics,
    confident_share,
    bits_per_dim_per_item,
    dequantized_bits_per_dim,
    evaluate_bits_per_dim,
    evaluate_model,
    frechet_distance,
    load_digit_classifier,
    memorization,
    sample_metrics,
)
from gm_hub.models.vae import VAE, VAEConfig


@pytest.fixture(scope="module")
def digits():
    """The embedded MNIST split: (train images, validation images), uint8 (N, 1, 28, 28)."""
    train, validation = load_image_datasets(ImageDataConfig())
    return train.images, validation.images


class UniformModel(torch.nn.Module):
    """Every image equally likely: P(x) = 256^-D."""

    def log_prob(self, images):
        return torch.full((len(images),), -images[0].numel() * math.log(256), dtype=torch.float64)


def test_uniform_model_over_256_levels_has_exactly_8_bits_per_dim():
    dataset = ImageDataset(torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8))
    assert evaluate_bits_per_dim(UniformModel(), dataset, batch_size=3) == 8.0
    # The same model as a density on [0, 1)^D (flows' convention): log p = 0.
    assert dequantized_bits_per_dim(torch.zeros(4), 784).tolist() == [8.0] * 4


class BrightnessModel(torch.nn.Module):
    """A made-up log-likelihood that falls with each image's total brightness, so every item differs."""

    def log_prob(self, images):
        return -images.flatten(1).double().sum(1)


def test_bits_per_dim_per_item_keeps_each_item_in_order_and_averages_to_the_mean():
    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dataset = ImageDataset(images)
    bits = bits_per_dim_per_item(BrightnessModel(), dataset, batch_size=3)
    assert torch.allclose(bits, images.flatten(1).double().sum(1) / (16 * math.log(2)))
    assert evaluate_bits_per_dim(BrightnessModel(), dataset, batch_size=4) == pytest.approx(bits.mean().item())


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    cov_a, cov_b = a @ a.T, b @ b.T
    mean_a, mean_b = rng.normal(size=6), rng.normal(size=6)
    expected = ((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real)
    assert frechet_distance(mean_a, cov_a, mean_b, cov_b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mean_a, cov_a, mean_a, cov_a) == pytest.approx(0.0, abs=1e-8)


def test_classifier_fid_is_zero_for_a_set_against_itself_and_large_against_noise(digits):
    train, validation = digits
    noise = PixelGaussianBaseline(train).sample(len(validation), generator=torch.Generator().manual_seed(0))
    assert classifier_fid(validation, validation) == pytest.approx(0.0, abs=1e-3)
    real = classifier_fid(train[:500], validation)
    fake = classifier_fid(noise, validation)
    assert fake > 20 * real and fake > 100


def test_confident_share_and_class_shares(digits):
    train, validation = digits
    assert confident_share(validation) > 0.95
    shares = class_shares(validation)
    assert shares.shape == (10,) and shares.sum().item() == pytest.approx(1.0)
    assert shares.min() > 0.05  # 50 digits per class
    noise = PixelGaussianBaseline(train).sample(200, generator=torch.Generator().manual_seed(0))
    assert confident_share(noise) < confident_share(validation)


def test_memorization_flags_exact_copies_of_training_images(digits):
    train, validation = digits
    copies = memorization(train[:200], train, validation)
    assert copies["memorization_exact_copy_share"] == 1.0 and copies["memorization_copy_share"] == 1.0
    assert copies["memorization_distance_ratio"] == 0.0
    held_out = memorization(validation[:250], train, validation[250:])
    assert held_out["memorization_exact_copy_share"] == 0.0 and held_out["memorization_copy_share"] < 0.1
    assert 0.8 < held_out["memorization_distance_ratio"] < 1.25


def test_pixel_gaussian_baseline_is_a_normalized_discrete_likelihood():
    levels = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1)
    for pixels in ([0, 0, 0], [10, 30, 20], [250, 255, 240], [0, 255, 128]):  # sharp, interior, edge-heavy, wide
        baseline = PixelGaussianBaseline(torch.tensor(pixels, dtype=torch.uint8).view(3, 1, 1, 1))
        assert baseline.log_prob(levels).double().exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    samples = baseline.sample(1000, generator=torch.Generator().manual_seed(0))
    assert samples.dtype == torch.uint8 and abs(samples.float().mean().item() - 383 / 3) < 10


def test_evaluate_model_gives_bits_and_sample_metrics_for_a_vae(digits):
    torch.manual_seed(0)
    model = VAE(VAEConfig(hidden_channels=4, latent_dim=2, num_mixtures=1)).eval()
    _, validation = digits
    dataset = ImageDataset(validation[:40], None)
    metrics = evaluate_model(model, None, dataset, EvaluationConfig(num_importance_samples=2, max_eval_items=32))
    assert 0 < metrics["bits_per_dim"] < 9 and metrics["num_importance_samples"] == 2
    assert metrics["num_eval_samples"] == 32 and metrics["num_reference_images"] == 32
    assert metrics["classifier_fid"] > 0 and 0 <= metrics["confident_share"] <= 1
    assert sum(metrics[f"class_share_{k}"] for k in range(10)) == pytest.approx(1.0)
    assert "memorization_distance_ratio" in metrics
    assert all(isinstance(value, float) for value in metrics.values())


def test_a_single_reference_image_gives_sample_metrics_without_fid(digits):
    _, validation = digits
    metrics = sample_metrics(validation[:8], validation[8:9])  # FID needs a covariance of each set
    assert "classifier_fid" not in metrics and metrics["num_reference_images"] == 1
    assert sum(metrics[f"class_share_{k}"] for k in range(10)) == pytest.approx(1.0)
    assert sample_metrics(validation[:8], validation[8:10])["classifier_fid"] > 0


def test_no_sample_metrics_for_non_digit_images():
    model = VAE(VAEConfig(resolution=8, hidden_channels=4, latent_dim=2, num_mixtures=1)).eval()
    dataset = ImageDataset(torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    metrics = evaluate_model(model, None, dataset, EvaluationConfig(num_importance_samples=1, max_eval_items=4))
    assert set(metrics) == {"bits_per_dim", "num_importance_samples"}


def test_shipped_classifier_is_cached_once_per_process():
    assert load_digit_classifier() is load_digit_classifier()


class RealDigitsOfLabel:
    """A stand-in conditional model: asked for digit k, it returns real digits labelled (k + shift) % 10."""

    def __init__(self, shift: int):
        train, _ = load_image_datasets(ImageDataConfig())
        self.by_label = [train.images[train.labels == k] for k in range(10)]
        self.shift = shift

    def sample(self, num_samples, generator=None, label=None):
        pool = self.by_label[(label + self.shift) % 10]
        return pool[torch.randint(len(pool), (num_samples,), generator=generator)]


@pytest.mark.parametrize("shift, low, high", [(0, 0.95, 1.0), (1, 0.0, 0.05)])
def test_conditional_metrics_score_the_requested_digit(shift, low, high):
    metrics, samples = conditional_metrics(RealDigitsOfLabel(shift), per_class=40, batch_size=15)
    assert samples.shape == (10, 40, 1, 28, 28) and samples.dtype == torch.uint8
    assert low <= metrics["conditional_accuracy"] <= high
    assert metrics["conditional_confident_share"] > 0.9  # real digits, whichever was asked for

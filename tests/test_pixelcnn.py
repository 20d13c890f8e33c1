import math

import pytest
import torch

from conftest import run_script
from gm_hub.config import ConfigError
from gm_hub.distributions import to_unit_range
from gm_hub.errors import UserError
from gm_hub.models.pixelcnn import PixelCNN, PixelCNNConfig

# Three layers with 3 x 3 kernels: on 8 x 8 images the receptive field is smaller than the image.
TINY = PixelCNNConfig(resolution=8, hidden_channels=8, num_layers=3, kernel_size=3, first_kernel_size=3, num_mixtures=2)
TINY_FLAGS = [
    "--hidden_channels", "8", "--num_layers", "2", "--first_kernel_size", "3", "--num_mixtures", "2",
    "--train_batch_size", "8", "--max_eval_items", "8", "--num_sample_images", "4", "--lr_warmup_steps", "0",
    "--logging_steps", "1", "--save_images_steps", "0",
]


def tiny_model(seed: int = 0, **changes) -> PixelCNN:
    torch.manual_seed(seed)
    return PixelCNN(PixelCNNConfig(**{**TINY.__dict__, **changes})).eval()


def receptive_field(row: int, column: int, config: PixelCNNConfig) -> set[tuple[int, int]]:
    """Pixels that pixel (row, column) should see: a rectangle of rows above, and its own row to its left."""
    reach = config.first_kernel_size // 2 + (config.num_layers - 1) * (config.kernel_size // 2)
    size = config.resolution
    above = {(r, c) for r in range(max(0, row - 1 - reach), row) for c in range(max(0, column - reach), min(size, column + reach + 1))}
    left = {(row, c) for c in range(max(0, column - 1 - reach), column)}
    return above | left


@pytest.mark.parametrize("row, column", [(5, 4), (0, 3), (7, 7), (4, 0), (0, 0)])
def test_each_pixel_depends_on_every_earlier_pixel_in_its_receptive_field_and_nothing_else(row, column):
    model = tiny_model()
    x = (torch.rand(2, 1, 8, 8) * 2 - 1).requires_grad_()
    labels = torch.tensor([3, model.no_label])
    params = model.network(x, labels)[:, :, row, column]  # (2, 3 * K * C)
    projection = torch.randn_like(params)  # a random mix of the outputs: no cancellation by symmetry
    (gradient,) = torch.autograd.grad((params * projection)[0].sum(), x)
    assert not gradient[1].any()  # images of a batch don't see each other
    seen = {(r, c) for r, c in torch.nonzero(gradient[0, 0]).tolist()}
    assert seen == receptive_field(row, column, model.config)  # no future pixel, and no blind spot
    assert all(r * 8 + c < row * 8 + column for r, c in seen)


@pytest.mark.parametrize("output_head, num_outputs", [("softmax", 256), ("mixture", 3 * 2)])
def test_the_sampler_kernels_compute_the_training_network(output_head, num_outputs):
    model = tiny_model(num_classes=10, output_head=output_head)
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 9, model.no_label])
    with torch.no_grad():
        full = model.network(to_unit_range(images), labels)
        stepwise = model.stepwise_params(images, labels)
    assert full.shape == stepwise.shape == (3, num_outputs, 8, 8)
    torch.testing.assert_close(stepwise, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("output_head", ["softmax", "mixture"])
@pytest.mark.parametrize("label, temperature, num_channels, guidance_scale", [
    (None, 1.0, 1, 0.0), (7, 1.0, 1, 0.0), (2, 0.7, 1, 0.0), (None, 1.3, 3, 0.0), (4, 1.0, 1, 2.0), (1, 0.8, 3, 0.5),
])
def test_cached_and_naive_sampling_give_identical_images(label, temperature, num_channels, guidance_scale, output_head):
    model = tiny_model(resolution=6, num_channels=num_channels, num_layers=2, num_mixtures=3, output_head=output_head)
    options = dict(label=label, temperature=temperature, guidance_scale=guidance_scale)
    for seed in range(2):
        cached = model.sample(6, torch.Generator().manual_seed(seed), **options)
        naive = model.sample(6, torch.Generator().manual_seed(seed), method="naive", **options)
        assert cached.dtype == torch.uint8 and cached.shape == (6, num_channels, 6, 6)
        assert torch.equal(cached, naive)
    assert not torch.equal(cached, model.sample(6, torch.Generator().manual_seed(99), **options))


def logistic_mixture_level_probabilities(logits, means, log_scales) -> torch.Tensor:
    """The 256 values' probabilities under a logistic mixture, from the logistic CDF in float64: (256,)."""
    edges = torch.tensor([-math.inf, *[(level + 0.5) / 127.5 - 1 for level in range(255)], math.inf], dtype=torch.float64)
    weights = torch.tensor(logits, dtype=torch.float64).softmax(0)
    cdf = sum(w * torch.sigmoid((edges - m) / math.exp(s)) for w, m, s in zip(weights, means, log_scales))
    return cdf[1:] - cdf[:-1]


def test_guided_pixels_follow_the_renormalized_guided_distribution():
    model = tiny_model(num_classes=10, output_head="mixture")
    conditional = ([0.5, -0.5], [0.0, 0.05], [-3.5, -4.0])  # logits, means, log-scales of K = 2 components
    unconditional = ([0.0, 0.0], [-0.03, 0.02], [-3.0, -3.0])
    draws = 20_000
    params = torch.tensor([sum(conditional, []), sum(unconditional, [])]).repeat_interleave(draws, 0)  # (2N, 3K)
    pixels = model._draw(params, 1.0, 1.5, torch.Generator().manual_seed(0))
    assert pixels.shape == (2 * draws, 1) and torch.equal(pixels[:draws], pixels[draws:])  # one pixel for both halves
    p_conditional = logistic_mixture_level_probabilities(*conditional)
    p_unconditional = logistic_mixture_level_probabilities(*unconditional)
    guided = p_conditional**2.5 / p_unconditional**1.5
    expected = guided / guided.sum()
    found = torch.bincount(pixels[:draws, 0].long(), minlength=256).double() / draws
    assert (found - expected).abs().sum() / 2 < 0.02  # total variation; sampling noise alone is ~0.01
    assert (p_conditional - expected).abs().sum() / 2 > 0.1  # and guidance did move the distribution
    with pytest.raises(ValueError, match="guidance_scale needs a class-conditional model"):
        tiny_model(num_classes=0).sample(2, guidance_scale=1.0)
    with pytest.raises(ValueError, match="guidance_scale must be"):
        model.sample(2, label=3, guidance_scale=-1.0)


@pytest.mark.parametrize("temperature, guidance_scale", [(1.0, 0.0), (0.5, 0.0), (1.0, 1.5), (0.7, 2.0)])
def test_softmax_pixels_follow_the_tempered_and_guided_softmax(temperature, guidance_scale):
    model = tiny_model(num_classes=10)
    draws = 20_000
    generator = torch.Generator().manual_seed(0)
    conditional, unconditional = torch.randn(256, generator=generator) * 2, torch.randn(256, generator=generator) * 2
    params = torch.stack([conditional, unconditional]).repeat_interleave(draws, 0)  # (2N, 256) logits
    if not guidance_scale:
        params = params[:draws]
    pixels = model._draw(params, temperature, guidance_scale, generator)
    p_conditional, p_unconditional = (logits.double().div(temperature).softmax(0) for logits in (conditional, unconditional))
    guided = p_conditional ** (1 + guidance_scale) / p_unconditional**guidance_scale
    expected = guided / guided.sum()
    found = torch.bincount(pixels[:draws, 0].long(), minlength=256).double() / draws
    assert (found - expected).abs().sum() / 2 < 0.06  # total variation; sampling noise over 256 values is ~0.04
    if temperature != 1.0 or guidance_scale:
        assert (conditional.double().softmax(0) - expected).abs().sum() / 2 > 0.15  # the setting did move it
    with pytest.raises(ValueError, match="temperature must be"):
        model.sample(2, temperature=0.0)


def test_label_changes_the_samples_and_bad_labels_are_refused():
    model = tiny_model()
    with torch.no_grad():
        for layer in model.layers:
            layer.label_embedding.weight.normal_(0, 3)  # a strong label signal at initialization
    three = model.sample(4, torch.Generator().manual_seed(0), label=3)
    assert not torch.equal(three, model.sample(4, torch.Generator().manual_seed(0), label=5))
    per_sample = model.sample(4, torch.Generator().manual_seed(0), label=torch.tensor([3, 3, 3, 3]))
    assert torch.equal(three, per_sample)
    with pytest.raises(ValueError, match="labels must be in"):
        model.sample(2, label=10)
    with pytest.raises(ValueError, match="method"):
        model.sample(2, method="fast")


def test_log_prob_of_a_known_head_is_the_analytic_softmax():
    model = tiny_model()
    logits = torch.randn(256, dtype=torch.float64)
    with torch.no_grad():
        model.head_out.weight.zero_()  # every pixel gets the same, known distribution over the 256 values
        model.head_out.bias.copy_(logits)
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    expected = logits.log_softmax(0)[images.long()].flatten(1).sum(1).float()
    torch.testing.assert_close(model.log_prob(images), expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(model.log_prob(images, labels=4), expected, rtol=1e-5, atol=1e-3)
    outputs = model({"images": images, "labels": torch.tensor([1, 2, 3])})
    assert outputs["loss"].item() == pytest.approx(-expected.mean().item() / 64, rel=1e-5)


def test_log_prob_of_a_known_head_is_the_analytic_mixture():
    model = tiny_model(output_head="mixture")
    logits, means, log_scales = [0.3, -0.2], [-0.5, 0.4], [-2.0, -1.5]
    with torch.no_grad():
        model.head_out.weight.zero_()  # every pixel gets the same, known mixture
        model.head_out.bias.copy_(torch.tensor(logits + means + log_scales))
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    images[0, 0, 0, :2] = torch.tensor([0, 255], dtype=torch.uint8)  # both edge bins

    def logistic_cdf(value, mean, log_scale):
        return 1.0 / (1.0 + math.exp(-(value - mean) / math.exp(log_scale)))

    weights = torch.tensor(logits, dtype=torch.float64).softmax(0).tolist()
    expected = []
    for image in images:
        total = 0.0
        for level in image.flatten().tolist():
            x, half = level / 127.5 - 1, 1 / 255
            mass = 0.0
            for w, m, s in zip(weights, means, log_scales):
                upper = 1.0 if level == 255 else logistic_cdf(x + half, m, s)
                lower = 0.0 if level == 0 else logistic_cdf(x - half, m, s)
                mass += w * (upper - lower)
            total += math.log(mass)
        expected.append(total)
    expected = torch.tensor(expected, dtype=torch.float32)
    torch.testing.assert_close(model.log_prob(images), expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(model.log_prob(images, labels=4), expected, rtol=1e-5, atol=1e-3)
    outputs = model({"images": images, "labels": torch.tensor([1, 2, 3])})
    assert outputs["loss"].item() == pytest.approx(-expected.mean().item() / 64, rel=1e-5)
    assert outputs["bits_per_dim"].item() == pytest.approx(outputs["loss"].item() / math.log(2), rel=1e-6)


def strongly_conditional_model() -> PixelCNN:
    model = tiny_model()
    with torch.no_grad():
        for layer in model.layers:
            layer.label_embedding.weight.normal_(0, 3)  # a strong label signal at initialization
        model.head_out.weight.mul_(30)  # and peaked output laws, so that the classes differ
    return model


def first_pixel_law(model: PixelCNN, labels: torch.Tensor) -> torch.Tensor:
    """p(x_0 = v | y) of the first pixel, which sees only the label: (B,) labels -> (B, 256) float64."""
    blank = torch.zeros(len(labels), 1, 8, 8, dtype=torch.uint8)
    with torch.no_grad():
        params = model.network(to_unit_range(blank), labels)
    return model._level_log_probs(params)[:, :, 0, 0, 0].double().exp()


def test_unconditional_log_prob_is_the_mixture_over_the_classes():
    model = strongly_conditional_model()
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    per_class = torch.stack([model.log_prob(images, label).double() for label in range(10)], dim=1)
    expected = per_class.exp().mean(1).log()  # float64 holds exp(-400)
    torch.testing.assert_close(model.log_prob(images).double(), expected, rtol=1e-6, atol=1e-3)


def test_unconditional_samples_follow_the_mixture_over_the_classes():
    model = strongly_conditional_model()
    samples = model.sample(4000, torch.Generator().manual_seed(0))
    observed = torch.bincount(samples[:, 0, 0, 0].long(), minlength=256).double() / len(samples)
    mixture = first_pixel_law(model, torch.arange(10)).mean(0)
    no_label = first_pixel_law(model, torch.tensor([model.no_label]))[0]

    def distance(p, q):  # total variation over 16 bins of 16 levels: few enough for 4,000 samples
        return (p.view(16, 16).sum(1) - q.view(16, 16).sum(1)).abs().sum().item() / 2

    assert distance(observed, mixture) < 0.05
    assert distance(no_label, mixture) > 0.15  # the no-label path is another law, not the one sampled


def test_completion_without_a_label_weighs_the_classes_by_the_given_rows():
    model = strongly_conditional_model()
    labels = torch.arange(10).repeat(3)
    images = model.sample(30, torch.Generator().manual_seed(0), label=labels)
    with torch.no_grad():
        whole = model._given_rows_log_likelihoods(images, 8)
        top = model._given_rows_log_likelihoods(images, 5)
        # The same from the full-size network, pixel by pixel: log p(x_i | x_<i, y) summed over the top 5 rows.
        expected = torch.stack([
            model._level_log_probs(model.network(to_unit_range(images), torch.full((30,), label)))
            .gather(1, images.long().unsqueeze(1))[:, 0, :, :5].flatten(1).sum(1) for label in range(10)], dim=1)
    torch.testing.assert_close(top, expected, rtol=1e-5, atol=1e-3)
    per_class = torch.stack([model.log_prob(images, label) for label in range(10)], dim=1)
    torch.testing.assert_close(whole, per_class, rtol=1e-5, atol=1e-3)  # all rows given: p(x | y)
    repeated = images[:3].repeat_interleave(4, 0)  # computed once per distinct image, returned for each
    torch.testing.assert_close(model._given_rows_log_likelihoods(repeated, 5), top[:3].repeat_interleave(4, 0))
    assert (top.argmax(1) == labels).float().mean() > 0.8  # the top rows of a strong-label model give its label away


def test_a_conditional_model_refuses_unlabelled_training_data():
    images = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    with pytest.raises(UserError, match="--num_classes 0"):
        tiny_model()({"images": images})
    assert torch.isfinite(tiny_model(num_classes=0)({"images": images})["loss"])


def test_complete_keeps_the_given_rows_bit_for_bit():
    model = tiny_model()
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    completed = model.complete(images, 3, torch.Generator().manual_seed(0), label=1)
    assert completed.dtype == torch.uint8 and completed.shape == images.shape
    assert torch.equal(completed[:, :, :3], images[:, :, :3])
    assert not torch.equal(completed[:, :, 3:], images[:, :, 3:])
    assert torch.equal(completed, model.complete(images, 3, torch.Generator().manual_seed(0), label=1))
    # Nothing given: the same draws as sampling from scratch.
    nothing = model.complete(images, 0, torch.Generator().manual_seed(1))
    assert torch.equal(nothing, model.sample(4, torch.Generator().manual_seed(1)))


def test_training_steps_decrease_the_loss():
    model = tiny_model().train()
    batch = {"images": torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8) // 64 * 64, "labels": torch.arange(8)}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in model.parameters())


def test_save_and_load_give_identical_samples(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    loaded = PixelCNN.from_pretrained(tmp_path / "model")
    assert loaded.config == model.config
    for label in (None, 6):
        expected = model.sample(3, torch.Generator().manual_seed(4), label=label)
        assert torch.equal(loaded.sample(3, torch.Generator().manual_seed(4), label=label), expected)


def test_the_training_script_saves_a_model_that_loads_and_samples(tmp_path):
    run_script("train_pixelcnn.py", ["--output_dir", str(tmp_path / "run"), "--max_train_steps", "2", *TINY_FLAGS])
    model = PixelCNN.from_pretrained(tmp_path / "run")
    assert model.config.num_layers == 2
    samples = model.sample(2, torch.Generator().manual_seed(0), label=3)
    assert samples.shape == (2, 1, 28, 28) and samples.dtype == torch.uint8


@pytest.mark.parametrize("field, value", [("kernel_size", 4), ("first_kernel_size", 2), ("num_layers", 0),
                                          ("label_dropout", 1.5), ("num_classes", -1), ("resolution", 2),
                                          ("output_head", "logistic")])
def test_bad_config_is_refused_with_the_field_name(field, value):
    with pytest.raises(ConfigError, match=field):
        PixelCNNConfig(**{field: value})

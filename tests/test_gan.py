"""The GAN family: adversarial steps through `accelerate launch`, exact resume, sampling properties, Hub round trip."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_script
from gm_hub import load_model
from gm_hub.errors import UserError
from gm_hub.hub import ConfigError
from gm_hub.models.gan import (
    GAN,
    AdversarialConfig,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    diff_augment,
    interpolate_latents,
    random_cutout,
    random_translation,
    sample_latents,
)

TINY_G = GeneratorConfig(latent_dim=8, hidden_channels=8)
TINY_GAN_FLAGS = [
    "--latent_dim", "8", "--hidden_channels", "8", "--train_batch_size", "8", "--discriminator_steps", "2",
    "--mixed_precision", "bf16", "--max_eval_items", "16", "--num_sample_images", "4", "--save_images_steps", "0",
    "--logging_steps", "1", "--seed", "5",
    "--diff_augment", "translation,cutout",  # its random draws must resume exactly too
    "--num_classes", "10",  # class-conditional: the embedded digits' labels reach both players
    "--mode_seeking_weight", "1.0",
]


def test_adversarial_steps_change_both_networks_save_and_resume_exactly(tmp_path):
    run = tmp_path / "run"
    run_script("train_gan.py", ["--output_dir", str(run), "--max_train_steps", "4", "--checkpointing_steps", "2", *TINY_GAN_FLAGS])
    at_2, at_4 = load_file(run / "checkpoint-2" / "model.safetensors"), load_file(run / "checkpoint-4" / "model.safetensors")
    for network in ("generator.", "discriminator."):
        assert any(not torch.equal(at_2[k], at_4[k]) for k in at_2 if k.startswith(network)), f"{network} did not train"
    # Both optimizers and the EMA are in the checkpoint; the published folder holds the generator alone.
    assert {"optimizer.bin", "optimizer_1.bin", "custom_checkpoint_0.pkl"} <= {p.name for p in (run / "checkpoint-4").iterdir()}
    published = load_file(run / "model.safetensors")
    assert published and all(not k.startswith("discriminator") for k in published)
    config = json.loads((run / "config.json").read_text())
    assert config["_gm_hub_class"] == "Generator" and config["latent_dim"] == 8 and config["num_classes"] == 10
    assert load_model(run).sample(3, torch.Generator().manual_seed(0), label=7).shape == (3, 1, 28, 28)
    assert "| classifier_fid |" in (run / "README.md").read_text()  # the sample metrics reach the GAN through the loop

    # Resume from step 2 in a fresh folder: both networks, optimizers and the EMA match the uninterrupted run.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(run / "checkpoint-2", resumed / "checkpoint-2")
    run_script("train_gan.py", ["--output_dir", str(resumed), "--max_train_steps", "4", "--checkpointing_steps", "2",
                                "--resume_from_checkpoint", "latest", *TINY_GAN_FLAGS])
    for name in ("checkpoint-4/model.safetensors", "model.safetensors"):
        expected, found = load_file(run / name), load_file(resumed / name)
        assert expected.keys() == found.keys() and all(torch.equal(expected[k], found[k]) for k in expected), name
    for name in ("optimizer.bin", "optimizer_1.bin"):
        expected = torch.load(run / "checkpoint-4" / name, weights_only=False)["state"]
        found = torch.load(resumed / "checkpoint-4" / name, weights_only=False)["state"]
        assert all(torch.equal(expected[i]["exp_avg"], found[i]["exp_avg"]) for i in expected), name
    ema = [torch.load(folder / "checkpoint-4" / "custom_checkpoint_0.pkl", weights_only=False) for folder in (run, resumed)]
    assert ema[0]["num_updates"] == ema[1]["num_updates"] == 4
    assert all(torch.equal(a, b) for a, b in zip(ema[0]["shadow"], ema[1]["shadow"]))


@pytest.mark.parametrize("adversarial_loss, spectral_norm", [("non_saturating", False), ("hinge", True)])
def test_each_player_step_moves_only_its_own_network(adversarial_loss, spectral_norm):
    torch.manual_seed(0)
    gan = GAN(TINY_G, DiscriminatorConfig(discriminator_channels=8, spectral_norm=spectral_norm), AdversarialConfig(adversarial_loss))
    batch = {"images": torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)}
    for player, other in (("discriminator", "generator"), ("generator", "discriminator")):
        before = {k: v.clone() for k, v in gan.state_dict().items()}
        outputs = gan(batch, player=player)
        assert outputs["loss"].isfinite()
        outputs["loss"].backward()
        torch.optim.SGD(getattr(gan, player).parameters(), lr=0.1).step()
        gan.zero_grad(set_to_none=True)
        after = gan.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(player))
        assert all(torch.equal(p, before[k]) for k, p in gan.named_parameters() if k.startswith(other))


def test_truncation_draws_the_truncated_normal():
    z = sample_latents(2000, 16, torch.Generator().manual_seed(0), truncation=0.5)
    assert z.shape == (2000, 16) and z.abs().max() <= 0.5
    # The truncated normal's moments and inner mass; clamping would pile ~62% of the draws on +-0.5.
    a = torch.tensor(0.5)
    normal = torch.distributions.Normal(0.0, 1.0)
    mass = normal.cdf(a) - normal.cdf(-a)
    expected_std = (1 - 2 * a * normal.log_prob(a).exp() / mass).sqrt()  # 0.2869
    inner_share = (normal.cdf(a / 2) - normal.cdf(-a / 2)) / mass  # P(|z| < 0.25 | |z| <= 0.5) = 0.5156
    assert abs(z.std() - expected_std) < 0.005
    assert abs((z.abs() < 0.25).float().mean() - inner_share) < 0.01
    assert (z.abs() > 0.499).float().mean() < 0.01
    tiny = sample_latents(64, 16, torch.Generator().manual_seed(0), truncation=1e-12)  # bounded work, however small
    assert tiny.abs().max() <= 1e-12 and tiny.std() > 0
    model = Generator(TINY_G).eval()
    assert model.sample(4, torch.Generator().manual_seed(0), truncation=1.0).shape == (4, 1, 28, 28)
    with pytest.raises(ValueError, match="truncation"):
        sample_latents(1, 4, truncation=0.0)


@pytest.mark.parametrize("spherical", [False, True])
def test_interpolation_endpoints_equal_the_inputs(spherical):
    z_a, z_b = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    path = interpolate_latents(z_a, z_b, steps=7, spherical=spherical)
    assert path.shape == (7, 8) and torch.equal(path[0], z_a) and torch.equal(path[-1], z_b)
    if spherical:  # the norm moves linearly between the endpoints' norms
        assert torch.allclose(path.norm(dim=1), torch.linspace(z_a.norm(), z_b.norm(), 7), atol=1e-5)
    model = Generator(TINY_G).eval()
    images = model.interpolate(z_a, z_b, steps=7, spherical=spherical)
    ends = model.generate(torch.stack([z_a, z_b]))
    assert images.shape == (7, 1, 28, 28) and images.dtype == torch.uint8
    assert (images[[0, -1]].int() - ends.int()).abs().max() <= 1  # same z; batch size may change float rounding


def test_from_pretrained_reproduces_samples_for_the_same_seed(tmp_path):
    torch.manual_seed(0)
    model = Generator(GeneratorConfig(resolution=32, num_channels=3, latent_dim=8, hidden_channels=4)).eval()
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"model.safetensors", "config.json", "README.md"}
    loaded = Generator.from_pretrained(tmp_path)
    samples = model.sample(6, torch.Generator().manual_seed(3))
    assert samples.shape == (6, 3, 32, 32) and samples.dtype == torch.uint8
    assert torch.equal(samples, loaded.sample(6, torch.Generator().manual_seed(3)))
    assert torch.equal(samples, load_model(tmp_path).sample(6, torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("config_class, field, value", [
    (GeneratorConfig, "resolution", 30), (GeneratorConfig, "num_channels", 2), (GeneratorConfig, "latent_dim", 0),
    (GeneratorConfig, "num_classes", -1), (DiscriminatorConfig, "num_classes", 1001),
    (AdversarialConfig, "mode_seeking_weight", -1.0),
    (DiscriminatorConfig, "discriminator_channels", 0), (AdversarialConfig, "adversarial_loss", "wasserstein"),
    (AdversarialConfig, "discriminator_steps", 0), (AdversarialConfig, "diff_augment", "color"),
    (AdversarialConfig, "diff_augment", "translation,"),
])
def test_bad_config_is_refused_with_the_field_name(config_class, field, value):
    with pytest.raises(ConfigError, match=field):
        config_class(**{field: value})
    with pytest.raises(ConfigError, match="resolution"):
        GAN(GeneratorConfig(resolution=32), DiscriminatorConfig(resolution=28), AdversarialConfig())
    with pytest.raises(ConfigError, match="num_classes"):
        GAN(GeneratorConfig(num_classes=10), DiscriminatorConfig(), AdversarialConfig())


TINY_CONDITIONAL_G = GeneratorConfig(latent_dim=8, hidden_channels=8, num_classes=10)


def test_conditional_sampling_draws_z_then_uniform_labels_and_the_label_changes_the_image():
    torch.manual_seed(0)
    model = Generator(TINY_CONDITIONAL_G).eval()
    seeded = torch.Generator().manual_seed(4)
    latents = model.sample_latents(500, seeded)
    labels = torch.randint(10, (500,), generator=seeded)
    assert torch.equal(model.sample(500, torch.Generator().manual_seed(4)), model.generate(latents, labels))
    assert torch.bincount(labels, minlength=10).min() > 25  # uniform over the ten classes
    # One z, every label: the label's embedding changes G's output.
    z = latents[:1].expand(10, -1)
    images = model.generate(z, torch.arange(10))
    assert all(not torch.equal(images[0], images[k]) for k in range(1, 10))
    latents = model.sample_latents(3, torch.Generator().manual_seed(4))
    assert torch.equal(model.sample(3, torch.Generator().manual_seed(4), label=2), model.generate(latents, torch.full((3,), 2)))
    with pytest.raises(UserError, match=r"labels must be in \[0, 10\)"):
        model.sample(2, label=10)
    with pytest.raises(UserError, match="unconditional"):
        Generator(TINY_G).sample(2, label=3)


def test_projection_discriminator_scores_image_label_pairs_and_learns_its_class_vectors():
    torch.manual_seed(0)
    # Without spectral norm, which divides every class vector by a norm of them all (so all get gradients).
    gan = GAN(TINY_CONDITIONAL_G, DiscriminatorConfig(discriminator_channels=8, num_classes=10), AdversarialConfig("hinge"))
    images = torch.rand(4, 1, 28, 28) * 2 - 1
    logits = [gan.discriminator(images, torch.full((4,), label)) for label in (1, 8)]
    assert not torch.allclose(logits[0], logits[1])
    batch = {"images": torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8), "labels": torch.tensor([0, 3, 3, 9])}
    for player, embedding in (("discriminator", gan.discriminator.class_projection), ("generator", gan.generator.label_embedding)):
        gan.zero_grad(set_to_none=True)
        gan(batch, player=player)["loss"].backward()
        used = embedding.weight.grad.abs().sum(dim=1) > 0
        assert used.tolist() == [k in (0, 3, 9) for k in range(10)], player  # the batch's classes alone
    with pytest.raises(UserError, match="--num_classes 0"):
        gan({"images": batch["images"]}, player="discriminator")  # unlabelled data for a conditional GAN


def test_conditional_interpolation_moves_from_one_class_to_the_other():
    torch.manual_seed(0)
    model = Generator(TINY_CONDITIONAL_G).eval()
    z_a, z_b = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    images = model.interpolate(z_a, z_b, steps=5, labels=(3, 8))
    ends = model.generate(torch.stack([z_a, z_b]), torch.tensor([3, 8]))
    assert images.shape == (5, 1, 28, 28) and (images[[0, -1]].int() - ends.int()).abs().max() <= 1
    with pytest.raises(UserError, match="labels=\\(a, b\\)"):
        model.interpolate(z_a, z_b, steps=5)


def test_conditional_generator_round_trips_through_from_pretrained(tmp_path):
    torch.manual_seed(0)
    model = Generator(TINY_CONDITIONAL_G).eval()
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.config.num_classes == 10
    for label in (None, 6):
        assert torch.equal(model.sample(5, torch.Generator().manual_seed(2), label=label),
                           loaded.sample(5, torch.Generator().manual_seed(2), label=label))


def test_diff_augment_with_an_empty_policy_is_the_identity():
    images = torch.randn(4, 1, 28, 28)
    assert diff_augment(images, "") is images


def test_translation_moves_content_by_at_most_the_maximum_shift():
    torch.manual_seed(0)
    images = torch.zeros(2000, 1, 28, 28)
    images[:, 0, 10, 15] = 1.0  # one bright pixel per image, away from the border
    moved = random_translation(images)  # maximum shift round(28 / 8) = 4
    assert moved.shape == images.shape
    assert torch.equal(moved.sum((1, 2, 3)), torch.ones(2000))  # the pixel is kept: it cannot reach the border
    position = moved[:, 0].flatten(1).argmax(1)  # (B,) index into the flattened 28 x 28 image
    shifts = torch.stack([position // 28 - 10, position % 28 - 15], 1)
    assert shifts.abs().max() == 4 and len(shifts.unique(dim=0)) == 81  # every offset in [-4, 4]^2 occurs
    # Content near the border may leave; nothing is ever created.
    edge = torch.zeros(256, 1, 28, 28)
    edge[:, 0, 0, 0] = 1.0
    assert random_translation(edge).sum() < 256 and random_translation(edge).sum((1, 2, 3)).max() <= 1
    shifted_whole = random_translation(torch.ones(64, 3, 28, 28))  # zeros fill what was uncovered, in every channel
    assert shifted_whole.min() == 0 and torch.equal(shifted_whole[:, 0], shifted_whole[:, 2])


def test_cutout_zeros_one_square_per_image():
    torch.manual_seed(0)
    images = torch.rand(256, 2, 28, 28) + 1.0  # no zeros before the cutout
    cut = random_cutout(images)
    zeros = cut[:, 0] == 0  # (B, H, W)
    assert torch.equal(zeros, cut[:, 1] == 0)  # the same square in every channel
    assert torch.equal(cut[~zeros[:, None].expand_as(cut)], images[~zeros[:, None].expand_as(cut)])
    for mask in zeros:
        rows, cols = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
        assert len(rows) <= 14 and len(cols) <= 14  # side round(28 / 2), clipped by the border
        assert mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # a filled rectangle
        assert mask.sum() == len(rows) * len(cols)
    assert (zeros.sum((1, 2)) == 14 * 14).any() and (zeros.sum((1, 2)) < 14 * 14).any()


def test_gradients_flow_through_the_augmentations():
    torch.manual_seed(0)
    images = torch.randn(8, 1, 28, 28, requires_grad=True)
    diff_augment(images, "translation,cutout").square().sum().backward()
    assert images.grad.abs().sum() > 0
    # The gradient is the augmentation's own mask: pixels that survive get 2x, dropped ones 0.
    assert set(images.grad.div(2 * images.detach()).round(decimals=4).unique().tolist()) <= {0.0, 1.0}


def test_both_players_train_with_diff_augment():
    torch.manual_seed(0)
    adversarial = AdversarialConfig(diff_augment="translation,cutout")
    gan = GAN(TINY_G, DiscriminatorConfig(discriminator_channels=8), adversarial)
    batch = {"images": torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)}
    for player in ("discriminator", "generator", "discriminator", "generator"):
        before = {k: v.clone() for k, v in gan.state_dict().items() if k.startswith(player)}
        outputs = gan(batch, player=player)
        assert outputs["loss"].isfinite()
        outputs["loss"].backward()
        torch.optim.SGD(getattr(gan, player).parameters(), lr=0.1).step()
        gan.zero_grad(set_to_none=True)
        assert any(not torch.equal(before[k], v) for k, v in gan.state_dict().items() if k in before)
    # Same seed, same augmentations: the loss is reproducible through the global RNG.
    torch.manual_seed(1)
    first = gan(batch, player="discriminator")["loss"]
    torch.manual_seed(1)
    assert torch.equal(first, gan(batch, player="discriminator")["loss"])


def test_mode_seeking_term_pairs_labels_and_is_the_inverse_distance_ratio():
    torch.manual_seed(0)
    gan = GAN(TINY_CONDITIONAL_G, DiscriminatorConfig(discriminator_channels=8, num_classes=10),
              AdversarialConfig("hinge", mode_seeking_weight=2.0)).eval()  # eval: G's batch norm keeps no batch state
    seen = []
    gan.generator.label_embedding.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].clone()))
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6])  # odd: the last sample has no partner
    torch.manual_seed(1)
    outputs = gan.generator_loss(7, torch.device("cpu"), labels)
    paired = seen[0]
    assert paired.tolist() == [0, 1, 2, 0, 1, 2, 6]  # the second half repeats the first half's labels
    torch.manual_seed(1)
    z = torch.randn(7, 8)
    images = gan.generator(z, paired)
    ratio = ((images[:3] - images[3:6]).abs().mean(dim=(1, 2, 3)) / (z[:3] - z[3:6]).abs().mean(dim=1)).mean()
    torch.testing.assert_close(outputs["mode_seeking"], 1 / (ratio + 1e-5))
    adversarial = -gan.discriminator(images, paired).mean()
    torch.testing.assert_close(outputs["loss"], adversarial + 2.0 * outputs["mode_seeking"])
    # With D silenced (logits 0), a step on G's loss moves the paired images apart: the term falls.
    with torch.no_grad():
        for module in (gan.discriminator.score, gan.discriminator.class_projection):
            module.weight.zero_()
    gan.discriminator.score.bias.data.zero_()
    terms = []
    for _ in range(2):
        torch.manual_seed(2)
        outputs = gan.generator_loss(8, torch.device("cpu"), torch.arange(8))
        terms.append(outputs["mode_seeking"].item())
        gan.zero_grad()
        outputs["loss"].backward()
        torch.optim.SGD(gan.generator.parameters(), lr=0.05).step()
    assert terms[1] < terms[0]

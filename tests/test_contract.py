"""The contract every family keeps, and a toy family added through the registry alone.

A family joins the contract with one line in TINY_MODELS: its registry name and a function building a tiny model.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import CORPUS
from gm_hub import load_model
from gm_hub.cli import main as cli_main
from gm_hub.config import ImageShape, check_ranges
from gm_hub.data import ImageDataset, load_embedded_mnist, split_text, to_uint8_images
from gm_hub.distributions import randn, to_uint8, to_unit_range
from gm_hub.hub import ConfigError, HubModel
from gm_hub.registry import FAMILIES, Family, get_family, register
from gm_hub.training import TrainingConfig, train


def tiny_gpt():
    from gm_hub.models.gpt import GPT, GPTConfig, train_tokenizer

    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, sample_length=8)
    return GPT(config, train_tokenizer(config, *split_text(CORPUS)))


def tiny(module: str, class_name: str, **config):
    """A builder of `class_name(ConfigClass(**config))` from gm_hub.models.<module>."""
    def build():
        import importlib

        model_class = getattr(importlib.import_module(f"gm_hub.models.{module}"), class_name)
        return model_class(model_class.config_class()(**config))
    return build


TINY_MODELS = {
    "vae": tiny("vae", "VAE", hidden_channels=8, latent_dim=4, num_mixtures=2, num_flows=1),
    "gan": tiny("gan", "Generator", latent_dim=8, hidden_channels=8),
    "gpt": tiny_gpt,
    "classifier": tiny("classifier", "DigitClassifier", hidden_channels=4, feature_dim=8),
    "realnvp": tiny("realnvp", "RealNVP", resolution=8, num_scales=2, num_couplings=1, hidden_channels=8),
    "glow": tiny("glow", "Glow", resolution=8, num_levels=2, num_steps=2, hidden_channels=8),
    "pixelcnn": tiny("pixelcnn", "PixelCNN", resolution=8, hidden_channels=8, num_layers=2, first_kernel_size=3, num_mixtures=2),
    "ddpm": tiny("ddpm", "DDPM", resolution=8, block_out_channels=(16, 32), attention_resolutions=(4,), norm_num_groups=4,
                 num_train_timesteps=50),
}


def test_every_registered_family_keeps_the_contract():
    assert set(TINY_MODELS) == set(FAMILIES), "add the new family to TINY_MODELS"


def training_batch(family: Family, model) -> dict:
    if family.produces == "text":
        return {"input_ids": model.encode(CORPUS[:68]).unfold(0, 17, 17)}  # (4, block_size + 1)
    data = load_embedded_mnist()
    shape = model.config
    return {"images": to_uint8_images(data.images[:4], shape.resolution, shape.num_channels), "labels": data.labels[:4]}


def saved_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.safetensors"))


@pytest.fixture(params=sorted(TINY_MODELS))
def saved(request, tmp_path):
    torch.manual_seed(0)
    family = get_family(request.param)
    model = TINY_MODELS[request.param]().eval()
    model.save_pretrained(tmp_path / "model")
    return family, model, tmp_path / "model"


def test_config_survives_save_and_load(saved):
    family, model, folder = saved
    loaded = load_model(folder)
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_samples_are_identical_after_reload_for_a_fixed_generator(saved):
    family, model, folder = saved
    if family.produces == "labels":
        images = load_embedded_mnist().images[:8]
        assert torch.equal(model.predict(images)[1], load_model(folder).predict(images)[1])
        return
    expected = model.sample(3, generator=torch.Generator().manual_seed(5))
    again = load_model(folder).sample(3, generator=torch.Generator().manual_seed(5))  # right after loading
    other = model.sample(3, generator=torch.Generator().manual_seed(6))
    if family.produces == "images":
        assert expected.dtype == torch.uint8 and torch.equal(expected, again) and not torch.equal(expected, other)
    else:
        assert expected == again and expected != other


def test_forward_is_the_loss(saved):
    family, model, _ = saved
    trainer = model
    if family.training_module:
        module, name = family.training_module.split(":")
        import importlib

        trainer = getattr(importlib.import_module(module), name).from_published(model)
    trainer.eval()  # dropout and augmentation off; randomness (noise, t) seeded alike
    batch = training_batch(family, model)
    for player in family.players or [None]:
        kwargs = {"player": player} if player else {}
        torch.manual_seed(0)
        forward = trainer(batch, **kwargs)
        torch.manual_seed(0)
        loss = trainer.loss(batch, **kwargs)
        assert forward.keys() == loss.keys() and torch.isfinite(forward["loss"])
        assert all(torch.equal(forward[key], loss[key]) for key in forward)


def test_a_folder_missing_one_tensor_is_refused(saved):
    family, model, folder = saved
    weights_file = saved_files(folder)[0]
    weights = load_file(weights_file)
    weights.pop(sorted(weights)[-1])
    save_file(weights, weights_file, metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="missing"):
        load_model(folder)


def test_the_marker_names_the_class_in_the_root_file(saved):
    family, model, folder = saved
    root = json.loads((folder / type(model).config_file_name).read_text())
    assert root["_gm_hub_class"] == family.class_name


# --- a toy family, added through the registry alone ------------------------------------------------------


@dataclass
class MeanImageConfig(ImageShape):
    noise_scale: float = 0.1  # standard deviation of the pixel noise added to the mean image, on [-1, 1]

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, ("noise_scale", 0.0, 2.0))


class MeanImage(HubModel, family="mean-image"):
    """A learned mean image plus Gaussian pixel noise: the smallest model with the family interface."""

    def __init__(self, config: MeanImageConfig):
        super().__init__()
        self.config = config
        self.mean = torch.nn.Parameter(torch.zeros(config.num_channels, config.resolution, config.resolution))

    def loss(self, batch: dict) -> dict:
        return {"loss": (to_unit_range(batch["images"]) - self.mean).pow(2).mean()}

    def forward(self, batch: dict) -> dict:
        return self.loss(batch)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = randn((num_samples, *self.mean.shape), generator, self.mean.device)
        return to_uint8(self.mean + self.config.noise_scale * noise)


@pytest.fixture
def toy_family():
    family = register(Family(name="mean-image", title="Mean image", model_class=f"{__name__}:MeanImage",
                             produces="images", likelihood="none"))
    yield family
    FAMILIES.pop(family.name)


def test_a_toy_family_trains_saves_reloads_and_samples_through_the_registry(toy_family, tmp_path, capsys):
    images = load_embedded_mnist().images[:64]
    config = TrainingConfig(output_dir=str(tmp_path / "toy"), max_train_steps=30, train_batch_size=16, learning_rate=0.1,
                            lr_warmup_steps=0, num_sample_images=4, save_images_steps=0, logging_steps=10)
    torch.manual_seed(0)
    train(MeanImage(MeanImageConfig()), ImageDataset(images), config)
    loaded = load_model(tmp_path / "toy")  # the class comes from the registry, through the folder's marker
    assert isinstance(loaded, MeanImage)
    target = to_unit_range(images).mean(0)
    assert (loaded.mean - target).abs().mean() < 0.25 * target.abs().mean()  # from zeros toward the mean digit
    assert (tmp_path / "toy" / "samples.png").is_file()
    cli_main(["sample", str(tmp_path / "toy"), "--num_samples", "5", "--output", str(tmp_path / "toy.npy")])
    import numpy as np

    assert np.load(tmp_path / "toy.npy").shape == (5, 1, 28, 28)

"""DDPM: the loss targets, every scheduler on a known answer, seeds, the stock diffusers folder, the script."""

import json
import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch

from conftest import run_script
from gm_hub.config import ConfigError
from gm_hub.errors import UserError
from gm_hub.models.ddpm import (
    DDPM,
    SCHEDULERS,
    UNSUPPORTED_PREDICTION_TYPES,
    DDPMConfig,
)

# A tiny model: 8x8 images, two levels, attention at 4x4, 100 noise levels (DDPM sampling takes 100 steps).
TINY = dict(resolution=8, block_out_channels=(16, 32), attention_resolutions=(4,), norm_num_groups=4, num_train_timesteps=100)
TINY_FLAGS = [
    "--resolution", "8", "--block_out_channels", "16", "32", "--attention_resolutions", "4", "--norm_num_groups", "4",
    "--num_train_timesteps", "50", "--train_batch_size", "8", "--max_eval_items", "4", "--num_sample_images", "4",
    "--save_images_steps", "0", "--lr_warmup_steps", "0", "--logging_steps", "1",
]


def pattern() -> torch.Tensor:
    """A digit-like 8x8 pattern, (1, 8, 8) uint8: a 7 with a bar."""
    image = torch.zeros(1, 8, 8, dtype=torch.uint8)
    image[:, 1, 1:7] = 255
    image[:, 2:7, 5] = 255
    image[:, 4, 3:7] = 255
    return image


class Oracle(torch.nn.Module):
    """The exact denoiser of a dataset holding one image: what a perfectly trained UNet outputs."""

    def __init__(self, model: DDPM, image: torch.Tensor):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))  # gives the model a device
        self.alphas_cumprod = model.scheduler.alphas_cumprod
        self.prediction_type = model.config.prediction_type
        self.clean = image.float() / 127.5 - 1

    def forward(self, noisy: torch.Tensor, timestep: torch.Tensor):
        assert torch.equal(timestep, timestep.round()), "every scheduler's timesteps are integers here"
        alpha_bar = self.alphas_cumprod[timestep.long()].view(-1, 1, 1, 1)
        noise = (noisy - alpha_bar.sqrt() * self.clean) / (1 - alpha_bar).sqrt()
        output = {"epsilon": noise, "sample": self.clean.expand_as(noisy),
                  "v_prediction": alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * self.clean}[self.prediction_type]
        return types.SimpleNamespace(sample=output)


def oracle_model(prediction_type: str) -> DDPM:
    model = DDPM(DDPMConfig(**TINY, prediction_type=prediction_type)).eval()
    model.unet = Oracle(model, pattern())
    return model


@pytest.fixture(scope="module")
def tiny_model() -> DDPM:
    torch.manual_seed(0)
    return DDPM(DDPMConfig(**TINY)).eval()


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_loss_targets_match_the_exact_denoiser(prediction_type):
    """The perfect output for one training image gives zero loss: the loss asks for what the schedulers read."""
    model = oracle_model(prediction_type)
    torch.manual_seed(0)
    loss = model({"images": pattern().expand(16, -1, -1, -1)})["loss"]
    assert loss.item() < 1e-8


def test_loss_is_a_scalar_with_gradients_everywhere():
    torch.manual_seed(0)
    model = DDPM(DDPMConfig(**TINY, prediction_type="v_prediction"))
    result = model({"images": pattern().expand(4, -1, -1, -1)})
    assert set(result) == {"loss"} and result["loss"].ndim == 0
    result["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_every_scheduler_samples_the_image_of_an_exact_denoiser(scheduler, prediction_type):
    """With the exact denoiser of a one-image dataset, every sampler must end on that image."""
    model = oracle_model(prediction_type)
    if scheduler in UNSUPPORTED_PREDICTION_TYPES.get(prediction_type, ()):
        with pytest.raises(UserError, match="prediction_type"):
            model.sample(2, scheduler=scheduler)
        return
    images = model.sample(4, generator=torch.Generator().manual_seed(0), scheduler=scheduler)
    assert images.dtype == torch.uint8 and images.shape == (4, 1, 8, 8)
    error = (images.float() - pattern().float()).abs()
    assert error.mean() < 2 and error.max() < 12, (scheduler, error.mean(), error.max())


def test_ddim_eta_and_step_counts():
    model = oracle_model("epsilon")
    for eta in (0.0, 1.0):
        images = model.sample(2, torch.Generator().manual_seed(0), "DDIMScheduler", num_inference_steps=10, eta=eta)
        assert (images.float() - pattern().float()).abs().mean() < 2
    with pytest.raises(UserError, match="eta"):
        model.sample(2, scheduler="EulerDiscreteScheduler", eta=0.5)
    with pytest.raises(UserError, match="num_inference_steps"):
        model.sample(2, num_inference_steps=101)
    with pytest.raises(UserError, match="DDIMScheduler"):  # names the allowed ones
        model.sample(2, scheduler="LCMScheduler")


def test_denoising_steps_end_in_the_samples(tiny_model):
    steps = []
    images = tiny_model.sample(3, torch.Generator().manual_seed(0), num_inference_steps=7, callback=steps.append)
    assert [s.step for s in steps] == list(range(1, 8)) and {s.num_steps for s in steps} == {7}
    assert torch.equal(steps[-1].images, images)
    assert all(s.images.dtype == s.predicted_original.dtype == torch.uint8 for s in steps)
    again = list(tiny_model.denoising_steps(3, torch.Generator().manual_seed(0), num_inference_steps=7))
    assert torch.equal(again[-1].images, images)
    assert steps[0].timestep == 99.0  # trailing spacing: the first step starts from pure noise


@pytest.mark.parametrize("scheduler", ["DPMSolverMultistepScheduler", "DDPMScheduler", "EulerAncestralDiscreteScheduler"])
def test_same_seed_same_images_other_seed_others(tiny_model, scheduler):
    def draw(seed: int) -> torch.Tensor:
        return tiny_model.sample(2, torch.Generator().manual_seed(seed), scheduler, num_inference_steps=10)

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))


def test_save_load_round_trip(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    files = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert files >= {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                     "scheduler/scheduler_config.json", "README.md"}
    assert not any(name.endswith(("config.json", ".safetensors")) and "/" not in name for name in files)  # no 2nd config
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline" and index["_gm_hub_class"] == "DDPM"
    loaded = DDPM.from_pretrained(tmp_path)
    assert loaded.config == tiny_model.config
    for scheduler in ("DPMSolverMultistepScheduler", "DDPMScheduler"):
        expected = tiny_model.sample(4, torch.Generator().manual_seed(3), scheduler, num_inference_steps=10)
        assert torch.equal(loaded.sample(4, torch.Generator().manual_seed(3), scheduler, num_inference_steps=10), expected)


def test_loading_refuses_what_the_config_cannot_express(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    scheduler_file = tmp_path / "scheduler" / "scheduler_config.json"
    scheduler_file.write_text(json.dumps({**json.loads(scheduler_file.read_text()), "clip_sample": False}))
    with pytest.raises(ConfigError, match="clip_sample"):
        DDPM.from_pretrained(tmp_path)
    index_file = tmp_path / "model_index.json"
    index_file.write_text(json.dumps({**json.loads(index_file.read_text()), "scheduler": ["diffusers", "DDIMScheduler"]}))
    with pytest.raises(ConfigError, match="scheduler"):
        DDPM.from_pretrained(tmp_path)


def test_config_is_checked():
    for bad in (dict(block_out_channels=(30, 64)), dict(attention_resolutions=(5,)), dict(beta_schedule="cosine"),
                dict(prediction_type="noise"), dict(resolution=28, block_out_channels=(8, 8, 8, 8))):
        with pytest.raises(ConfigError):
            DDPMConfig(**bad)


def test_stock_diffusers_pipeline_samples_without_gm_hub(tiny_model, tmp_path):
    """DDPMPipeline and DiffusionPipeline load the folder in an interpreter that never imports gm_hub."""
    tiny_model.save_pretrained(tmp_path / "model")
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np, torch
        from diffusers import DDPMPipeline, DiffusionPipeline
        pipe = DDPMPipeline.from_pretrained({str(tmp_path / "model")!r})
        images = pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np").images
        generic = DiffusionPipeline.from_pretrained({str(tmp_path / "model")!r})
        print(json.dumps({{"shape": list(images.shape), "finite": bool(np.isfinite(images).all()),
                          "min": float(images.min()), "max": float(images.max()), "generic": type(generic).__name__,
                          "gm_hub_imported": any(name.startswith("gm_hub") for name in sys.modules)}}))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {**report, "shape": [2, 8, 8, 1], "finite": True, "generic": "DDPMPipeline", "gm_hub_imported": False}
    assert 0.0 <= report["min"] <= report["max"] <= 1.0
    assert "_gm_hub_class" not in result.stderr  # diffusers ignores the marker without a warning


def test_training_script_writes_a_pipeline_folder(tmp_path):
    output = tmp_path / "run"
    run_script("train_ddpm.py", [*TINY_FLAGS, "--max_train_steps", "2", "--output_dir", str(output)])
    assert (output / "model_index.json").is_file() and (output / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    model = DDPM.from_pretrained(output)
    assert model.config.num_train_timesteps == 50 and model.config.block_out_channels == (16, 32)
    assert model.sample(2, torch.Generator().manual_seed(0)).shape == (2, 1, 8, 8)

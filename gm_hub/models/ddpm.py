"""Denoising diffusion probabilistic model (DDPM) [1] for 8-bit images, on diffusers' UNet and schedulers.

The forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) adds Gaussian noise over T steps with a
linear [1] or cosine [2] beta schedule. A `UNet2DModel` (ResNet blocks, self-attention at the chosen feature-map
sizes and in the middle block, sinusoidal timestep embedding [1]) learns to undo it with the simplified loss of
[1, eq. 14]: the MSE between the network's output and its target, which is the noise eps (as [1]), the clean
image x_0 ("sample"), or the velocity v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 [3] ("v_prediction").

Sampling runs through the scheduler interface alone, so any diffusers scheduler swaps in: ancestral DDPM [1]
(T steps), DDIM [4] (deterministic at eta = 0), DPM-Solver++ [5], UniPC, Euler, Heun and PNDM in 10-50 steps.
Each call makes a fresh scheduler from the stored config (multistep schedulers keep state between steps).

The saved folder is a stock diffusers `DDPMPipeline` (model_index.json, unet/, scheduler/), so

    diffusers.DDPMPipeline.from_pretrained(folder)(batch_size=4).images

samples without gm-hub; `DDPMConfig` is read back from unet/config.json and scheduler/scheduler_config.json,
never kept in a second config file.

Departures: timesteps are spaced "trailing" by default, so few-step samplers start from pure noise at
t = T - 1 (diffusers' DDPM default, "leading", starts them part-way); unlike the stock pipeline's loop,
`sample` scales the initial noise by `init_noise_sigma` and calls `scale_model_input`, which the
sigma-based schedulers (Euler, Heun) need. No likelihood is computed (no `log_prob`): the variational bound
of [1] needs the learned-variance terms this simplified loss does not train.

[1] Ho, Jain & Abbeel, Denoising Diffusion Probabilistic Models, 2020. https://arxiv.org/abs/2006.11239
[2] Nichol & Dhariwal, Improved Denoising Diffusion Probabilistic Models, 2021. https://arxiv.org/abs/2102.09672
[3] Salimans & Ho, Progressive Distillation for Fast Sampling of Diffusion Models, 2022. https://arxiv.org/abs/2202.00512
[4] Song, Meng & Ermon, Denoising Diffusion Implicit Models, 2021. https://arxiv.org/abs/2010.02502
[5] Lu et al., DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models, 2022. https://arxiv.org/abs/2211.01095
"""

import inspect
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import diffusers
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
    UNet2DModel,
    UniPCMultistepScheduler,
)

from ..config import ConfigError, ImageShape, check_ranges
from ..distributions import randn, to_uint8, to_unit_range
from ..errors import UserError
from ..hub import HubModel, config_from_dict

BETA_SCHEDULES = ("linear", "squaredcos_cap_v2")  # Ho et al.; the cosine schedule of Nichol & Dhariwal
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("trailing", "leading", "linspace")
SCHEDULERS = {  # what `sample(scheduler=...)` accepts, by diffusers class name
    scheduler.__name__: scheduler
    for scheduler in (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler,
                      EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler, PNDMScheduler)
}
# Schedulers whose `step` raises for a prediction type (diffusers 0.42).
UNSUPPORTED_PREDICTION_TYPES = {
    "sample": ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "PNDMScheduler"),
}
# DDPM's ancestral sampler in 50 of its 1000 steps: on the shipped model the most digit-like samples (confident
# share 0.867 over 5,000) for 16 images in about 2 s on 2 CPU cores; see benchmarks/ddpm_default.md.
DEFAULT_SCHEDULER = "DDPMScheduler"
DEFAULT_NUM_INFERENCE_STEPS = 50  # for every scheduler (at most num_train_timesteps)
PIPELINE_FILE = "model_index.json"
UNET_CONFIG_FILE = "unet/config.json"
UNET_WEIGHTS_FILE = "unet/diffusion_pytorch_model.safetensors"
SCHEDULER_CONFIG_FILE = "scheduler/scheduler_config.json"


@dataclass
class DDPMConfig(ImageShape):
    # The UNet: level i works on (resolution / 2^i)^2 feature maps with block_out_channels[i] channels.
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1  # ResNet blocks per level on the way down (the way up has one more)
    attention_resolutions: tuple[int, ...] = (7,)  # feature-map sizes with self-attention (the middle always has it)
    attention_head_dim: int = 8  # channels per attention head
    norm_num_groups: int = 8  # GroupNorm groups; divides every entry of block_out_channels
    dropout: float = 0.0
    # The noise schedule (a diffusers DDPMScheduler).
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # linear (Ho et al.) or squaredcos_cap_v2 (cosine, Nichol & Dhariwal)
    beta_start: float = 0.0001  # first and last beta of the linear schedule
    beta_end: float = 0.02
    prediction_type: str = "epsilon"  # what the UNet predicts: epsilon (noise), sample (x_0) or v_prediction
    timestep_spacing: str = "trailing"  # how few-step samplers pick timesteps; trailing starts at t = T - 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, ("layers_per_block", 1, 8), ("attention_head_dim", 1, 1024), ("norm_num_groups", 1, 256),
                     ("dropout", 0.0, 0.9), ("num_train_timesteps", 2, 10_000), ("beta_start", 1e-8, 0.5),
                     ("beta_end", 1e-8, 0.999))
        if not 1 <= len(self.block_out_channels) <= 6 or self.resolution % 2 ** (len(self.block_out_channels) - 1):
            raise ConfigError(f"block_out_channels needs 1 to 6 levels, and resolution {self.resolution} divisible by "
                              f"2^(levels - 1); got {len(self.block_out_channels)} levels")
        for channels in self.block_out_channels:
            if not 1 <= channels <= 2048 or channels % self.norm_num_groups or channels % self.attention_head_dim:
                raise ConfigError(f"block_out_channels must be in [1, 2048] and multiples of norm_num_groups "
                                  f"({self.norm_num_groups}) and attention_head_dim ({self.attention_head_dim}), "
                                  f"got {list(self.block_out_channels)}")
        sizes = self.level_resolutions
        if not set(self.attention_resolutions) <= set(sizes):
            raise ConfigError(f"attention_resolutions must be feature-map sizes of the levels, {sizes}; "
                              f"got {list(self.attention_resolutions)}")
        if self.beta_start >= self.beta_end:
            raise ConfigError(f"beta_start must be below beta_end, got {self.beta_start} and {self.beta_end}")
        for name, allowed in (("beta_schedule", BETA_SCHEDULES), ("prediction_type", PREDICTION_TYPES),
                              ("timestep_spacing", TIMESTEP_SPACINGS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")

    @property
    def level_resolutions(self) -> list[int]:
        """The feature-map size of each UNet level, from the input down."""
        return [self.resolution // 2**level for level in range(len(self.block_out_channels))]


def unet_settings(config: DDPMConfig) -> dict[str, Any]:
    """The `UNet2DModel` arguments for a config (the rest keep diffusers' defaults)."""
    attention = [size in config.attention_resolutions for size in config.level_resolutions]
    return dict(
        sample_size=config.resolution,
        in_channels=config.num_channels,
        out_channels=config.num_channels,
        block_out_channels=tuple(config.block_out_channels),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        layers_per_block=config.layers_per_block,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=config.norm_num_groups,
        dropout=config.dropout,
    )


def scheduler_settings(config: DDPMConfig) -> dict[str, Any]:
    """The `DDPMScheduler` arguments for a config (the rest keep diffusers' defaults)."""
    return dict(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        prediction_type=config.prediction_type,
        timestep_spacing=config.timestep_spacing,
    )


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples become lists, as in a saved config


def check_stock_config(cls: type, stored: dict, settings: dict, file_name: str) -> None:
    """Raise ConfigError unless a saved diffusers config is exactly what `settings` build: every argument of
    `cls` (its default where the file leaves it out) must match, so no stored setting is silently dropped."""
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        expected = _as_json(settings.get(name, parameter.default))
        found = _as_json(stored.get(name, parameter.default))
        if found != expected:
            raise ConfigError(f"{file_name}: {name} is {found!r}, which gm-hub's DDPM can't express "
                              f"(it would build {expected!r})")


class DenoisingStep(NamedTuple):
    """One step of the reverse process, for progress bars and animations."""

    step: int  # 1 .. num_steps
    num_steps: int
    timestep: float
    images: torch.Tensor  # (N, C, H, W) uint8: the current noisy images x_t; after the last step, the samples
    predicted_original: torch.Tensor  # (N, C, H, W) uint8: the network's estimate of x_0 at this step


class DDPM(HubModel, family="ddpm", library_name="diffusers", tags=["diffusion", "ddpm", "DDPMPipeline"]):
    """A denoising diffusion probabilistic model (Ho et al.) on diffusers' UNet2DModel, trained with the
    simplified noise-prediction loss; samples with any diffusers scheduler (DDPM, DDIM, DPM-Solver++, ...)."""

    config_file_name: ClassVar[str] = PIPELINE_FILE

    def __init__(self, config: DDPMConfig):
        super().__init__()
        self.config = config
        self.unet = UNet2DModel(**unet_settings(config))
        # The forward process q(x_t | x_0) for training, and the config every sampler is made from.
        # Its tables are small CPU tensors, also when the model is built on the meta device.
        with torch.device("cpu"):
            self.scheduler = DDPMScheduler(**scheduler_settings(config))

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    # --- training ---------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """batch["images"]: uint8 (B, C, H, W) -> {"loss": MSE of the UNet's output against its target [1, eq. 14]}.

        t ~ U{0, ..., T - 1} and eps ~ N(0, I) come from the global RNG (the training loop seeds it).
        """
        clean = to_unit_range(batch["images"])  # (B, C, H, W) in [-1, 1]
        noise = torch.randn_like(clean)
        timesteps = torch.randint(0, self.config.num_train_timesteps, (len(clean),), device=clean.device)
        noisy = self.scheduler.add_noise(clean, noise, timesteps)  # sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
        if self.config.prediction_type == "epsilon":
            target = noise
        elif self.config.prediction_type == "sample":
            target = clean
        else:
            target = self.scheduler.get_velocity(clean, noise, timesteps)
        prediction = self.unet(noisy, timesteps).sample
        return {"loss": F.mse_loss(prediction.float(), target.float())}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.loss(batch)

    # --- sampling ---------------------------------------------------------------------------------------
    def make_scheduler(self, scheduler: str = DEFAULT_SCHEDULER):
        """A fresh scheduler of the named diffusers class, from the stored config."""
        if scheduler not in SCHEDULERS:
            raise UserError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if scheduler in UNSUPPORTED_PREDICTION_TYPES.get(self.config.prediction_type, ()):
            raise UserError(f"{scheduler} can't sample a model with prediction_type={self.config.prediction_type!r}; "
                            f"choose another of {', '.join(SCHEDULERS)}")
        return SCHEDULERS[scheduler].from_config(self.scheduler.config)

    def predicted_original(self, model_input: torch.Tensor, model_output: torch.Tensor, timestep: float) -> torch.Tensor:
        """The x_0 that the UNet's output implies, from x_t (the UNet's input) at a possibly fractional timestep."""
        # abar at a fractional t: sigma = sqrt((1 - abar) / abar) interpolated linearly in t, as Euler's schedulers do.
        sigmas = ((1 - self.scheduler.alphas_cumprod) / self.scheduler.alphas_cumprod).sqrt()
        low = min(int(timestep), len(sigmas) - 1)
        high = min(low + 1, len(sigmas) - 1)
        sigma = torch.lerp(sigmas[low], sigmas[high], float(timestep) - low)
        alpha_bar = (1 / (1 + sigma**2)).to(model_input.device)
        if self.config.prediction_type == "epsilon":
            return (model_input - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()
        if self.config.prediction_type == "sample":
            return model_output
        return alpha_bar.sqrt() * model_input - (1 - alpha_bar).sqrt() * model_output  # from v [3]

    @torch.no_grad()
    def denoising_steps(self, num_samples: int, generator: torch.Generator | None = None,
                        scheduler: str = DEFAULT_SCHEDULER, num_inference_steps: int | None = None,
                        eta: float = 0.0) -> Iterator[DenoisingStep]:
        """The reverse process step by step; the last step's `images` are the samples.

        num_inference_steps: None takes DEFAULT_NUM_INFERENCE_STEPS, or num_train_timesteps if fewer (Ho et
        al.'s ancestral sampling [1] is DDPMScheduler with all of them). eta: DDIM's noise (0 deterministic, 1
        like DDPM) [4].
        Randomness comes from `generator` only (a CPU generator: the same samples on every device).
        """
        sampler = self.make_scheduler(scheduler)
        if num_inference_steps is None:
            num_inference_steps = min(DEFAULT_NUM_INFERENCE_STEPS, self.config.num_train_timesteps)
        if not 1 <= num_inference_steps <= self.config.num_train_timesteps:
            raise UserError(f"num_inference_steps must be in [1, {self.config.num_train_timesteps}], got {num_inference_steps}")
        if num_samples < 1:
            raise UserError(f"num_samples must be positive, got {num_samples}")
        step_arguments = inspect.signature(sampler.step).parameters
        step_kwargs = {"generator": generator} if "generator" in step_arguments else {}
        if "eta" in step_arguments:
            step_kwargs["eta"] = eta
        elif eta != 0.0:
            raise UserError(f"eta applies to DDIMScheduler only, not {scheduler}")
        device = self.device
        sampler.set_timesteps(num_inference_steps, device=device)
        timesteps = sampler.timesteps

        # 1. x_T ~ N(0, sigma_max^2 I): sigma_max is 1 for the variance-preserving schedulers, larger for Euler/Heun.
        shape = (num_samples, self.config.num_channels, self.config.resolution, self.config.resolution)
        sample = randn(shape, generator, device) * sampler.init_noise_sigma
        model_input = sampler.scale_model_input(sample, timesteps[0])  # x_t in the UNet's (variance-preserving) scale
        for index, timestep in enumerate(timesteps):
            # 2. The UNet's prediction at t, and the clean image it implies (for display).
            model_output = self.unet(model_input, timestep).sample
            original = self.predicted_original(model_input, model_output, float(timestep))
            # 3. One step of the scheduler's update rule, x_t -> x_{t'}.
            sample = sampler.step(model_output, timestep, sample, **step_kwargs).prev_sample
            last = index == len(timesteps) - 1
            model_input = sample if last else sampler.scale_model_input(sample, timesteps[index + 1])
            yield DenoisingStep(index + 1, len(timesteps), float(timestep), to_uint8(model_input), to_uint8(original))

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None, scheduler: str = DEFAULT_SCHEDULER,
               num_inference_steps: int | None = None, eta: float = 0.0,
               callback: Callable[[DenoisingStep], None] | None = None) -> torch.Tensor:
        """num_samples images, (N, C, H, W) uint8, by the named diffusers scheduler (see `denoising_steps`).

        The default, DDPM in 50 steps, takes 20 times fewer UNet evaluations than its 1000 training steps;
        callback(step) sees every `DenoisingStep`.
        """
        images = None
        for step in self.denoising_steps(num_samples, generator, scheduler, num_inference_steps, eta):
            if callback is not None:
                callback(step)
            images = step.images
        return images

    # --- the folder: a stock diffusers DDPMPipeline -----------------------------------------------------
    def folder_config(self) -> dict:
        """model_index.json: which diffusers classes the pipeline's parts are."""
        return {
            "_class_name": "DDPMPipeline",
            "_diffusers_version": diffusers.__version__,
            "unet": ["diffusers", "UNet2DModel"],
            "scheduler": ["diffusers", "DDPMScheduler"],
        }

    @classmethod
    def from_folder_config(cls, values: dict, read_json: Callable[[str], dict]) -> tuple[DDPMConfig, dict]:
        """DDPMConfig from unet/config.json and scheduler/scheduler_config.json; refuses anything else in them."""
        expected = {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"]}
        for key, value in expected.items():
            if values.get(key) != value:
                raise ConfigError(f"{PIPELINE_FILE}: {key} must be {value!r} for a gm-hub DDPM, got {values.get(key)!r}")
        unet, scheduler = read_json(UNET_CONFIG_FILE), read_json(SCHEDULER_CONFIG_FILE)
        for name, stored in ((UNET_CONFIG_FILE, unet), (SCHEDULER_CONFIG_FILE, scheduler)):
            if not isinstance(stored, dict):
                raise ConfigError(f"{name} must hold a JSON object, got {type(stored).__name__}")
        down_block_types = unet.get("down_block_types")
        sample_size = unet.get("sample_size")
        if not isinstance(down_block_types, list) or not isinstance(sample_size, int):
            raise ConfigError(f"{UNET_CONFIG_FILE} needs down_block_types (a list) and sample_size (an integer)")
        values = {
            "resolution": sample_size,
            "num_channels": unet.get("in_channels"),
            "attention_resolutions": [sample_size // 2**level for level, kind in enumerate(down_block_types)
                                      if kind == "AttnDownBlock2D"],
            **{key: unet[key] for key in ("block_out_channels", "layers_per_block", "attention_head_dim",
                                          "norm_num_groups", "dropout") if key in unet},
            **{key: scheduler[key] for key in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end",
                                               "prediction_type", "timestep_spacing") if key in scheduler},
        }
        config = config_from_dict(DDPMConfig, values)
        check_stock_config(UNet2DModel, unet, unet_settings(config), UNET_CONFIG_FILE)
        check_stock_config(DDPMScheduler, scheduler, scheduler_settings(config), SCHEDULER_CONFIG_FILE)
        return config, {}

    def weight_files(self) -> dict[str, nn.Module]:
        return {UNET_WEIGHTS_FILE: self.unet}

    def save_extra_files(self, folder: Path) -> None:
        """unet/config.json and scheduler/scheduler_config.json, as diffusers writes them."""
        self.unet.save_config(Path(folder) / "unet")
        self.scheduler.save_config(Path(folder) / "scheduler")

    def card_usage(self) -> str:
        return f"""A stock diffusers `DDPMPipeline` folder: a {sum(p.numel() for p in self.unet.parameters()) / 1e6:.2f}M-parameter
UNet2DModel and a DDPMScheduler ({self.config.num_train_timesteps} steps, {self.config.beta_schedule} betas,
{self.config.prediction_type} prediction).

```python
from diffusers import DDPMPipeline

images = DDPMPipeline.from_pretrained("path/or/repo-id")(batch_size=16).images  # PIL images, 1000 steps
```

With any diffusers scheduler, in fewer steps:

```python
from gm_hub import load_model
import torch

model = load_model("path/or/repo-id")
images = model.sample(16, generator=torch.Generator().manual_seed(0))  # DDPM in 50 steps; (16, C, H, W) uint8
images = model.sample(16, scheduler="DDIMScheduler", num_inference_steps=50, eta=0.0)
```"""

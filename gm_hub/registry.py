"""The family registry: one record per family, read by the CLI, the demo, the evaluation, the benchmarks and the tests.

A new family is its model file, its training script, its demo tab and one `Family` record here. Records name
modules and classes as strings, so reading the registry imports no model code.
"""

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"  # the shipped folders, in a source checkout


@dataclass(frozen=True)
class Family:
    """What the rest of gm-hub needs to know about a family of models."""

    name: str  # the CLI's name: gm-hub train NAME, training/train_NAME.py
    title: str  # shown in the demo and the tables
    model_class: str  # "module:Class" of the published model, e.g. "gm_hub.models.vae:VAE"
    produces: str  # "images", "text", or "labels" (the digit classifier, which judges the others)
    likelihood: str  # "exact", "bound" (log_prob is a lower bound) or "none"
    conditional: bool = False  # sample() and log_prob() take a class label
    shipped_model: str | None = None  # folder under pretrained/ of the trained model the demo uses
    demo_tab: str | None = None  # module with the family's demo tab
    training_defaults: dict[str, Any] = field(default_factory=dict)  # TrainingConfig values that suit the family
    training_module: str | None = None  # "module:Class" trained in its place (the GAN's G and D), built by
    # its `from_published(model)`
    players: tuple[str, ...] = ()  # optimizers of a module trained by several players: forward(batch, player=name)

    def __post_init__(self) -> None:
        if self.produces not in ("images", "text", "labels"):
            raise ValueError(f"produces must be 'images', 'text' or 'labels', got {self.produces!r}")
        if self.likelihood not in ("exact", "bound", "none"):
            raise ValueError(f"likelihood must be 'exact', 'bound' or 'none', got {self.likelihood!r}")

    @property
    def class_name(self) -> str:
        return self.model_class.split(":")[1]

    @property
    def training_script(self) -> str:
        return f"train_{self.name}.py"

    def load_class(self) -> type:
        module, name = self.model_class.split(":")
        return getattr(importlib.import_module(module), name)

    def shipped_path(self) -> Path | None:
        return PRETRAINED_DIR / self.shipped_model if self.shipped_model else None


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add (or replace) a family; a test adds a toy family this way alone."""
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise UserError(f"unknown family {name!r}; choose one of {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def family_of_class(class_name: str) -> Family:
    """The family whose published model class (as saved in a folder's marker) or training module is `class_name`."""
    for family in FAMILIES.values():
        if class_name in (family.class_name, (family.training_module or ":").split(":")[1]):
            return family
    raise UserError(f"unknown model class {class_name!r}; gm-hub has {sorted(f.class_name for f in FAMILIES.values())}")


register(Family(
    name="vae", title="VAE", model_class="gm_hub.models.vae:VAE", produces="images", likelihood="bound",
    shipped_model="vae-mnist", demo_tab="gm_hub.demo.vae",
))
register(Family(
    name="gan", title="GAN", model_class="gm_hub.models.gan:Generator", produces="images", likelihood="none",
    shipped_model="gan-mnist", demo_tab="gm_hub.demo.gan", training_module="gm_hub.models.gan:GAN",
    players=("discriminator", "generator"),
    # Adam as in DCGAN, a constant learning rate, no clipping, and an EMA of G for sampling.
    training_defaults={"learning_rate": 2e-4, "adam_beta1": 0.5, "adam_beta2": 0.999, "lr_scheduler": "constant",
                       "lr_warmup_steps": 0, "max_grad_norm": 0.0, "use_ema": True, "ema_decay": 0.999},
))
register(Family(
    name="gpt", title="GPT", model_class="gm_hub.models.gpt:GPT", produces="text", likelihood="exact",
    shipped_model="gpt-shakespeare", demo_tab="gm_hub.demo.gpt",
    # 16 texts at the end of a run: 64 took 1.4 s, a twentieth of the fast recipe's whole run (gpt_results.md).
    training_defaults={"num_sample_images": 16},
))
register(Family(
    name="classifier", title="Digit classifier", model_class="gm_hub.models.classifier:DigitClassifier",
    produces="labels", likelihood="none",
    training_defaults={"learning_rate": 2e-3, "train_batch_size": 128, "num_epochs": 40, "lr_warmup_steps": 50,
                       "adam_weight_decay": 1e-4, "checkpointing_steps": 1000, "save_images_steps": 0,
                       "output_dir": "mnist-classifier"},
))
register(Family(
    name="realnvp", title="RealNVP", model_class="gm_hub.models.realnvp:RealNVP", produces="images", likelihood="exact",
    shipped_model="realnvp-mnist", demo_tab="gm_hub.demo.flow",
    # log_prob is the exact density of uniformly dequantized pixels (one noise draw), which bounds the discrete
    # likelihood (Theis et al.) without importance samples, as flows report it. Adam with a warm-up (act-norm
    # starts data-initialized, the couplings at the identity) and a cosine decay; loose clipping: flow gradients
    # are large early on, but rarely wrong. ~10k steps of 64 on MNIST.
    training_defaults={"learning_rate": 1e-3, "lr_warmup_steps": 200, "max_grad_norm": 50.0, "num_epochs": 150,
                       "checkpointing_steps": 2000, "save_images_steps": 2000},
))
register(Family(
    name="glow", title="Glow", model_class="gm_hub.models.glow:Glow", produces="images", likelihood="exact",
    shipped_model="glow-mnist", demo_tab="gm_hub.demo.flow",
    # As RealNVP; act-norm's data-dependent initialization takes the loop's init batch. The shipped model learns its
    # dequantization noise (--dequantization variational: 1.329 test bits/dim against 1.415 with uniform noise).
    training_defaults={"learning_rate": 1e-3, "lr_warmup_steps": 200, "max_grad_norm": 50.0, "num_epochs": 150,
                       "checkpointing_steps": 2000, "save_images_steps": 2000},
))
register(Family(
    name="pixelcnn", title="PixelCNN", model_class="gm_hub.models.pixelcnn:PixelCNN", produces="images",
    likelihood="exact", conditional=True, shipped_model="pixelcnn-mnist", demo_tab="gm_hub.demo.pixelcnn",
    # Polyak averaging of the weights, as PixelCNN++ evaluates. The shipped model (64 channels, 15 layers of 3x3, a
    # softmax head, bf16 autocast) took 4,000 steps of 64 in 93 minutes on 2 CPU cores, then 2,425 more from those
    # weights (--init_from) in 101; its test bits/dim, one pass per class for each of the 10,000 digits (p(x) is the
    # mixture over the classes), about 27 minutes more.
    training_defaults={"num_epochs": 15, "use_ema": True, "ema_decay": 0.999},
))
register(Family(
    name="ddpm", title="DDPM", model_class="gm_hub.models.ddpm:DDPM", produces="images", likelihood="none",
    shipped_model="ddpm-mnist", demo_tab="gm_hub.demo.ddpm",
    # ~5,000 steps of 64 (the shipped 4,500 took 31 minutes on 2 CPU cores at the default 2.7M-parameter UNet);
    # AdamW with a warm-up and a cosine decay; samples from an EMA of the weights, as Ho et al.
    training_defaults={"learning_rate": 1e-3, "lr_warmup_steps": 200, "num_epochs": 70, "use_ema": True,
                       "ema_decay": 0.999, "checkpointing_steps": 1000, "save_images_steps": 1000},
))

"""One module per model family. `MODEL_CLASSES` maps the class name saved in config.json to its module."""

import importlib

MODEL_CLASSES = {
    "DigitClassifier": "gm_hub.models.classifier",
    "VAE": "gm_hub.models.vae",
    "Generator": "gm_hub.models.gan",
    "GPT": "gm_hub.models.gpt",
}


def model_class(name: str) -> type:
    """The gm-hub model class called `name` (imported on first use, so importing gm_hub stays light)."""
    if name not in MODEL_CLASSES:
        from ..errors import UserError

        raise UserError(f"unknown model class {name!r}; gm-hub has {sorted(MODEL_CLASSES)}")
    return getattr(importlib.import_module(MODEL_CLASSES[name]), name)

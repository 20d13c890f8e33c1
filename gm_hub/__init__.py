"""gm-hub: the five families of generative models, trained with accelerate, shared on the Hugging Face Hub."""

__version__ = "0.1.0"


def load_model(name_or_path: str, **kwargs):
    """Load any gm-hub model from a local folder or a Hub repo id (strict, safetensors only)."""
    from .hub import load_model as _load_model

    return _load_model(name_or_path, **kwargs)

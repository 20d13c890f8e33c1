"""Hub conventions: every gm-hub model is an `nn.Module` with `PyTorchModelHubMixin`.

`HubModel` takes one dataclass config as its only `__init__` argument; it becomes `config.json`. On top of the
mixin it guards against the mixin's known traps:

- loading is strict and from `model.safetensors` only (the mixin defaults to `strict=False`, which silently
  ignores missing weights, and falls back to pickled `pytorch_model.bin`);
- `config.json` is validated before any allocation: unknown keys, wrong types and out-of-range values are
  refused, the model is first built on the `meta` device and its size and tensor shapes are checked against
  the checkpoint's header, so a hostile repo can't make the app allocate 100 GB;
- the model card (`README.md`) is written anew on every save, with the measured metrics (the mixin never
  overwrites an existing one, so stale metrics would survive);
- `push_to_hub` uploads what `save_pretrained` writes into a fresh folder, never a training folder with its
  `checkpoint-*` optimizer states.
"""

import dataclasses
import inspect
import json
import logging
import os
import types
import typing
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData, PyTorchModelHubMixin, hf_hub_download
from safetensors import safe_open
from safetensors.torch import load_model as load_safetensors_into

from .errors import UserError

logger = logging.getLogger(__name__)

REPO_URL = "https://github.com/gm-hub/gm-hub"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
SAMPLE_GRID_NAME = "samples.png"
CLASS_KEY = "_class_name"  # which gm-hub class a config.json belongs to, as diffusers writes it
MAX_PARAMETERS = 1_000_000_000  # 4 GB of float32: far above any gm-hub model, far below a hostile config


class ConfigError(UserError):
    """A config.json (or config) that can't be used, with what is wrong and what is allowed."""


def _check_type(name: str, value: Any, annotation: Any) -> None:
    """Raise ConfigError unless `value` (parsed JSON) fits the dataclass field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            try:
                return _check_type(name, value, option)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if annotation is type(None):
        if value is None:
            return
    elif origin in (list, tuple):
        if isinstance(value, list):
            (item_type, *_) = typing.get_args(annotation) or (Any,)
            for item in value:
                _check_type(name, item, item_type)
            return
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return
    elif annotation is Any or (isinstance(annotation, type) and isinstance(value, annotation)):
        if not (annotation is int and isinstance(value, bool)):
            return
    raise ConfigError(f"config field {name!r} must be {annotation}, got {value!r}")


def config_from_dict(config_class: type, values: dict) -> Any:
    """Build a config dataclass from parsed config.json, refusing unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise ConfigError(f"config.json must hold a JSON object, got {type(values).__name__}")
    values = {key: value for key, value in values.items() if not key.startswith("_")}  # metadata such as _class_name
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown keys in config.json for {config_class.__name__}: {unknown}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(config_class)
    for name, value in values.items():
        _check_type(name, value, hints[name])
        if isinstance(value, list):
            values[name] = type(fields[name].default)(value) if isinstance(fields[name].default, tuple) else value
    try:
        return config_class(**values)  # __post_init__ checks ranges
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid {config_class.__name__}: {err}") from err


def resolve_file(name_or_path: str | Path, filename: str, **download_kwargs) -> str:
    """A file of a local model folder, or of a Hub repo through the Hugging Face cache."""
    if os.path.isdir(name_or_path):
        path = Path(name_or_path) / filename
        if not path.is_file():
            raise UserError(f"{name_or_path} has no {filename}")
        return str(path)
    if os.path.exists(name_or_path) or str(name_or_path).startswith((".", "/")):
        raise UserError(f"model folder {str(name_or_path)!r} does not exist")
    return hf_hub_download(repo_id=str(name_or_path), filename=filename, **download_kwargs)


def check_size_and_shapes(skeleton: torch.nn.Module, weights_file: str) -> None:
    """Refuse a model (built on the meta device) over MAX_PARAMETERS, or whose tensors differ from the
    safetensors header; reads no tensor data. A tied weight saved once, under any of its names, is enough."""
    num_parameters = sum(p.numel() for p in skeleton.parameters())
    if num_parameters > MAX_PARAMETERS:
        raise ConfigError(f"config.json asks for {num_parameters:,} parameters; the limit is {MAX_PARAMETERS:,}")
    names_of: dict[int, list[str]] = {}  # one entry per tensor, with all its names
    for name, tensor in [*skeleton.named_parameters(remove_duplicate=False), *skeleton.named_buffers(remove_duplicate=False)]:
        names_of.setdefault(id(tensor), []).append(name)
    expected = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
    with safe_open(weights_file, framework="pt") as f:
        found = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    missing = sorted(names[0] for names in names_of.values() if not any(n in found for n in names))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"{weights_file} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong = [(name, expected[name], found[name]) for name in found if expected[name] != found[name]]
    if wrong:
        raise ConfigError(f"{weights_file} does not match its config: shape (expected, found) {wrong[:5]}")


class HubModel(torch.nn.Module, PyTorchModelHubMixin, library_name="gm-hub", repo_url=REPO_URL, tags=["gm-hub"]):
    """Base of every gm-hub model: `__init__(self, config)` with a dataclass config, strict safe loading.

    Subclasses pass `family="..."` and tags in the class statement and define `sample` (and `loss`).
    """

    family: str = ""
    dataset_tags: tuple[str, ...] = ("mnist",)

    def __init_subclass__(cls, *, family: str = "", pipeline_tag: str = "unconditional-image-generation", **kwargs):
        tags = [family, *kwargs.pop("tags", [])] if family else kwargs.pop("tags", None)
        super().__init_subclass__(tags=tags, pipeline_tag=pipeline_tag, **kwargs)
        cls.family = family

    @classmethod
    def config_class(cls) -> type:
        return typing.get_type_hints(cls.__init__)["config"]

    # --- saving -------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path, *, model_card_kwargs: dict | None = None, **kwargs) -> str | None:
        """Write model.safetensors, config.json, samples.png and a model card; push if `push_to_hub=True`."""
        save_directory = Path(save_directory)
        (save_directory / "README.md").unlink(missing_ok=True)  # the card always carries the current metrics
        result = super().save_pretrained(save_directory, model_card_kwargs=model_card_kwargs, **kwargs)
        config_path = save_directory / CONFIG_NAME
        config = json.loads(config_path.read_text())
        config[CLASS_KEY] = type(self).__name__
        config_path.write_text(json.dumps(config, sort_keys=True, indent=2))
        if hasattr(self, "sample"):
            self.save_sample_grid(save_directory / SAMPLE_GRID_NAME)
        return result

    def save_sample_grid(self, path: Path, num_samples: int = 64, seed: int = 0) -> None:
        """A grid of samples for a fixed seed, shown by the model card."""
        from .data import save_image_grid

        with torch.no_grad():
            images = self.sample(num_samples, generator=torch.Generator().manual_seed(seed))
        save_image_grid(images, path)

    def generate_model_card(self, **kwargs) -> ModelCard:
        return make_model_card(self, **kwargs)

    # --- loading ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        map_location: str | torch.device = "cpu",
    ):
        """Load a folder or Hub repo (offline from the cache with HF_HUB_OFFLINE=1): strictly, safetensors only."""
        download = dict(
            force_download=force_download, token=token, cache_dir=cache_dir,
            local_files_only=local_files_only, revision=revision,
        )
        config_file = resolve_file(pretrained_model_name_or_path, CONFIG_NAME, **download)
        with open(config_file, encoding="utf-8") as f:
            try:
                values = json.load(f)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{config_file} is not valid JSON: {err}") from err
        stored_class = values.get(CLASS_KEY, cls.__name__)
        if cls is not HubModel and stored_class != cls.__name__:
            raise ConfigError(f"{pretrained_model_name_or_path} holds a {stored_class}, not a {cls.__name__}")
        config = config_from_dict(cls.config_class(), values)
        weights_file = resolve_file(pretrained_model_name_or_path, WEIGHTS_NAME, **download)
        with torch.device("meta"):  # nothing is allocated until the size and shapes are checked
            check_size_and_shapes(cls(config), weights_file)
        model = cls(config)
        load_safetensors_into(model, weights_file, strict=True, device=str(map_location))
        return model.eval()


def card_data(
    *, library_name: str, tags: list[str], pipeline_tag: str, model_name: str, datasets: list[str] | None,
    metrics: dict[str, float], metrics_dataset: str, training_command: str | None, training_time: str | None,
) -> ModelCardData:
    """The YAML metadata of every gm-hub card: library, tags, datasets, and the metrics in model-index form."""
    return ModelCardData(
        library_name=library_name,
        license="mit",
        tags=tags,
        datasets=datasets or None,
        pipeline_tag=pipeline_tag,
        model_name=model_name,
        # What the prose is made from, so `gm-hub evaluate --write_card` can renew the metrics alone.
        gm_hub={"training_command": training_command, "training_time": training_time, "metrics_dataset": metrics_dataset},
        eval_results=[
            EvalResult(task_type=pipeline_tag or "other", dataset_type=(datasets or ["custom"])[0], dataset_name=metrics_dataset,
                       metric_type=metric, metric_name=metric, metric_value=round(float(value), 6))
            for metric, value in metrics.items()
        ]
        or None,
    )


def card_training_and_metrics(config: Any, metrics: dict[str, float], metrics_dataset: str, training_command: str | None,
                              training_time: str | None, metrics_note: str = "") -> str:
    """The card's "Training" (command, time, config) and "Metrics" sections, in markdown."""
    rows = "\n".join(f"| {metric} | {value:.4f} |" for metric, value in metrics.items()) or "| (not measured yet) | |"
    command = f"```bash\n{training_command}\n```" if training_command else "Not recorded."
    time_line = f"\nTraining time: {training_time}.\n" if training_time else ""
    return f"""## Training

{command}
{time_line}
Config:

```json
{json.dumps(dataclasses.asdict(config), indent=2)}
```

## Metrics ({metrics_dataset})

{metrics_note}

| metric | value |
|---|---|
{rows}

Library: [gm-hub]({REPO_URL}).
"""


def make_model_card(
    model: HubModel,
    metrics: dict[str, float] | None = None,
    metrics_dataset: str = "MNIST test set",
    training_command: str | None = None,
    datasets: list[str] | None = None,
    training_time: str | None = None,
    **_: Any,
) -> ModelCard:
    """A model card: YAML metadata (library, tags, datasets, model-index metrics), then what, how, how good."""
    metrics = metrics or {}
    generative = hasattr(model, "sample")  # the digit classifier is a gm-hub model that generates nothing
    name = f"gm-hub {model.family or type(model).__name__}"
    metadata = card_data(
        library_name="gm-hub",
        tags=sorted({"gm-hub", "pytorch_model_hub_mixin", model.family, "generative-model" if generative else ""} - {""}),
        pipeline_tag=type(model)._hub_mixin_info.model_card_data.pipeline_tag,
        model_name=name,
        datasets=datasets or list(model.dataset_tags),
        metrics=metrics, metrics_dataset=metrics_dataset, training_command=training_command, training_time=training_time,
    )
    content = f"""---
{metadata.to_yaml()}
---

# {name}

{inspect.cleandoc(type(model).__doc__ or "")}

{f"![samples]({SAMPLE_GRID_NAME})" if generative else ""}

## Use

```python
from gm_hub import load_model
import torch

model = load_model("path/or/repo-id")  # strict, safetensors only
{"images = model.sample(16, generator=torch.Generator().manual_seed(0))  # (16, C, H, W) uint8" if generative else
 "features, probabilities, labels = model.predict(images)  # uint8 (N, C, H, W) -> (N, F), (N, classes), (N,)"}
```

{card_training_and_metrics(model.config, metrics, metrics_dataset, training_command, training_time)}"""
    return ModelCard(content)


def update_model_card_metrics(folder: Path, model, metrics: dict[str, float], metrics_dataset: str) -> None:
    """Rewrite a saved model's README.md with new metrics, keeping how it was trained."""
    card_path = Path(folder) / "README.md"
    if not Path(folder).is_dir():
        raise UserError(f"--write_card needs a local model folder, got {folder}")
    previous = ModelCard.load(card_path).data.to_dict() if card_path.is_file() else {}
    info = {**(previous.get("gm_hub") or {}), "metrics_dataset": metrics_dataset}
    model.generate_model_card(metrics=metrics, datasets=previous.get("datasets"), **info).save(card_path)


def load_model(name_or_path: str | Path, **kwargs):
    """Any gm-hub model from a folder or Hub repo id: the class comes from config.json's `_class_name`."""
    from .models import model_class

    config_file = resolve_file(name_or_path, CONFIG_NAME, **{k: v for k, v in kwargs.items() if k != "map_location"})
    with open(config_file, encoding="utf-8") as f:
        try:
            values = json.load(f)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{config_file} is not valid JSON: {err}") from err
    if not isinstance(values, dict) or CLASS_KEY not in values:
        raise ConfigError(f"{config_file} has no {CLASS_KEY!r}: not a model saved by gm-hub")
    return model_class(values[CLASS_KEY]).from_pretrained(name_or_path, **kwargs)

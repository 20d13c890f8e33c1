"""Hub conventions: every gm-hub model is an `nn.Module` with `PyTorchModelHubMixin`, saved and loaded by `HubModel`.

`HubModel` takes one dataclass config as its only `__init__` argument. What never changes lives here, once:

- loading is strict and from safetensors only (the mixin defaults to `strict=False`, which silently ignores
  missing weights, and falls back to pickled `pytorch_model.bin`);
- JSON files are validated before any allocation: size, encoding, nesting, unknown keys, wrong types and
  out-of-range values are refused; the model is first built on the `meta` device and its size and tensor shapes
  are checked against each safetensors header, so a hostile repo can't make the app allocate 100 GB; loaded
  weights must be finite floating point where the model expects floating point;
- the model card (`README.md`) is written anew on every save, with the measured metrics;
- saving never samples: sample grids are the training loop's and `gm-hub sample`'s job;
- `push_to_hub` uploads what `save_pretrained` writes into a fresh folder (plus an existing sample grid),
  never a training folder with its `checkpoint-*` optimizer states.

A family supplies only its folder format, through four small hooks (the defaults give the mixin's format:
`config.json` + `model.safetensors`):

    config_file_name        the root JSON file, which also carries gm-hub's marker (`_gm_hub_class`)
    folder_config()         what that file holds (default: the dataclass config)
    from_folder_config()    config and extra `__init__` arguments back from it (and from other JSON files)
    weight_files()          which safetensors file holds which submodule
    save_extra_files()      the format's other files (a tokenizer, a scheduler config)

The GPT writes a stock transformers folder and the diffusion model a stock diffusers `DDPMPipeline` folder
through these hooks. The marker key starts with an underscore, which transformers and diffusers both ignore,
and differs from diffusers' own `_class_name`.
"""

import dataclasses
import inspect
import json
import logging
import math
import os
import shutil
import tempfile
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, PyTorchModelHubMixin, hf_hub_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model as load_safetensors_into
from safetensors.torch import save_file

from .config import ConfigError
from .errors import UserError

logger = logging.getLogger(__name__)

REPO_URL = "https://github.com/gm-hub/gm-hub"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
SAMPLE_GRID_NAME = "samples.png"
MARKER_KEY = "_gm_hub_class"  # which gm-hub class a folder holds; "_" keys are ignored by transformers and diffusers
MAX_PARAMETERS = 1_000_000_000  # 4 GB of float32: far above any gm-hub model, far below a hostile config
MAX_JSON_BYTES = 4 << 20  # a config is a few KB; a tokenizer.json of a large BPE vocabulary a few MB
MAX_JSON_DEPTH = 20

__all__ = ["ConfigError", "HubModel", "config_from_dict", "load_model", "read_json"]


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
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return
    elif annotation is Any or (isinstance(annotation, type) and isinstance(value, annotation)):
        if not (annotation is int and isinstance(value, bool)):
            return
    raise ConfigError(f"config field {name!r} must be {annotation}, got {value!r}")


def config_from_dict(config_class: type, values: dict) -> Any:
    """Build a config dataclass from parsed JSON, refusing unknown keys and wrong types ("_" keys are metadata)."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a JSON object, got {type(values).__name__}")
    values = {key: value for key, value in values.items() if not key.startswith("_")}
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


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _refuse_constant(constant: str) -> float:
    raise ValueError(f"{constant} is not a JSON number")


def read_json(path: str | Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON file of a model folder, refusing what no gm-hub file holds: over `max_bytes`, not UTF-8,
    NaN/Infinity, numbers too large to be finite, or nesting deeper than MAX_JSON_DEPTH."""
    path = Path(path)
    if path.stat().st_size > max_bytes:
        raise ConfigError(f"{path} has {path.stat().st_size:,} bytes; a gm-hub JSON file has at most {max_bytes:,}")
    try:
        values = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError, as is a 5000-digit integer;
        # a hostile nesting depth overflows the parser's recursion
        raise ConfigError(f"{path} is not valid JSON: {str(err)[:200]}") from err
    if _depth(values) > MAX_JSON_DEPTH:
        raise ConfigError(f"{path} is nested deeper than {MAX_JSON_DEPTH} levels")
    for number in _numbers(values):
        if isinstance(number, float) and not math.isfinite(number):
            raise ConfigError(f"{path} holds a number too large for a float: {number}")
    return values


def _numbers(value: Any):
    if isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, (int, float)):
        yield value


def resolve_file(name_or_path: str | Path, filename: str, **download_kwargs) -> str:
    """A file of a local model folder, or of a Hub repo through the Hugging Face cache (offline-aware)."""
    if os.path.isdir(name_or_path):
        path = Path(name_or_path) / filename
        if path.is_symlink():  # a link could point at /dev/zero or another user's file
            raise UserError(f"{path} is a symbolic link; copy the file itself into the folder")
        if not path.is_file():
            raise UserError(f"{name_or_path} has no {filename}")
        return str(path)
    if os.path.exists(name_or_path):
        raise UserError(f"{name_or_path} is a file; give a model folder or a Hub repo id")
    if str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).endswith("/"):
        raise UserError(f"model folder {str(name_or_path)!r} does not exist")
    try:
        return hf_hub_download(repo_id=str(name_or_path), filename=filename, **download_kwargs)
    except HFValidationError as err:
        raise UserError(f"{str(name_or_path)!r} is neither a folder nor a Hub repo id (owner/name): {err}") from err
    except LocalEntryNotFoundError as err:
        raise UserError(f"{name_or_path}/{filename} is not in the Hugging Face cache and the Hub can't be reached "
                        "(offline); download it once online, or give a local folder") from err


def _header(weights_file: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) from a safetensors header, reading no tensor data."""
    try:
        with safe_open(weights_file, framework="pt") as f:
            return {name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ConfigError(f"{weights_file} is not a readable safetensors file (truncated or damaged?): {err}") from err


def check_size_and_shapes(skeleton: torch.nn.Module, weights_file: str) -> None:
    """Refuse a model (built on the meta device) over MAX_PARAMETERS, or whose tensors differ from the
    safetensors header in name, shape or kind (floating point or not); a tied weight saved once is enough."""
    num_parameters = sum(p.numel() for p in skeleton.parameters())
    if num_parameters > MAX_PARAMETERS:
        raise ConfigError(f"config.json asks for {num_parameters:,} parameters; the limit is {MAX_PARAMETERS:,}")
    names_of: dict[int, list[str]] = {}  # one entry per saved tensor (non-persistent buffers are not), with all its names
    for name, tensor in skeleton.state_dict(keep_vars=True).items():
        names_of.setdefault(id(tensor), []).append(name)
    expected = skeleton.state_dict()
    found = _header(weights_file)
    missing = sorted(names[0] for names in names_of.values() if not any(n in found for n in names))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"{weights_file} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong = [(name, tuple(expected[name].shape), shape) for name, (shape, _) in found.items() if tuple(expected[name].shape) != shape]
    if wrong:
        raise ConfigError(f"{weights_file} does not match its config: shape (expected, found) {wrong[:5]}")
    floating = [name for name, (_, dtype) in found.items() if expected[name].is_floating_point() != dtype.startswith(("F", "BF"))]
    if floating:
        raise ConfigError(f"{weights_file} stores {floating[:5]} with a dtype of the wrong kind (floating point or integer)")


def save_weights(module: torch.nn.Module, path: str | Path) -> None:
    """A module's state as safetensors; a tensor tied under several names is stored once, under its first name
    (as transformers does: `transformer.wte.weight`, not `lm_head.weight`)."""
    tensors, seen = {}, set()
    for name, tensor in module.state_dict().items():
        identity = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if identity not in seen:
            seen.add(identity)
            tensors[name] = tensor.detach().contiguous()
    save_file(tensors, str(path), metadata={"format": "pt"})


def _check_finite(module: torch.nn.Module, weights_file: str) -> None:
    bad = [name for name, tensor in module.state_dict().items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise ConfigError(f"{weights_file} holds NaN or infinite values in {bad[:5]}; the file is damaged")


class HubModel(torch.nn.Module, PyTorchModelHubMixin, library_name="gm-hub", repo_url=REPO_URL, tags=["gm-hub"]):
    """Base of every gm-hub model: `__init__(self, config)` with a dataclass config, strict safe loading.

    Subclasses pass `family="..."` and tags in the class statement and define `sample` (and `loss`).
    """

    family: str = ""
    dataset_tags: tuple[str, ...] = ("mnist",)
    config_file_name: ClassVar[str] = CONFIG_NAME
    card_metrics_note: ClassVar[str] = ""  # what the card's metrics mean, where the names don't say

    def __init_subclass__(cls, *, family: str = "", pipeline_tag: str = "unconditional-image-generation", **kwargs):
        tags = [family, *kwargs.pop("tags", [])] if family else kwargs.pop("tags", None)
        super().__init_subclass__(tags=tags, pipeline_tag=pipeline_tag, **kwargs)
        cls.family = family

    @classmethod
    def config_class(cls) -> type:
        return typing.get_type_hints(cls.__init__)["config"]

    # --- the folder format: hooks a family may override ------------------------------------------------
    def folder_config(self) -> dict:
        """The root JSON file's contents, without the marker."""
        return dataclasses.asdict(self.config)

    @classmethod
    def from_folder_config(cls, values: dict, read_json: Callable[[str], Any]) -> tuple[Any, dict]:
        """(config, extra __init__ keyword arguments) from the root JSON file; `read_json(relative_path)` reads
        another validated JSON file of the folder."""
        return config_from_dict(cls.config_class(), values), {}

    def weight_files(self) -> dict[str, torch.nn.Module]:
        """Relative path of each safetensors file -> the module whose weights it holds."""
        return {WEIGHTS_NAME: self}

    def save_extra_files(self, folder: Path) -> None:
        """The format's other files (none for the mixin's format)."""

    def config_signature(self) -> dict:
        """What a checkpoint must share with a run that resumes it (the training loop compares them)."""
        return dataclasses.asdict(self.config)

    def card_usage(self) -> str:
        """The model card's "Use" section, in markdown."""
        return """```python
from gm_hub import load_model
import torch

model = load_model("path/or/repo-id")  # strict, safetensors only
images = model.sample(16, generator=torch.Generator().manual_seed(0))  # (16, C, H, W) uint8
```"""

    # --- saving -------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path, *, model_card_kwargs: dict | None = None, **_: Any) -> None:
        """Write the weights, the format's files, the root JSON file with the marker, and the model card."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        for relative_path, module in self.weight_files().items():
            (folder / relative_path).parent.mkdir(parents=True, exist_ok=True)
            save_weights(module, folder / relative_path)
        self.save_extra_files(folder)
        root_config = {**self.folder_config(), MARKER_KEY: type(self).__name__}
        (folder / self.config_file_name).write_text(json.dumps(root_config, sort_keys=True, indent=2) + "\n")
        self.generate_model_card(**(model_card_kwargs or {})).save(folder / "README.md")  # always the current metrics

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool | None = None,
                    model_card_kwargs: dict | None = None, sample_grid: str | Path | None = None,
                    commit_message: str = "Upload gm-hub model") -> str:
        """Save into a fresh folder (plus `sample_grid`, shown by the card) and upload it as one commit."""
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as staging:
            self.save_pretrained(staging, model_card_kwargs=model_card_kwargs)
            if sample_grid is not None and Path(sample_grid).is_file():
                shutil.copy2(sample_grid, Path(staging) / SAMPLE_GRID_NAME)
            return api.upload_folder(repo_id=repo_id, folder_path=staging, commit_message=commit_message)

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
        download = dict(force_download=force_download, token=token, cache_dir=cache_dir,
                        local_files_only=local_files_only, revision=revision)

        def resolve(relative_path: str) -> str:
            return resolve_file(pretrained_model_name_or_path, relative_path, **download)

        values = read_json(resolve(cls.config_file_name))
        if not isinstance(values, dict):
            raise ConfigError(f"{cls.config_file_name} must hold a JSON object")
        stored_class = values.pop(MARKER_KEY, None)
        if stored_class != cls.__name__:
            raise ConfigError(f"{pretrained_model_name_or_path} holds {stored_class or 'no gm-hub model'}, not a {cls.__name__}")
        config, extras = cls.from_folder_config(values, lambda relative_path: read_json(resolve(relative_path)))
        with torch.device("meta"):  # nothing is allocated until the size and shapes are checked
            skeleton = cls(config, **extras)
        weight_files = {path: resolve(path) for path in skeleton.weight_files()}
        for path, module in skeleton.weight_files().items():
            check_size_and_shapes(module, weight_files[path])
        model = cls(config, **extras)
        for path, module in model.weight_files().items():
            load_safetensors_into(module, weight_files[path], strict=True)
            _check_finite(module, weight_files[path])
        return model.to(map_location).eval()


def card_data(
    *, library_name: str, tags: list[str], pipeline_tag: str, model_name: str, datasets: list[str] | None,
    metrics: dict[str, float], metrics_dataset: str, training_command: str | None, training_time: str | None,
    metrics_sample_kwargs: str | None = None, base_model: str | None = None, base_model_training: dict | None = None,
) -> ModelCardData:
    """The YAML metadata of every gm-hub card: library, tags, datasets, and the metrics in model-index form."""
    return ModelCardData(
        library_name=library_name,
        license="mit",
        tags=tags,
        datasets=datasets or None,
        pipeline_tag=pipeline_tag,
        model_name=model_name,
        # The Hub accepts only a repo id here; a local base is named in the gm_hub section alone.
        base_model=base_model if base_model and not os.path.exists(base_model) else None,
        # What the prose is made from, so `gm-hub evaluate --write_card` can renew the metrics alone.
        gm_hub={"training_command": training_command, "training_time": training_time, "metrics_dataset": metrics_dataset,
                **({"metrics_sample_kwargs": metrics_sample_kwargs} if metrics_sample_kwargs else {}),
                **({"base_model": base_model, "base_model_training": base_model_training or {}} if base_model else {})},
        eval_results=[
            EvalResult(task_type=pipeline_tag or "other", dataset_type=(datasets or ["custom"])[0], dataset_name=metrics_dataset,
                       metric_type=metric, metric_name=metric, metric_value=round(float(value), 6))
            for metric, value in metrics.items()
        ]
        or None,
    )


def make_model_card(
    model: HubModel,
    metrics: dict[str, float] | None = None,
    metrics_dataset: str = "MNIST test set",
    training_command: str | None = None,
    datasets: list[str] | None = None,
    training_time: str | None = None,
    metrics_sample_kwargs: str | None = None,
    base_model: str | None = None,
    base_model_training: dict | None = None,
    **_: Any,
) -> ModelCard:
    """A model card: YAML metadata (library, tags, datasets, model-index metrics), then what, how, how good."""
    metrics = metrics or {}
    info = type(model)._hub_mixin_info.model_card_data
    generates_images = hasattr(model, "sample") and info.pipeline_tag == "unconditional-image-generation"
    name = f"gm-hub {model.family or type(model).__name__}"
    metadata = card_data(
        library_name=info.library_name or "gm-hub",
        tags=sorted({"gm-hub", *(info.tags or []), "generative-model" if hasattr(model, "sample") else ""} - {""}),
        pipeline_tag=info.pipeline_tag,
        model_name=name,
        datasets=datasets or list(model.dataset_tags),
        metrics=metrics, metrics_dataset=metrics_dataset, training_command=training_command, training_time=training_time,
        metrics_sample_kwargs=metrics_sample_kwargs, base_model=base_model, base_model_training=base_model_training,
    )
    rows = "\n".join(f"| {metric} | {value:.4f} |" for metric, value in metrics.items()) or "| (not measured yet) | |"
    command = f"```bash\n{training_command}\n```" if training_command else "Not recorded."
    time_line = f"\nTraining time: {training_time}.\n" if training_time else ""
    if base_model:  # fine-tuned (--init_from): the base's own training comes first
        base = base_model_training or {}
        base_command = f"```bash\n{base['training_command']}\n```" if base.get("training_command") else "(not recorded)"
        base_time = f" ({base['training_time']})" if base.get("training_time") else ""
        command = f"Fine-tuned from `{base_model}`, itself trained by{base_time}:\n\n{base_command}\n\nthen:\n\n{command}"
    sampling_note = f"Samples drawn with `sample(..., **{metrics_sample_kwargs})`." if metrics_sample_kwargs else ""
    return ModelCard(f"""---
{metadata.to_yaml()}
---

# {name}

{inspect.cleandoc(type(model).__doc__ or "")}

{f"![samples]({SAMPLE_GRID_NAME})" if generates_images else ""}

## Use

{model.card_usage()}

## Training

{command}
{time_line}
Config:

```json
{json.dumps(dataclasses.asdict(model.config), indent=2)}
```

## Metrics ({metrics_dataset})

{" ".join(filter(None, [model.card_metrics_note, sampling_note]))}

| metric | value |
|---|---|
{rows}

Library: [gm-hub]({REPO_URL}).
""")


def update_model_card_metrics(folder: Path, model: HubModel, metrics: dict[str, float], metrics_dataset: str,
                              sample_kwargs: str | None = None) -> None:
    """Rewrite a saved model's README.md with new metrics, keeping how it was trained; `sample_kwargs` (JSON)
    says how the scored samples were drawn when not by `sample()`'s defaults."""
    card_path = Path(folder) / "README.md"
    if not Path(folder).is_dir():
        raise UserError(f"--write_card needs a local model folder, got {folder}")
    previous = ModelCard.load(card_path).data.to_dict() if card_path.is_file() else {}
    info = {**(previous.get("gm_hub") or {}), "metrics_dataset": metrics_dataset}
    info.pop("metrics_sample_kwargs", None)  # it described the old metrics
    if sample_kwargs:
        info["metrics_sample_kwargs"] = sample_kwargs
    model.generate_model_card(metrics=metrics, datasets=previous.get("datasets"), **info).save(card_path)


def folder_class_name(name_or_path: str | Path, **download_kwargs) -> str:
    """The gm-hub class a folder or repo holds, from the marker in its root JSON file (config.json, or
    model_index.json for a diffusers pipeline)."""
    problems = []
    for root_file in (CONFIG_NAME, "model_index.json"):
        try:
            values = read_json(resolve_file(name_or_path, root_file, **download_kwargs))
        except UserError as err:  # no such file here: try the other format
            problems.append(str(err))
            continue
        if isinstance(values, dict) and isinstance(values.get(MARKER_KEY), str):
            return values[MARKER_KEY]
        problems.append(f"its {root_file} has no {MARKER_KEY!r}")
    raise UserError(f"{name_or_path} holds no model saved by gm-hub: {'; '.join(problems)}")


def load_model(name_or_path: str | Path, **kwargs):
    """Any gm-hub model from a folder or Hub repo id: the class comes from the folder's marker."""
    from .registry import family_of_class

    download = {k: v for k, v in kwargs.items() if k != "map_location"}
    return family_of_class(folder_class_name(name_or_path, **download)).load_class().from_pretrained(name_or_path, **kwargs)

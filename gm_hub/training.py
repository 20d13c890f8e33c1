"""The one training loop of gm-hub, on accelerate: every family trains through `train`.

The loop sees a model, a dataset and losses, never a family name. It calls the model only through its
forward (anything else would skip distributed gradient sync): `model(batch)` returns a dict with a scalar
"loss" and other scalars to log. A model trained by several optimizers (the GAN) passes `players`: each
player has its parameters, its optimizer and its number of steps per training step, and the loop calls
`model(batch, player=name)` for that player's loss.

One training step is one optimizer step of every player; with gradient accumulation each optimizer step
takes `gradient_accumulation_steps` batches per process. The effective batch size is
`train_batch_size * gradient_accumulation_steps * num_processes`, and the learning rate applies to that
batch as given (it is not rescaled with the number of processes).

Crash safety: a checkpoint is written to a temporary folder, given a manifest with every file's size and
SHA-256, then renamed, so a kill during a save never leaves a broken `checkpoint-N`; resuming checks the
manifest and falls back to the previous checkpoint if one is damaged. Checkpoints hold the model, the
optimizers, the schedulers, the EMA, and every process's RNG states; the data-loader position follows from
the step (the sampler is seeded per epoch), so a resumed run sees exactly the batches it would have seen.
"""

import argparse
import dataclasses
import hashlib
import inspect
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    GradientAccumulationPlugin,
    ProjectConfiguration,
)
from accelerate.utils import broadcast as accelerate_broadcast
from accelerate.utils import set_seed as _set_all_seeds
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from .errors import UserError

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
MANIFEST_NAME = "gm_hub_checkpoint.json"
HISTORY_NAME = "history.jsonl"


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row: the run stops, its last good checkpoint kept."""


@dataclass
class TrainingConfig:
    """How to train; each field is a command-line flag of every training script."""

    output_dir: str = "output"  # final model, checkpoints, sample grids, logs
    max_train_steps: int | None = None  # overrides num_epochs when given
    max_train_minutes: float | None = None  # stop early (and publish) at the first logging step after training
    # has run this long; the learning-rate schedule still spans max_train_steps
    num_epochs: int = 10
    train_batch_size: int = 64  # per process
    eval_batch_size: int = 256
    learning_rate: float = 1e-3
    lr_scheduler: str = "cosine"  # any name of diffusers.optimization.get_scheduler
    lr_warmup_steps: int = 100
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0  # decoupled (AdamW), on matrices and embeddings, not biases or norms
    max_grad_norm: float = 1.0  # 0 disables clipping
    mixed_precision: str = "no"  # no | bf16 | fp16
    gradient_accumulation_steps: int = 1
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3  # oldest checkpoints are removed beyond this
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint folder
    overwrite_output_dir: bool = False  # train into a folder that holds a model or checkpoints, replacing them
    init_batch_size: int = 512  # items for a model's data-dependent initialization (Glow's act-norm)
    init_from: str | None = None  # start from a saved model's weights (folder or Hub id; same class and config): fine-tuning
    seed: int | None = 0
    use_ema: bool = False  # keep an exponential moving average of the weights for sampling and saving
    ema_decay: float = 0.999
    report_to: str | None = None  # "tensorboard", or any accelerate tracker
    logging_steps: int = 10
    save_images_steps: int = 500  # a sample grid every N steps (0: only at the end)
    num_sample_images: int = 64
    max_nonfinite_steps: int = 20  # consecutive NaN/inf losses tolerated (each skips its step)
    dataloader_num_workers: int = 0
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = None  # else HF_TOKEN or the saved login; never printed

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # nan passes every comparison below, so refuse it first
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"--{f.name} must be a finite number, got {value}")
        positive = ("num_epochs", "train_batch_size", "eval_batch_size", "gradient_accumulation_steps",
                    "checkpointing_steps", "logging_steps", "num_sample_images", "max_nonfinite_steps", "init_batch_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise UserError(f"--seed must be in [0, 2^63), got {self.seed}")
        if self.max_train_steps is not None and self.max_train_steps <= 0:
            raise UserError(f"--max_train_steps must be positive, got {self.max_train_steps}")
        if self.max_train_minutes is not None and self.max_train_minutes <= 0:
            raise UserError(f"--max_train_minutes must be positive, got {self.max_train_minutes}")
        if self.learning_rate <= 0:
            raise UserError(f"--learning_rate must be positive, got {self.learning_rate}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise UserError(f"--mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit <= 0:
            raise UserError(f"--checkpoints_total_limit must be positive, got {self.checkpoints_total_limit}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"--ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.push_to_hub and not self.hub_model_id:
            raise UserError("--push_to_hub needs --hub_model_id (e.g. your-name/vae-mnist)")


@dataclass
class Player:
    """One optimizer: the parameters it updates and how many of its steps make one training step."""

    name: str
    parameters: list[torch.nn.Parameter]
    steps: int = 1


class EMA:
    """Exponential moving average of parameters (Polyak averaging), with the usual warm-up of the decay."""

    def __init__(self, parameters: list[torch.nn.Parameter], decay: float):
        self.decay = decay
        self.num_updates = 0
        self.shadow = [p.detach().clone().float() for p in parameters]

    @torch.no_grad()
    def update(self, parameters: list[torch.nn.Parameter]) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in parameters], 1.0 - decay)

    @contextmanager
    def applied_to(self, parameters: list[torch.nn.Parameter]) -> Iterator[None]:
        """Temporarily copy the averaged weights into `parameters` (to sample or save), then restore."""
        backup = [p.detach().clone() for p in parameters]
        with torch.no_grad():
            for p, s in zip(parameters, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(parameters, backup):
                    p.copy_(b)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.num_updates = state["decay"], state["num_updates"]
        self.shadow = [s.clone() for s in state["shadow"]]


def set_seed(seed: int | None) -> None:
    """Seed Python, NumPy and torch (every device) for a reproducible run; None leaves them as they are.

    Scripts call it before building the model, so the initial weights are reproducible too.
    """
    if seed is not None:
        _set_all_seeds(seed)


# --- command-line flags from dataclasses -----------------------------------------------------------------


def _field_comments(cls: type) -> dict[str, str]:
    """The trailing `# comment` of each dataclass field, used as its --help text."""
    comments = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            for match in re.finditer(r"^\s+(\w+):[^#\n]*#\s*(.+)$", inspect.getsource(klass), re.MULTILINE):
                comments[match.group(1)] = match.group(2).strip()
    return comments


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _none_or(parse: Callable) -> Callable:
    """An argparse `type` for an optional field: "none" is None, anything else goes to `parse`."""
    def parse_optional(text: str):
        return None if text.lower() == "none" else parse(text)
    parse_optional.__name__ = parse.__name__  # argparse names the type in its error line
    return parse_optional


def _argument_type(annotation) -> tuple[Callable, dict]:
    """argparse `type` and extra keywords for a dataclass field annotation."""
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(options) == 1:
        if options[0] in (int, float):  # not str: "none" may be a real name there
            return _none_or(options[0]), {}
        annotation = options[0]
    if annotation is bool:
        return _parse_bool, {"nargs": "?", "const": True}
    if typing.get_origin(annotation) in (list, tuple):
        return typing.get_args(annotation)[0], {"nargs": "+"}
    return annotation, {}


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage dump): what is wrong and where to look."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(dataclass_types: list[type], description: str | None = None, defaults: dict | None = None):
    """An argparse parser with one `--field` per dataclass field; a name shared by several is one flag."""
    parser = ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    seen: set[str] = set()
    for cls in dataclass_types:
        group = parser.add_argument_group(cls.__name__)
        comments = _field_comments(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in seen:
                continue
            seen.add(f.name)
            arg_type, extra = _argument_type(hints[f.name])
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            group.add_argument(f"--{f.name}", type=arg_type, default=default, help=comments.get(f.name, " "), **extra)
    if defaults:
        parser.set_defaults(**defaults)
    return parser


def parse_args(dataclass_types: list[type], argv: list[str] | None = None, description: str | None = None,
               defaults: dict | None = None) -> tuple:
    """Flags -> one instance per dataclass. `defaults` (a family's training defaults) override the fields'.

    A bad value exits with one line naming the flag, as argparse does for a bad flag.
    """
    parser = build_parser(dataclass_types, description, defaults)
    namespace = vars(parser.parse_args(argv))
    instances = []
    for cls in dataclass_types:
        values = {f.name: namespace[f.name] for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        try:
            instances.append(cls(**values))
        except (UserError, ValueError) as err:
            parser.error(str(err))
    return tuple(instances)


def run_main(main: Callable[[], None]) -> None:
    """Run a script's main; a `UserError` (bad data, folder, config) exits with one line, not a traceback."""
    try:
        main()
    except UserError as err:
        print(f"{Path(sys.argv[0]).name}: error: {err}", file=sys.stderr)
        sys.exit(2)


def training_command(argv: list[str] | None = None) -> str:
    """The command line of this run for the model card, with any token redacted."""
    argv = list(sys.argv if argv is None else argv)
    for i, arg in enumerate(argv):
        if arg.startswith("--hub_token="):
            argv[i] = "--hub_token=***"
        elif arg == "--hub_token" and i + 1 < len(argv):
            argv[i + 1] = "***"
    script = Path(argv[0])
    script = f"training/{script.name}" if script.suffix == ".py" else script.name
    return " ".join(["accelerate launch", script, *argv[1:]])


def hardware_name(device: torch.device) -> str:
    """What a run ran on, for its card: "cuda (NVIDIA H100 80GB HBM3)" or "cpu (2 cores)"."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({os.cpu_count()} cores)"
    return device.type


# --- checkpoints ---------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX):])


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """checkpoint-N folders of a run, oldest first (temporary and other folders excluded)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and re.fullmatch(CHECKPOINT_PREFIX + r"\d+", p.name)]
    return sorted(found, key=checkpoint_step)


def _manifest_digest(manifest: dict) -> str:
    """SHA-256 of the manifest's own fields (all but the digest), so an edited step or time is noticed."""
    fields = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def verify_checkpoint(path: Path) -> str | None:
    """None if the checkpoint's manifest is intact (its own digest, its step, its files' sizes and SHA-256),
    else what is wrong."""
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        return f"{path} has no {MANIFEST_NAME} (not written by gm-hub, or interrupted)"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{manifest_path} is not valid JSON"
    shape_ok = (isinstance(manifest, dict) and isinstance(manifest.get("files"), dict)
                and isinstance(manifest.get("training_seconds"), (int, float))
                and all(isinstance(entry, list) and len(entry) == 2 for entry in manifest["files"].values()))
    if not shape_ok:
        return f"{manifest_path} does not have a gm-hub manifest's fields"
    if manifest.get("manifest_sha256") != _manifest_digest(manifest):
        return f"{manifest_path} was edited or damaged (its digest does not match its fields)"
    if manifest.get("step") != checkpoint_step(path):
        return f"{manifest_path} is for step {manifest.get('step')}, not the folder's step {checkpoint_step(path)}"
    for name, (size, digest) in manifest["files"].items():
        file = path / name
        if not file.is_file():
            return f"{path} lacks {name}"
        if file.stat().st_size != size or _sha256(file) != digest:
            return f"{path}/{name} is damaged (size or SHA-256 differs from the manifest)"
    return None


def find_resume_checkpoint(output_dir: str, resume_from_checkpoint: str) -> Path:
    """The checkpoint to resume from: 'latest' picks the newest intact one (damaged ones are skipped, with a
    warning); a run asked to resume with nothing intact to resume from stops with what it found."""
    if resume_from_checkpoint != "latest":
        path = Path(resume_from_checkpoint)
        if not path.is_dir() or not re.fullmatch(CHECKPOINT_PREFIX + r"\d+", path.name):
            raise UserError(f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a checkpoint-N folder (or use 'latest')")
        problem = verify_checkpoint(path)
        if problem:
            raise UserError(f"cannot resume: {problem}")
        return path
    problems = []
    for path in reversed(list_checkpoints(output_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        logger.warning("skipping damaged checkpoint: %s", problem)
        problems.append(problem)
    if problems:
        raise UserError(f"cannot resume: every checkpoint in {output_dir} is damaged ({problems[0]}); "
                        "train again with --overwrite_output_dir, or into another --output_dir")
    raise UserError(f"cannot resume: {output_dir} has no checkpoint-N folder; drop --resume_from_checkpoint to start a new run")


def save_checkpoint(accelerator: Accelerator, output_dir: str, step: int, limit: int | None,
                    training_seconds: float = 0.0, signature: dict | None = None) -> Path:
    """Write checkpoint-{step} atomically: temporary folder, manifest of sizes and hashes, rename.

    The manifest also keeps the step, the training time so far, which a resumed run continues from, and
    the run's signature (model config, tokenizer), which a resuming run must match."""
    final = Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"
    temporary = Path(output_dir) / f".tmp-{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))  # every process writes its own RNG state
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {str(p.relative_to(temporary)): (p.stat().st_size, _sha256(p)) for p in temporary.rglob("*") if p.is_file()}
        manifest = {"step": step, "training_seconds": training_seconds, "signature": signature or {}, "files": files}
        manifest["manifest_sha256"] = _manifest_digest(manifest)
        (temporary / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
        if limit is not None:
            for old in list_checkpoints(output_dir)[:-limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


# --- the loop --------------------------------------------------------------------------------------------


def _make_accelerator(config: TrainingConfig, multi_player: bool) -> Accelerator:
    return Accelerator(
        mixed_precision=config.mixed_precision,
        # The loop counts micro-steps itself: each optimizer step of each player takes exactly
        # `gradient_accumulation_steps` batches, so sync must not follow the end of the data loader.
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=config.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        # Each player's forward leaves the other players' parameters without gradients.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=multi_player)],
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        log_with=config.report_to,
        project_config=ProjectConfiguration(project_dir=config.output_dir, logging_dir=str(Path(config.output_dir) / "logs")),
        # Honour ACCELERATE_USE_CPU (set by `accelerate launch --cpu`); otherwise accelerate picks the device.
        cpu=os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true"),
    )


def warn_idle_cpu_cores(accelerator: Accelerator) -> None:
    """One warning line when a CPU run leaves cores idle: `accelerate launch` without a config sets
    OMP_NUM_THREADS=1, which made Glow train 1.8x slower on a 2-core machine than with 2 threads."""
    if accelerator.device.type != "cpu" or not accelerator.is_main_process:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads_per_process = max(1, cores // accelerator.num_processes)
    if torch.get_num_threads() < threads_per_process:
        logger.warning("training on %d CPU thread(s) per process of %d cores: pass "
                       "--num_cpu_threads_per_process %d to `accelerate launch` (or set OMP_NUM_THREADS)",
                       torch.get_num_threads(), cores, threads_per_process)


def _decay_groups(parameters: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """Weight decay on matrices, kernels and embeddings only; biases and norm scales (1-D) are not decayed."""
    return [
        {"params": [p for p in parameters if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0},
    ]


def _all_finite(accelerator: Accelerator, finite: torch.Tensor) -> bool:
    """Whether every process saw only finite losses (all must agree to skip a step, or DDP would hang)."""
    finite = finite.float().reshape(1)
    if accelerator.num_processes > 1:
        finite = accelerator.reduce(finite, reduction="sum") / accelerator.num_processes
    return bool(finite.item() == 1.0)


def save_samples(model, path: Path, num_samples: int, seed: int = 0) -> Path:
    """`num_samples` samples of a fixed seed: a PNG grid for images, a text file for text; returns the file."""
    from .data import save_image_grid

    with torch.no_grad():
        samples = model.sample(num_samples, generator=torch.Generator().manual_seed(seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(samples, torch.Tensor):
        save_image_grid(samples, path.with_suffix(".png"))
        return path.with_suffix(".png")
    path.with_suffix(".txt").write_text("\n\n----\n\n".join(samples), encoding="utf-8")
    return path.with_suffix(".txt")


def _truncate_history(history_file: Path, step: int) -> None:
    """Drop the rows a crashed run logged after the checkpoint it resumes from (they are logged again)."""
    if history_file.is_file():
        rows = [line for line in history_file.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        history_file.write_text("".join(row + "\n" for row in rows))


def plot_history(history_file: Path, output_file: Path) -> None:
    """A PNG of every logged loss against the step, from the run's history.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in history_file.read_text().splitlines() if line.strip()]
    keys = sorted({k for row in rows for k in row if k not in ("step", "lr", "time")})
    if not rows or not keys:
        return
    figure, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
    for axis, key in zip(axes[:, 0], keys):
        points = [(row["step"], row[key]) for row in rows if key in row]
        axis.plot(*zip(*points))
        axis.set_ylabel(key)
        axis.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    figure.tight_layout()
    figure.savefig(output_file, dpi=100)
    plt.close(figure)


@contextmanager
def _averaged(ema: EMA | None, model: torch.nn.Module) -> Iterator[None]:
    if ema is None:
        yield
    else:
        with ema.applied_to(list(model.parameters())):
            yield


# --- the phases of a run -------------------------------------------------------------------------------


def run_signature(model: torch.nn.Module) -> dict:
    """What a checkpoint must share with the run that resumes it: the `config_signature()` of every module
    that has one (a model's config; a GPT's tokenizer too), by module name."""
    signature = {name or "model": module.config_signature() for name, module in model.named_modules()
                 if callable(getattr(module, "config_signature", None))}
    return json.loads(json.dumps(signature))  # tuples become lists, as in the saved manifest


def _signature_mismatch(saved: dict, current: dict, prefix: str = "",
                        where: tuple[str, str] = ("the checkpoint", "this run")) -> str | None:
    """The first field where two signatures differ, as 'name: A in the checkpoint, B in this run'."""
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _signature_mismatch(a, b, f"{prefix}{key}.", where)
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}: {a!r} in {where[0]}, {b!r} in {where[1]}"
    return None


def prepare_output_dir(config: TrainingConfig, accelerator: Accelerator) -> Path:
    """Refuse to train into a folder that holds a model or checkpoints, unless resuming or told to overwrite."""
    output_dir = Path(config.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output_dir {output_dir} is a file; give a folder")
    has_model = any((output_dir / name).is_file() for name in ("config.json", "model_index.json"))
    has_checkpoints = bool(list_checkpoints(output_dir))
    if (has_model or has_checkpoints) and not config.resume_from_checkpoint:
        if not config.overwrite_output_dir:
            raise UserError(f"--output_dir {output_dir} already holds {'a trained model' if has_model else 'checkpoints'}; "
                            "continue it with --resume_from_checkpoint latest, replace it with --overwrite_output_dir, "
                            "or choose another --output_dir")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:  # the old run's checkpoints and history must not mix with the new one's
            for old in [*list_checkpoints(output_dir), output_dir / "logs", output_dir / "samples"]:
                shutil.rmtree(old, ignore_errors=True)
    if accelerator.is_main_process:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create --output_dir {output_dir}: {err.strerror}") from err
    accelerator.wait_for_everyone()
    return output_dir


def initialize_from_data(model: torch.nn.Module, dataset: Dataset, config: TrainingConfig,
                         collate_fn: Callable | None) -> None:
    """The data-dependent initialization hook: if the model defines `initialize_from_data(batch)` (Glow's
    act-norm), call it once, before training and before the EMA copy, on the same `init_batch_size` items on
    every process (a seeded choice of the training set), so every replica starts from identical weights. The
    result lives in ordinary parameters, saved with the weights: a loaded model never initializes again."""
    hook = getattr(model, "initialize_from_data", None)
    if hook is None:
        return
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(config.seed or 0))
    items = [dataset[int(i)] for i in order[: config.init_batch_size]]
    batch = (collate_fn or default_collate)(items)
    device = next(model.parameters()).device
    with torch.no_grad():
        hook({key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()})


def load_initial_weights(model: torch.nn.Module, name_or_path: str) -> None:
    """--init_from: copy a saved model's weights into `model`, which must be of its class and config (a field
    that differs is named, so a fine-tuning run never silently starts from a model of another shape)."""
    from .hub import load_model

    source = load_model(name_or_path)
    if type(source) is not type(model):
        raise UserError(f"--init_from {name_or_path} holds a {type(source).__name__}, this run trains a {type(model).__name__}")
    mismatch = _signature_mismatch(run_signature(source), run_signature(model), where=("--init_from", "this run"))
    if mismatch:
        raise UserError(f"--init_from {name_or_path} has another model config: {mismatch}; pass the same model flags")
    model.load_state_dict(source.state_dict())


def base_model_card(name_or_path: str) -> dict:
    """The card fields of a fine-tuned model that say what it started from: the base's id and how it was trained."""
    from huggingface_hub import ModelCard

    from .hub import resolve_file

    try:
        base_info = ModelCard.load(resolve_file(name_or_path, "README.md")).data.to_dict().get("gm_hub") or {}
    except UserError:  # a base without a card: its name is still recorded
        base_info = {}
    return {"base_model": name_or_path,
            "base_model_training": {k: base_info[k] for k in ("training_command", "training_time") if base_info.get(k)}}


def resume(accelerator: Accelerator, config: TrainingConfig, signature: dict) -> tuple[int, float]:
    """Load the checkpoint the run asks for: -> (its step, the training seconds before it); (0, 0.0) when not
    resuming. Refuses a checkpoint whose model differs from this run's, naming the field."""
    if not config.resume_from_checkpoint:
        return 0, 0.0
    checkpoint = find_resume_checkpoint(config.output_dir, config.resume_from_checkpoint)
    manifest = json.loads((checkpoint / MANIFEST_NAME).read_text())
    mismatch = _signature_mismatch(manifest.get("signature", {}), signature)
    if mismatch:
        raise UserError(f"cannot resume from {checkpoint}: the model differs ({mismatch}); "
                        "resume with the flags and data of that run, or train into another --output_dir")
    accelerator.load_state(str(checkpoint))
    if accelerator.is_main_process:
        _truncate_history(Path(config.output_dir) / "logs" / HISTORY_NAME, manifest["step"])
    logger.info("resumed from %s at step %d", checkpoint, manifest["step"])
    return manifest["step"], manifest["training_seconds"]


@dataclass
class Run:
    """What the phases of one run share once it is prepared."""

    accelerator: Accelerator
    model: torch.nn.Module  # prepared (DDP-wrapped on several processes); called only through forward
    unwrapped: torch.nn.Module
    players: list[Player]
    optimizers: list
    schedulers: list
    ema: EMA | None
    loader: DataLoader
    batches_per_step: int  # batches one training step takes on each process: every player's steps, accumulated
    max_train_steps: int
    config: TrainingConfig
    batches: Iterator[dict] = iter(())  # set once the starting step is known


def optimizer_step(run: Run, player: Player, optimizer, scheduler) -> dict[str, torch.Tensor] | None:
    """One optimizer step of one player over `gradient_accumulation_steps` batches: -> the summed scalar
    outputs to log, or None when a loss was NaN/inf on any process (the step is dropped as a whole; the
    check is one host sync per optimizer step)."""
    multi_player = len(run.players) > 1
    totals: dict[str, torch.Tensor] = {}
    finite = torch.ones((), dtype=torch.bool, device=run.accelerator.device)
    for _ in range(run.config.gradient_accumulation_steps):
        batch = next(run.batches)
        with run.accelerator.accumulate(run.model):
            outputs = run.model(batch, player=player.name) if multi_player else run.model(batch)
            run.accelerator.backward(outputs["loss"])
        finite &= torch.isfinite(outputs["loss"].detach())
        for key, value in outputs.items():
            if value.numel() == 1:
                totals[key] = totals.get(key, 0.0) + value.detach().float()
    ok = _all_finite(run.accelerator, finite)
    if ok:
        if run.config.max_grad_norm > 0:
            run.accelerator.clip_grad_norm_(player.parameters, run.config.max_grad_norm)
        optimizer.step()
        scheduler.step()
    # The whole model: one player's backward also fills the other players' gradients.
    run.model.zero_grad(set_to_none=True)
    return totals if ok else None


def publish(run: Run, global_step: int, training_seconds: float, eval_fn: Callable | None,
            finalize_fn: Callable | None, model_card_kwargs: dict | None) -> None:
    """The end of a run: finalize and evaluate, then on the main process the final samples, the model and card,
    the loss plot and, if asked, the upload; EMA weights when the run keeps them."""
    accelerator, unwrapped, config = run.accelerator, run.unwrapped, run.config
    output_dir = Path(config.output_dir)
    unwrapped.eval()
    with _averaged(run.ema, unwrapped):
        if finalize_fn is not None:
            finalize_fn(unwrapped)
        metrics = eval_fn(unwrapped, accelerator) if eval_fn is not None else {}
        if accelerator.is_main_process:
            card = {"training_command": training_command(), "training_time": f"{global_step} steps, {training_seconds:.0f} s "
                    f"wall-clock on {accelerator.num_processes} process(es), {hardware_name(accelerator.device)}",
                    **(base_model_card(config.init_from) if config.init_from else {}),
                    **(model_card_kwargs or {}),
                    "metrics": metrics}
            grid = save_samples(unwrapped, output_dir / "samples", config.num_sample_images, config.seed or 0) \
                if hasattr(unwrapped, "sample") else None
            unwrapped.save_pretrained(output_dir, model_card_kwargs=card)
            history_file = output_dir / "logs" / HISTORY_NAME
            if history_file.is_file():
                plot_history(history_file, output_dir / "loss.png")
            if config.push_to_hub:  # a fresh folder with the model, its card and grid: no checkpoints, no logs
                unwrapped.push_to_hub(config.hub_model_id, token=config.hub_token, model_card_kwargs=card, sample_grid=grid)
        final_state = {k: v.detach().clone() for k, v in unwrapped.state_dict().items()}
    unwrapped.load_state_dict(final_state)  # the returned model holds the weights that were saved


def _write_run_info(run: Run, global_step: int, skipped: int, training_seconds: float) -> None:
    """logs/run.json: processes, effective batch, and a checksum of every replica's weights (DDP keeps them equal)."""
    checksum = torch.stack([p.detach().double().sum() for p in run.unwrapped.parameters()]).sum().reshape(1)
    replica_checksums = run.accelerator.gather(checksum.to(run.accelerator.device)).tolist()
    if len(set(replica_checksums)) > 1:
        logger.error("replicas diverged: parameter checksums %s", replica_checksums)
    if run.accelerator.is_main_process:
        config = run.config
        info = {
            "num_processes": run.accelerator.num_processes,
            "effective_batch_size": config.train_batch_size * config.gradient_accumulation_steps * run.accelerator.num_processes,
            "global_step": global_step,
            "skipped_nonfinite_steps": skipped,
            "training_seconds": training_seconds,
            "replica_checksums": replica_checksums,
        }
        (Path(config.output_dir) / "logs").mkdir(parents=True, exist_ok=True)
        (Path(config.output_dir) / "logs" / "run.json").write_text(json.dumps(info, indent=1))


# --- the loop --------------------------------------------------------------------------------------------


def train(
    model: torch.nn.Module,
    train_dataset: Dataset,
    config: TrainingConfig,
    *,
    players: list[Player] | None = None,
    eval_fn: Callable[[torch.nn.Module, Accelerator], dict[str, float]] | None = None,
    finalize_fn: Callable[[torch.nn.Module], None] | None = None,
    model_card_kwargs: dict | None = None,
    collate_fn: Callable | None = None,
) -> torch.nn.Module:
    """Train `model` on `train_dataset`, checkpointing and logging as `config` says; returns the unwrapped
    model with the final (EMA, if used) weights, after `save_pretrained(config.output_dir)`.

    eval_fn(model, accelerator) -> metrics for the model card, run on every process at the end.
    finalize_fn(model): a last stage on every process after the final step, before evaluating and saving
    (the VAE's prior refit); it sees the EMA weights when the run keeps them.
    """
    run = _prepare(model, train_dataset, config, players, collate_fn)
    signature = run_signature(run.unwrapped)
    global_step, seconds_before = resume(run.accelerator, config, signature)
    warn_idle_cpu_cores(run.accelerator)  # after every refusal: a refused run prints its one line alone
    run.batches = _batches(run, global_step)
    max_train_steps = run.max_train_steps
    history = _History(run, config.output_dir)
    progress = tqdm(total=max_train_steps, initial=global_step, desc="training", disable=not run.accelerator.is_main_process)
    consecutive_nonfinite, skipped, start = 0, 0, time.perf_counter()
    run.model.train()
    while global_step < max_train_steps:
        # 1. One training step: every player's optimizer steps, in order.
        outputs = [(player, optimizer_step(run, player, optimizer, scheduler))
                   for player, optimizer, scheduler in zip(run.players, run.optimizers, run.schedulers)
                   for _ in range(player.steps)]
        if any(totals is None for _, totals in outputs):
            consecutive_nonfinite, skipped = consecutive_nonfinite + 1, skipped + 1
            _stop_if_diverged(consecutive_nonfinite, global_step, config)
            continue
        consecutive_nonfinite, global_step = 0, global_step + 1
        if run.ema is not None:
            run.ema.update(list(run.unwrapped.parameters()))
        progress.update(1)
        # 2. Logs, checkpoints and sample grids, each on its own period.
        history.add(outputs)
        if global_step % config.logging_steps == 0 or global_step == max_train_steps:
            progress.set_postfix(history.write(global_step, skipped, time.perf_counter() - start))
            if _time_is_up(run.accelerator, config, seconds_before + time.perf_counter() - start):
                logger.info("--max_train_minutes %s reached at step %d: publishing", config.max_train_minutes, global_step)
                break
        if global_step % config.checkpointing_steps == 0 and global_step < max_train_steps:
            save_checkpoint(run.accelerator, config.output_dir, global_step, config.checkpoints_total_limit,
                            seconds_before + time.perf_counter() - start, signature)
        if (config.save_images_steps and global_step % config.save_images_steps == 0 and run.accelerator.is_main_process
                and hasattr(run.unwrapped, "sample")):
            with _averaged(run.ema, run.unwrapped):
                run.unwrapped.eval()
                save_samples(run.unwrapped, Path(config.output_dir) / "samples" / f"step-{global_step:06d}",
                             config.num_sample_images, config.seed or 0)
                run.unwrapped.train()
    progress.close()
    training_seconds = seconds_before + time.perf_counter() - start
    save_checkpoint(run.accelerator, config.output_dir, global_step, config.checkpoints_total_limit, training_seconds, signature)
    _write_run_info(run, global_step, skipped, training_seconds)
    publish(run, global_step, training_seconds, eval_fn, finalize_fn, model_card_kwargs)
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return run.unwrapped


def _time_is_up(accelerator: Accelerator, config: TrainingConfig, seconds: float) -> bool:
    """Whether --max_train_minutes has passed, decided by the main process's clock so every process stops
    at the same step."""
    if config.max_train_minutes is None:
        return False
    up = torch.tensor([float(seconds >= 60 * config.max_train_minutes)], device=accelerator.device)
    return bool(accelerate_broadcast(up, from_process=0).item())


def _prepare(model: torch.nn.Module, dataset: Dataset, config: TrainingConfig, players: list[Player] | None,
             collate_fn: Callable | None) -> Run:
    """Accelerator, output folder, data-dependent initialization, optimizers and schedulers, EMA: all prepared."""
    from diffusers.optimization import get_scheduler

    players = players or [Player("model", list(model.parameters()))]
    accelerator = _make_accelerator(config, multi_player=len(players) > 1)
    if config.mixed_precision == "fp16" and not accelerator.native_amp:
        raise UserError(f"--mixed_precision fp16 needs a GPU; on the {accelerator.device.type.upper()} use bf16")
    set_seed(config.seed)
    prepare_output_dir(config, accelerator)
    if config.init_from and not config.resume_from_checkpoint:  # a resumed run's weights come from its checkpoint
        load_initial_weights(model, config.init_from)  # already initialized: no data-dependent pass on top
    elif not config.resume_from_checkpoint:
        initialize_from_data(model, dataset, config, collate_fn)
    # The loader's own generator: iterating must not draw from the global RNG, or a resumed run, which
    # starts its iterator at another point of the RNG stream, would see other model noise.
    loader = DataLoader(dataset, batch_size=config.train_batch_size, shuffle=True, drop_last=True,
                        num_workers=config.dataloader_num_workers, collate_fn=collate_fn,
                        generator=torch.Generator().manual_seed(config.seed or 0))
    if len(loader) == 0:
        raise UserError(f"the training set ({len(dataset)} items) is smaller than --train_batch_size {config.train_batch_size}")
    optimizers = [
        torch.optim.AdamW(_decay_groups(p.parameters, config.adam_weight_decay), lr=config.learning_rate,
                          betas=(config.adam_beta1, config.adam_beta2))
        for p in players
    ]
    model, loader, *optimizers = accelerator.prepare(model, loader, *optimizers)
    batches_per_step = sum(p.steps for p in players) * config.gradient_accumulation_steps
    max_train_steps = config.max_train_steps or config.num_epochs * max(1, len(loader) // batches_per_step)
    # Prepared schedulers step once per process per optimizer step, hence the factor num_processes.
    schedulers = [
        accelerator.prepare(get_scheduler(config.lr_scheduler, optimizer,
                                          num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
                                          num_training_steps=max_train_steps * player.steps * accelerator.num_processes))
        for player, optimizer in zip(players, optimizers)
    ]
    unwrapped = accelerator.unwrap_model(model)
    ema = EMA(list(unwrapped.parameters()), config.ema_decay) if config.use_ema else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    if accelerator.is_main_process and config.report_to:
        flat = {k: v for k, v in dataclasses.asdict(config).items() if isinstance(v, (int, float, str, bool)) and k != "hub_token"}
        accelerator.init_trackers("gm-hub", config=flat)
    return Run(accelerator, model, unwrapped, players, optimizers, schedulers, ema, loader, batches_per_step,
               max_train_steps, config)


def _batches(run: Run, global_step: int) -> Iterator[dict]:
    """Batches from where `global_step` left off: epoch and position follow from the step."""
    loader = run.loader
    epoch, skip = divmod(global_step * run.batches_per_step, len(loader))
    while True:
        loader.set_epoch(epoch)
        yield from (run.accelerator.skip_first_batches(loader, skip) if skip else loader)
        epoch, skip = epoch + 1, 0


def _stop_if_diverged(consecutive_nonfinite: int, global_step: int, config: TrainingConfig) -> None:
    if consecutive_nonfinite >= config.max_nonfinite_steps:
        kept = list_checkpoints(config.output_dir)
        raise NonFiniteLossError(
            f"{consecutive_nonfinite} training steps in a row had a NaN/inf loss (at step {global_step}); "
            f"the last good checkpoint is {kept[-1] if kept else 'none'}. "
            "Lower --learning_rate, or train with --mixed_precision no."
        )


class _History:
    """Running means of the logged scalars, written to the trackers and logs/history.jsonl every N steps."""

    def __init__(self, run: Run, output_dir: str):
        self.run, self.file, self.running = run, Path(output_dir) / "logs" / HISTORY_NAME, {}

    def add(self, outputs: list[tuple[Player, dict[str, torch.Tensor]]]) -> None:
        multi_player = len(self.run.players) > 1
        for player, totals in outputs:
            for key, total in totals.items():
                name = f"{player.name}/{key}" if multi_player else key
                sum_, count = self.running.get(name, (0.0, 0))
                self.running[name] = (sum_ + total, count + self.run.config.gradient_accumulation_steps)

    def write(self, step: int, skipped: int, seconds: float) -> dict[str, str]:
        logs = {k: (total / count).item() for k, (total, count) in self.running.items()}
        logs["lr"] = self.run.schedulers[0].get_last_lr()[0]
        logs["skipped_nonfinite_steps"] = skipped
        self.running = {}
        self.run.accelerator.log(logs, step=step)
        if self.run.accelerator.is_main_process:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.file, "a") as f:
                f.write(json.dumps({"step": step, "time": seconds, **logs}) + "\n")
        return {k: f"{v:.4g}" for k, v in logs.items() if k.endswith("loss")}

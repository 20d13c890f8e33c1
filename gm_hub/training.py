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
from accelerate.utils import set_seed as _set_all_seeds
from torch.utils.data import DataLoader, Dataset
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
        positive = ("num_epochs", "train_batch_size", "eval_batch_size", "gradient_accumulation_steps",
                    "checkpointing_steps", "logging_steps", "num_sample_images", "max_nonfinite_steps")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.max_train_steps is not None and self.max_train_steps <= 0:
            raise UserError(f"--max_train_steps must be positive, got {self.max_train_steps}")
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


def _argument_type(annotation) -> tuple[Callable, dict]:
    """argparse `type` and extra keywords for a dataclass field annotation."""
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(options) == 1:
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


def verify_checkpoint(path: Path) -> str | None:
    """None if the checkpoint's manifest matches its files, else what is wrong."""
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        return f"{path} has no {MANIFEST_NAME} (not written by gm-hub, or interrupted)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return f"{manifest_path} is not valid JSON"
    for name, (size, digest) in manifest["files"].items():
        file = path / name
        if not file.is_file():
            return f"{path} lacks {name}"
        if file.stat().st_size != size or _sha256(file) != digest:
            return f"{path}/{name} is damaged (size or SHA-256 differs from the manifest)"
    return None


def find_resume_checkpoint(output_dir: str, resume_from_checkpoint: str) -> Path | None:
    """The checkpoint to resume from: 'latest' picks the newest intact one (damaged ones are skipped)."""
    if resume_from_checkpoint != "latest":
        path = Path(resume_from_checkpoint)
        if not path.is_dir():
            raise UserError(f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a folder (or use 'latest')")
        problem = verify_checkpoint(path)
        if problem:
            raise UserError(f"cannot resume: {problem}")
        return path
    for path in reversed(list_checkpoints(output_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        logger.warning("skipping damaged checkpoint: %s", problem)
    return None


def save_checkpoint(accelerator: Accelerator, output_dir: str, step: int, limit: int | None,
                    training_seconds: float = 0.0) -> Path:
    """Write checkpoint-{step} atomically: temporary folder, manifest of sizes and hashes, rename.

    The manifest also keeps the step and the training time so far, which a resumed run continues from."""
    final = Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"
    temporary = Path(output_dir) / f".tmp-{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))  # every process writes its own RNG state
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {str(p.relative_to(temporary)): (p.stat().st_size, _sha256(p)) for p in temporary.rglob("*") if p.is_file()}
        (temporary / MANIFEST_NAME).write_text(json.dumps({"step": step, "training_seconds": training_seconds, "files": files}, indent=1))
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


def _decay_groups(parameters: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """Weight decay on matrices, kernels and embeddings only; biases and norm scales (1-D) are not decayed."""
    return [
        {"params": [p for p in parameters if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0},
    ]


def _all_finite(accelerator: Accelerator, loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every process (all must agree to skip, or DDP would hang)."""
    finite = torch.isfinite(loss.detach()).float().reshape(1)
    if accelerator.num_processes > 1:
        finite = accelerator.reduce(finite, reduction="sum") / accelerator.num_processes
    return bool(finite.item() == 1.0)


def _save_samples(model, path: Path, num_samples: int, seed: int) -> None:
    from .data import save_image_grid

    with torch.no_grad():
        samples = model.sample(num_samples, generator=torch.Generator().manual_seed(seed))
    if isinstance(samples, torch.Tensor):
        save_image_grid(samples, path.with_suffix(".png"))
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".txt").write_text("\n\n----\n\n".join(samples), encoding="utf-8")


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


def train(
    model: torch.nn.Module,
    train_dataset: Dataset,
    config: TrainingConfig,
    *,
    players: list[Player] | None = None,
    eval_fn: Callable[[torch.nn.Module, Accelerator], dict[str, float]] | None = None,
    model_card_kwargs: dict | None = None,
    collate_fn: Callable | None = None,
) -> torch.nn.Module:
    """Train `model` on `train_dataset`, checkpointing and logging as `config` says; returns the unwrapped
    model with the final (EMA, if used) weights, after `save_pretrained(config.output_dir)`.

    eval_fn(model, accelerator) -> metrics for the model card, run on every process at the end.
    """
    from diffusers.optimization import get_scheduler

    players = players or [Player("model", list(model.parameters()))]
    multi_player = len(players) > 1
    accelerator = _make_accelerator(config, multi_player)
    if config.mixed_precision == "fp16" and not accelerator.native_amp:
        raise UserError(f"--mixed_precision fp16 needs a GPU; on the {accelerator.device.type.upper()} use bf16")
    set_seed(config.seed)
    output_dir = Path(config.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    # The loader's own generator: iterating must not draw from the global RNG, or a resumed run, which
    # starts its iterator at another point of the RNG stream, would see other model noise.
    loader = DataLoader(train_dataset, batch_size=config.train_batch_size, shuffle=True, drop_last=True,
                        num_workers=config.dataloader_num_workers, collate_fn=collate_fn,
                        generator=torch.Generator().manual_seed(config.seed or 0))
    if len(loader) == 0:
        raise UserError(f"the training set ({len(train_dataset)} items) is smaller than --train_batch_size {config.train_batch_size}")
    # Batches one training step consumes on each process: every player's steps, each accumulated.
    batches_per_step = sum(p.steps for p in players) * config.gradient_accumulation_steps
    optimizers = [
        torch.optim.AdamW(_decay_groups(p.parameters, config.adam_weight_decay), lr=config.learning_rate,
                          betas=(config.adam_beta1, config.adam_beta2))
        for p in players
    ]
    model, loader, *optimizers = accelerator.prepare(model, loader, *optimizers)
    steps_per_epoch = max(1, len(loader) // batches_per_step)
    max_train_steps = config.max_train_steps or config.num_epochs * steps_per_epoch
    # Prepared schedulers step once per process per optimizer step, hence the factor num_processes.
    schedulers = [
        get_scheduler(config.lr_scheduler, optimizer,
                      num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
                      num_training_steps=max_train_steps * player.steps * accelerator.num_processes)
        for player, optimizer in zip(players, optimizers)
    ]
    schedulers = list(accelerator.prepare(*schedulers)) if len(schedulers) > 1 else [accelerator.prepare(schedulers[0])]
    unwrapped = accelerator.unwrap_model(model)
    ema = EMA(list(unwrapped.parameters()), config.ema_decay) if config.use_ema else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    global_step, seconds_before = 0, 0.0  # seconds_before: training time of the runs this one resumes
    if config.resume_from_checkpoint:
        checkpoint = find_resume_checkpoint(config.output_dir, config.resume_from_checkpoint)
        if checkpoint is None:
            logger.info("no checkpoint in %s: starting from scratch", config.output_dir)
        else:
            accelerator.load_state(str(checkpoint))
            manifest = json.loads((checkpoint / MANIFEST_NAME).read_text())
            global_step, seconds_before = manifest["step"], manifest.get("training_seconds", 0.0)
            if accelerator.is_main_process:
                _truncate_history(output_dir / "logs" / HISTORY_NAME, global_step)
            logger.info("resumed from %s at step %d", checkpoint, global_step)
    if accelerator.is_main_process and config.report_to:
        flat = {k: v for k, v in dataclasses.asdict(config).items() if isinstance(v, (int, float, str, bool)) and k != "hub_token"}
        accelerator.init_trackers("gm-hub", config=flat)

    def batches() -> Iterator[dict]:
        """Batches from where `global_step` left off: epoch and position follow from the step."""
        consumed = global_step * batches_per_step
        epoch, skip = divmod(consumed, len(loader))
        while True:
            loader.set_epoch(epoch)
            epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
            yield from epoch_loader
            epoch, skip = epoch + 1, 0

    batch_iterator = batches()
    running: dict[str, list] = {}  # name -> [sum of values, number of values] since the last log
    consecutive_nonfinite, total_skipped = 0, 0
    history_file = output_dir / "logs" / HISTORY_NAME
    progress = tqdm(total=max_train_steps, initial=global_step, desc="training", disable=not accelerator.is_main_process)
    start = time.perf_counter()
    model.train()
    while global_step < max_train_steps:
        step_finite = True
        for player, optimizer, scheduler in zip(players, optimizers, schedulers):
            for _ in range(player.steps):
                skip_update = False
                for _ in range(config.gradient_accumulation_steps):
                    batch = next(batch_iterator)
                    with accelerator.accumulate(model):
                        outputs = model(batch, player=player.name) if multi_player else model(batch)
                        loss = outputs["loss"]
                        if not _all_finite(accelerator, loss):
                            skip_update = True  # this optimizer step is dropped as a whole
                        if not skip_update:
                            accelerator.backward(loss)
                            if accelerator.sync_gradients and config.max_grad_norm > 0:
                                accelerator.clip_grad_norm_(player.parameters, config.max_grad_norm)
                            optimizer.step()
                            scheduler.step()
                        if accelerator.sync_gradients:
                            # The whole model: one player's backward also fills the other players' gradients.
                            model.zero_grad(set_to_none=True)
                    for key, value in outputs.items():
                        if not skip_update and value.numel() == 1:
                            name = f"{player.name}/{key}" if multi_player else key
                            total = running.setdefault(name, [0.0, 0])
                            total[0], total[1] = total[0] + value.detach().float(), total[1] + 1
                if skip_update:
                    model.zero_grad(set_to_none=True)
                    step_finite = False
        if not step_finite:
            consecutive_nonfinite += 1
            total_skipped += 1
            if consecutive_nonfinite >= config.max_nonfinite_steps:
                kept = list_checkpoints(config.output_dir)
                raise NonFiniteLossError(
                    f"{consecutive_nonfinite} training steps in a row had a NaN/inf loss (at step {global_step}); "
                    f"the last good checkpoint is {kept[-1] if kept else 'none'}. "
                    "Lower --learning_rate, or train with --mixed_precision no."
                )
            continue
        consecutive_nonfinite = 0
        global_step += 1
        if ema is not None:
            ema.update(list(unwrapped.parameters()))
        progress.update(1)

        if global_step % config.logging_steps == 0 or global_step == max_train_steps:
            logs = {k: (total / count).item() for k, (total, count) in running.items()}
            logs["lr"] = schedulers[0].get_last_lr()[0]
            logs["skipped_nonfinite_steps"] = total_skipped
            running = {}
            accelerator.log(logs, step=global_step)
            progress.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k.endswith("loss")})
            if accelerator.is_main_process:
                history_file.parent.mkdir(parents=True, exist_ok=True)
                with open(history_file, "a") as f:
                    f.write(json.dumps({"step": global_step, "time": time.perf_counter() - start, **logs}) + "\n")
        if global_step % config.checkpointing_steps == 0 and global_step < max_train_steps:
            save_checkpoint(accelerator, config.output_dir, global_step, config.checkpoints_total_limit,
                            seconds_before + time.perf_counter() - start)
        if config.save_images_steps and global_step % config.save_images_steps == 0 and accelerator.is_main_process:
            with _averaged(ema, unwrapped):
                unwrapped.eval()
                _save_samples(unwrapped, output_dir / "samples" / f"step-{global_step:06d}", config.num_sample_images, config.seed or 0)
                unwrapped.train()
    progress.close()
    training_seconds = seconds_before + time.perf_counter() - start

    save_checkpoint(accelerator, config.output_dir, global_step, config.checkpoints_total_limit, training_seconds)
    # Replicas must hold identical weights (DDP syncs gradients); the checksums make that visible.
    checksum = torch.stack([p.detach().double().sum() for p in unwrapped.parameters()]).sum().reshape(1)
    replica_checksums = accelerator.gather(checksum.to(accelerator.device)).tolist()
    if len(set(replica_checksums)) > 1:
        logger.error("replicas diverged: parameter checksums %s", replica_checksums)
    if accelerator.is_main_process:
        run_info = {
            "num_processes": accelerator.num_processes,
            "effective_batch_size": config.train_batch_size * config.gradient_accumulation_steps * accelerator.num_processes,
            "global_step": global_step,
            "skipped_nonfinite_steps": total_skipped,
            "training_seconds": training_seconds,
            "replica_checksums": replica_checksums,
        }
        (output_dir / "logs").mkdir(parents=True, exist_ok=True)
        (output_dir / "logs" / "run.json").write_text(json.dumps(run_info, indent=1))
    unwrapped.eval()
    with _averaged(ema, unwrapped):
        metrics = eval_fn(unwrapped, accelerator) if eval_fn is not None else {}
        if accelerator.is_main_process:
            card = {"training_command": training_command(), "training_time": f"{training_seconds:.0f} s wall-clock "
                    f"on {accelerator.num_processes} process(es), {accelerator.device.type}", **(model_card_kwargs or {}),
                    "metrics": metrics}
            unwrapped.save_pretrained(output_dir, model_card_kwargs=card)
            if history_file.is_file():
                plot_history(history_file, output_dir / "loss.png")
            if config.push_to_hub:
                # The mixin saves into a fresh temporary folder and uploads that: no checkpoints, no logs.
                unwrapped.push_to_hub(config.hub_model_id, token=config.hub_token, model_card_kwargs=card)
        final_state = {k: v.detach().clone() for k, v in unwrapped.state_dict().items()}
    unwrapped.load_state_dict(final_state)  # the returned model holds the weights that were saved
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return unwrapped


@contextmanager
def _averaged(ema: EMA | None, model: torch.nn.Module) -> Iterator[None]:
    if ema is None:
        yield
    else:
        with ema.applied_to(list(model.parameters())):
            yield

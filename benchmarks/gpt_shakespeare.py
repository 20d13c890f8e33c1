"""Tiny Shakespeare, character level: gm-hub's fast recipe against nanoGPT's CPU recipe, whole processes, one run.

    python benchmarks/gpt_shakespeare.py --nanogpt_dir ~/nanoGPT        # writes benchmarks/gpt_results_table.md
    python benchmarks/gpt_shakespeare.py --nanogpt_dir ~/nanoGPT --max_train_steps 20   # a smoke run

A user times the command, not the loop: each side is timed as the process a user starts, imports, data
loading, periodic and final evaluation, checkpoints and saving included.

- nanoGPT (a checkout of github.com/karpathy/nanoGPT, not part of gm-hub): the CPU recipe of its README,
  `python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
  --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
  --lr_decay_iters=2000 --dropout=0.0`, after its one-time `data/shakespeare_char/prepare.py` (not timed;
  run on a copy of the checkout, so the user's checkout is left as it was).
- gm-hub: `python training/train_gpt.py` with FAST_RECIPE, the recipe the README documents.

The rounds alternate (nanoGPT, gm-hub, nanoGPT, gm-hub, ...) so that a drift in the machine's speed hits
both sides. Then both final models are scored on one measure: float32 loss in nats per character over every
non-overlapping 65-character window of the last 10% of the text (1,742 windows, each predicting 64 characters
from their prefix), nanoGPT's checkpoint through its own model.py. Both use every core (torch's default
threads); run nothing else meanwhile.
"""

import argparse
import importlib.util
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from gm_hub.data import load_text, split_text
from gm_hub.models.gpt import GPT
from run import machine  # benchmarks/run.py: CPU, cores, torch and Python versions

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_FILE = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
RESULTS_FILE = Path(__file__).resolve().parent / "gpt_results_table.md"
TARGET_LOSS = 1.88  # nanoGPT's README: "a validation loss of about 1.88" for its CPU recipe
TARGET_RATIO = 0.5

NANOGPT_RECIPE = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                  "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                  "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
# gm-hub's fast recipe (the search behind it: gpt_results.md). No mid-run checkpoint or sample file: the run
# is shorter than a checkpoint would be worth; the final checkpoint, evaluation, samples and card remain.
FAST_RECIPE = ["--n_layer", "2", "--n_head", "4", "--n_embd", "256", "--block_size", "64", "--dropout", "0",
               "--train_batch_size", "16", "--max_train_steps", "800", "--learning_rate", "2e-3",
               "--lr_warmup_steps", "50", "--adam_beta2", "0.99", "--adam_weight_decay", "0.1",
               "--mixed_precision", "bf16", "--checkpointing_steps", "100000", "--save_images_steps", "0"]


@dataclass
class Run:
    name: str
    round: int
    seconds: float  # the whole process, wall clock
    output_dir: Path


def timed(command: list[str], cwd: Path, log_file: Path) -> float:
    """Run `command` to completion; -> its wall-clock seconds. Exits with the log's tail if it fails."""
    start = time.perf_counter()
    with open(log_file, "w") as log:
        completed = subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        sys.exit(f"{' '.join(command[:3])} ... failed (exit {completed.returncode}):\n{log_file.read_text()[-3000:]}")
    return seconds


def validation_text() -> str:
    """The last 10% of tiny Shakespeare, split as gm-hub's training script splits it (nanoGPT's split too)."""
    return split_text(load_text(str(DATA_FILE)))[1]


def validation_windows(stoi: dict[str, int], block_size: int = 64) -> torch.Tensor:
    """The validation text as (W, block_size + 1) token ids, stride block_size: the race's one measure."""
    ids = torch.tensor([stoi[c] for c in validation_text()])
    return ids.unfold(0, block_size + 1, block_size)


@torch.no_grad()
def nanogpt_loss(nanogpt_copy: Path, out_dir: Path) -> float:
    """nanoGPT's saved checkpoint (its best evaluation), loaded with its own model.py, on the race's measure."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", nanogpt_copy / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    checkpoint = torch.load(out_dir / "ckpt.pt", map_location="cpu", weights_only=False)
    model = module.GPT(module.GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict(checkpoint["model"])
    model.eval()
    stoi = pickle.loads((nanogpt_copy / "data" / "shakespeare_char" / "meta.pkl").read_bytes())["stoi"]
    windows = validation_windows(stoi)
    total = 0.0
    for batch in windows.split(256):
        logits, _ = model(batch[:, :-1], batch[:, :-1])  # with targets, nanoGPT returns logits at every position
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()).item() * len(batch)
    return total / len(windows)


def gm_hub_loss(output_dir: Path) -> float:
    return GPT.from_pretrained(output_dir).nats_per_character(validation_text())


def _joined(values: tuple) -> str:
    return ", ".join(f"{x:.2f}" for x in values)


def report(runs: list[Run], losses: dict[str, float], command: str, load_before: tuple, load_after: tuple) -> str:
    by_round = {}
    for run in runs:
        by_round.setdefault(run.round, {})[run.name] = run.seconds
    rows = "\n".join(f"| {r} | {s['nanoGPT']:.1f} | {s['gm-hub']:.1f} | {s['gm-hub'] / s['nanoGPT']:.2f}x |"
                     for r, s in sorted(by_round.items()))
    ratios = sorted(s["gm-hub"] / s["nanoGPT"] for s in by_round.values())
    fast = " ".join(FAST_RECIPE)
    info = machine()
    return f"""Command: `{command}`. Machine: {info['cpu']}, {info['cpu_count']} cores, torch {info['torch']}. Load average (1, 5, 15 min) before: {_joined(load_before)}; after: {_joined(load_after)}.

Whole processes, wall clock (s):

| round | nanoGPT | gm-hub | gm-hub / nanoGPT |
|---|---|---|---|
{rows}

Worst ratio {ratios[-1]:.2f}x (target <= {TARGET_RATIO}x).

Validation loss, float32, nats per character, every non-overlapping 65-character window of the last 10%
(each side's model from the last round): nanoGPT **{losses['nanoGPT']:.4f}**, gm-hub **{losses['gm-hub']:.4f}** (target <= {TARGET_LOSS}).

- nanoGPT: `python train.py {' '.join(NANOGPT_RECIPE)}`
- gm-hub: `python training/train_gpt.py --train_file ../shared/data/tinyshakespeare/input.txt {fast}`
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt_dir", type=Path, required=True, help="a checkout of github.com/karpathy/nanoGPT")
    parser.add_argument("--rounds", type=int, default=2, help="alternating pairs of runs")
    parser.add_argument("--max_train_steps", type=int, default=None, help="shorten both runs (a smoke run)")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE)
    args = parser.parse_args()
    if not DATA_FILE.is_file():
        sys.exit(f"{DATA_FILE} not found: put tiny Shakespeare's input.txt there")
    if not (args.nanogpt_dir / "train.py").is_file():
        sys.exit(f"{args.nanogpt_dir} is not a nanoGPT checkout (no train.py): git clone https://github.com/karpathy/nanoGPT")
    nanogpt_recipe, fast_recipe = list(NANOGPT_RECIPE), list(FAST_RECIPE)
    if args.max_train_steps:
        nanogpt_recipe += [f"--max_iters={args.max_train_steps}", f"--lr_decay_iters={args.max_train_steps}",
                           f"--eval_interval={args.max_train_steps}"]
        fast_recipe += ["--max_train_steps", str(args.max_train_steps), "--lr_warmup_steps", "5"]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        nanogpt_copy = scratch / "nanoGPT"
        shutil.copytree(args.nanogpt_dir, nanogpt_copy, ignore=shutil.ignore_patterns(".git", "out*"))
        shutil.copy(DATA_FILE, nanogpt_copy / "data" / "shakespeare_char" / "input.txt")
        timed([sys.executable, "data/shakespeare_char/prepare.py"], nanogpt_copy, scratch / "prepare.log")
        load_before = os.getloadavg()
        runs = []
        for round_ in range(1, args.rounds + 1):
            out_dir = scratch / f"nanogpt-{round_}"
            seconds = timed([sys.executable, "train.py", *nanogpt_recipe, f"--out_dir={out_dir}"], nanogpt_copy,
                            scratch / f"nanogpt-{round_}.log")
            runs.append(Run("nanoGPT", round_, seconds, out_dir))
            print(f"round {round_}: nanoGPT {seconds:.1f} s", flush=True)
            out_dir = scratch / f"gm-hub-{round_}"
            seconds = timed([sys.executable, "training/train_gpt.py", "--train_file", str(DATA_FILE), *fast_recipe,
                             "--output_dir", str(out_dir)], REPO_ROOT, scratch / f"gm-hub-{round_}.log")
            runs.append(Run("gm-hub", round_, seconds, out_dir))
            print(f"round {round_}: gm-hub {seconds:.1f} s", flush=True)
        load_after = os.getloadavg()
        losses = {"nanoGPT": nanogpt_loss(nanogpt_copy, runs[-2].output_dir), "gm-hub": gm_hub_loss(runs[-1].output_dir)}
    text = report(runs, losses, "python " + " ".join(sys.argv), load_before, load_after)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

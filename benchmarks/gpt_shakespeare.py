"""Tiny Shakespeare, character level: gm-hub against nanoGPT's CPU recipe, both trained here, in one run.

    python benchmarks/gpt_shakespeare.py                   # writes benchmarks/gpt_results_table.md
    python benchmarks/gpt_shakespeare.py --max_train_steps 20   # a smoke run of both configurations

nanoGPT documents a CPU recipe for tiny Shakespeare (character-level; 4 layers, 4 heads, 128-dim embeddings,
context 64, batch 12, 2,000 iterations, dropout 0, learning rate 1e-3 warmed up over 100 iterations and decayed
to 1e-4, AdamW beta2 0.99) that reaches a validation loss of about 1.88 nats per character. This script trains

1. the baseline: gm-hub with the recipe's settings, through `gm_hub.training.train` (it should land near
   1.88 in about the recipe's time: the loop adds no hidden overhead);
2. the fast configuration: the quickest settings found to reach 1.88 or lower, through the same loop;

on ../shared/data/tinyshakespeare/input.txt, first 90% for training, last 10% for validation. The validation
loss is measured on every non-overlapping 65-character window of the validation text (1,742 windows, each
predicting 64 characters from their prefix: nanoGPT's estimate over all windows instead of its 20 random
batches of 12), in float32. Wall time is the training loop's own clock (`training_seconds` in logs/run.json: the steps, no
start-up, final checkpoint or evaluation), the end-to-end `train()` call shown beside it. Then generation speed
of the fast model: tokens per second for one text of 512 new tokens, with and without the KV cache.

Differences from nanoGPT's recipe that the loop imposes: weight decay 0.1 applies to every parameter (nanoGPT
exempts biases and norms), and the cosine schedule decays to 0 (nanoGPT stops at 1e-4).
"""

import argparse
import dataclasses
import json
import logging
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gm_hub.data import load_text, split_text
from gm_hub.data import TokenBlockDataset
from gm_hub.models.gpt import GPT, GPTConfig, train_tokenizer
from gm_hub.training import TrainingConfig, train

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_FILE = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
RESULTS_FILE = Path(__file__).resolve().parent / "gpt_results_table.md"
TARGET_LOSS = 1.88

# nanoGPT's CPU recipe in gm-hub's terms.
BASELINE = (
    TrainingConfig(max_train_steps=2000, train_batch_size=12, learning_rate=1e-3, lr_scheduler="cosine",
                   lr_warmup_steps=100, adam_beta2=0.99, adam_weight_decay=0.1, max_grad_norm=1.0,
                   mixed_precision="no", seed=1337),
    GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0),
)
# The fastest configuration found to reach TARGET_LOSS (the search: benchmarks/gpt_results.md). On this CPU
# the step time follows the FLOPs, and a shallower, wider model learns more per sample: 2 layers of 256 dims
# see 12,800 windows where the recipe needs 24,000, and bf16 autocast halves the cost of the wider matmuls.
FAST = (
    TrainingConfig(max_train_steps=800, train_batch_size=16, learning_rate=2e-3, lr_scheduler="cosine",
                   lr_warmup_steps=50, adam_beta2=0.99, adam_weight_decay=0.1, max_grad_norm=1.0,
                   mixed_precision="bf16", seed=1337),
    GPTConfig(n_layer=2, n_head=4, n_embd=256, block_size=64, dropout=0.0),
)


@dataclass
class Result:
    name: str
    training: TrainingConfig
    model_config: GPTConfig
    validation_loss: float  # nats per character
    training_seconds: float  # the loop's steps only
    train_call_seconds: float  # the whole train() call: set-up, steps, final checkpoint, save


def run(name: str, training: TrainingConfig, model_config: GPTConfig, output_dir: Path, num_threads: int) -> Result:
    """Train one configuration through the shared loop (in a fresh process: accelerate's state is one per
    process) and measure its validation loss; the model is saved in output_dir / name."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(num_threads)
    train_text, validation_text = split_text(load_text(str(DATA_FILE)))
    training = dataclasses.replace(training, output_dir=str(output_dir / name), checkpointing_steps=10**9,
                                   checkpoints_total_limit=1, save_images_steps=0, logging_steps=100)
    tokenizer = train_tokenizer(model_config, train_text, validation_text)
    torch.manual_seed(training.seed)  # the initial weights
    model = GPT(model_config, tokenizer)
    train_set = TokenBlockDataset(model.encode(train_text), model_config.block_size)
    start = time.perf_counter()
    model = train(model, train_set, training)
    train_call_seconds = time.perf_counter() - start
    run_info = json.loads((output_dir / name / "logs" / "run.json").read_text())
    validation_loss = model.nats_per_character(validation_text)
    logger.info("%s: validation loss %.4f nats/char, %.1f s", name, validation_loss, run_info["training_seconds"])
    return Result(name, training, model_config, validation_loss, run_info["training_seconds"], train_call_seconds)


def generation_speed(model: GPT, use_cache: bool, num_tokens: int = 512) -> float:
    """Tokens per second for one text of `num_tokens` new tokens from a newline (best of 3)."""
    model.generate("\n", max_new_tokens=8, use_cache=use_cache)  # warm-up
    best = float("inf")
    for seed in range(3):
        start = time.perf_counter()
        model.generate("\n", max_new_tokens=num_tokens, seed=seed, use_cache=use_cache)
        best = min(best, time.perf_counter() - start)
    return num_tokens / best


def describe(training: TrainingConfig, model_config: GPTConfig) -> str:
    return (f"{model_config.n_layer}L/{model_config.n_head}H/{model_config.n_embd}d, ctx {model_config.block_size}, "
            f"batch {training.train_batch_size}, {training.max_train_steps} steps, lr {training.learning_rate:g} "
            f"({training.lr_scheduler}, warmup {training.lr_warmup_steps}), {training.mixed_precision}")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                if line.startswith("Model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def table(results: list[Result], num_windows: int, tokens_per_second: dict[str, float], load_before: tuple,
          load_after: tuple) -> str:
    baseline = results[0]
    rows = "\n".join(
        f"| {r.name} | {describe(r.training, r.model_config)} | {r.validation_loss:.4f} | {r.training_seconds:.1f} "
        f"| {r.train_call_seconds:.1f} | {baseline.training_seconds / r.training_seconds:.2f}x |"
        for r in results
    )
    return f"""Command: `python {' '.join(sys.argv)}`. Machine: {machine()}. Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; after: {', '.join(f'{x:.2f}' for x in load_after)}.

| run | configuration | val loss (nats/char) | training loop (s) | train() call (s) | speedup |
|---|---|---|---|---|---|
{rows}

Validation loss: float32, every non-overlapping 65-character window of the last 10% ({num_windows:,} windows).
Target: {TARGET_LOSS} or lower.

Generation (fast model, 1 text of 512 new tokens, context windows of {results[-1].model_config.block_size}):
{tokens_per_second['cache']:.0f} tokens/s with the KV cache, {tokens_per_second['no_cache']:.0f} tokens/s without.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max_train_steps", type=int, default=None, help="override both runs' steps (smoke runs)")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE)
    parser.add_argument("--num_threads", type=int, default=os.cpu_count(),
                        help="torch threads of both runs; 1 when other jobs share the cores (2 threads on 2 busy cores stall)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.num_threads)
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory() as output_dir:
        for name, (training, model_config) in (("baseline (nanoGPT recipe)", BASELINE), ("fast", FAST)):
            if args.max_train_steps:
                training = dataclasses.replace(training, max_train_steps=args.max_train_steps)
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                result = pool.apply(run, (name.split()[0], training, model_config, Path(output_dir), args.num_threads))
            results.append(dataclasses.replace(result, name=name))
        model = GPT.from_pretrained(Path(output_dir) / "fast")
        tokens_per_second = {"cache": generation_speed(model, True), "no_cache": generation_speed(model, False)}
    _, validation_text = split_text(load_text(str(DATA_FILE)))
    block_size = BASELINE[1].block_size
    num_windows = (len(validation_text) - block_size - 1) // block_size + 1  # one token per character
    report = table(results, num_windows, tokens_per_second, load_before, os.getloadavg())
    args.output.write_text(report)
    logger.info("%s\nwritten to %s", report, args.output)


if __name__ == "__main__":
    main()

"""Shared test helpers: tiny configs, subprocess launches, and an offline Hub."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # the Hub is never reachable in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]

# A VAE small enough that a few steps take well under a second.
TINY_VAE_FLAGS = [
    "--hidden_channels", "8", "--latent_dim", "4", "--num_mixtures", "2", "--train_batch_size", "16",
    "--max_eval_items", "32", "--num_importance_samples", "2", "--num_sample_images", "4",
    "--lr_warmup_steps", "0", "--logging_steps", "1",
]

# Tiny flags for every family's script, for the tests that run each family the same way.
FAMILY_SCRIPTS = {
    "vae": ("train_vae.py", TINY_VAE_FLAGS),
    "gan": ("train_gan.py", [
        "--latent_dim", "8", "--hidden_channels", "8", "--train_batch_size", "8", "--discriminator_steps", "2",
        "--max_eval_items", "16", "--num_sample_images", "4", "--save_images_steps", "0", "--logging_steps", "1",
    ]),
    "pixelcnn": ("train_pixelcnn.py", [
        "--hidden_channels", "8", "--num_layers", "2", "--first_kernel_size", "3", "--num_mixtures", "2",
        "--train_batch_size", "8", "--max_eval_items", "8", "--num_sample_images", "4", "--logging_steps", "1",
        "--save_images_steps", "0",
    ]),
    "ddpm": ("train_ddpm.py", [  # EMA on by default: resuming must restore it exactly
        "--resolution", "8", "--block_out_channels", "16", "32", "--attention_resolutions", "4", "--norm_num_groups", "4",
        "--num_train_timesteps", "50", "--train_batch_size", "8", "--max_eval_items", "4", "--num_sample_images", "4",
        "--save_images_steps", "0", "--logging_steps", "1",
    ]),
    "gpt": ("train_gpt.py", [  # {corpus}: a small text file the test writes
        "--train_file", "{corpus}", "--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "16",
        "--sample_length", "8", "--train_batch_size", "4", "--num_sample_images", "1", "--logging_steps", "1",
    ]),
}
CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20


def family_flags(family: str, tmp_path) -> tuple[str, list[str]]:
    """A family's script and tiny flags, with the corpus written where the GPT needs it."""
    script, flags = FAMILY_SCRIPTS[family]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    return script, [flag.format(corpus=corpus) for flag in flags]


def run_script(script: str, args: list[str], num_processes: int = 1, timeout: int = 300, check: bool = True,
               **popen_kwargs) -> subprocess.CompletedProcess:
    """Run training/<script> (or a path) through a real `accelerate launch` (CPU; two processes use gloo)."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
                "--num_machines", "1", "--dynamo_backend", "no", "--mixed_precision", "no"]
    launcher += ["--multi_gpu"] if num_processes > 1 else ["--cpu"]
    result = subprocess.run([*launcher, str(REPO_ROOT / "training" / script if "/" not in script else REPO_ROOT / script), *args], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout, **popen_kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[:3000]}\n...\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """In-process training builds an Accelerator; its state is a singleton to reset between tests."""
    yield
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()

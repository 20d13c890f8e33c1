"""The shared loop through real `accelerate launch` runs of the VAE script, and its safety nets in-process."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import REPO_ROOT, TINY_VAE_FLAGS, run_script
from gm_hub.errors import UserError
from gm_hub.models.vae import VAE
from gm_hub.training import (
    MANIFEST_NAME,
    NonFiniteLossError,
    TrainingConfig,
    find_resume_checkpoint,
    list_checkpoints,
    train,
    training_command,
)


def read_card(folder):
    text = (folder / "README.md").read_text()
    return yaml.safe_load(text.split("---")[1]), text


def test_train_save_reload_and_card(tmp_path):
    out = tmp_path / "vae"
    run_script("train_vae.py", ["--output_dir", str(out), "--max_train_steps", "4", "--checkpointing_steps", "2",
                                "--use_ema", "--save_images_steps", "2", "--report_to", "tensorboard", *TINY_VAE_FLAGS])
    assert {"model.safetensors", "config.json", "README.md", "samples.png", "loss.png"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt*"))  # weights are safetensors only
    assert (out / "samples" / "step-000002.png").is_file()
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    first = VAE.from_pretrained(out)
    second = VAE.from_pretrained(out)
    generator = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    assert torch.equal(first.sample(8, generator()), second.sample(8, generator()))
    metadata, text = read_card(out)
    assert metadata["library_name"] == "gm-hub" and "vae" in metadata["tags"]
    (result,) = metadata["model-index"][0]["results"]
    bits = {m["type"]: m["value"] for m in result["metrics"]}["bits_per_dim"]
    assert 0 < bits < 8 and f"{bits:.4f}" in text
    assert "accelerate launch training/train_vae.py" in metadata["gm_hub"]["training_command"]
    history = [json.loads(line) for line in (out / "logs" / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [1, 2, 3, 4]
    assert json.loads((out / "logs" / "run.json").read_text())["num_processes"] == 1
    assert list((out / "logs").rglob("events.out.tfevents.*"))  # --report_to tensorboard


def final_weights(folder):
    return load_file(folder / "model.safetensors")


def test_sigkill_then_resume_latest_equals_an_uninterrupted_run(tmp_path):
    flags = ["--max_train_steps", "40", "--checkpointing_steps", "5", "--seed", "3", "--use_ema",
             "--hidden_channels", "32", "--latent_dim", "8", "--num_mixtures", "2", "--train_batch_size", "64",
             "--max_eval_items", "8", "--num_importance_samples", "1", "--num_sample_images", "4", "--logging_steps", "5"]
    reference = tmp_path / "reference"
    run_script("train_vae.py", ["--output_dir", str(reference), *flags])

    crashed = tmp_path / "crashed"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "training" / "train_vae.py"), "--output_dir", str(crashed), *flags],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list_checkpoints(crashed) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (crashed / "model.safetensors").exists(), "the run finished before it could be killed"
    steps = [int(p.name.split("-")[1]) for p in list_checkpoints(crashed)]
    assert steps and max(steps) < 40

    run_script("train_vae.py", ["--output_dir", str(crashed), "--resume_from_checkpoint", "latest", *flags])
    steps = [json.loads(line)["step"] for line in (crashed / "logs" / "history.jsonl").read_text().splitlines()]
    assert steps == list(range(5, 41, 5))  # the crashed run's rows past its checkpoint are gone, none twice
    seconds = [json.loads((d / "logs" / "run.json").read_text())["training_seconds"] for d in (reference, crashed)]
    kept = json.loads((sorted(list_checkpoints(crashed))[0] / MANIFEST_NAME).read_text())
    assert seconds[1] > kept["training_seconds"] > 0  # the resumed run's time includes the time before the crash
    expected, resumed = final_weights(reference), final_weights(crashed)
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)  # bitwise on the CPU


def test_damaged_or_unfinished_checkpoints_are_skipped(tmp_path):
    config = TrainingConfig(output_dir=str(tmp_path), max_train_steps=6, checkpointing_steps=2, train_batch_size=4,
                            lr_warmup_steps=0, num_sample_images=2, save_images_steps=0)
    train(TinyRegression(), RandomPairs(32), config)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    (tmp_path / ".tmp-checkpoint-8").mkdir()  # a save killed midway never becomes a checkpoint
    weights = tmp_path / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])  # truncated by a crash or a full disk
    assert find_resume_checkpoint(str(tmp_path), "latest").name == "checkpoint-4"
    with pytest.raises(UserError, match="damaged"):
        find_resume_checkpoint(str(tmp_path), str(tmp_path / "checkpoint-6"))
    (tmp_path / "checkpoint-4" / MANIFEST_NAME).unlink()
    assert find_resume_checkpoint(str(tmp_path), "latest").name == "checkpoint-2"


class TinyRegression(torch.nn.Module):
    """y = a x + b fitted by MSE; loss turns NaN for batches marked so, to exercise the non-finite guard."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, batch):
        loss = ((self.linear(batch["x"]) - batch["y"]) ** 2).mean()
        return {"loss": torch.where(batch["poison"].any(), torch.tensor(float("nan")), loss)}

    def sample(self, num_samples, generator=None):
        return torch.zeros(num_samples, 1, 2, 2, dtype=torch.uint8)

    def save_pretrained(self, folder, model_card_kwargs=None):
        from safetensors.torch import save_model

        save_model(self, str(folder / "model.safetensors"))


class RandomPairs(torch.utils.data.Dataset):
    def __init__(self, n, poison=()):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, generator=generator)
        self.poison = set(poison)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": 3 * self.x[i] + 1, "poison": torch.tensor(i in self.poison)}


def test_nonfinite_losses_skip_steps_then_stop_with_a_clear_error(tmp_path):
    config = TrainingConfig(output_dir=str(tmp_path / "some"), max_train_steps=8, train_batch_size=1, lr_warmup_steps=0,
                            save_images_steps=0, max_nonfinite_steps=3, seed=0)
    train(TinyRegression(), RandomPairs(64, poison={5, 17}), config)
    run = json.loads((tmp_path / "some" / "logs" / "run.json").read_text())
    assert run["global_step"] == 8 and 1 <= run["skipped_nonfinite_steps"] <= 2
    assert all(torch.isfinite(v).all() for v in final_weights(tmp_path / "some").values())

    config.output_dir, config.checkpointing_steps = str(tmp_path / "all"), 1
    with pytest.raises(NonFiniteLossError, match="3 training steps in a row .* last good checkpoint"):
        train(TinyRegression(), RandomPairs(64, poison=range(64)), config)


def test_max_train_minutes_stops_at_a_logging_step_and_publishes(tmp_path):
    config = TrainingConfig(output_dir=str(tmp_path / "timed"), max_train_steps=10_000, train_batch_size=4, logging_steps=3,
                            max_train_minutes=1e-6, save_images_steps=0, seed=0)
    train(TinyRegression(), RandomPairs(64), config)
    run = json.loads((tmp_path / "timed" / "logs" / "run.json").read_text())
    assert run["global_step"] == 3  # the first check, long past 60 microseconds
    assert (tmp_path / "timed" / "model.safetensors").is_file()
    assert [p.name for p in list_checkpoints(tmp_path / "timed")] == ["checkpoint-3"]


def test_bad_flags_give_one_line(tmp_path):
    for flags, message in [(["--max_train_steps", "-5"], "--max_train_steps must be positive"),
                           (["--train_data_dir", str(tmp_path / "nope")], "is not a folder"),
                           (["--mixed_precision", "fp8"], "--mixed_precision must be"),
                           (["--max_train_minutes", "0"], "--max_train_minutes must be positive"),
                           (["--sample_kwargs", "{temperature: 1}"], "--sample_kwargs must be a JSON object"),
                           *([(["--mixed_precision", "fp16"], "fp16 needs a GPU; on the CPU use bf16")]
                             if not torch.cuda.is_available() else [])]:
        result = subprocess.run([sys.executable, "training/train_vae.py", *flags], cwd=REPO_ROOT, capture_output=True, text=True)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_init_from_starts_at_the_saved_weights_and_the_card_names_the_base(tmp_path):
    from gm_hub.models.vae import VAEConfig

    torch.manual_seed(123)  # weights no seeded run would draw
    base = VAE(VAEConfig(hidden_channels=8, latent_dim=4, num_mixtures=2))
    base.save_pretrained(tmp_path / "base", model_card_kwargs={"training_command": "accelerate launch training/train_vae.py --x 1",
                                                                 "training_time": "7 steps"})
    out = tmp_path / "tuned"
    # A learning rate of 1e-30 leaves the weights where the run started: at the base's, not at a fresh init.
    run_script("train_vae.py", ["--output_dir", str(out), "--init_from", str(tmp_path / "base"), "--max_train_steps", "1",
                                "--learning_rate", "1e-30", *TINY_VAE_FLAGS])
    tuned, fresh = final_weights(out), VAE(VAEConfig(hidden_channels=8, latent_dim=4, num_mixtures=2)).state_dict()
    for name, value in base.state_dict().items():
        assert torch.allclose(tuned[name], value, atol=1e-6), name
    assert any(not torch.allclose(fresh[k], v) for k, v in base.state_dict().items() if v.is_floating_point())
    metadata, text = read_card(out)
    assert metadata["gm_hub"]["base_model"] == str(tmp_path / "base")
    assert "base_model" not in metadata  # the Hub's field takes repo ids only, and this base is a local folder
    assert metadata["gm_hub"]["base_model_training"] == {"training_command": "accelerate launch training/train_vae.py --x 1",
                                                          "training_time": "7 steps"}
    assert "--init_from" in metadata["gm_hub"]["training_command"] and "--x 1" in text  # both commands in the prose
    other = subprocess.run([sys.executable, "training/train_vae.py", "--output_dir", str(tmp_path / "other"), "--init_from",
                            str(tmp_path / "base"), *TINY_VAE_FLAGS, "--latent_dim", "6"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "latent_dim: 4 in --init_from, 6 in this run" in other.stderr and len(other.stderr.strip().splitlines()) == 1


def test_hub_token_never_reaches_the_card_or_command():
    command = training_command(["train_vae.py", "--hub_token", "hf_secret", "--hub_token=hf_other", "--seed", "1"])
    assert "hf_secret" not in command and "hf_other" not in command and "--seed 1" in command


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """Two gloo processes with batch 8 each = one process with batch 16: same data, averaged gradients."""
    common = ["--max_train_steps", "8", "--seed", "0", "--lr_warmup_steps", "2", "--learning_rate", "1e-2",
              "--num_sample_images", "1", "--checkpointing_steps", "4"]
    two, one = tmp_path / "two", tmp_path / "one"
    run_script("tests/train_regression.py", ["--output_dir", str(two), *common, "--train_batch_size", "8"], num_processes=2)
    run_script("tests/train_regression.py", ["--output_dir", str(one), *common, "--train_batch_size", "16"])
    run_two, run_one = (json.loads((d / "logs" / "run.json").read_text()) for d in (two, one))
    assert run_two["num_processes"] == 2 and run_one["num_processes"] == 1
    assert run_two["effective_batch_size"] == run_one["effective_batch_size"] == 16
    assert len(run_two["replica_checksums"]) == 2 and len(set(run_two["replica_checksums"])) == 1
    a, b = final_weights(two), final_weights(one)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)  # stated tolerance: float32 summation order


def test_vae_trains_on_two_processes_with_identical_replicas(tmp_path):
    out = tmp_path / "vae"
    run_script("train_vae.py", ["--output_dir", str(out), "--max_train_steps", "3", *TINY_VAE_FLAGS], num_processes=2)
    run = json.loads((out / "logs" / "run.json").read_text())
    assert run["num_processes"] == 2 and run["effective_batch_size"] == 32
    assert len(set(run["replica_checksums"])) == 1
    assert VAE.from_pretrained(out).sample(2).shape == (2, 1, 28, 28)


def test_ema_tracks_the_average_and_restores_the_live_weights():
    from gm_hub.training import EMA

    parameter = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([parameter], decay=0.5)
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            parameter.fill_(value)
        ema.update([parameter])
    # Warm-up decay min(0.5, (1 + n) / (10 + n)) = 2/11, 3/12, 4/13 for n = 1, 2, 3.
    expected = 0.0
    for n, value in enumerate((1.0, 2.0, 3.0), start=1):
        decay = min(0.5, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * value
    with ema.applied_to([parameter]):
        assert torch.allclose(parameter, torch.full((3,), expected))
    assert torch.equal(parameter.detach(), torch.full((3,), 3.0))
    restored = EMA([parameter], decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.shadow[0], ema.shadow[0]) and restored.num_updates == 3


def test_weight_decay_spares_biases_and_norm_scales():
    from gm_hub.training import _decay_groups

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Embedding(5, 4))
    decayed, spared = _decay_groups(list(model.parameters()), 0.1)
    assert decayed["weight_decay"] == 0.1 and spared["weight_decay"] == 0.0
    assert {p.ndim for p in decayed["params"]} == {2} and len(decayed["params"]) == 2  # Linear and Embedding weights
    assert len(spared["params"]) == 3  # Linear bias, LayerNorm weight and bias


def test_finalize_stage_refits_the_vae_prior_before_saving(tmp_path):
    """--prior_fit_iterations runs after the last step on the EMA weights: the saved encoder and decoder are
    those of the same run without it, the saved prior is refit (and scores the training latents higher)."""
    flags = [*TINY_VAE_FLAGS, "--prior", "mixture", "--prior_components", "3", "--max_train_steps", "4", "--use_ema"]
    run_script("train_vae.py", [*flags, "--output_dir", str(tmp_path / "plain")])
    run_script("train_vae.py", [*flags, "--prior_fit_iterations", "10", "--output_dir", str(tmp_path / "fit")])
    plain, fit = (load_file(tmp_path / name / "model.safetensors") for name in ("plain", "fit"))
    assert all(torch.equal(plain[k], fit[k]) for k in plain if not k.startswith("prior."))
    assert not torch.equal(plain["prior.means"], fit["prior.means"])
    assert "--prior_fit_iterations 10" in read_card(tmp_path / "fit")[0]["gm_hub"]["training_command"]


@pytest.mark.parametrize("threads, cores, processes, warned", [(1, 2, 1, True), (2, 2, 1, False), (1, 2, 2, False),
                                                               (1, 8, 2, True)])
def test_a_cpu_run_that_leaves_cores_idle_says_which_flag_uses_them(threads, cores, processes, warned, monkeypatch, caplog):
    from types import SimpleNamespace

    from gm_hub.training import warn_idle_cpu_cores

    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    accelerator = SimpleNamespace(device=torch.device("cpu"), is_main_process=True, num_processes=processes)
    with caplog.at_level("WARNING", logger="gm_hub.training"):
        warn_idle_cpu_cores(accelerator)
    assert (f"--num_cpu_threads_per_process {cores // processes}" in caplog.text) == warned

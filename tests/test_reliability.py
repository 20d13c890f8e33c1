"""Issue 6 for every family: several processes, exact resume from a middle checkpoint, safe loading.

The VAE's SIGKILL test and the loop's unit tests live in test_training.py; here each family's real script runs
the same way, so a new family only adds its tiny flags to FAMILY_SCRIPTS in conftest.py.
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import FAMILY_SCRIPTS, family_flags, run_script
from gm_hub import load_model
from gm_hub.registry import get_family


@pytest.mark.parametrize("family", sorted(FAMILY_SCRIPTS))
def test_family_trains_on_two_processes_with_identical_replicas(family, tmp_path):
    script, flags = family_flags(family, tmp_path)
    out = tmp_path / family
    run_script(script, ["--output_dir", str(out), "--max_train_steps", "2", "--seed", "1", *flags], num_processes=2)
    run = json.loads((out / "logs" / "run.json").read_text())
    assert run["num_processes"] == 2 and run["global_step"] == 2
    assert len(run["replica_checksums"]) == 2 and len(set(run["replica_checksums"])) == 1
    model = load_model(str(out))
    assert type(model).__name__ == get_family(family).class_name and not model.training


@pytest.mark.parametrize("family", sorted(FAMILY_SCRIPTS))
def test_resume_from_a_middle_checkpoint_is_bitwise_exact(family, tmp_path):
    """A run stopped after checkpoint-2 (later files lost) and resumed ends with the uninterrupted run's weights."""
    script, flags = family_flags(family, tmp_path)
    common = ["--max_train_steps", "4", "--checkpointing_steps", "2", "--checkpoints_total_limit", "5", "--seed", "2",
              "--use_ema", *flags]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_script(script, ["--output_dir", str(full), *common])
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")  # all that survived the crash
    run_script(script, ["--output_dir", str(resumed), "--resume_from_checkpoint", "latest", *common])
    published = [p.relative_to(full) for p in full.rglob("*.safetensors") if "checkpoint-" not in str(p)]
    assert published  # model.safetensors, or a diffusers pipeline's unet/diffusion_pytorch_model.safetensors
    for name in [*published, *(p.relative_to(full) for p in (full / "checkpoint-4").glob("*.safetensors"))]:
        expected, found = load_file(full / name), load_file(resumed / name)
        assert expected.keys() == found.keys()
        assert all(torch.equal(expected[k], found[k]) for k in expected), name


def hostile(folder, **changes):
    """Rewrite a saved model's config.json with `changes` (nested under "gm_hub" for the GPT's stock config)."""
    config = json.loads((folder / "config.json").read_text())
    (config["gm_hub"] if "gm_hub" in config else config).update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_absurd_configs_are_refused_for_every_family_before_allocation(tmp_path):
    from gm_hub.data import split_text
    from gm_hub.hub import ConfigError
    from gm_hub.models.gan import Generator, GeneratorConfig
    from gm_hub.models.gpt import GPT, GPTConfig, train_tokenizer

    gan_folder, gpt_folder = tmp_path / "gan", tmp_path / "gpt"
    Generator(GeneratorConfig(latent_dim=8, hidden_channels=8)).save_pretrained(gan_folder)
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16)
    GPT(config, train_tokenizer(config, *split_text("to be or not to be\n" * 20))).save_pretrained(gpt_folder)
    assert isinstance(load_model(str(gpt_folder)), GPT)
    hostile(gpt_folder, n_layer=48, n_embd=4096, n_head=32)  # within each field's range, ~10^10 parameters
    with pytest.raises(ConfigError, match="parameters; the limit is"):
        load_model(str(gpt_folder))
    hostile(gan_folder, hidden_channels=100_000)
    with pytest.raises(ConfigError, match="hidden_channels|parameters"):
        load_model(str(gan_folder))
    hostile(gan_folder, hidden_channels=8, surprise=1)
    with pytest.raises(ConfigError, match="unknown keys"):
        load_model(str(gan_folder))

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT
from gm_hub.cli import available_families
from gm_hub.models.vae import VAE, VAEConfig


def gm_hub(*args, cwd=REPO_ROOT):
    return subprocess.run([sys.executable, "-m", "gm_hub.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "vae"
    VAE(VAEConfig(hidden_channels=8, latent_dim=4, num_mixtures=2)).save_pretrained(folder)
    return folder


def test_sample_writes_a_grid_or_an_array(saved, tmp_path):
    result = gm_hub("sample", saved, "--num_samples", 6, "--seed", 3, "--output", tmp_path / "s.npy")
    assert result.returncode == 0, result.stderr
    array = np.load(tmp_path / "s.npy")
    assert array.shape == (6, 1, 28, 28) and array.dtype == np.uint8
    expected = VAE.from_pretrained(saved).sample(6, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(array, expected.numpy())
    assert gm_hub("sample", saved, "--num_samples", 6, "--output", tmp_path / "s.png").returncode == 0
    assert Image.open(tmp_path / "s.png").size == (2 + 3 * 30, 2 + 2 * 30)  # 3 columns x 2 rows of 28 px + 2 px padding


def test_sample_passes_keywords_to_the_model(saved, tmp_path):
    result = gm_hub("sample", saved, "--num_samples", 5, "--seed", 1, "--output", tmp_path / "s.npy",
                    "--sample_kwargs", '{"most_likely_pixels": true}')
    assert result.returncode == 0, result.stderr
    model = VAE.from_pretrained(saved)
    expected = model.sample(5, generator=torch.Generator().manual_seed(1), most_likely_pixels=True)
    drawn = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(expected, drawn)  # the keyword changes the samples, so the check below can fail
    assert np.array_equal(np.load(tmp_path / "s.npy"), expected.numpy())
    wrong = gm_hub("sample", saved, "--output", tmp_path / "t.npy", "--sample_kwargs", '{"temperature": 0.5}')
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "takes no temperature" in wrong.stderr and "most_likely_pixels" in wrong.stderr  # what it does take
    assert not (tmp_path / "t.npy").exists()


def test_evaluate_prints_json_and_can_write_the_card(saved):
    result = gm_hub("evaluate", saved, "--max_eval_items", 16, "--num_importance_samples", 2, "--write_card")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert 0 < metrics["bits_per_dim"] < 9 and "validation split" in metrics["dataset"]
    assert f"{metrics['bits_per_dim']:.4f}" in (saved / "README.md").read_text()


def test_evaluate_samples_with_the_given_keywords_and_the_card_says_so(saved):
    kwargs = '{"most_likely_pixels": true}'
    result = gm_hub("evaluate", saved, "--max_eval_items", 16, "--num_importance_samples", 2, "--sample_kwargs", kwargs,
                    "--write_card")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["num_eval_samples"] == 16
    assert f"**{kwargs})" in (saved / "README.md").read_text()
    wrong = gm_hub("evaluate", saved, "--max_eval_items", 16, "--sample_kwargs", '{"temperature": 0.5}')
    assert wrong.returncode == 2 and "--sample_kwargs" in wrong.stderr and "Traceback" not in wrong.stderr


def test_train_runs_the_family_script(tmp_path):
    result = gm_hub("train", "vae", "--output_dir", tmp_path / "out", "--max_train_steps", 2, "--hidden_channels", 4,
                    "--latent_dim", 2, "--num_mixtures", 1, "--train_batch_size", 8, "--max_eval_items", 8,
                    "--num_importance_samples", 1, "--num_sample_images", 1)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert "vae" in available_families()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "nosuchfamily"], "unknown family 'nosuchfamily'"),
        (["train", "vae", "--max_train_steps", "-3"], "--max_train_steps must be positive"),
        (["sample", "/no/such/folder"], "does not exist"),
        (["sample", "{saved}", "--output", "x.jpg"], "--output must end in .png"),
        (["evaluate", "{saved}", "--eval_data_dir", "/no/such/folder"], "is not a folder"),
        ([], "required"),
    ],
)
def test_bad_arguments_give_one_clear_line(saved, args, message):
    result = gm_hub(*[a.format(saved=saved) for a in args])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_evaluate_a_text_model_on_the_held_out_text(tmp_path):
    from conftest import CORPUS
    from gm_hub.data import split_text
    from gm_hub.models.gpt import GPT, GPTConfig, train_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, sample_length=8)
    model = GPT(config, train_tokenizer(config, *split_text(CORPUS)))
    model.save_pretrained(tmp_path / "gpt")
    result = gm_hub("evaluate", tmp_path / "gpt", "--train_file", corpus, "--write_card")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    expected = model.evaluate(split_text(CORPUS)[1])
    assert metrics["validation_loss"] == pytest.approx(expected["validation_loss"], rel=1e-5)
    assert f"{metrics['validation_loss']:.4f}" in (tmp_path / "gpt" / "README.md").read_text()
    assert gm_hub("evaluate", tmp_path / "gpt").returncode == 2  # no text given: one clear line

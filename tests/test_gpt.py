"""The GPT: equivalence with the transformers model it wraps, generation, the stock folder, the script."""

import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import run_script
from gm_hub.data import split_text
from gm_hub.errors import UserError
from gm_hub.data import TokenBlockDataset
from gm_hub.models.gpt import GPT, GPTConfig, train_tokenizer

TEXT = "".join(
    f"{name}:\nThou art {word}, and I am {other}; say it {n} times!\n\n"
    for n, (name, word, other) in enumerate(
        [("ROMEO", "gentle", "true"), ("JULIET", "sweet", "bold"), ("NURSE", "old", "young")] * 20
    )
)
TINY = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, sample_length=24)
TINY_FLAGS = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "16", "--sample_length", "24",
              "--train_batch_size", "4", "--eval_batch_size", "8", "--num_sample_images", "2",
              "--lr_warmup_steps", "0", "--logging_steps", "1"]


@pytest.fixture(scope="module")
def model() -> GPT:
    train_text, validation_text = split_text(TEXT)
    torch.manual_seed(0)
    return GPT(TINY, train_tokenizer(TINY, train_text, validation_text)).eval()


def test_config_errors_name_field_value_and_allowed():
    with pytest.raises(ValueError, match=r"tokenizer must be one of \('char', 'bpe'\), got 'word'"):
        GPTConfig(tokenizer="word")
    with pytest.raises(ValueError, match="n_embd must be divisible by n_head"):
        GPTConfig(n_embd=10, n_head=4)


def test_loss_matches_the_transformers_model(model):
    """Our loss on (B, T+1) windows is transformers' own causal-LM loss with labels = input_ids."""
    dataset = TokenBlockDataset(model.encode(TEXT), TINY.block_size - 1)  # T + 1 = n_positions tokens
    batch = torch.utils.data.default_collate([dataset[i] for i in (0, 7, 42)])
    reference = model.model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
    torch.testing.assert_close(model(batch)["loss"], reference)


def test_token_windows_cover_every_start():
    token_ids = torch.arange(10)
    dataset = TokenBlockDataset(token_ids, block_size=4)
    assert len(dataset) == 6
    assert dataset[5]["input_ids"].tolist() == [5, 6, 7, 8, 9]


def test_same_seed_same_text_and_streaming_matches(model):
    """Longer than the context window, so generation goes window by window."""
    kwargs = dict(prompt="ROMEO:", max_new_tokens=3 * TINY.block_size, temperature=0.9, top_k=20, top_p=0.95,
                  repetition_penalty=1.1)
    text = model.generate(**kwargs, seed=1)
    assert len(text) == 3 * TINY.block_size  # one token per character
    assert model.generate(**kwargs, seed=1) == text
    assert model.generate(**kwargs, seed=2) != text
    pieces = list(model.stream(**kwargs, seed=1))
    assert "".join(pieces) == text


def test_kv_cache_gives_the_same_text(model):
    greedy = dict(prompt="JULIET:", max_new_tokens=40, temperature=0.0)
    assert model.generate(**greedy, use_cache=True) == model.generate(**greedy, use_cache=False)


def test_sample_is_reproducible(model):
    first = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert len(first) == 3 and all(len(text) == TINY.sample_length for text in first)
    assert model.sample(3, generator=torch.Generator().manual_seed(0)) == first


def test_prompt_outside_the_vocabulary_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"2 character\(s\) outside .*'Zé'.*U\+005A, U\+00E9"):
        model.generate("Zéro")
    with pytest.raises(ValueError, match="prompt is empty"):
        model.generate("")


def test_validation_split_is_the_deterministic_last_tenth(model):
    train_text, validation_text = split_text(TEXT)
    assert (train_text, validation_text) == split_text(TEXT)
    assert train_text + validation_text == TEXT
    assert len(validation_text) == len(TEXT) - int(0.9 * len(TEXT))
    metrics = model.evaluate(validation_text, batch_size=4)
    assert metrics == model.evaluate(validation_text, batch_size=4)
    assert metrics == pytest.approx(model.evaluate(validation_text, batch_size=8), rel=1e-6)
    assert math.isclose(metrics["bits_per_character"], metrics["validation_loss"] / math.log(2))
    assert abs(metrics["validation_loss"] - math.log(len(model.tokenizer))) < 0.5  # untrained: near uniform


def test_char_encoding_gives_the_tokenizer_ids():
    text = "JULIET: Zéro, ça va? 🙂\n\tend"  # characters of 1 to 4 UTF-8 bytes, tab and newline
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16)
    model = GPT(config, train_tokenizer(config, TEXT, text))
    expected = model.tokenizer(text + TEXT, add_special_tokens=False)["input_ids"]
    assert model.encode(text + TEXT).tolist() == expected
    assert model.encode("").tolist() == []


def test_bpe_tokenizer_roundtrips_and_scales_loss_per_character():
    config = GPTConfig(tokenizer="bpe", bpe_vocab_size=300, n_layer=1, n_head=2, n_embd=16, block_size=16)
    model = GPT(config, train_tokenizer(config, TEXT)).eval()
    text = "JULIET: Zéro, ça va? 🙂\n"  # byte-level: nothing is out of vocabulary
    assert model.tokenizer.decode(model.encode(text)) == text
    num_tokens, num_chars = len(model.encode(TEXT)), len(TEXT)
    assert num_tokens < num_chars
    windows = model.encode(TEXT).unfold(0, config.block_size + 1, config.block_size)
    nats_per_token = model({"input_ids": windows})["loss"].item()
    assert math.isclose(model.nats_per_character(TEXT), nats_per_token * num_tokens / num_chars, rel_tol=1e-4)


def test_saved_folder_is_stock_transformers(model, tmp_path):
    model.save_pretrained(tmp_path, model_card_kwargs={"metrics": {"validation_loss": 1.5}, "datasets": ["tiny"]})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["gm_hub"]["n_embd"] == TINY.n_embd
    card = (tmp_path / "README.md").read_text()
    assert "- gm-hub" in card and "- gpt" in card and "validation_loss" in card
    reloaded = GPT.from_pretrained(tmp_path)
    kwargs = dict(prompt="NURSE:", max_new_tokens=40, seed=3)
    assert reloaded.generate(**kwargs) == model.generate(**kwargs)

    script = f"""
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
folder = {str(tmp_path)!r}
model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
ids = tokenizer("NURSE:", return_tensors="pt").input_ids
print(model.generate(ids, max_new_tokens=5, do_sample=False).shape[1])
print(repr(pipeline("text-generation", model=folder)("NURSE:", max_new_tokens=5)[0]["generated_text"][:6]))
print(any(name.startswith("gm_hub") for name in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["11", "'NURSE:'", "False"]


def test_training_script_runs_under_accelerate_launch(tmp_path):
    train_file = tmp_path / "corpus.txt"
    train_file.write_text(TEXT, encoding="utf-8")
    output_dir = tmp_path / "run"
    run_script("train_gpt.py", ["--train_file", str(train_file), "--output_dir", str(output_dir),
                                "--max_train_steps", "3", "--save_images_steps", "2", *TINY_FLAGS])
    assert (output_dir / "samples" / "step-000002.txt").is_file()
    assert "bits_per_character" in (output_dir / "README.md").read_text()
    model = GPT.from_pretrained(output_dir)
    assert model.config == TINY
    assert len(model.generate("ROMEO:", max_new_tokens=20)) == 20


def test_training_script_without_text_names_train_file(tmp_path):
    """No embedded corpus: the one-line error (run_main prints it, exit status 2) says which flag to give."""
    from training.train_gpt import main

    with pytest.raises(UserError, match="give --train_file"):
        main(["--output_dir", str(tmp_path)])

"""GPT: an autoregressive language model p(x) = prod_t p(x_t | x_<t) over tokens [1], trained from scratch.

The network is transformers' `GPT2LMHeadModel` [2] (decoder-only, learned absolute positions, tied input and
output embeddings) with PyTorch's fused attention (`attn_implementation="sdpa"`); the tokenizer is trained
with the `tokenizers` library: one token per character by default, which suits small corpora (the
vocabulary of tiny Shakespeare is 65 characters), or byte-level BPE [3]. The loss is the mean negative
log-likelihood in nats per token; `nats_per_character` converts it with the token/character ratio of the text,
so character-level and BPE models compare on the same scale.

The saved folder is a stock transformers folder (config.json, model.safetensors, generation_config.json,
tokenizer.json, tokenizer_config.json) plus a model card, so

    transformers.pipeline("text-generation", model=folder)

works without gm-hub. The gm-hub settings travel inside transformers' config.json, under "gm_hub", never in
a second config file.

Departures from nanoGPT's character-level recipe: GPT-2's biases and tanh-approximated GELU are kept (nanoGPT
drops biases and uses the exact GELU). Texts longer than the context window are generated window by window:
when the window is full, generation restarts from the last half-window of tokens (with a fresh KV cache),
because learned absolute positions can't extrapolate past `block_size`. The stock pipeline has no such
windowing: there, prompt plus new tokens must fit in `block_size`.

[1] Radford, Narasimhan, Salimans & Sutskever, Improving Language Understanding by Generative Pre-Training, 2018.
[2] Radford, Wu, Child, Luan, Amodei & Sutskever, Language Models are Unsupervised Multitask Learners, 2019.
[3] Sennrich, Haddow & Birch, Neural Machine Translation of Rare Words with Subword Units, 2016.
"""

import dataclasses
import json
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from safetensors.torch import load_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, TextIteratorStreamer
from transformers.generation.streamers import BaseStreamer

from ..errors import UserError
from ..hub import (
    CLASS_KEY,
    CONFIG_NAME,
    REPO_URL,
    WEIGHTS_NAME,
    ConfigError,
    card_data,
    card_training_and_metrics,
    check_size_and_shapes,
    config_from_dict,
    resolve_file,
)

TOKENIZER_KINDS = ("char", "bpe")
CONFIG_KEY = "gm_hub"  # where GPTConfig lives inside transformers' config.json
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass
class GPTConfig:
    """The tokenizer and the transformer; defaults are nanoGPT's CPU recipe for tiny Shakespeare."""

    tokenizer: str = "char"  # "char" (one token per character) or "bpe" (byte-level BPE)
    bpe_vocab_size: int = 1024  # only for tokenizer="bpe": 256 bytes plus learned merges
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128  # divisible by n_head
    block_size: int = 64  # context length in tokens (GPT-2's n_positions)
    dropout: float = 0.0  # on embeddings, attention weights and residual branches
    sample_length: int = 256  # new tokens per text that sample() writes

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZER_KINDS:
            raise ConfigError(f"tokenizer must be one of {TOKENIZER_KINDS}, got {self.tokenizer!r}")
        ranges = (("bpe_vocab_size", 257, 200_000), ("n_layer", 1, 48), ("n_head", 1, 64), ("n_embd", 1, 4096),
                  ("block_size", 2, 8192), ("sample_length", 1, 100_000))
        for name, low, high in ranges:
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(f"{name} must be in [{low}, {high}], got {value}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd must be divisible by n_head, got n_embd={self.n_embd}, n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


def train_tokenizer(config: GPTConfig, train_text: str, validation_text: str = "") -> PreTrainedTokenizerFast:
    """A tokenizer for `config.tokenizer`, wrapped for transformers.

    char: a BPE model with no merges over the characters of both texts, so each character is one token; the
    alphabet includes the validation text's characters (an alphabet, not learned statistics; as nanoGPT).
    bpe: byte-level BPE with merges learned from `train_text` only, `config.bpe_vocab_size` tokens in all.
    """
    if config.tokenizer == "char":
        alphabet = sorted(set(train_text) | set(validation_text))
        tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
        tokenizer.decoder = decoders.Fuse()  # join characters without spaces
    else:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=config.bpe_vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tokenizer.train_from_iterator(train_text.splitlines(keepends=True), trainer=trainer)
    # No cleanup: decoding must give back the text exactly (" ," stays " ,").
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, clean_up_tokenization_spaces=False)


class _WindowStreamer(BaseStreamer):
    """Passes the new tokens of several `generate` calls (one per context window) to one text streamer."""

    def __init__(self, streamer: BaseStreamer):
        self.streamer = streamer
        self.prompt_pending = True

    def put(self, value: torch.Tensor) -> None:
        if self.prompt_pending:  # each generate call first puts its prompt
            self.prompt_pending = False
        else:
            self.streamer.put(value)

    def end(self) -> None:
        self.prompt_pending = True  # the next window starts with its prompt; the caller ends the stream


class GPT(nn.Module, PyTorchModelHubMixin, library_name="transformers", repo_url=REPO_URL,
          tags=["gm-hub", "gpt", "text-generation"], pipeline_tag="text-generation"):
    """A GPT-2 language model and its tokenizer, trained from scratch; saves a stock transformers folder."""

    def __init__(self, config: GPTConfig, tokenizer: PreTrainedTokenizerFast):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        model_config = GPT2Config(
            vocab_size=len(tokenizer), n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
            n_head=config.n_head, resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
            bos_token_id=None, eos_token_id=None, pad_token_id=None,  # no special tokens: text is just text
            attn_implementation="sdpa",
            **{CONFIG_KEY: dataclasses.asdict(config), CLASS_KEY: type(self).__name__},
        )
        self.model = GPT2LMHeadModel(model_config)
        self.model.generation_config = GenerationConfig(do_sample=True)  # the stock pipeline samples

    @property
    def device(self) -> torch.device:
        return self.model.device

    # --- training ---------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """batch["input_ids"]: (B, T+1) token ids -> {"loss": mean NLL of x_1..x_T given the prefix, nats/token}."""
        input_ids = batch["input_ids"]
        logits = self.model(input_ids=input_ids[:, :-1], use_cache=False).logits  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), input_ids[:, 1:].flatten())
        return {"loss": loss}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.loss(batch)

    # --- tokens -----------------------------------------------------------------------------------------
    def encode(self, text: str) -> torch.Tensor:
        """text -> token ids (N,) int64. Raises UserError (a ValueError) naming characters a char vocabulary lacks."""
        if self.config.tokenizer == "char":
            missing = sorted(set(text) - set(self.tokenizer.get_vocab()))
            if missing:
                raise UserError(
                    f"the text has {len(missing)} character(s) outside this model's {len(self.tokenizer)}-character "
                    f"vocabulary: {''.join(missing)!r} ({', '.join(f'U+{ord(c):04X}' for c in missing)}); "
                    "remove or replace them"
                )
        return torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)

    # --- evaluation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def nats_per_character(self, text: str, batch_size: int = 256) -> float:
        """Mean -log p of `text` in nats per character.

        Non-overlapping windows of block_size + 1 tokens, each predicting block_size tokens from their
        prefix within the window (nanoGPT's estimate, over every window instead of random ones); the
        per-token mean is scaled by tokens/characters of `text`, which is 1 for a character-level model.
        """
        token_ids = self.encode(text)
        block_size = self.config.block_size
        if len(token_ids) < block_size + 1:
            raise UserError(f"the text has {len(token_ids)} tokens; evaluation needs at least block_size + 1 = {block_size + 1}")
        windows = token_ids.unfold(0, block_size + 1, block_size)  # (N,) -> (W, block_size + 1), stride block_size
        was_training = self.training
        self.eval()
        total = 0.0
        for start in range(0, len(windows), batch_size):
            batch = {"input_ids": windows[start : start + batch_size].to(self.device)}
            total += self.loss(batch)["loss"].item() * len(batch["input_ids"])
        self.train(was_training)
        nats_per_token = total / len(windows)
        return nats_per_token * len(token_ids) / len(text)

    def evaluate(self, text: str, batch_size: int = 256) -> dict[str, float]:
        """Validation loss in nats per character and bits per character of `text`."""
        nats = self.nats_per_character(text, batch_size)
        return {"validation_loss": nats, "bits_per_character": nats / math.log(2)}

    # --- generation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def _generate_ids(self, input_ids: torch.Tensor, max_new_tokens: int, seed: int, options: dict,
                      streamer: BaseStreamer | None = None) -> torch.Tensor:
        """(B, T) prompt ids -> (B, max_new_tokens) new ids, one transformers `generate` call per context window.

        Each window draws from the global RNG seeded from `seed` inside `fork_rng`, so the caller's RNG state
        is untouched (another thread drawing from it meanwhile would change the text).
        """
        block_size = self.config.block_size
        seeds = torch.Generator().manual_seed(seed)
        window_streamer = _WindowStreamer(streamer) if streamer is not None else None
        devices = [self.device] if self.device.type == "cuda" else []
        context, new_ids, num_generated = input_ids.to(self.device), [], 0
        while num_generated < max_new_tokens:
            if context.shape[1] >= block_size:  # window full: restart from the last half-window
                context = context[:, -(block_size // 2):]
            num_tokens = min(max_new_tokens - num_generated, block_size - context.shape[1])
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=seeds)))
                output = self.model.generate(
                    context, attention_mask=torch.ones_like(context), streamer=window_streamer,
                    generation_config=GenerationConfig(max_length=context.shape[1] + num_tokens, **options),
                )  # (B, T + num_tokens)
            new_ids.append(output[:, context.shape[1]:])
            context, num_generated = output, num_generated + num_tokens
        if streamer is not None:
            streamer.end()
        return torch.cat(new_ids, dim=1)

    def _prepare(self, prompt: str, max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None,
                 repetition_penalty: float, use_cache: bool) -> tuple[torch.Tensor, dict]:
        """Check the arguments; -> prompt ids (1, T) and transformers' generation options."""
        if not prompt:
            raise UserError("the prompt is empty: give at least one character (e.g. a newline)")
        if max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be positive, got {max_new_tokens}")
        if temperature < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
            raise UserError(f"need temperature >= 0, top_k >= 1, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}")
        if repetition_penalty <= 0:
            raise UserError(f"repetition_penalty must be positive, got {repetition_penalty}")
        options = dict(use_cache=use_cache, repetition_penalty=repetition_penalty, do_sample=temperature > 0)
        if temperature > 0:
            options.update(temperature=temperature, top_k=top_k, top_p=top_p)
        return self.encode(prompt)[None], options  # (T,) -> (1, T)

    def generate(self, prompt: str = "\n", max_new_tokens: int = 256, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
                 seed: int = 0, use_cache: bool = True) -> str:
        """The text that follows `prompt` (without the prompt): max_new_tokens tokens, the same for the same seed.

        temperature 0 is greedy decoding; top_k / top_p None keep the whole distribution; use_cache=False
        recomputes every position at each step (the same text, slower).
        """
        input_ids, options = self._prepare(prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, use_cache)
        new_ids = self._generate_ids(input_ids, max_new_tokens, seed, options)
        return self.tokenizer.decode(new_ids[0], skip_special_tokens=True)

    def stream(self, prompt: str = "\n", max_new_tokens: int = 256, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
               seed: int = 0, use_cache: bool = True) -> Iterator[str]:
        """`generate` as pieces of text while they are produced (TextIteratorStreamer, generation in a thread);
        the pieces join to the text `generate` returns for the same arguments."""
        input_ids, options = self._prepare(prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, use_cache)
        streamer = TextIteratorStreamer(self.tokenizer, skip_special_tokens=True)
        errors = []

        def run() -> None:
            try:
                self._generate_ids(input_ids, max_new_tokens, seed, options, streamer)
            except Exception as err:  # re-raised in the caller's thread below
                errors.append(err)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        for piece in streamer:
            if piece:  # the streamer also yields empty strings while a word is incomplete
                yield piece
        thread.join()
        if errors:
            raise errors[0]

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> list[str]:
        """num_samples texts of config.sample_length tokens each, from a newline, at temperature 1."""
        seed = int(torch.randint(2**62, (1,), generator=generator))
        input_ids, options = self._prepare("\n", self.config.sample_length, 1.0, None, None, 1.0, True)
        new_ids = self._generate_ids(input_ids.expand(num_samples, -1), self.config.sample_length, seed, options)
        return self.tokenizer.batch_decode(new_ids, skip_special_tokens=True)

    # --- the Hub ----------------------------------------------------------------------------------------
    def _save_pretrained(self, save_directory: Path) -> None:
        """The stock transformers folder: config.json (with GPTConfig under "gm_hub"), weights, tokenizer."""
        self.model.save_pretrained(save_directory)
        self.tokenizer.save_pretrained(save_directory)

    def save_pretrained(self, save_directory: str | Path, *, model_card_kwargs: dict | None = None, **kwargs) -> str | None:
        """Write the folder and a model card (rewritten on every save, so it carries the current metrics)."""
        (Path(save_directory) / "README.md").unlink(missing_ok=True)
        return super().save_pretrained(save_directory, model_card_kwargs=model_card_kwargs, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, force_download: bool = False,
                        token: str | bool | None = None, cache_dir: str | Path | None = None,
                        local_files_only: bool = False, revision: str | None = None,
                        map_location: str | torch.device = "cpu") -> "GPT":
        """Load a folder or Hub repo: GPTConfig validated first, then strictly from model.safetensors."""
        download = dict(force_download=force_download, token=token, cache_dir=cache_dir,
                        local_files_only=local_files_only, revision=revision)
        config_file = resolve_file(pretrained_model_name_or_path, CONFIG_NAME, **download)
        try:
            values = json.loads(Path(config_file).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{config_file} is not valid JSON: {err}") from err
        if not isinstance(values, dict) or not isinstance(values.get(CONFIG_KEY), dict):
            raise ConfigError(f"{config_file} has no {CONFIG_KEY!r} settings: not a GPT saved by gm-hub")
        config = config_from_dict(GPTConfig, values[CONFIG_KEY])
        tokenizer_files = [resolve_file(pretrained_model_name_or_path, name, **download) for name in TOKENIZER_FILES]
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(Path(tokenizer_files[0]).parent))  # tokenizer.json only
        if len(tokenizer) != values.get("vocab_size"):
            raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens, config.json says vocab_size={values.get('vocab_size')}")
        weights_file = resolve_file(pretrained_model_name_or_path, WEIGHTS_NAME, **download)
        with torch.device("meta"):  # nothing is allocated until the size and shapes are checked
            check_size_and_shapes(cls(config, tokenizer).model, weights_file)
        model = cls(config, tokenizer)
        load_model(model.model, weights_file, strict=True)
        return model.to(map_location).eval()

    def generate_model_card(self, metrics: dict[str, float] | None = None, metrics_dataset: str = "validation split",
                            training_command: str | None = None, datasets: list[str] | None = None,
                            training_time: str | None = None, **_) -> ModelCard:
        """README.md: YAML metadata (library, tags, datasets, model-index metrics), then use, training, metrics."""
        metrics = metrics or {}
        name = "gm-hub GPT"
        metadata = card_data(
            library_name="transformers", pipeline_tag="text-generation", model_name=name,
            tags=["gm-hub", "gpt", "gpt2", "text-generation", f"{self.config.tokenizer}-level"], datasets=datasets,
            metrics=metrics, metrics_dataset=metrics_dataset, training_command=training_command, training_time=training_time,
        )
        sample = self.sample(1, generator=torch.Generator().manual_seed(0))[0]
        return ModelCard(f"""---
{metadata.to_yaml()}
---

# {name}

{__doc__.split(chr(10) + chr(10))[0]}

A {self.config.n_layer}-layer GPT-2 ({self.config.n_head} heads, {self.config.n_embd}-dim embeddings,
{self.config.block_size}-token context) with a {self.config.tokenizer}-level tokenizer of {len(self.tokenizer)} tokens.

## Use

```python
from transformers import pipeline

generator = pipeline("text-generation", model="path/or/repo-id")
print(generator("ROMEO:", max_new_tokens={max(1, self.config.block_size // 2)})[0]["generated_text"])  # prompt + new tokens <= {self.config.block_size}
```

Longer texts, window by window, with top-k / top-p / repetition penalty, a seed, and streaming:

```python
from gm_hub.models.gpt import GPT

model = GPT.from_pretrained("path/or/repo-id")
print(model.generate("ROMEO:", max_new_tokens=500, temperature=0.8, top_k=40, seed=0))
for piece in model.stream("ROMEO:", max_new_tokens=500):
    print(piece, end="", flush=True)
```

A sample (seed 0, temperature 1):

```text
{sample}
```

{card_training_and_metrics(self.config, metrics, metrics_dataset, training_command, training_time,
                           "Validation loss in nats per character and bits per character "
                           "(for BPE: nats per token x tokens per character).")}""")

"""GPT: an autoregressive language model p(x) = prod_t p(x_t | x_<t) over tokens [1], trained from scratch.

The network is transformers' `GPT2LMHeadModel` [2] (decoder-only, learned absolute positions, tied input and
output embeddings) with PyTorch's fused attention (`attn_implementation="sdpa"`; eager attention while training
on the CPU, where it is faster); the tokenizer is trained with the `tokenizers` library: one token per
character by default, which suits small corpora (the vocabulary of tiny Shakespeare is 65 characters), or
byte-level BPE [3]. The loss is the mean negative log-likelihood in nats per token; `nats_per_character`
converts it with the token/character ratio of the text, so character-level and BPE models compare on the
same scale.

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
import hashlib
import json
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, TextIteratorStreamer
from transformers.generation.streamers import BaseStreamer

from ..errors import UserError
from ..hub import ConfigError, HubModel, config_from_dict

TOKENIZER_KINDS = ("char", "bpe")
CONFIG_KEY = "gm_hub"  # where GPTConfig lives inside transformers' config.json


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


class GPT(HubModel, family="gpt", library_name="transformers", tags=["gpt2", "text-generation"], pipeline_tag="text-generation"):
    """A GPT-2 language model and its tokenizer, trained from scratch; saves a stock transformers folder."""

    dataset_tags = ()
    card_metrics_note = ("Validation loss in nats per character and bits per character "
                         "(for BPE: nats per token x tokens per character).")

    def __init__(self, config: GPTConfig, tokenizer: PreTrainedTokenizerFast):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        model_config = GPT2Config(
            vocab_size=len(tokenizer), n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
            n_head=config.n_head, resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
            bos_token_id=None, eos_token_id=None, pad_token_id=None,  # no special tokens: text is just text
            # GPT-2's tanh GELU as one fused PyTorch kernel ("gelu_new" is the same formula in five Python ops).
            activation_function="gelu_pytorch_tanh", attn_implementation="sdpa", architectures=["GPT2LMHeadModel"],
            **{CONFIG_KEY: dataclasses.asdict(config)},
        )
        self.model = GPT2LMHeadModel(model_config)
        self.model.generation_config = GenerationConfig(do_sample=True)  # the stock pipeline samples

    @property
    def device(self) -> torch.device:
        return self.model.device

    # --- training ---------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "GPT":
        """nn.Module.train, choosing the attention kernel: eager attention (the same math) to train on the CPU,
        where PyTorch's flash-attention backward took a quarter of each step (2 layers, 64 tokens); sdpa else."""
        self.model.set_attn_implementation("eager" if mode and self.device.type == "cpu" else "sdpa")
        return super().train(mode)

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
        if self.config.tokenizer != "char":
            return torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        vocabulary = self.tokenizer.get_vocab()  # {character: id}
        missing = sorted(set(text) - set(vocabulary))
        if missing:
            raise UserError(
                f"the text has {len(missing)} character(s) outside this model's {len(self.tokenizer)}-character "
                f"vocabulary: {''.join(missing)!r} ({', '.join(f'U+{ord(c):04X}' for c in missing)}); "
                "remove or replace them"
            )
        # One token per character: a lookup by code point gives the tokenizer's ids (1M characters: 0.01 s, not 0.5 s).
        code_points = torch.from_numpy(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64))  # (N,)
        table = torch.zeros(max(map(ord, vocabulary)) + 1, dtype=torch.long)
        table[torch.tensor([ord(c) for c in vocabulary])] = torch.tensor(list(vocabulary.values()))
        return table[code_points]

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

    # --- the Hub: a stock transformers folder -----------------------------------------------------------
    def folder_config(self) -> dict:
        """transformers' config.json, with GPTConfig under "gm_hub"."""
        return self.model.config.to_dict()

    @classmethod
    def from_folder_config(cls, values: dict, read_json) -> tuple[GPTConfig, dict]:
        """GPTConfig from config.json's "gm_hub" settings, and the tokenizer (tokenizer.json) it was trained with."""
        if not isinstance(values.get(CONFIG_KEY), dict):
            raise ConfigError(f"config.json has no {CONFIG_KEY!r} settings: not a GPT saved by gm-hub")
        config = config_from_dict(GPTConfig, values[CONFIG_KEY])
        tokenizer_json = read_json("tokenizer.json")  # validated before the tokenizers library parses it
        read_json("tokenizer_config.json")
        try:
            tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(tokenizer_json)),
                                                clean_up_tokenization_spaces=False)
        except Exception as err:  # the tokenizers library raises its own Exception type for a malformed file
            raise ConfigError(f"tokenizer.json is not a valid tokenizer: {str(err)[:200]}") from err
        if len(tokenizer) != values.get("vocab_size"):
            raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens, config.json says vocab_size={values.get('vocab_size')}")
        return config, {"tokenizer": tokenizer}

    def weight_files(self) -> dict[str, nn.Module]:
        return {"model.safetensors": self.model}

    def config_signature(self) -> dict:
        """The config and the vocabulary: an alphabet of the same size from another text is another model."""
        vocabulary = json.dumps(sorted(self.tokenizer.get_vocab().items()))
        return {**dataclasses.asdict(self.config), "vocabulary_sha256": hashlib.sha256(vocabulary.encode()).hexdigest()}

    def save_extra_files(self, folder: Path) -> None:
        self.model.generation_config.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    def card_usage(self) -> str:
        return f"""A {self.config.n_layer}-layer GPT-2 ({self.config.n_head} heads, {self.config.n_embd}-dim embeddings,
{self.config.block_size}-token context) with a {self.config.tokenizer}-level tokenizer of {len(self.tokenizer)} tokens.

```python
from transformers import pipeline

generator = pipeline("text-generation", model="path/or/repo-id")
print(generator("ROMEO:", max_new_tokens={max(1, self.config.block_size // 2)})[0]["generated_text"])  # prompt + new tokens <= {self.config.block_size}
```

Longer texts, window by window, with top-k / top-p / repetition penalty, a seed, and streaming:

```python
from gm_hub import load_model

model = load_model("path/or/repo-id")
print(model.generate("ROMEO:", max_new_tokens=500, temperature=0.8, top_k=40, seed=0))
for piece in model.stream("ROMEO:", max_new_tokens=500):
    print(piece, end="", flush=True)
```"""

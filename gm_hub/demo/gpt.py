"""The text tab: the GPT's continuation of a prompt, streamed as it is generated.

Only the new text is streamed (the prompt stays in its own box), in pieces at most every STREAM_INTERVAL
seconds, so the bytes sent grow with the new text, not with prompt x tokens; the prompt is capped.
"""

import time
from functools import partial

import gradio as gr

from ..errors import UserError
from ..registry import Family
from . import check_number, check_seed, gpu, model_on_device, on_click, slider

MAX_PROMPT_CHARACTERS = 2_000
MAX_NEW_TOKENS = 1_024
STREAM_INTERVAL = 0.1  # seconds between updates sent to the browser


@gpu
def generate(family: Family, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed):
    """Stream the continuation of `prompt`: yields the new text so far."""
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARACTERS:
        raise gr.Error(f"Prompt must be text of at most {MAX_PROMPT_CHARACTERS:,} characters"
                       + (f", got {len(prompt):,}" if isinstance(prompt, str) else ""))
    max_new_tokens = check_number("New tokens", max_new_tokens, 1, MAX_NEW_TOKENS, integer=True)
    temperature = check_number("Temperature", temperature, 0, 2)
    top_k = check_number("Top-k", top_k, 0, 100, integer=True)
    top_p = check_number("Top-p", top_p, 0.05, 1)
    repetition_penalty = check_number("Repetition penalty", repetition_penalty, 1, 2)
    model = model_on_device(family)
    text, last_sent = "", 0.0
    try:
        for piece in model.stream(prompt or "\n", max_new_tokens, temperature, top_k or None,
                                  top_p if top_p < 1 else None, repetition_penalty, check_seed(seed)):
            text += piece
            if time.perf_counter() - last_sent >= STREAM_INTERVAL:
                last_sent = time.perf_counter()
                yield text
    except UserError as err:  # e.g. characters outside a character-level vocabulary
        raise gr.Error(str(err)) from err
    yield text


def build_tab(family: Family) -> None:
    gr.Markdown("A small GPT (Radford et al.) trained from scratch on tiny Shakespeare, one token per character; "
                "a stock transformers model.")
    prompt = gr.Textbox(value="ROMEO:\n", lines=3, max_length=MAX_PROMPT_CHARACTERS,
                        label=f"Prompt (at most {MAX_PROMPT_CHARACTERS:,} characters)")
    with gr.Row():
        tokens = slider(16, MAX_NEW_TOKENS, value=200, step=16, label="New tokens")
        temperature = slider(0, 2, value=0.8, step=0.05, label="Temperature (0: greedy)")
        top_k = slider(0, 100, value=0, step=1, label="Top-k (0: off)")
        top_p = slider(0.05, 1, value=1, step=0.05, label="Top-p (1: off)")
        penalty = slider(1, 2, value=1, step=0.05, label="Repetition penalty")
        seed = gr.Number(value=0, precision=0, label="Seed")
    button = gr.Button("Generate", variant="primary")
    text = gr.Textbox(lines=14, label="Continuation")
    on_click(button, partial(generate, family), [prompt, tokens, temperature, top_k, top_p, penalty, seed], [text],
             api_name="generate_text", slow=True)

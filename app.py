"""gm-hub demo: sample every family of generative models in the browser.

    python app.py                       # http://127.0.0.1:7860
    GM_HUB_VAE_MODEL=user/vae-mnist python app.py   # any folder or Hub repo id instead of pretrained/

Models load lazily, once per process, from `pretrained/<name>` (or the environment variable named in
`MODEL_SOURCES`). On a GPU they run there: on a ZeroGPU Space each GPU-bound event holds a GPU through
`@spaces.GPU`; elsewhere on CUDA if present, else on the CPU.
"""

import functools
import os
from pathlib import Path

import gradio as gr
import torch

from gm_hub import load_model
from gm_hub.data import image_grid, load_embedded_mnist

try:  # ZeroGPU Spaces; outside a Space the decorator does nothing
    from spaces import GPU as gpu
except ImportError:  # not installed (or only this repo's spaces/ folder is in sight)

    def gpu(function):
        return function


ROOT = Path(__file__).resolve().parent
# Family -> (environment variable, default folder). The environment variable may name a Hub repo id.
MODEL_SOURCES = {
    "vae": ("GM_HUB_VAE_MODEL", ROOT / "pretrained" / "vae-mnist"),
    "gan": ("GM_HUB_GAN_MODEL", ROOT / "pretrained" / "gan-mnist"),
    "gpt": ("GM_HUB_GPT_MODEL", ROOT / "pretrained" / "gpt-shakespeare"),
}
GPU_QUEUE = "gpu"  # events that run a model share one queue, so a GPU is never oversubscribed


def model_source(family: str) -> str:
    variable, default = MODEL_SOURCES[family]
    return os.environ.get(variable, str(default))


def is_available(family: str) -> bool:
    source = model_source(family)
    return not os.path.isabs(source) or (Path(source) / "config.json").is_file()


@functools.cache
def get_model(family: str):
    """Load a family's model once per process, on the CPU (ZeroGPU moves it inside GPU events)."""
    return load_model(model_source(family))


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.cache
def example_digits() -> torch.Tensor:
    """A few real digits (the embedded MNIST sample) to reconstruct and interpolate between."""
    return load_embedded_mnist().images[::500][:10]  # one of each class, (10, 1, 28, 28) uint8


def upscale(images: torch.Tensor, size: int = 84) -> torch.Tensor:
    """Nearest-neighbour upscaling so 28-pixel digits are visible: (N, C, H, W) uint8."""
    return torch.nn.functional.interpolate(images.float(), size=(size, size), mode="nearest").to(torch.uint8)


# --- handlers --------------------------------------------------------------------------------------------


@gpu
def sample_vae(num_samples: int, seed: int, most_likely_pixels: bool = True):
    """A grid of VAE samples for a seed (the decoder's most likely pixels, or true samples with pixel noise)."""
    model = get_model("vae").to(device())
    generator = torch.Generator().manual_seed(int(seed))
    images = model.sample(int(num_samples), generator=generator, most_likely_pixels=bool(most_likely_pixels))
    return image_grid(upscale(images.cpu()))


@gpu
def interpolate_vae(digit_a: int, digit_b: int, steps: int):
    """Decode a straight latent line between two real digits."""
    model = get_model("vae").to(device())
    digits = example_digits()
    images = model.interpolate(digits[int(digit_a)], digits[int(digit_b)], int(steps))
    return image_grid(upscale(images.cpu()), num_columns=int(steps))


@gpu
def sample_gan(num_samples: int, seed: int, truncation: float):
    """A grid of generator samples; truncation 0 means none (z redrawn while any |z_i| exceeds it)."""
    model = get_model("gan").to(device())
    generator = torch.Generator().manual_seed(int(seed))
    images = model.sample(int(num_samples), generator=generator, truncation=float(truncation) or None)
    return image_grid(upscale(images.cpu()))


@gpu
def interpolate_gan(seed_a: int, seed_b: int, steps: int, spherical: bool):
    """Images along a line (or great circle) between the latents of two seeds."""
    model = get_model("gan").to(device())
    z_a, z_b = (model.sample_latents(1, torch.Generator().manual_seed(int(seed)))[0] for seed in (seed_a, seed_b))
    images = model.interpolate(z_a, z_b, int(steps), spherical=bool(spherical))
    return image_grid(upscale(images.cpu()), num_columns=int(steps))


@gpu
def generate_text(prompt: str, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                  repetition_penalty: float, seed: int):
    """Stream the GPT's continuation of `prompt`: yields the text so far (prompt included)."""
    model = get_model("gpt").to(device())
    text = prompt
    try:
        pieces = model.stream(prompt or "\n", int(max_new_tokens), float(temperature), int(top_k) or None,
                              float(top_p) if top_p < 1 else None, float(repetition_penalty), int(seed))
        for piece in pieces:
            text += piece
            yield text
    except ValueError as err:  # e.g. characters outside a character-level vocabulary
        raise gr.Error(str(err)) from err


# --- layout ----------------------------------------------------------------------------------------------


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="gm-hub: generative models") as demo:
        gr.Markdown(
            "# gm-hub\nGenerative models of several families (so far a VAE, a GAN and a GPT), trained with "
            "accelerate and shared on the Hub. "
            f"Running on **{device().type.upper()}**."
        )
        if is_available("vae"):
            with gr.Tab("VAE"):
                gr.Markdown("A convolutional VAE with a planar-flow posterior and a discretized logistic decoder.")
                with gr.Row():
                    vae_count = gr.Slider(1, 64, value=16, step=1, label="Number of samples")
                    vae_seed = gr.Number(value=0, precision=0, label="Seed")
                    vae_mode = gr.Checkbox(value=True, label="Most likely pixels (untick for true samples with pixel noise)")
                vae_button = gr.Button("Sample", variant="primary")
                vae_grid = gr.Image(label="Samples", type="pil", format="png")
                vae_button.click(sample_vae, [vae_count, vae_seed, vae_mode], vae_grid, api_name="sample_vae", concurrency_id=GPU_QUEUE)
                with gr.Row():
                    vae_a = gr.Slider(0, 9, value=1, step=1, label="From digit")
                    vae_b = gr.Slider(0, 9, value=7, step=1, label="To digit")
                    vae_steps = gr.Slider(3, 12, value=8, step=1, label="Steps")
                vae_line_button = gr.Button("Interpolate")
                vae_line = gr.Image(label="Latent interpolation", type="pil", format="png")
                vae_line_button.click(interpolate_vae, [vae_a, vae_b, vae_steps], vae_line, api_name="interpolate_vae",
                                      concurrency_id=GPU_QUEUE)
        if is_available("gan"):
            with gr.Tab("GAN"):
                gr.Markdown("A DCGAN-style generator (Goodfellow et al.; Radford et al.), trained against a discriminator.")
                with gr.Row():
                    gan_count = gr.Slider(1, 64, value=16, step=1, label="Number of samples")
                    gan_seed = gr.Number(value=0, precision=0, label="Seed")
                    gan_truncation = gr.Slider(0, 3, value=0, step=0.1, label="Truncation (0: none)")
                gan_button = gr.Button("Sample", variant="primary")
                gan_grid = gr.Image(label="Samples", type="pil", format="png")
                gan_button.click(sample_gan, [gan_count, gan_seed, gan_truncation], gan_grid, api_name="sample_gan",
                                 concurrency_id=GPU_QUEUE)
                with gr.Row():
                    gan_a = gr.Number(value=1, precision=0, label="From seed")
                    gan_b = gr.Number(value=2, precision=0, label="To seed")
                    gan_steps = gr.Slider(3, 12, value=8, step=1, label="Steps")
                    gan_spherical = gr.Checkbox(value=True, label="Spherical")
                gan_line_button = gr.Button("Interpolate")
                gan_line = gr.Image(label="Latent interpolation", type="pil", format="png")
                gan_line_button.click(interpolate_gan, [gan_a, gan_b, gan_steps, gan_spherical], gan_line,
                                      api_name="interpolate_gan", concurrency_id=GPU_QUEUE)
        if is_available("gpt"):
            with gr.Tab("GPT"):
                gr.Markdown("A small GPT (Radford et al.) trained from scratch on tiny Shakespeare, one token per "
                            "character; a stock transformers model.")
                gpt_prompt = gr.Textbox(value="ROMEO:\n", lines=3, label="Prompt")
                with gr.Row():
                    gpt_tokens = gr.Slider(16, 1024, value=300, step=16, label="New tokens")
                    gpt_temperature = gr.Slider(0, 2, value=0.8, step=0.05, label="Temperature (0: greedy)")
                    gpt_top_k = gr.Slider(0, 100, value=0, step=1, label="Top-k (0: off)")
                    gpt_top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p (1: off)")
                    gpt_penalty = gr.Slider(1, 2, value=1, step=0.05, label="Repetition penalty")
                    gpt_seed = gr.Number(value=0, precision=0, label="Seed")
                gpt_button = gr.Button("Generate", variant="primary")
                gpt_text = gr.Textbox(lines=14, label="Text")
                gpt_button.click(generate_text, [gpt_prompt, gpt_tokens, gpt_temperature, gpt_top_k, gpt_top_p, gpt_penalty,
                                                 gpt_seed], gpt_text, api_name="generate_text", concurrency_id=GPU_QUEUE)
        if not any(is_available(family) for family in MODEL_SOURCES):
            gr.Markdown("No models found: train one (`gm-hub train vae`) and save it under `pretrained/`.")
    return demo


if __name__ == "__main__":
    build_demo().queue(default_concurrency_limit=1).launch()

"""The VAE tab: samples, and latent interpolation between two real digits."""

from functools import partial

import gradio as gr

from ..registry import Family
from . import GPU_QUEUE, digit_interpolation, sample_images


def sample(family: Family, num_samples, seed, most_likely_pixels):
    """A grid of VAE samples (the decoder's most likely pixels, or true samples with pixel noise)."""
    return sample_images(family, num_samples, seed, most_likely_pixels=bool(most_likely_pixels))


def build_tab(family: Family) -> None:
    gr.Markdown("A convolutional VAE (Kingma & Welling) with a flow posterior (Rezende & Mohamed) and a discretized "
                "logistic decoder.")
    with gr.Row():
        count = gr.Slider(1, 64, value=16, step=1, label="Number of samples")
        seed = gr.Number(value=0, precision=0, label="Seed")
        mode = gr.Checkbox(value=True, label="Most likely pixels (untick for true samples with pixel noise)")
    button = gr.Button("Sample", variant="primary")
    grid = gr.Image(label="Samples", type="pil", format="png")
    took = gr.Markdown()
    button.click(partial(sample, family), [count, seed, mode], [grid, took], api_name="sample_vae",
                 concurrency_id=GPU_QUEUE)
    digit_interpolation(family, "Latent interpolation")

"""The VAE tab: samples, and latent interpolation between two real digits."""

import time
from functools import partial

import gradio as gr

from ..registry import Family
from . import GPU_QUEUE, check_number, example_digits, gpu, model_on_device, sample_images, timed_grid


def sample(family: Family, num_samples, seed, most_likely_pixels):
    """A grid of VAE samples (the decoder's most likely pixels, or true samples with pixel noise)."""
    return sample_images(family, num_samples, seed, most_likely_pixels=bool(most_likely_pixels))


@gpu
def interpolate(family: Family, digit_a, digit_b, steps):
    """Decode a straight latent line between two real digits."""
    digit_a, digit_b = (check_number(name, d, 0, 9, integer=True) for name, d in (("From digit", digit_a), ("To digit", digit_b)))
    steps = check_number("Steps", steps, 3, 12, integer=True)
    start = time.perf_counter()
    digits = example_digits()
    images = model_on_device(family).interpolate(digits[digit_a], digits[digit_b], steps)
    return timed_grid(images, start, num_columns=steps)


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
    with gr.Row():
        digit_a = gr.Slider(0, 9, value=1, step=1, label="From digit")
        digit_b = gr.Slider(0, 9, value=7, step=1, label="To digit")
        steps = gr.Slider(3, 12, value=8, step=1, label="Steps")
    line_button = gr.Button("Interpolate")
    line = gr.Image(label="Latent interpolation", type="pil", format="png")
    line_took = gr.Markdown()
    line_button.click(partial(interpolate, family), [digit_a, digit_b, steps], [line, line_took],
                      api_name="interpolate_vae", concurrency_id=GPU_QUEUE)

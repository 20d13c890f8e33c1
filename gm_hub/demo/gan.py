"""The GAN tab: samples with truncation, and linear or spherical interpolation between two seeds' latents."""

import time
from functools import partial

import gradio as gr
import torch

from ..registry import Family
from . import check_number, check_seed, gpu, model_on_device, on_click, sample_images, slider, timed_grid


def sample(family: Family, num_samples, seed, truncation):
    """A grid of generator samples; truncation 0 means none (else z from the normal truncated to [-t, t])."""
    truncation = check_number("Truncation", truncation, 0, 3)
    return sample_images(family, num_samples, seed, truncation=truncation or None)


@gpu
def interpolate(family: Family, seed_a, seed_b, steps, spherical):
    """Images along a line (or great circle) between the latents of two seeds."""
    seed_a, seed_b, steps = check_seed(seed_a), check_seed(seed_b), check_number("Steps", steps, 3, 12, integer=True)
    start = time.perf_counter()
    model = model_on_device(family)
    z_a, z_b = (model.sample_latents(1, torch.Generator().manual_seed(seed))[0] for seed in (seed_a, seed_b))
    return timed_grid(model.interpolate(z_a, z_b, steps, spherical=bool(spherical)), start, num_columns=steps)


def build_tab(family: Family) -> None:
    gr.Markdown("A DCGAN-style generator (Goodfellow et al.; Radford et al.), trained against a discriminator.")
    with gr.Row():
        count = slider(1, 64, value=16, step=1, label="Number of samples")
        seed = gr.Number(value=0, precision=0, label="Seed")
        truncation = slider(0, 3, value=0, step=0.1, label="Truncation (0: none)")
    button = gr.Button("Sample", variant="primary")
    grid = gr.Image(label="Samples", type="pil", format="png")
    took = gr.Markdown()
    on_click(button, partial(sample, family), [count, seed, truncation], [grid, took], api_name="sample_gan", slow=False)
    with gr.Row():
        seed_a = gr.Number(value=1, precision=0, label="From seed")
        seed_b = gr.Number(value=2, precision=0, label="To seed")
        steps = slider(3, 12, value=8, step=1, label="Steps")
        spherical = gr.Checkbox(value=True, label="Spherical")
    line_button = gr.Button("Interpolate")
    line = gr.Image(label="Latent interpolation", type="pil", format="png")
    line_took = gr.Markdown()
    on_click(line_button, partial(interpolate, family), [seed_a, seed_b, steps, spherical], [line, line_took],
             api_name="interpolate_gan", slow=False)

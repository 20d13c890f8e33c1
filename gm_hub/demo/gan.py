"""The GAN tab: samples of one digit class (or any) with truncation, and linear or spherical interpolation between
two seeds' latents; a class-conditional generator also moves from one class to another along the way.

"any" draws a conditional generator's class from the seed, right after z, as `Generator.sample` does, so the ends
of an interpolation are the single samples of their seeds.
"""

import time
from functools import partial

import gradio as gr
import torch

from ..errors import UserError
from ..registry import Family
from . import (DIGIT_CHOICES, check_number, check_seed, digit_label, gpu, model_on_device, on_click, sample_images,
               slider, timed_grid)


def sample(family: Family, num_samples, seed, truncation, digit=DIGIT_CHOICES[0]):
    """A grid of generator samples; truncation 0 means none (else z from the normal truncated to [-t, t])."""
    truncation = check_number("Truncation", truncation, 0, 3)
    return sample_images(family, num_samples, seed, truncation=truncation or None, label=digit_label(digit))


@gpu
def interpolate(family: Family, seed_a, seed_b, steps, spherical, digit_a=DIGIT_CHOICES[0], digit_b=DIGIT_CHOICES[0]):
    """Images along a line (or great circle) between the latents of two seeds (and between two classes)."""
    seed_a, seed_b, steps = check_seed(seed_a), check_seed(seed_b), check_number("Steps", steps, 3, 12, integer=True)
    label_a, label_b = digit_label(digit_a, "From digit"), digit_label(digit_b, "To digit")
    start = time.perf_counter()
    model = model_on_device(family)
    try:
        ends = []
        for seed, label in ((seed_a, label_a), (seed_b, label_b)):
            generator = torch.Generator().manual_seed(seed)
            z = model.sample_latents(1, generator)[0]
            ends.append((z, model.sample_labels(1, label, generator)))  # None for an unconditional generator
        (z_a, labels_a), (z_b, labels_b) = ends
        labels = None if labels_a is None else (int(labels_a), int(labels_b))
        images = model.interpolate(z_a, z_b, steps, spherical=bool(spherical), labels=labels)
    except UserError as err:
        raise gr.Error(str(err)) from err
    return timed_grid(images, start, num_columns=steps)


def build_tab(family: Family) -> None:
    gr.Markdown("A DCGAN-style generator (Goodfellow et al.; Radford et al.), trained against a discriminator; "
                "class-conditional (Mirza & Osindero), with a projection discriminator (Miyato & Koyama).")
    with gr.Row():
        digit = gr.Dropdown(DIGIT_CHOICES, value=DIGIT_CHOICES[0], label="Digit class")
        count = slider(1, 64, value=16, step=1, label="Number of samples")
        seed = gr.Number(value=0, precision=0, label="Seed")
        truncation = slider(0, 3, value=0, step=0.1, label="Truncation (0: none)")
    button = gr.Button("Sample", variant="primary")
    grid = gr.Image(label="Samples", type="pil", format="png")
    took = gr.Markdown()
    on_click(button, partial(sample, family), [count, seed, truncation, digit], [grid, took], api_name="sample_gan",
             slow=False)
    with gr.Row():
        seed_a = gr.Number(value=1, precision=0, label="From seed")
        digit_a = gr.Dropdown(DIGIT_CHOICES, value=DIGIT_CHOICES[0], label="From digit")
        seed_b = gr.Number(value=2, precision=0, label="To seed")
        digit_b = gr.Dropdown(DIGIT_CHOICES, value=DIGIT_CHOICES[0], label="To digit")
        steps = slider(3, 12, value=8, step=1, label="Steps")
        spherical = gr.Checkbox(value=True, label="Spherical")
    line_button = gr.Button("Interpolate")
    line = gr.Image(label="Latent interpolation", type="pil", format="png")
    line_took = gr.Markdown()
    on_click(line_button, partial(interpolate, family), [seed_a, seed_b, steps, spherical, digit_a, digit_b],
             [line, line_took], api_name="interpolate_gan", slow=False)

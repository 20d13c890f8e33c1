"""The VAE tab: samples, latent interpolation between two real digits, and reconstruction of a drawn or uploaded
digit (the decoded posterior mean)."""

import time
from functools import partial

import gradio as gr
import torch

from ..data import to_uint8_images
from ..registry import Family
from . import (digit_interpolation, digit_sketchpad, gpu, model_on_device, on_click, sample_images,
               sketch_to_digit, slider, timed_grid, upload_to_digit)

DRAWING = "drawing"
UPLOAD = "upload"


def sample(family: Family, num_samples, seed, most_likely_pixels):
    """A grid of VAE samples (the decoder's most likely pixels, or true samples with pixel noise)."""
    return sample_images(family, num_samples, seed, most_likely_pixels=bool(most_likely_pixels))


@gpu
def reconstruct(family: Family, source, sketch, upload):
    """The drawn or uploaded digit at 28x28 beside the model's reconstruction of it -> (grid, time)."""
    if source == DRAWING:
        digit, inverted = sketch_to_digit(sketch), False
    elif source == UPLOAD:
        digit, inverted = upload_to_digit(upload)
    else:
        raise gr.Error(f"Digit to reconstruct must be {DRAWING!r} or {UPLOAD!r}, got {source!r}")
    start = time.perf_counter()
    model = model_on_device(family)
    digit = to_uint8_images(digit, model.config.resolution, model.config.num_channels)
    grid, took = timed_grid(torch.cat([digit, model.reconstruct(digit).cpu()]), start, num_columns=2)
    return grid, f"{took} (the upload was inverted: MNIST digits are white on black)" if inverted else took


def build_tab(family: Family) -> None:
    gr.Markdown("A convolutional VAE (Kingma & Welling) with a flow posterior (Rezende & Mohamed), a "
                "mixture-of-Gaussians prior (the shipped model's refit to its training digits' latents after "
                "training) and a discretized logistic decoder.")
    with gr.Row():
        count = slider(1, 64, value=16, step=1, label="Number of samples")
        seed = gr.Number(value=0, precision=0, label="Seed")
        mode = gr.Checkbox(value=True, label="Most likely pixels (untick for true samples with pixel noise)")
    button = gr.Button("Sample", variant="primary")
    grid = gr.Image(label="Samples", type="pil", format="png")
    took = gr.Markdown()
    on_click(button, partial(sample, family), [count, seed, mode], [grid, took], api_name="sample_vae", slow=False)
    digit_interpolation(family, "Latent interpolation")

    source = gr.Radio([DRAWING, UPLOAD], value=DRAWING, label="Digit to reconstruct")
    with gr.Row():
        sketch = digit_sketchpad("Draw a digit (white on black)")
        upload = gr.Image(type="numpy", image_mode="L", sources=["upload", "clipboard"],
                          label="Or upload one (pick \"upload\" above; a dark digit on a light page is inverted)")
    reconstruct_button = gr.Button("Reconstruct")
    reconstruction = gr.Image(label="Your digit, then its reconstruction", type="pil", format="png")
    reconstruction_took = gr.Markdown()
    on_click(reconstruct_button, partial(reconstruct, family), [source, sketch, upload],
             [reconstruction, reconstruction_took], api_name="reconstruct_vae", slow=False)

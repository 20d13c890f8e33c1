"""The PixelCNN tab: class-conditional samples, and completions of the top rows of a real or drawn digit.

Sampling is autoregressive (one network step per pixel), so a request holds at most MAX_SAMPLES images.
A drawing is white ink on a black canvas, as MNIST digits are, reduced to the model's resolution.
"""

import time
from functools import partial

import gradio as gr
import torch

from ..data import to_uint8_images
from ..registry import Family
from . import (DIGIT_CHOICES, check_number, check_seed, digit_label, digit_sketchpad, example_digits, gpu,
               model_on_device, on_click, sample_images, sketch_to_digit, slider, timed_grid)

MAX_SAMPLES = 16
MAX_GUIDANCE = 10.0
DEFAULT_GUIDANCE = 1.0  # the best share of samples of the requested digit: 0.94 against 0.82 unguided (pixelcnn_sampling.md)
DRAWN = "drawn below"


def sample(family: Family, digit, temperature, num_samples, seed, guidance_scale=0.0):
    """A grid of samples of one digit class (or of any: each sample's class drawn at random), at a temperature
    (below 1: cleaner, less varied), guided toward the class by classifier-free guidance (0: none)."""
    label = digit_label(digit)
    temperature = check_number("Temperature", temperature, 0.1, 1.5)
    num_samples = check_number("Number of samples", num_samples, 1, MAX_SAMPLES, integer=True)
    return sample_images(family, num_samples, seed, label=label, temperature=temperature,
                         guidance_scale=check_number("Guidance", guidance_scale, 0, MAX_GUIDANCE))


@gpu
def complete(family: Family, source, sketch, num_rows_given, digit, num_samples, seed, guidance_scale=0.0):
    """The top rows of a real or drawn digit, then that many completions sampled below them, side by side. With
    "any" class, each completion's class is drawn from what the model makes of the given rows."""
    num_rows_given = check_number("Rows given", num_rows_given, 4, 24, integer=True)
    label = digit_label(digit)
    guidance_scale = check_number("Guidance", guidance_scale, 0, MAX_GUIDANCE)
    num_samples = check_number("Number of completions", num_samples, 1, MAX_SAMPLES, integer=True)
    generator = torch.Generator().manual_seed(check_seed(seed))
    if source == DRAWN:
        image = sketch_to_digit(sketch)
    else:
        image = example_digits()[check_number("Digit to complete", source, 0, 9, integer=True)][None]  # (1, 1, 28, 28)
    start = time.perf_counter()
    model = model_on_device(family)
    given = to_uint8_images(image, model.config.resolution, model.config.num_channels)
    completions = model.complete(given.expand(num_samples, -1, -1, -1), num_rows_given, generator=generator, label=label,
                                 guidance_scale=guidance_scale)
    given = given.clone()
    given[:, :, num_rows_given:] = 0  # what the model is given
    return timed_grid(torch.cat([given, completions.cpu()]), start, num_columns=num_samples + 1)


def build_tab(family: Family) -> None:
    gr.Markdown("A class-conditional Gated PixelCNN (van den Oord et al.): each pixel is drawn from a distribution over "
                "its 256 values given the pixels above and to its left.")
    with gr.Row():
        digit = gr.Dropdown(DIGIT_CHOICES, value=DIGIT_CHOICES[0], label="Digit class")
        temperature = slider(0.1, 1.5, value=1.0, step=0.05, label="Temperature")
        count = slider(1, MAX_SAMPLES, value=9, step=1, label="Number of samples")
        seed = gr.Number(value=0, precision=0, label="Seed")
        guidance_scale = slider(0, MAX_GUIDANCE, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance")
    button = gr.Button("Sample", variant="primary")
    grid = gr.Image(label="Samples", type="pil", format="png")
    took = gr.Markdown()
    on_click(button, partial(sample, family), [digit, temperature, count, seed, guidance_scale], [grid, took],
             api_name="sample_pixelcnn", slow=True)
    with gr.Row():
        source = gr.Dropdown([*map(str, range(10)), DRAWN], value="7", label="Digit to complete")
        rows = slider(4, 24, value=14, step=1, label="Rows given")
        completion_digit = gr.Dropdown(DIGIT_CHOICES, value=DIGIT_CHOICES[0], label="Digit class (any: guessed from the given rows)")
        completion_count = slider(1, MAX_SAMPLES, value=4, step=1, label="Number of completions")
        completion_seed = gr.Number(value=0, precision=0, label="Seed")
        completion_guidance = slider(0, MAX_GUIDANCE, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance")
    sketch = digit_sketchpad("Your digit (white on black; pick \"drawn below\" above)")
    complete_button = gr.Button("Complete")
    completions = gr.Image(label="Given rows, then completions", type="pil", format="png")
    completions_took = gr.Markdown()
    on_click(complete_button, partial(complete, family),
             [source, sketch, rows, completion_digit, completion_count, completion_seed, completion_guidance],
             [completions, completions_took], api_name="complete_pixelcnn", slow=True)

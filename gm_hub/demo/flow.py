"""The flow tab, for RealNVP and Glow alike: samples with a temperature, and interpolation in z between two
real digits."""

from functools import partial

import gradio as gr

from ..registry import Family
from . import check_number, digit_interpolation, on_click, sample_images, slider

DESCRIPTIONS = {
    "realnvp": "RealNVP (Dinh et al.): a normalizing flow of affine couplings over dequantized pixels, with act-norm "
               "(Kingma & Dhariwal); its log-likelihood is exact.",
    "glow": "Glow (Kingma & Dhariwal): a normalizing flow of act-norm, invertible 1x1 convolutions and affine "
            "couplings; its log-likelihood is exact.",
}


def sample(family: Family, num_samples, seed, temperature):
    """A grid of flow samples, z ~ N(0, temperature^2 I) decoded (below 1: cleaner, less varied digits)."""
    temperature = check_number("Temperature", temperature, 0.1, 1.5)
    return sample_images(family, num_samples, seed, temperature=temperature)


def build_tab(family: Family) -> None:
    gr.Markdown(DESCRIPTIONS.get(family.name, f"{family.title}: a normalizing flow with an exact log-likelihood."))
    with gr.Row():
        count = slider(1, 64, value=16, step=1, label="Number of samples")
        seed = gr.Number(value=0, precision=0, label="Seed")
        temperature = slider(0.1, 1.5, value=0.7, step=0.05, label="Temperature")
    button = gr.Button("Sample", variant="primary")
    grid = gr.Image(label="Samples", type="pil", format="png")
    took = gr.Markdown()
    on_click(button, partial(sample, family), [count, seed, temperature], [grid, took], api_name=f"sample_{family.name}",
             slow=False)
    digit_interpolation(family, "Interpolation in z")

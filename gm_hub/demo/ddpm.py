"""The diffusion tab: samples by any of the model's diffusers schedulers, the denoising shown as it happens.

The images are sent about NUM_UPDATES times per request (every few steps, not every step), so the browser
is not flooded at 1,000 steps; the last update is the samples.
"""

import time
from functools import partial

import gradio as gr
import torch

from ..errors import UserError
from ..models.ddpm import DEFAULT_NUM_INFERENCE_STEPS, DEFAULT_SCHEDULER, SCHEDULERS
from ..registry import Family
from . import check_number, check_seed, gpu, model_on_device, on_click, slider, timed_grid

MAX_SAMPLES = 16
MAX_STEPS = 1_000
NUM_UPDATES = 10  # intermediate grids per request


@gpu
def denoise(family: Family, scheduler, num_steps, eta, num_samples, seed):
    """Stream (grid of the current noisy images x_t, "step k/n, time") every few steps; the last is the samples."""
    if scheduler not in SCHEDULERS:
        raise gr.Error(f"Scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    eta = check_number("Eta", eta, 0, 1)
    num_samples = check_number("Number of samples", num_samples, 1, MAX_SAMPLES, integer=True)
    generator = torch.Generator().manual_seed(check_seed(seed))
    start = time.perf_counter()
    model = model_on_device(family)
    num_steps = check_number("Steps", num_steps, 1, min(MAX_STEPS, model.config.num_train_timesteps), integer=True)
    eta = eta if scheduler == "DDIMScheduler" else 0.0  # the others have no eta
    try:
        for step in model.denoising_steps(num_samples, generator, scheduler, num_steps, eta):
            if step.step == step.num_steps:
                yield timed_grid(step.images, start)
            elif step.step % max(1, step.num_steps // NUM_UPDATES) == 0:
                grid, took = timed_grid(step.images, start)
                yield grid, f"step {step.step} of {step.num_steps}, {took}"
    except UserError as err:  # a scheduler that can't sample this model's prediction type
        raise gr.Error(str(err)) from err


def build_tab(family: Family) -> None:
    gr.Markdown("A denoising diffusion model (Ho et al.) on a diffusers UNet, sampled by any diffusers scheduler: "
                "DDPM's ancestral steps, DDIM (Song et al.), DPM-Solver++ (Lu et al.), ...")
    with gr.Row():
        scheduler = gr.Dropdown(list(SCHEDULERS), value=DEFAULT_SCHEDULER, label="Scheduler")
        steps = slider(1, MAX_STEPS, value=DEFAULT_NUM_INFERENCE_STEPS, step=1, label="Steps")
        eta = slider(0, 1, value=0, step=0.05, label="Eta (DDIM only: 0 deterministic, 1 like DDPM)")
        count = slider(1, MAX_SAMPLES, value=9, step=1, label="Number of samples")
        seed = gr.Number(value=0, precision=0, label="Seed")
    button = gr.Button("Sample", variant="primary")
    grid = gr.Image(label="Denoising (x_t), then the samples", type="pil", format="png")
    took = gr.Markdown()
    on_click(button, partial(denoise, family), [scheduler, steps, eta, count, seed], [grid, took], api_name="sample_ddpm",
             slow=True)

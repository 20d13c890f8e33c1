"""The demo's pieces: one module per family tab (`build_tab(family)`), and what every tab shares, here.

Models load lazily, once per process, from the folder or Hub repo id in `GM_HUB_<NAME>_MODEL` (e.g.
`GM_HUB_VAE_MODEL=you/vae-mnist`, through the Hugging Face cache), else the family's shipped folder under
`pretrained/`. A family whose model fails to load shows the error in its own tab; the others keep working.
Every number a request carries is checked on the server (the UI's sliders do not bind API callers): a
value outside its documented range gets one message naming the field.
"""

import functools
import math
import os
import time

import gradio as gr
import torch

from ..data import image_grid
from ..errors import UserError
from ..registry import Family

try:  # ZeroGPU Spaces; outside a Space the decorator does nothing
    from spaces import GPU as gpu
except ImportError:  # not installed (or only the repository's spaces/ folder is in sight)

    def gpu(function):
        return function


GPU_QUEUE = "gpu"  # events that run a model share one queue, so a GPU is never oversubscribed
MAX_SEED = 2**63 - 1
MAX_IMAGES = 64  # per request, for every image family


def model_source(family: Family) -> str | None:
    """The folder or repo id to load: GM_HUB_<NAME>_MODEL, else the shipped folder, else None."""
    configured = os.environ.get(f"GM_HUB_{family.name.upper()}_MODEL")
    if configured:
        return configured
    path = family.shipped_path()
    return str(path) if path is not None and path.is_dir() else None


def get_model(family: Family):
    """A family's model, loaded once per process on the CPU (ZeroGPU moves it inside GPU events)."""
    return _load(family.name)


@functools.cache
def _load(name: str):
    from .. import load_model
    from ..registry import get_family

    family = get_family(name)
    source = model_source(family)
    if source is None:
        raise UserError(f"no {family.title} model: set GM_HUB_{family.name.upper()}_MODEL or train one into pretrained/")
    return load_model(source)


def load_error(family: Family) -> str | None:
    """None when the family's model loads, else why not (shown in its tab)."""
    try:
        get_model(family)
    except (UserError, OSError) as err:
        return str(err)
    return None


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_on_device(family: Family):
    return get_model(family).to(device())


def check_number(name: str, value, low: float, high: float, integer: bool = False):
    """`value` as a number in [low, high], or a gr.Error naming the field (NaN, infinity, wrong type, range)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or not low <= number <= high or (integer and number != int(number)):
        kind = "a whole number" if integer else "a number"
        raise gr.Error(f"{name} must be {kind} in [{low:g}, {high:g}], got {value!r}")
    return int(number) if integer else number


def check_seed(seed) -> int:
    return check_number("Seed", seed, 0, MAX_SEED, integer=True)


def upscale(images: torch.Tensor, size: int = 84) -> torch.Tensor:
    """Nearest-neighbour upscaling so 28-pixel digits are visible: (N, C, H, W) uint8."""
    return torch.nn.functional.interpolate(images.float(), size=(size, size), mode="nearest").to(torch.uint8)


def timed_grid(images: torch.Tensor, start: float, num_columns: int | None = None):
    """(grid image, "took X s") for an image tab's output pair."""
    return image_grid(upscale(images.cpu()), num_columns=num_columns), f"{time.perf_counter() - start:.2f} s on {device().type.upper()}"


@gpu
def sample_images(family: Family, num_samples, seed, **options):
    """The one image-sampling handler: `model.sample(num_samples, generator, **options)` -> (grid, time)."""
    num_samples = check_number("Number of samples", num_samples, 1, MAX_IMAGES, integer=True)
    generator = torch.Generator().manual_seed(check_seed(seed))
    start = time.perf_counter()
    try:
        images = model_on_device(family).sample(num_samples, generator=generator, **options)
    except UserError as err:
        raise gr.Error(str(err)) from err
    return timed_grid(images, start)


@functools.cache
def example_digits() -> torch.Tensor:
    """One real digit of each class (the embedded MNIST sample), (10, 1, 28, 28) uint8."""
    from ..data import load_embedded_mnist

    return load_embedded_mnist().images[::500][:10]


@gpu
def interpolate_digits(family: Family, digit_a, digit_b, steps):
    """The model's `interpolate(image_a, image_b, steps)` between two real digits -> (grid, time)."""
    from ..data import to_uint8_images

    digit_a, digit_b = (check_number(name, d, 0, 9, integer=True) for name, d in (("From digit", digit_a), ("To digit", digit_b)))
    steps = check_number("Steps", steps, 3, 12, integer=True)
    start = time.perf_counter()
    model = model_on_device(family)
    digits = to_uint8_images(example_digits(), model.config.resolution, model.config.num_channels)
    return timed_grid(model.interpolate(digits[digit_a], digits[digit_b], steps), start, num_columns=steps)


def digit_interpolation(family: Family, label: str) -> None:
    """The interpolation row of a tab: two digit classes, steps, a button and the line, wired to `interpolate_digits`."""
    with gr.Row():
        digit_a = gr.Slider(0, 9, value=1, step=1, label="From digit")
        digit_b = gr.Slider(0, 9, value=7, step=1, label="To digit")
        steps = gr.Slider(3, 12, value=8, step=1, label="Steps")
    button = gr.Button("Interpolate")
    line = gr.Image(label=label, type="pil", format="png")
    took = gr.Markdown()
    button.click(functools.partial(interpolate_digits, family), [digit_a, digit_b, steps], [line, took],
                 api_name=f"interpolate_{family.name}", concurrency_id=GPU_QUEUE)

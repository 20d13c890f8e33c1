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
import numpy as np
import torch

from ..data import image_grid, to_uint8_images
from ..errors import UserError
from ..registry import Family

try:  # ZeroGPU Spaces; outside a Space the decorator does nothing
    from spaces import GPU as gpu
except ImportError:  # not installed (or only the repository's spaces/ folder is in sight)

    def gpu(function):
        return function


# Concurrency groups: events that take seconds (DDPM denoising, PixelCNN sampling and completion, GPT text, Compare)
# queue behind each other, never in front of the ones that take milliseconds (VAE, GAN, flows).
SLOW_EVENTS = "slow"
FAST_EVENTS = "fast"
CONCURRENCY_LIMITS = {SLOW_EVENTS: 1, FAST_EVENTS: 1}  # two events at once in all: one per core of the CPU Space
MAX_SEED = 2**63 - 1
MAX_IMAGES = 64  # per request, for every image family
CANVAS_SIZE = 280  # pixels of a digit sketchpad, ten per pixel of a 28-pixel digit
LUMINANCE = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as gm_hub.data converts RGB to grayscale


def slider(*args, **kwargs) -> gr.Slider:
    """A gr.Slider whose out-of-range message names its field: API calls skip the browser's clamping, and
    Gradio's own message ("Value 500 is greater than maximum value 64.") does not say which input. (A wrapper,
    not a subclass: Gradio writes a .pyi stub beside any module that subclasses a component.)"""
    component = gr.Slider(*args, **kwargs)
    preprocess = component.preprocess

    def preprocess_naming_the_field(payload: float) -> float:
        try:
            return preprocess(payload)
        except gr.Error as err:
            raise gr.Error(f"{component.label}: {err.message}") from None

    component.preprocess = preprocess_naming_the_field
    return component


def on_click(button: gr.Button, handler, inputs: list, outputs: list, *, api_name: str, slow: bool) -> None:
    """Run `handler` when `button` is clicked, as endpoint `api_name`, in the slow or the fast concurrency group."""
    group = SLOW_EVENTS if slow else FAST_EVENTS
    button.click(handler, inputs, outputs, api_name=api_name, concurrency_id=group,
                 concurrency_limit=CONCURRENCY_LIMITS[group])


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


DIGIT_CHOICES = ["any", *map(str, range(10))]  # a class dropdown's choices: "any", or one digit


def digit_label(digit, name: str = "Digit class") -> int | None:
    """A class dropdown's value: "any" (or None) -> None, "0".."9" -> that label; else a gr.Error naming `name`."""
    if digit is None or digit == DIGIT_CHOICES[0]:
        return None
    return check_number(name, digit, 0, 9, integer=True)


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
        digit_a = slider(0, 9, value=1, step=1, label="From digit")
        digit_b = slider(0, 9, value=7, step=1, label="To digit")
        steps = slider(3, 12, value=8, step=1, label="Steps")
    button = gr.Button("Interpolate")
    line = gr.Image(label=label, type="pil", format="png")
    took = gr.Markdown()
    on_click(button, functools.partial(interpolate_digits, family), [digit_a, digit_b, steps], [line, took],
             api_name=f"interpolate_{family.name}", slow=False)


def digit_sketchpad(label: str) -> gr.Sketchpad:
    """A black CANVAS_SIZE-pixel canvas with a fixed white brush, for a digit drawn as MNIST's are."""
    return gr.Sketchpad(value=np.zeros((CANVAS_SIZE, CANVAS_SIZE, 3), dtype=np.uint8), type="numpy",
                        image_mode="RGBA", canvas_size=(CANVAS_SIZE, CANVAS_SIZE), layers=False,
                        brush=gr.Brush(default_size=24, colors=["#ffffff"], default_color="#ffffff", color_mode="fixed"),
                        label=label)


def ink(image) -> np.ndarray:
    """An image, (H, W), (H, W, 3) or (H, W, 4) uint8 -> its brightness (H, W) in [0, 255], where a layer's
    transparent pixels count as black."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        return image
    brightness = image[..., :3] @ LUMINANCE if image.shape[-1] >= 3 else image[..., 0]
    return brightness * image[..., 3] / 255 if image.shape[-1] == 4 else brightness


def to_digit(brightness: np.ndarray) -> torch.Tensor:
    """(H, W) brightness in [0, 255] -> uint8 (1, 1, 28, 28), resized (stretched if not square)."""
    image = torch.from_numpy(brightness.round().clip(0, 255).astype(np.uint8))[None, None]  # (1, 1, H, W)
    return to_uint8_images(image, 28, 1)


def sketch_to_digit(sketch) -> torch.Tensor:
    """A gr.Sketchpad value (white ink on black) -> uint8 (1, 1, 28, 28): the background and every layer's ink."""
    if not isinstance(sketch, dict):
        raise gr.Error(f"Drawing must be a sketchpad value, got {type(sketch).__name__}")
    pieces = [sketch.get("background"), *(sketch.get("layers") or [])]
    pieces = [piece for piece in pieces if piece is not None] or [sketch.get("composite")]
    if pieces[0] is None:
        raise gr.Error("Drawing is empty: draw a digit on the sketchpad")
    drawn = np.max(np.stack([ink(piece) for piece in pieces]), axis=0)  # (H, W)
    if drawn.max() < 1:
        raise gr.Error("Drawing is empty: draw a digit on the sketchpad")
    return to_digit(drawn)


def upload_to_digit(image) -> tuple[torch.Tensor, bool]:
    """Any uploaded image, (H, W), (H, W, 3) or (H, W, 4) uint8 -> (uint8 (1, 1, 28, 28), whether it was inverted).

    The image is made grayscale and resized to 28x28. MNIST digits are white on black, so an image that is mostly
    bright (mean brightness above half, e.g. a dark digit on paper) is inverted first.
    """
    if image is None:
        raise gr.Error("Image is missing: upload an image of a digit")
    array = np.asarray(image)
    if array.dtype == object or array.ndim not in (2, 3) or array.size == 0:
        raise gr.Error(f"Image must be a picture (height, width[, channels]), got an array of shape {array.shape}")
    brightness = ink(array)
    inverted = bool(brightness.mean() > 127.5)
    if inverted:
        brightness = 255 - brightness
    digit = to_digit(brightness)
    if digit.max() < 1:
        raise gr.Error("Image is blank: upload an image of a digit")
    return digit, inverted

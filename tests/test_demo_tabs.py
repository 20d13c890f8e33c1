"""The demo tabs of the flows, PixelCNN, DDPM, the VAE's reconstruction and the conditional GAN: their handlers
in-process on tiny untrained 28-pixel models."""

import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from gm_hub import demo
from gm_hub.demo import ddpm as ddpm_tab
from gm_hub.demo import flow as flow_tab
from gm_hub.demo import gan as gan_tab
from gm_hub.demo import pixelcnn as pixelcnn_tab
from gm_hub.demo import vae as vae_tab
from gm_hub.models.ddpm import DDPM, DEFAULT_SCHEDULER, DDPMConfig
from gm_hub.models.gan import Generator, GeneratorConfig
from gm_hub.models.glow import Glow, GlowConfig
from gm_hub.models.pixelcnn import PixelCNN, PixelCNNConfig
from gm_hub.models.realnvp import RealNVP, RealNVPConfig
from gm_hub.models.vae import VAE, VAEConfig
from gm_hub.registry import get_family

TINY_MODELS = {  # 28 pixels, as the tabs' real digits and the 84-pixel upscaling (x3) expect
    "realnvp": lambda: RealNVP(RealNVPConfig(num_scales=2, num_couplings=1, hidden_channels=8)),
    "glow": lambda: Glow(GlowConfig(num_levels=2, num_steps=1, hidden_channels=8)),
    "pixelcnn": lambda: PixelCNN(PixelCNNConfig(hidden_channels=8, num_layers=2, first_kernel_size=3, num_mixtures=2)),
    "ddpm": lambda: DDPM(DDPMConfig(block_out_channels=(8, 16), attention_resolutions=(14,), norm_num_groups=4,
                                    num_train_timesteps=100)),
    "vae": lambda: VAE(VAEConfig(hidden_channels=8, latent_dim=4, num_mixtures=2)),
    "gan": lambda: Generator(GeneratorConfig(latent_dim=8, hidden_channels=8, num_classes=10)),
}
CELL = 86  # an 84-pixel upscaled digit and the grid's 2-pixel padding


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and leave the other cores alone)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tabs")
    for name, build in TINY_MODELS.items():
        torch.manual_seed(0)
        build().eval().save_pretrained(root / name)
    return root


@pytest.fixture
def tabs(folders, monkeypatch):
    for name in TINY_MODELS:
        monkeypatch.setenv(f"GM_HUB_{name.upper()}_MODEL", str(folders / name))
    demo._load.cache_clear()
    yield
    demo._load.cache_clear()


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("L"))


def digit(image, column: int = 0) -> list:
    """The 28-pixel digit in a grid's first row and `column`: every third upscaled pixel."""
    return pixels(image)[2:CELL:3, 2 + column * CELL : (column + 1) * CELL : 3].tolist()


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bar_sketch() -> dict:
    """A sketchpad value as the browser sends it: a black background and a layer, transparent but for a white bar."""
    canvas = demo.CANVAS_SIZE
    stroke = np.zeros((canvas, canvas, 4), dtype=np.uint8)
    stroke[40:240, 130:150] = 255
    return {"background": np.zeros((canvas, canvas, 3), dtype=np.uint8), "layers": [stroke], "composite": None}


@pytest.mark.parametrize("name", ["realnvp", "glow"])
def test_flow_tab_samples_and_interpolates_what_the_model_does(tabs, name):
    family = get_family(name)
    (first, took), (again, _) = flow_tab.sample(family, 4, 3, 0.7), flow_tab.sample(family, 4, 3, 0.7)
    assert first.size == (2 + 2 * CELL, 2 + 2 * CELL) and took.endswith("on CPU")
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(flow_tab.sample(family, 4, 4, 0.7)[0]))
    model = demo.get_model(family)
    assert digit(first) == model.sample(4, generator=generator(3), temperature=0.7)[0, 0].tolist()
    line, _ = demo.interpolate_digits(family, 1, 7, 5)
    assert line.size == (2 + 5 * CELL, 2 + CELL)
    digits = demo.example_digits()
    expected = model.interpolate(digits[1], digits[7], 5)
    assert digit(line) == expected[0, 0].tolist() and digit(line, 4) == expected[4, 0].tolist()


def test_pixelcnn_tab_samples_a_digit_class(tabs):
    family = get_family("pixelcnn")
    (first, took), (again, _) = pixelcnn_tab.sample(family, "3", 0.8, 4, 5), pixelcnn_tab.sample(family, "3", 0.8, 4, 5)
    assert first.size == (2 + 2 * CELL, 2 + 2 * CELL) and took.endswith("on CPU")
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(pixelcnn_tab.sample(family, "3", 0.8, 4, 6)[0]))
    expected = demo.get_model(family).sample(4, generator=generator(5), label=3, temperature=0.8)
    assert digit(first) == expected[0, 0].tolist()
    guided, _ = pixelcnn_tab.sample(family, "3", 0.8, 4, 5, 2.0)
    expected = demo.get_model(family).sample(4, generator=generator(5), label=3, temperature=0.8, guidance_scale=2.0)
    assert digit(guided) == expected[0, 0].tolist() and not np.array_equal(pixels(guided), pixels(first))
    any_class = pixelcnn_tab.sample(family, "any", 0.8, 4, 5, 2.0)[0]  # each sample guided toward its drawn class
    expected = demo.get_model(family).sample(4, generator=generator(5), temperature=0.8, guidance_scale=2.0)
    assert digit(any_class) == expected[0, 0].tolist()
    assert not np.array_equal(pixels(any_class), pixels(pixelcnn_tab.sample(family, "any", 0.8, 4, 5, 0.0)[0]))
    with pytest.raises(demo.gr.Error, match="Guidance"):
        pixelcnn_tab.sample(family, "3", 0.8, 4, 5, -1)


def test_pixelcnn_tab_completes_the_top_rows_of_a_real_digit(tabs):
    family = get_family("pixelcnn")
    grid, _ = pixelcnn_tab.complete(family, "7", None, 14, "any", 3, 2)
    assert grid.size == (2 + 4 * CELL, 2 + CELL)  # the given rows, then 3 completions
    real = demo.example_digits()[7, 0]
    assert digit(grid, 0)[:14] == real[:14].tolist() and not np.any(digit(grid, 0)[14:])  # what the model is given
    expected = demo.get_model(family).complete(real[None, None].expand(3, -1, -1, -1), 14, generator=generator(2))
    assert digit(grid, 1) == expected[0, 0].tolist() and digit(grid, 1)[:14] == real[:14].tolist()
    assert np.array_equal(pixels(grid), pixels(pixelcnn_tab.complete(family, "7", None, 14, "any", 3, 2)[0]))
    assert not np.array_equal(pixels(grid), pixels(pixelcnn_tab.complete(family, "7", None, 14, "any", 3, 3)[0]))


def test_pixelcnn_tab_completes_a_drawing(tabs):
    sketch = bar_sketch()
    drawn = demo.sketch_to_digit(sketch)
    assert drawn.shape == (1, 1, 28, 28) and drawn.dtype == torch.uint8
    assert drawn[0, 0, 10, 14] > 200 and drawn[0, 0, 10, 3] == 0 and drawn[0, 0, 1, 14] == 0  # the bar, scaled down
    grid, _ = pixelcnn_tab.complete(get_family("pixelcnn"), pixelcnn_tab.DRAWN, sketch, 10, "1", 2, 0)
    assert grid.size == (2 + 3 * CELL, 2 + CELL)
    assert digit(grid, 1)[:10] == drawn[0, 0, :10].tolist()
    empty = {**sketch, "layers": [np.zeros_like(sketch["layers"][0])]}
    with pytest.raises(demo.gr.Error, match="Drawing"):
        pixelcnn_tab.complete(get_family("pixelcnn"), pixelcnn_tab.DRAWN, empty, 10, "1", 2, 0)


def test_vae_tab_reconstructs_a_drawing_beside_it(tabs):
    family = get_family("vae")
    grid, took = vae_tab.reconstruct(family, vae_tab.DRAWING, bar_sketch(), None)
    assert grid.size == (2 + 2 * CELL, 2 + CELL) and took.endswith("on CPU")  # the 28-pixel input, its reconstruction
    drawn = demo.sketch_to_digit(bar_sketch())
    assert digit(grid, 0) == drawn[0, 0].tolist()
    assert digit(grid, 1) == demo.get_model(family).reconstruct(drawn)[0, 0].tolist()


def test_vae_tab_reconstructs_an_upload_inverting_a_light_page(tabs):
    family = get_family("vae")
    page = np.full((300, 200, 3), 230, dtype=np.uint8)  # RGB, not square: a dark bar on a light page
    page[50:250, 90:110] = 20
    grid, took = vae_tab.reconstruct(family, vae_tab.UPLOAD, None, page)
    assert grid.size == (2 + 2 * CELL, 2 + CELL) and "inverted" in took
    uploaded = digit(grid, 0)  # white on black at 28 x 28, as MNIST
    assert uploaded[14][14] > 200 and uploaded[14][3] < 30 and uploaded[1][14] < 30
    assert digit(grid, 1) == demo.get_model(family).reconstruct(torch.tensor(uploaded)[None, None])[0, 0].tolist()
    dark, took = vae_tab.reconstruct(family, vae_tab.UPLOAD, None, 255 - page[..., 0])  # grayscale, already white on black
    assert digit(dark, 0) == uploaded and "inverted" not in took


@pytest.mark.parametrize("scheduler, eta", [(DEFAULT_SCHEDULER, 0.0), ("DDIMScheduler", 0.5)])
def test_ddpm_tab_streams_the_denoising_and_ends_with_the_samples(tabs, scheduler, eta):
    family = get_family("ddpm")
    updates = list(ddpm_tab.denoise(family, scheduler, 30, eta, 4, 1))
    assert 1 < len(updates) <= ddpm_tab.NUM_UPDATES + 1  # every few steps, not every step
    assert all(grid.size == (2 + 2 * CELL, 2 + 2 * CELL) for grid, _ in updates)
    assert "step 3 of 30" in updates[0][1] and updates[-1][1].endswith("on CPU")
    expected = demo.get_model(family).sample(4, generator=generator(1), scheduler=scheduler, num_inference_steps=30, eta=eta)
    samples = updates[-1][0]
    assert digit(samples) == expected[0, 0].tolist() and digit(samples, 1) == expected[1, 0].tolist()
    assert np.array_equal(pixels(samples), pixels(list(ddpm_tab.denoise(family, scheduler, 30, eta, 4, 1))[-1][0]))
    assert not np.array_equal(pixels(samples), pixels(list(ddpm_tab.denoise(family, scheduler, 30, eta, 4, 2))[-1][0]))


@pytest.mark.parametrize("call, field", [
    (lambda f: flow_tab.sample(f("realnvp"), float("nan"), 0, 0.7), "Number of samples"),
    (lambda f: flow_tab.sample(f("glow"), 4, 2**64, 0.7), "Seed"),
    (lambda f: flow_tab.sample(f("glow"), 4, 0, float("nan")), "Temperature"),
    (lambda f: demo.interpolate_digits(f("realnvp"), 1, 10, 5), "To digit"),
    (lambda f: demo.interpolate_digits(f("glow"), 1, 7, 100), "Steps"),
    (lambda f: pixelcnn_tab.sample(f("pixelcnn"), "any", 1.0, 17, 0), "Number of samples"),
    (lambda f: pixelcnn_tab.sample(f("pixelcnn"), "12", 1.0, 4, 0), "Digit class"),
    (lambda f: pixelcnn_tab.sample(f("pixelcnn"), "any", float("nan"), 4, 0), "Temperature"),
    (lambda f: pixelcnn_tab.complete(f("pixelcnn"), "7", None, 30, "any", 2, 0), "Rows given"),
    (lambda f: pixelcnn_tab.complete(f("pixelcnn"), "x", None, 14, "any", 2, 0), "Digit to complete"),
    (lambda f: pixelcnn_tab.complete(f("pixelcnn"), pixelcnn_tab.DRAWN, "not a sketch", 14, "any", 2, 0), "Drawing"),
    (lambda f: pixelcnn_tab.complete(f("pixelcnn"), "7", None, 14, "any", 2, 2**64), "Seed"),
    (lambda f: vae_tab.reconstruct(f("vae"), vae_tab.DRAWING, {"background": None, "layers": [], "composite": None},
                                   None), "Drawing"),
    (lambda f: vae_tab.reconstruct(f("vae"), vae_tab.DRAWING, None, None), "Drawing"),
    (lambda f: vae_tab.reconstruct(f("vae"), vae_tab.UPLOAD, bar_sketch(), None), "Image"),
    (lambda f: vae_tab.reconstruct(f("vae"), vae_tab.UPLOAD, None, np.full((20, 20), 255, dtype=np.uint8)), "Image"),
    (lambda f: vae_tab.reconstruct(f("vae"), vae_tab.UPLOAD, None, "not an image"), "Image"),
    (lambda f: vae_tab.reconstruct(f("vae"), "camera", None, None), "Digit to reconstruct"),
    (lambda f: list(ddpm_tab.denoise(f("ddpm"), DEFAULT_SCHEDULER, 0, 0.0, 4, 0)), "Steps"),
    (lambda f: list(ddpm_tab.denoise(f("ddpm"), DEFAULT_SCHEDULER, 101, 0.0, 4, 0)), "Steps"),  # above its 100 timesteps
    (lambda f: list(ddpm_tab.denoise(f("ddpm"), "DDIMScheduler", 10, float("nan"), 4, 0)), "Eta"),
    (lambda f: list(ddpm_tab.denoise(f("ddpm"), DEFAULT_SCHEDULER, 10, 0.0, float("nan"), 0)), "Number of samples"),
    (lambda f: list(ddpm_tab.denoise(f("ddpm"), "NoScheduler", 10, 0.0, 4, 0)), "Scheduler"),
])
def test_bad_numbers_get_a_message_naming_the_field(tabs, call, field):
    with pytest.raises(demo.gr.Error, match=field):
        call(get_family)


def test_demo_has_the_new_tabs_endpoints(tabs):
    sys.path.insert(0, str(REPO_ROOT))
    try:
        import app

        built = app.build_demo()
    finally:
        sys.path.remove(str(REPO_ROOT))
    api_names = {dependency.api_name for dependency in built.fns.values()}
    assert {"sample_realnvp", "interpolate_realnvp", "sample_glow", "interpolate_glow", "sample_pixelcnn",
            "complete_pixelcnn", "sample_ddpm", "reconstruct_vae"} <= api_names


def test_conditional_gan_tab_samples_a_class_and_interpolates_between_the_seeds_samples(tabs):
    family = get_family("gan")
    model = demo.get_model(family)
    grid, _ = gan_tab.sample(family, 4, 5, 0.0, "6")
    expected = model.sample(4, torch.Generator().manual_seed(5), label=6)
    assert pixels(grid.convert("L"))[2:86:3, 2:86:3].tolist() == expected[0, 0].tolist()
    any_class, _ = gan_tab.sample(family, 4, 5, 0.0, "any")
    assert not np.array_equal(pixels(grid), pixels(any_class))
    # "any" at both ends: each end is its seed's single sample, class drawn after z.
    line, _ = gan_tab.interpolate(family, 1, 2, 4, True, "any", "any")
    ends = torch.cat([model.sample(1, torch.Generator().manual_seed(seed)) for seed in (1, 2)])
    assert line.size == (2 + 4 * CELL, CELL + 2)
    for column, end in ((0, ends[0]), (3, ends[1])):
        cell = pixels(line.convert("L"))[2:86:3, 2 + column * CELL : 2 + column * CELL + 84 : 3]
        assert np.abs(cell.astype(int) - end[0].numpy().astype(int)).max() <= 1  # batch size may round differently
    three_to_eight, _ = gan_tab.interpolate(family, 1, 2, 4, True, "3", "8")
    assert not np.array_equal(pixels(line), pixels(three_to_eight))
    with pytest.raises(demo.gr.Error, match="To digit"):
        gan_tab.interpolate(family, 1, 2, 4, True, "3", "12")

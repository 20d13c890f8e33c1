"""The demo: its handlers in-process, and the Space folder served over HTTP and called with gradio_client."""

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT
from gm_hub import demo
from gm_hub.demo import gan as gan_tab
from gm_hub.demo import gpt as gpt_tab
from gm_hub.demo import vae as vae_tab
from gm_hub.models.vae import VAE, VAEConfig
from gm_hub.registry import FAMILIES, get_family

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import load_test  # noqa: E402  (benchmarks/ is not a package)

SLOW_ENDPOINTS = {"sample_ddpm", "sample_pixelcnn", "complete_pixelcnn", "generate_text", "compare"}


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    folder = tmp_path_factory.mktemp("app") / "vae"
    torch.manual_seed(0)
    VAE(VAEConfig(hidden_channels=8, latent_dim=4, num_mixtures=2)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_gan(tmp_path_factory):
    from gm_hub.models.gan import Generator, GeneratorConfig

    folder = tmp_path_factory.mktemp("app") / "gan"
    torch.manual_seed(0)
    Generator(GeneratorConfig(latent_dim=8, hidden_channels=8)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_gpt(tmp_path_factory):
    from conftest import CORPUS
    from gm_hub.data import split_text
    from gm_hub.models.gpt import GPT, GPTConfig, train_tokenizer

    folder = tmp_path_factory.mktemp("app") / "gpt"
    torch.manual_seed(0)
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, sample_length=8)
    GPT(config, train_tokenizer(config, *split_text(CORPUS))).save_pretrained(folder)
    return folder


@pytest.fixture
def app_module(tiny_vae, tiny_gan, tiny_gpt, monkeypatch):
    monkeypatch.setenv("GM_HUB_VAE_MODEL", str(tiny_vae))
    monkeypatch.setenv("GM_HUB_GAN_MODEL", str(tiny_gan))
    monkeypatch.setenv("GM_HUB_GPT_MODEL", str(tiny_gpt))
    sys.path.insert(0, str(REPO_ROOT))
    import app

    demo._load.cache_clear()
    yield app
    demo._load.cache_clear()
    sys.path.remove(str(REPO_ROOT))


def pixels(image) -> np.ndarray:
    return np.asarray(image)


def test_vae_tab_samples_what_the_model_samples(app_module):
    family = get_family("vae")
    (first, took), (again, _) = vae_tab.sample(family, 9, 3, True), vae_tab.sample(family, 9, 3, True)
    assert first.size == (2 + 3 * 86, 2 + 3 * 86) and took.endswith("on CPU")  # 3 x 3 grid of 84-pixel digits
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(vae_tab.sample(family, 9, 4, True)[0]))
    expected = demo.get_model(family).sample(9, generator=torch.Generator().manual_seed(3), most_likely_pixels=True)
    assert pixels(first.convert("L"))[2:86:3, 2:86:3].tolist() == expected[0, 0].tolist()  # every third upscaled pixel
    line, _ = demo.interpolate_digits(family, 1, 7, 5)
    assert line.size == (2 + 5 * 86, 2 + 86)
    assert demo.get_model(family) is demo.get_model(family)  # loaded once per process


def test_gan_tab_truncation_and_interpolation(app_module):
    family = get_family("gan")
    grid, _ = gan_tab.sample(family, 4, 0, 0.0)
    truncated, _ = gan_tab.sample(family, 4, 0, 1.0)
    assert grid.size == truncated.size == (2 + 2 * 86, 2 + 2 * 86)
    assert not np.array_equal(pixels(grid), pixels(truncated))  # truncation changes the latents
    generator = demo.get_model(family)
    expected = generator.sample(4, torch.Generator().manual_seed(0), truncation=1.0)
    assert pixels(truncated.convert("L"))[2:86:3, 2:86:3].tolist() == expected[0, 0].tolist()
    line, _ = gan_tab.interpolate(family, 1, 2, 4, True)
    assert line.size == (2 + 4 * 86, 2 + 86)
    for call in (lambda: gan_tab.sample(family, 4, 0, 0.0, "7"), lambda: gan_tab.interpolate(family, 1, 2, 4, True, "3", "8")):
        with pytest.raises(demo.gr.Error, match="unconditional"):  # this tiny generator has no classes
            call()


def test_text_tab_streams_only_the_new_text_and_joins_to_generate(app_module):
    family = get_family("gpt")
    updates = list(gpt_tab.generate(family, "Speak", 20, 0.8, 0, 1.0, 1.0, 3))
    expected = demo.get_model(family).generate("Speak", 20, temperature=0.8, seed=3)
    assert updates[-1] == expected and all(expected.startswith(u) for u in updates)  # growing prefixes, no prompt
    with pytest.raises(demo.gr.Error, match="outside"):
        list(gpt_tab.generate(family, "Speak \u00e9", 5, 0.8, 0, 1.0, 1.0, 0))


@pytest.mark.parametrize("call, field", [
    (lambda f: vae_tab.sample(f("vae"), float("nan"), 0, True), "Number of samples"),
    (lambda f: vae_tab.sample(f("vae"), 65, 0, True), "Number of samples"),
    (lambda f: vae_tab.sample(f("vae"), 4, 2**64, True), "Seed"),
    (lambda f: vae_tab.sample(f("vae"), 4, float("inf"), True), "Seed"),
    (lambda f: gan_tab.sample(f("gan"), 4, 0, float("nan")), "Truncation"),
    (lambda f: gan_tab.interpolate(f("gan"), 1, 2, 100, True), "Steps"),
    (lambda f: list(gpt_tab.generate(f("gpt"), "x" * 3000, 16, 0.8, 0, 1.0, 1.0, 0)), "Prompt"),
    (lambda f: list(gpt_tab.generate(f("gpt"), "Speak", 16, float("nan"), 0, 1.0, 1.0, 0)), "Temperature"),
])
def test_bad_numbers_get_a_message_naming_the_field(app_module, call, field):
    with pytest.raises(demo.gr.Error, match=field):
        call(get_family)


def test_demo_has_a_tab_per_family_and_named_endpoints(app_module):
    built = app_module.build_demo()
    api_names = {dependency.api_name for dependency in built.fns.values()}
    assert {"sample_vae", "interpolate_vae", "sample_gan", "interpolate_gan", "generate_text"} <= api_names


def test_a_family_that_fails_to_load_shows_why_in_its_own_tab(app_module, monkeypatch, tmp_path):
    monkeypatch.setenv("GM_HUB_GAN_MODEL", str(tmp_path / "missing"))
    built = app_module.build_demo()
    texts = [block.value or "" for block in built.blocks.values() if isinstance(block, demo.gr.Markdown)]
    assert any("not available" in text and "missing" in text for text in texts)
    api_names = {dependency.api_name for dependency in built.fns.values()}
    assert "sample_vae" in api_names and "sample_gan" not in api_names  # the other tabs still work


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_space_folder_serves_the_same_app_over_http(tiny_vae, tmp_path):
    sys.path.insert(0, str(REPO_ROOT / "spaces"))
    from build import build_space

    sys.path.remove(str(REPO_ROOT / "spaces"))
    space = tmp_path / "space"
    files = {p.relative_to(space).as_posix() for p in build_space(space)}
    assert {"app.py", "README.md", "requirements.txt", "gm_hub/hub.py"} <= files
    assert not any("checkpoint-" in f or f.startswith("tests/") for f in files)
    assert (space / "app.py").read_text() == (REPO_ROOT / "app.py").read_text()

    port = free_port()
    env = {**os.environ, "GM_HUB_VAE_MODEL": str(tiny_vae), "GRADIO_SERVER_PORT": str(port),
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SSR_MODE": "false",
           "PYTHONPATH": str(space)}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        from gradio_client import Client

        deadline, client = time.time() + 90, None
        while client is None and time.time() < deadline:
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:  # not listening yet
                time.sleep(0.5)
        assert client is not None, "the app did not start within 90 s"
        path, took = client.predict(4, 11, False, api_name="/sample_vae")
        image = Image.open(path)
        assert took.endswith("on CPU")
        assert image.size == (2 + 2 * 86, 2 + 2 * 86)
        expected = VAE.from_pretrained(tiny_vae).sample(4, generator=torch.Generator().manual_seed(11))
        assert np.asarray(image.convert("L"))[2:86, 2:86].mean() == pytest.approx(expected[0].float().mean().item(), abs=1.0)
        with pytest.raises(Exception, match="Number of samples: Value 500 is greater than maximum value 64"):
            client.predict(500, 11, False, api_name="/sample_vae")  # past the slider: Gradio refuses it, naming the field
        assert client.predict(4, 11, False, api_name="/sample_vae")[1].endswith("on CPU")  # and keeps serving
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_built_space_front_matter_matches_this_build(tmp_path):
    import gradio
    import yaml

    sys.path.insert(0, str(REPO_ROOT / "spaces"))
    from build import build_space

    sys.path.remove(str(REPO_ROOT / "spaces"))
    files = {p.relative_to(tmp_path).as_posix() for p in build_space(tmp_path, {"vae": "you/vae-mnist"})}
    header = yaml.safe_load((tmp_path / "README.md").read_text(encoding="utf-8").split("---\n")[1])
    assert header["sdk"] == "gradio" and header["sdk_version"] == gradio.__version__
    assert header["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert header["app_file"] in files and header["short_description"] and len(header["short_description"]) <= 60
    assert header["models"] == ["you/vae-mnist"]  # loaded from the Hub, so its shipped folder stays out
    assert not any(f.startswith("pretrained/vae-mnist/") for f in files)
    assert any(f.startswith("pretrained/gan-mnist/") for f in files)
    assert "python spaces/build.py --output_dir" in (tmp_path / "README.md").read_text(encoding="utf-8")


def test_compare_samples_every_image_family_with_the_same_seed(app_module):
    from gm_hub.demo import compare

    families = [get_family("vae"), get_family("gan")]
    *outputs, plot = compare.compare(families, 4, 2)
    grids, captions = outputs[0::2], outputs[1::2]
    assert len(grids) == 2 and all(grid.size == (2 + 2 * 86, 2 + 2 * 86) for grid in grids)
    assert captions[0].startswith("**VAE**") and " s on CPU" in captions[1]
    expected = demo.get_model(families[1]).sample(4, generator=torch.Generator().manual_seed(2))
    assert pixels(grids[1].convert("L"))[2:86:3, 2:86:3].tolist() == expected[0, 0].tolist()
    assert plot is not None
    built = app_module.build_demo()
    assert "compare" in {dependency.api_name for dependency in built.fns.values()}


def test_slow_and_fast_events_queue_apart(app_module):
    """Seconds-long events share one concurrency group, millisecond ones another, each with its own limit."""
    built = app_module.build_demo()
    groups = {dependency.api_name: (dependency.concurrency_id, dependency.concurrency_limit)
              for dependency in built.fns.values()}
    assert SLOW_ENDPOINTS <= set(groups) and {"sample_vae", "reconstruct_vae", "sample_gan", "sample_glow"} <= set(groups)
    for api_name, group in groups.items():
        expected = demo.SLOW_EVENTS if api_name in SLOW_ENDPOINTS else demo.FAST_EVENTS
        assert group == (expected, demo.CONCURRENCY_LIMITS[expected]), api_name


def test_a_fast_request_does_not_wait_behind_a_slow_one(tiny_gan, tmp_path):
    from gradio_client.utils import Status

    from gm_hub.models.ddpm import DDPM, DDPMConfig

    torch.manual_seed(0)  # a tiny UNet, but 1,000 DDPM steps of 16 images: tens of seconds on this CPU
    DDPM(DDPMConfig(block_out_channels=(8, 16), attention_resolutions=(14,), norm_num_groups=4)).save_pretrained(tmp_path / "ddpm")
    models = {family.name: str(tmp_path / "missing") for family in FAMILIES.values() if family.demo_tab}  # fast start
    models.update(ddpm=str(tmp_path / "ddpm"), gan=str(tiny_gan))
    port = load_test.free_port()
    server = load_test.start_app(port, models)
    try:
        client = load_test.connect(port, server)
        slow = client.submit("DDPMScheduler", 1000, 0.0, 16, 0, api_name="/sample_ddpm")
        deadline = time.time() + 60
        while slow.status().code not in (Status.PROCESSING, Status.ITERATING) and time.time() < deadline:
            time.sleep(0.1)
        assert slow.status().code in (Status.PROCESSING, Status.ITERATING), "the DDPM request never started"
        path, took = client.submit(4, 0, 0.0, api_name="/sample_gan").result(timeout=30)  # TimeoutError if it waits
        assert not slow.done(), "the GAN request waited for the DDPM one"
        assert Image.open(path).size == (2 + 2 * 86, 2 + 2 * 86) and took.endswith("on CPU")
        slow.cancel()
    finally:
        server.terminate()
        server.wait(timeout=30)

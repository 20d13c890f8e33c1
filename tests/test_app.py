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
from gm_hub.models.vae import VAE, VAEConfig


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

    app.get_model.cache_clear()
    yield app
    sys.path.remove(str(REPO_ROOT))


def test_handlers_sample_and_interpolate(app_module):
    first, again = app_module.sample_vae(9, 3), app_module.sample_vae(9, 3)
    assert first.size == (2 + 3 * 86, 2 + 3 * 86)  # 3 x 3 grid of 84-pixel digits
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(app_module.sample_vae(9, 4)))
    line = app_module.interpolate_vae(1, 7, 5)
    assert line.size == (2 + 5 * 86, 2 + 86)
    assert app_module.get_model("vae") is app_module.get_model("vae")  # loaded once per process


def test_gan_handlers(app_module):
    grid = app_module.sample_gan(4, 0, 0.0)
    assert grid.size == (2 + 2 * 86, 2 + 2 * 86)
    assert np.asarray(app_module.sample_gan(4, 0, 1.0)).shape == np.asarray(grid).shape
    line = app_module.interpolate_gan(1, 2, 4, True)
    assert line.size == (2 + 4 * 86, 2 + 86)


def test_gpt_streams_the_same_text_as_generate(app_module):
    updates = list(app_module.generate_text("Speak", 20, 0.8, 0, 1.0, 1.0, 3))
    assert len(updates) > 1 and all(u.startswith("Speak") for u in updates)
    expected = app_module.get_model("gpt").generate("Speak", 20, temperature=0.8, seed=3)
    assert updates[-1] == "Speak" + expected
    with pytest.raises(app_module.gr.Error, match="outside"):
        list(app_module.generate_text("Speak \u00e9", 5, 0.8, 0, 1.0, 1.0, 0))


def test_demo_has_a_tab_and_named_endpoints(app_module):
    demo = app_module.build_demo()
    api_names = {dependency.api_name for dependency in demo.fns.values()}
    assert {"sample_vae", "interpolate_vae", "sample_gan", "interpolate_gan", "generate_text"} <= api_names


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
        path = client.predict(4, 11, False, api_name="/sample_vae")
        image = Image.open(path)
        assert image.size == (2 + 2 * 86, 2 + 2 * 86)
        expected = VAE.from_pretrained(tiny_vae).sample(4, generator=torch.Generator().manual_seed(11))
        assert np.asarray(image.convert("L"))[2:86, 2:86].mean() == pytest.approx(expected[0].float().mean().item(), abs=1.0)
    finally:
        server.terminate()
        server.wait(timeout=30)

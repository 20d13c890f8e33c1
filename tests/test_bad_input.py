"""Bad input never crashes, hangs or destroys work: each class of it through the real entry points.

Loading (`load_model`), the `gm-hub` CLI in a subprocess, a training script in a subprocess, and the app
through gradio_client on a loopback port. Each bad input gets one line that says what to fix (exit status 2
on the command line), nothing is overwritten, and the app answers a normal request right after each bad one.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import CORPUS, FAMILY_SCRIPTS, REPO_ROOT, TINY_VAE_FLAGS, run_script
from gm_hub import load_model
from gm_hub.errors import UserError
from gm_hub.models.vae import VAE, VAEConfig


def gm_hub_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "gm_hub.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO_ROOT)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2 and one error line (no traceback) holding every fragment."""
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr[-2000:]
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad") / "vae"
    torch.manual_seed(0)
    VAE(VAEConfig(hidden_channels=8, latent_dim=4, num_mixtures=2)).save_pretrained(folder)
    return folder


@pytest.fixture
def damaged(vae_folder, tmp_path) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(vae_folder, folder)
    return folder


# --- 4. damaged or foreign model files ------------------------------------------------------------------


def truncate(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def empty(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"")


def symlink(folder: Path) -> None:
    target = folder.parent / "elsewhere.safetensors"
    (folder / "model.safetensors").rename(target)
    (folder / "model.safetensors").symlink_to(target)


def integer_weights(folder: Path) -> None:
    weights = load_file(folder / "model.safetensors")
    save_file({k: v.to(torch.int32) if v.is_floating_point() else v for k, v in weights.items()}, folder / "model.safetensors")


def nan_weights(folder: Path) -> None:
    weights = load_file(folder / "model.safetensors")
    first = sorted(weights)[0]
    weights[first] = torch.full_like(weights[first], float("nan"))
    save_file(weights, folder / "model.safetensors")


def config_bytes(content: bytes):
    def write(folder: Path) -> None:
        (folder / "config.json").write_bytes(content)
    return write


def config_value(key: str, raw: str):
    """Replace the value of `key` in config.json by `raw` JSON text."""
    def write(folder: Path) -> None:
        text = (folder / "config.json").read_text()
        (folder / "config.json").write_text(re.sub(rf'"{key}": [^,\n}}]+', f'"{key}": {raw}', text))
    return write


@pytest.mark.parametrize("damage, message", [
    (truncate, "not a readable safetensors"),
    (empty, "not a readable safetensors"),
    (symlink, "symbolic link"),
    (integer_weights, "wrong kind"),
    (nan_weights, "NaN"),
    (config_bytes(b"\xff\xfe{}"), "not UTF-8"),
    (config_bytes(b"[" * 100_000), "not valid JSON"),
    (config_bytes(b"{" * 30 + b"}" * 30), "not valid JSON"),
    (config_value("latent_dim", "1" + "0" * 5000), "not valid JSON"),
    (config_value("latent_dim", "1e400"), "too large"),
    (config_value("latent_dim", "100000000000000000000"), "latent_dim"),
    (config_bytes(b"{}"), "holds no model saved by gm-hub"),
])
def test_damaged_model_files_are_refused_in_one_line(damaged, damage, message):
    damage(damaged)
    with pytest.raises(UserError, match=message):
        load_model(damaged)


def test_the_cli_reports_a_damaged_folder_in_one_line(damaged):
    truncate(damaged)
    assert_one_line_error(gm_hub_cli("sample", damaged, "--output", damaged.parent / "x.png"), "safetensors")


def test_a_corrupt_tokenizer_is_refused(tmp_path):
    from gm_hub.data import split_text
    from gm_hub.models.gpt import GPT, GPTConfig, train_tokenizer

    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, sample_length=8)
    GPT(config, train_tokenizer(config, *split_text(CORPUS))).save_pretrained(tmp_path / "gpt")
    (tmp_path / "gpt" / "tokenizer.json").write_text('{"model": {"type": "NoSuchModel"}}')
    with pytest.raises(UserError, match="not a valid tokenizer"):
        load_model(tmp_path / "gpt")


@pytest.mark.parametrize("name, message", [
    ("someone/not-in-the-cache", "not in the Hugging Face cache"),
    ("not a repo id!!", "neither a folder nor a Hub repo id"),
    ("./no/such/folder", "does not exist"),
])
def test_unusable_repo_ids_and_paths_are_refused(name, message, tmp_path):
    with pytest.raises(UserError, match=message):
        load_model(name, cache_dir=str(tmp_path))


# --- 5. the sampling CLI ----------------------------------------------------------------------------------


def test_the_cli_samples_text_models_to_a_text_file(tmp_path):
    result = gm_hub_cli("sample", REPO_ROOT / "pretrained" / "gpt-shakespeare", "--num_samples", "2", "--output", tmp_path / "t.txt")
    assert result.returncode == 0, result.stderr[-2000:]
    texts = (tmp_path / "t.txt").read_text(encoding="utf-8").split("\n\n----\n\n")
    assert len([t for t in texts if t]) == 2
    assert_one_line_error(gm_hub_cli("sample", REPO_ROOT / "pretrained" / "gpt-shakespeare", "--output", tmp_path / "t.png"),
                          "generates text", ".txt")


@pytest.mark.parametrize("flags, fragments", [
    (["--num_samples", "1000000000"], ["--num_samples", "100,000"]),
    (["--num_samples", "0"], ["--num_samples"]),
    (["--seed", str(2**64)], ["--seed"]),
    (["--output", "/no/such/folder/grid.png"], ["does not exist"]),
    (["--output", "grid.gif"], [".png", ".npy"]),
])
def test_the_sampling_cli_refuses_what_it_cannot_do(vae_folder, flags, fragments):
    assert_one_line_error(gm_hub_cli("sample", vae_folder, *flags), *fragments)


def test_many_samples_go_to_disk_in_batches(vae_folder, tmp_path):
    import numpy as np

    result = gm_hub_cli("sample", vae_folder, "--num_samples", "600", "--output", tmp_path / "many.npy")
    assert result.returncode == 0, result.stderr[-2000:]
    array = np.load(tmp_path / "many.npy", mmap_mode="r")
    assert array.shape == (600, 1, 28, 28) and array.dtype == np.uint8 and array[-1].any()


# --- 3. training never destroys or mixes work -------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "vae"
    run_script("train_vae.py", ["--output_dir", str(out), "--max_train_steps", "4", "--checkpointing_steps", "2", *TINY_VAE_FLAGS])
    return out


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    shutil.copytree(trained_run, tmp_path / "run")
    return tmp_path / "run"


def script(name: str, *flags: str) -> subprocess.CompletedProcess:
    """A training script as `python training/<name>` (accelerate launch adds its own traceback when a child fails)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "training" / name), *flags], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO_ROOT)


def train(out: Path, *flags: str) -> subprocess.CompletedProcess:
    return script("train_vae.py", "--output_dir", str(out), "--max_train_steps", "6", *TINY_VAE_FLAGS, *flags)


def test_a_folder_with_a_model_is_not_overwritten(run_copy):
    before = (run_copy / "model.safetensors").read_bytes()
    assert_one_line_error(train(run_copy), "already holds a trained model", "--overwrite_output_dir")
    assert (run_copy / "model.safetensors").read_bytes() == before
    result = train(run_copy, "--overwrite_output_dir")
    assert result.returncode == 0, result.stderr[-2000:]
    history = [json.loads(line)["step"] for line in (run_copy / "logs" / "history.jsonl").read_text().splitlines()]
    assert history == sorted(set(history)) and history[-1] == 6  # the new run's history alone, not mixed


def test_resuming_with_every_checkpoint_damaged_stops(run_copy):
    for checkpoint in run_copy.glob("checkpoint-*"):
        weights = next(checkpoint.glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:-10])
    assert_one_line_error(train(run_copy, "--resume_from_checkpoint", "latest"), "every checkpoint", "damaged")


def test_an_edited_manifest_is_not_believed(run_copy):
    latest = max(run_copy.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    manifest = json.loads((latest / "gm_hub_checkpoint.json").read_text())
    (latest / "gm_hub_checkpoint.json").write_text(json.dumps({**manifest, "step": 1}))
    for checkpoint in run_copy.glob("checkpoint-*"):
        if checkpoint != latest:
            (checkpoint / "gm_hub_checkpoint.json").write_text('{"files": 3}')  # the wrong shape
    assert_one_line_error(train(run_copy, "--resume_from_checkpoint", "latest"), "every checkpoint", "damaged")


def test_resuming_another_model_names_the_field(run_copy):
    flags = [f if f != "4" else "6" for f in TINY_VAE_FLAGS]  # --latent_dim 4 -> 6
    result = script("train_vae.py", "--output_dir", str(run_copy), "--max_train_steps", "6",
                    "--resume_from_checkpoint", "latest", *flags)
    assert_one_line_error(result, "latent_dim", "in the checkpoint")


def test_resuming_a_gpt_on_another_text_of_the_same_alphabet_size_stops(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(CORPUS, encoding="utf-8")
    second.write_text(CORPUS.replace("a", "#"), encoding="utf-8")  # another character, same count
    flags = ["--output_dir", str(tmp_path / "gpt"), "--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "16",
             "--sample_length", "8", "--train_batch_size", "4", "--num_sample_images", "1", "--checkpointing_steps", "1"]
    result = script("train_gpt.py", "--train_file", str(first), "--max_train_steps", "2", *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    result = script("train_gpt.py", "--train_file", str(second), "--max_train_steps", "3", "--resume_from_checkpoint",
                    "latest", *flags)
    assert_one_line_error(result, "vocabulary_sha256", "in the checkpoint")


@pytest.mark.parametrize("flags, fragments", [
    (["--learning_rate", "nan"], ["--learning_rate", "finite"]),
    (["--learning_rate", "inf"], ["--learning_rate", "finite"]),
    (["--resume_from_checkpoint", "latest"], ["no checkpoint-N folder"]),
])
def test_bad_training_flags_are_refused(tmp_path, flags, fragments):
    assert_one_line_error(train(tmp_path / "new", *flags), *fragments)


def test_bad_training_data_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    assert_one_line_error(train(tmp_path / "file"), "is a file")
    images = tmp_path / "images"
    images.mkdir()
    (images / "digit.png").write_bytes(b"not a png at all")
    assert_one_line_error(train(tmp_path / "out", "--train_data_dir", str(images)), "not a readable image")
    from PIL import Image

    Image.new("L", (5000, 4000)).save(images / "digit.png")  # 20 megapixels
    assert_one_line_error(train(tmp_path / "out", "--train_data_dir", str(images)), "pixels")
    (tmp_path / "latin1.txt").write_bytes("café\n".encode("latin-1") * 100)
    result = script("train_gpt.py", "--output_dir", str(tmp_path / "gpt"), "--train_file", str(tmp_path / "latin1.txt"))
    assert_one_line_error(result, "not UTF-8")


def test_a_conditional_pixelcnn_refuses_unlabelled_images(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for index in range(12):
        Image.new("L", (28, 28), color=20 * index).save(images / f"{index}.png")
    flags = FAMILY_SCRIPTS["pixelcnn"][1]
    result = script("train_pixelcnn.py", "--output_dir", str(tmp_path / "out"), "--train_data_dir", str(images),
                    "--max_train_steps", "2", *flags)
    assert_one_line_error(result, "has no labels", "--num_classes 0")
    unconditional = script("train_pixelcnn.py", "--output_dir", str(tmp_path / "out0"), "--train_data_dir", str(images),
                           "--max_train_steps", "2", "--num_classes", "0", *flags)
    assert unconditional.returncode == 0, unconditional.stderr[-2000:]


# --- 1, 2. the app keeps serving --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_client(vae_folder, tmp_path_factory):
    from gradio_client import Client

    from gm_hub.models.gan import Generator, GeneratorConfig

    gan_folder = tmp_path_factory.mktemp("bad") / "gan"
    torch.manual_seed(0)
    Generator(GeneratorConfig(latent_dim=8, hidden_channels=8)).save_pretrained(gan_folder)
    port = free_port()
    env = {**os.environ, "GM_HUB_VAE_MODEL": str(vae_folder), "GM_HUB_GAN_MODEL": str(gan_folder),
           "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_SSR_MODE": "false", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline, client = time.time() + 90, None
    while client is None and time.time() < deadline:
        assert server.poll() is None, server.stdout.read().decode()[-3000:]
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        except (httpx.HTTPError, OSError, ValueError):  # not listening yet
            time.sleep(0.5)
    assert client is not None, "the app did not start within 90 s"
    yield client
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.parametrize("endpoint, arguments, field", [
    ("/sample_vae", (2.5, 0, True), "Number of samples"),  # NaN can't travel in JSON: test_app sends it in-process
    ("/sample_vae", (10**9, 0, True), "Number of samples"),
    ("/sample_vae", (4, 2**70, True), "Seed"),
    ("/sample_vae", (4, -1, True), "Seed"),
    ("/sample_gan", (4, 0, 50.0), "Truncation"),
    ("/interpolate_gan", (1, 2, 10**6, True), "Steps"),
    ("/interpolate_vae", (1, 70, 5), "To digit"),
])
def test_the_app_refuses_bad_numbers_and_keeps_serving(app_client, endpoint, arguments, field):
    from gradio_client.exceptions import AppError

    # Gradio's sliders refuse values outside their range first ("greater than maximum value 64"); the
    # handlers refuse the rest, naming the field.
    with pytest.raises(AppError, match=f"{field}|maximum value|minimum value"):
        app_client.predict(*arguments, api_name=endpoint)
    grid, took = app_client.predict(4, 1, True, api_name="/sample_vae")
    assert Path(grid).is_file() and "s on" in took


def test_a_tiny_truncation_answers_at_once(app_client):
    start = time.perf_counter()
    grid, _ = app_client.predict(16, 0, 1e-9, api_name="/sample_gan")  # redrawing until |z| < 1e-9 never ended
    assert Path(grid).is_file() and time.perf_counter() - start < 20

"""Hub conventions: strict safetensors loading, config validation before allocation, cache, cards, upload."""

import json
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import gm_hub
from gm_hub.errors import UserError
from gm_hub.hub import ConfigError, config_from_dict
from gm_hub.models.vae import VAE, VAEConfig

TINY = VAEConfig(hidden_channels=8, latent_dim=4, num_mixtures=2)


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "vae"
    torch.manual_seed(0)
    VAE(TINY).save_pretrained(folder, model_card_kwargs={"metrics": {"bits_per_dim": 1.25}, "training_command": "x"})
    return folder


def test_saved_folder_layout_and_card(saved):
    assert sorted(p.name for p in saved.iterdir()) == ["README.md", "config.json", "model.safetensors"]  # saving never samples
    config = json.loads((saved / "config.json").read_text())
    assert config["_gm_hub_class"] == "VAE" and config["latent_dim"] == 4
    metadata = yaml.safe_load((saved / "README.md").read_text().split("---")[1])
    assert metadata["library_name"] == "gm-hub" and {"vae", "gm-hub"} <= set(metadata["tags"])
    assert metadata["model-index"][0]["results"][0]["metrics"][0] == {"type": "bits_per_dim", "value": 1.25, "name": "bits_per_dim"}


def test_card_is_rewritten_with_new_metrics(saved):
    model = VAE.from_pretrained(saved)
    model.save_pretrained(saved, model_card_kwargs={"metrics": {"bits_per_dim": 0.5}})
    assert "| bits_per_dim | 0.5000 |" in (saved / "README.md").read_text()


def test_load_model_picks_the_class_and_reproduces_samples(saved):
    model = gm_hub.load_model(str(saved))
    assert isinstance(model, VAE) and not model.training
    again = VAE.from_pretrained(saved)
    assert torch.equal(model.sample(4, torch.Generator().manual_seed(1)), again.sample(4, torch.Generator().manual_seed(1)))


def test_loading_is_strict_about_missing_weights(saved):
    weights = load_file(saved / "model.safetensors")
    weights.pop(next(iter(weights)))
    save_file(weights, saved / "model.safetensors")
    with pytest.raises(ConfigError, match="missing"):
        VAE.from_pretrained(saved)


def test_pickle_weights_are_never_loaded(saved):
    torch.save(VAE(TINY).state_dict(), saved / "pytorch_model.bin")
    (saved / "model.safetensors").unlink()
    with pytest.raises(UserError, match="model.safetensors"):
        VAE.from_pretrained(saved)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"surprise": 1}, "unknown keys"),
        ({"latent_dim": "32"}, "latent_dim"),
        ({"latent_dim": 4.5}, "latent_dim"),
        ({"num_flows": True}, "num_flows"),
        ({"resolution": 30}, "resolution"),
        ({"latent_dim": 8}, "shape"),  # valid config, weights of another shape
    ],
)
def test_config_json_is_validated(saved, change, message):
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ConfigError, match=message):
        VAE.from_pretrained(saved)


def test_absurd_sizes_are_refused_before_any_allocation(saved):
    config = json.loads((saved / "config.json").read_text())
    # Within every field's range, yet ~10^11 parameters (400 GB): refused from the meta-device build.
    (saved / "config.json").write_text(json.dumps({**config, "resolution": 256, "hidden_channels": 1024, "latent_dim": 4096}))
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="parameters; the limit is"):
        VAE.from_pretrained(saved)
    assert time.perf_counter() - start < 10


def test_config_from_dict_round_trip():
    assert config_from_dict(VAEConfig, {"latent_dim": 7, "_gm_hub_class": "VAE"}) == VAEConfig(latent_dim=7)


def test_repo_id_loads_offline_from_the_hugging_face_cache(saved, tmp_path, monkeypatch):
    """A repo id resolves through the cache layout that huggingface_hub writes (HF_HUB_OFFLINE=1)."""
    cache = tmp_path / "hub-cache"
    snapshot = cache / "models--someone--tiny-vae" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for file in ("config.json", "model.safetensors"):
        (snapshot / file).write_bytes((saved / file).read_bytes())
    (cache / "models--someone--tiny-vae" / "refs").mkdir()
    (cache / "models--someone--tiny-vae" / "refs" / "main").write_text("0" * 40)
    model = gm_hub.load_model("someone/tiny-vae", cache_dir=str(cache))
    expected = VAE.from_pretrained(saved)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.state_dict().values()))
    with pytest.raises(Exception, match="offline|cache|not"):  # not cached: huggingface_hub's own offline error
        gm_hub.load_model("someone/never-downloaded", cache_dir=str(cache))


def test_push_to_hub_uploads_only_what_save_pretrained_writes(saved, monkeypatch):
    """The upload is real huggingface_hub code up to the network: capture what it would send."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    sent = {}

    def fake_upload_folder(self, *, repo_id, folder_path, **kwargs):
        sent["repo_id"], sent["files"] = repo_id, sorted(p.name for p in Path(folder_path).rglob("*"))
        sent["card"] = (Path(folder_path) / "README.md").read_text()
        return "https://hub.example/commit"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, *, repo_id, **kwargs: RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)
    (saved / "checkpoint-10").mkdir()  # a training folder's optimizer states must never travel
    (saved / "checkpoint-10" / "optimizer.bin").write_bytes(b"x")
    model = VAE.from_pretrained(saved)
    grid = saved / "samples.png"
    grid.write_bytes(b"png")
    model.push_to_hub("someone/tiny-vae", token="hf_secret_token", model_card_kwargs={"metrics": {"bits_per_dim": 1.0}},
                      sample_grid=grid)
    assert sent["repo_id"] == "someone/tiny-vae"
    assert sent["files"] == ["README.md", "config.json", "model.safetensors", "samples.png"]
    assert "hf_secret_token" not in sent["card"] and "bits_per_dim" in sent["card"]

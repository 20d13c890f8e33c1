import json

import pytest
import torch

from conftest import run_script
from gm_hub.data import ImageDataConfig, load_embedded_mnist, load_image_datasets
from gm_hub.distributions import to_unit_range
from gm_hub.hub import ConfigError, load_model
from gm_hub.metrics import classifier_accuracy, default_classifier_path, load_digit_classifier
from gm_hub.models.classifier import DigitClassifier, DigitClassifierConfig, outlier_images, random_affine

TINY = DigitClassifierConfig(hidden_channels=4, feature_dim=8)
TINY_FLAGS = ["--hidden_channels", "4", "--feature_dim", "8", "--train_batch_size", "16", "--max_eval_items", "32",
              "--lr_warmup_steps", "0", "--logging_steps", "1"]


def test_shipped_weights_classify_held_out_digits():
    """The shipped classifier never saw the embedded validation split (it trains on the training split)."""
    classifier = DigitClassifier.from_pretrained(default_classifier_path())
    _, validation = load_image_datasets(ImageDataConfig())
    assert classifier_accuracy(classifier, validation) >= 0.97


def test_shipped_config_is_the_default_architecture():
    with open(f"{default_classifier_path()}/config.json") as f:
        config = json.load(f)
    assert config["_gm_hub_class"] == "DigitClassifier"
    assert {k: v for k, v in config.items() if not k.startswith("_")} == DigitClassifierConfig().__dict__


def test_loss_accuracy_and_gradients():
    torch.manual_seed(0)
    model = DigitClassifier(TINY)
    batch = {"images": torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8), "labels": torch.arange(8)}
    outputs = model(batch)
    assert {"loss", "accuracy", "cross_entropy", "outlier_cross_entropy"} == set(outputs)
    assert 0 <= outputs["accuracy"].item() <= 1
    # The outlier term is cross-entropy to the uniform distribution: at least log(num_classes).
    assert outputs["outlier_cross_entropy"].item() >= torch.log(torch.tensor(10.0)).item() - 1e-5
    assert outputs["loss"].item() > outputs["cross_entropy"].item()
    model.zero_grad()
    model.eval()
    assert set(model(batch)) == {"loss", "accuracy", "cross_entropy"}  # evaluation: plain cross-entropy
    model.train()
    outputs = model(batch)
    outputs["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_augmentation_is_the_identity_at_zero_and_keeps_digits_in_frame():
    images = torch.rand(4, 1, 28, 28)
    assert torch.allclose(random_affine(images, 0.0, 0.0, 0.0), images, atol=1e-5)
    digits = to_unit_range(load_embedded_mnist().images[:200]) + 1  # ink >= 0, background 0
    torch.manual_seed(0)
    moved = random_affine(digits, 12.0, 2.5, 0.1)
    assert moved.shape == digits.shape and not torch.allclose(moved, digits)
    # In frame: the digits keep their ink (a scale of +-10% changes it by at most ~21%), and little of it
    # touches the 1-pixel border, where a shift of half the frame puts over a quarter.
    def border_share(images):
        border = images.clone()
        border[:, :, 1:-1, 1:-1] = 0
        return border.sum((1, 2, 3)) / images.sum((1, 2, 3))

    assert (moved.sum((1, 2, 3)) / digits.sum((1, 2, 3))).min() > 0.75
    assert border_share(moved).max() < 0.1
    assert border_share(random_affine(digits, 0.0, 14.0, 0.0)).max() > 0.2  # the check can fail


def test_outliers_are_no_digits_but_keep_the_range():
    digits = to_unit_range(load_embedded_mnist().images[:200])
    torch.manual_seed(0)
    outliers = outlier_images(digits)
    assert outliers.shape == digits.shape and outliers.min() >= -1 and outliers.max() <= 1
    # No digits: the shipped classifier is not confident about them, as it is about the real digits.
    classifier = load_digit_classifier()
    _, real_probabilities, _ = classifier.predict(digits.add(1).mul(127.5).round().to(torch.uint8))
    _, probabilities, _ = classifier.predict(outliers.add(1).mul(127.5).round().to(torch.uint8))
    assert (real_probabilities.max(1).values >= 0.9).float().mean() > 0.9
    assert (probabilities.max(1).values >= 0.9).float().mean() < 0.1


def test_save_load_gives_identical_predictions_and_no_sample_grid(tmp_path):
    model = DigitClassifier(TINY).eval()
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "samples.png").exists()
    loaded = load_model(tmp_path)
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    for first, second in zip(model.predict(images), loaded.predict(images)):
        assert torch.equal(first, second)
    features, probabilities, labels = loaded.predict(images)
    assert features.shape == (5, 8) and probabilities.shape == (5, 10) and labels.shape == (5,)


@pytest.mark.parametrize("field, value", [("resolution", 30), ("num_channels", 2), ("dropout", 1.0),
                                          ("max_rotation_degrees", -1.0)])
def test_bad_config_is_refused_with_the_field_name(field, value):
    with pytest.raises(ConfigError, match=field):
        DigitClassifierConfig(**{field: value})


def test_script_trains_two_steps_and_reports_accuracy(tmp_path):
    out = tmp_path / "classifier"
    run_script("train_classifier.py", ["--output_dir", str(out), "--max_train_steps", "2", *TINY_FLAGS])
    loaded = DigitClassifier.from_pretrained(out)
    assert loaded.config.feature_dim == 8
    assert "accuracy" in (out / "README.md").read_text()

"""A small convolutional digit classifier: the judge behind gm-hub's sample-based metrics.

Standard FID [1] embeds images with an Inception network trained on ImageNet; it can't be downloaded here and
on 28x28 digits it is the wrong judge anyway. gm-hub instead scores MNIST samples with this classifier: its
penultimate features give the "classifier FID", its class probabilities the confident share and the per-class
shares (as in the Inception Score [2], but reported as plain shares). The network is a VGG-style CNN [3]:
two stages of two 3x3 convolutions with batch norm, each followed by 2x2 max pooling, then one hidden layer.

Training sees each image through a small random affine map (rotation, shift, scale), drawn anew in every
forward pass in training mode; 5,000 digits are too few to generalize well without it [4]. A plain classifier
also calls pure noise a digit with probability 1, which would make the confident share meaningless, so
training adds outlier exposure [5]: images that are no digit (pixel-shuffled digits, smooth random blobs)
trained towards the uniform distribution over classes. The pixel-wise Gaussian noise baseline of the
benchmarks is deliberately not among them, so its confident share checks that the rejection generalizes.

[1] Heusel et al., GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium, 2017.
    https://arxiv.org/abs/1706.08500
[2] Salimans et al., Improved Techniques for Training GANs, 2016. https://arxiv.org/abs/1606.03498
[3] Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition, 2015.
    https://arxiv.org/abs/1409.1556
[4] Simard, Steinkraus & Platt, Best Practices for Convolutional Neural Networks Applied to Visual Document
    Analysis, 2003.
[5] Hendrycks, Mazeika & Dietterich, Deep Anomaly Detection with Outlier Exposure, 2019.
    https://arxiv.org/abs/1812.04606
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distributions import to_unit_range
from ..config import ConfigError, ImageShape, check_ranges
from ..hub import HubModel

@dataclass
class DigitClassifierConfig(ImageShape):
    num_classes: int = 10
    hidden_channels: int = 32  # width of the first stage; the second stage doubles it
    feature_dim: int = 128  # penultimate features: what classifier FID compares
    dropout: float = 0.3  # before the output layer, training only
    max_rotation_degrees: float = 12.0  # augmentation: rotation drawn uniformly in [-max, max]
    max_shift_pixels: float = 2.5  # augmentation: shift per axis drawn uniformly in [-max, max]
    max_scale_change: float = 0.1  # augmentation: scale drawn uniformly in [1 - max, 1 + max]
    outlier_weight: float = 0.5  # weight of the outlier-exposure term (lambda of [5]); 0 disables it
    outlier_fraction: float = 0.5  # outlier images per training batch, as a fraction of the batch size

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.resolution % 4:  # two 2x2 poolings
            raise ConfigError(f"resolution must be a multiple of 4, got {self.resolution}")
        check_ranges(self, ("num_classes", 2, 1000), ("hidden_channels", 1, 512), ("feature_dim", 1, 4096),
                     ("dropout", 0.0, 0.99), ("max_rotation_degrees", 0.0, 180.0), ("max_shift_pixels", 0.0, self.resolution / 2),
                     ("max_scale_change", 0.0, 0.5), ("outlier_weight", 0.0, 10.0), ("outlier_fraction", 0.0, 1.0))


def random_affine(images: torch.Tensor, max_degrees: float, max_shift: float, max_scale_change: float) -> torch.Tensor:
    """Each image through its own random rotation, scale and shift (bilinear, zero padding): float (B, C, H, W)."""
    num, _, height, width = images.shape
    device = images.device
    angle = (torch.rand(num, device=device) * 2 - 1) * math.radians(max_degrees)
    scale = 1 + (torch.rand(num, device=device) * 2 - 1) * max_scale_change
    shift = (torch.rand(num, 2, device=device) * 2 - 1) * max_shift * 2 / torch.tensor([width, height], device=device)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale  # affine_grid maps output to input coordinates
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def outlier_images(images: torch.Tensor) -> torch.Tensor:
    """Images that are no digit, one per input: a pixel-shuffled copy or smooth random blobs, float (B, C, H, W)
    in [-1, 1] from digits float (B, C, H, W) in [-1, 1]."""
    num, channels, height, width = images.shape
    device = images.device
    order = torch.randperm(height * width, device=device)
    shuffled = images.flatten(2)[:, :, order].view_as(images)  # the digit's ink, no shape
    coarse = torch.rand(num, channels, max(1, height // 4), max(1, width // 4), device=device)
    blobs = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False) * 2 - 1
    return torch.where(torch.rand(num, 1, 1, 1, device=device) < 0.5, shuffled, blobs)


class ConvStage(nn.Module):
    """Two 3x3 conv + batch norm + ReLU, then 2x2 max pooling: (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(),
            nn.MaxPool2d(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DigitClassifier(HubModel, family="classifier", pipeline_tag="image-classification", tags=["image-classification"]):
    """A small CNN digit classifier (two VGG-style stages, batch norm, one hidden layer) trained with random
    affine augmentation; its penultimate features and probabilities score generated digits."""

    def __init__(self, config: DigitClassifierConfig):
        super().__init__()
        self.config = config
        width = config.hidden_channels
        self.stages = nn.Sequential(ConvStage(config.num_channels, width), ConvStage(width, 2 * width))
        self.hidden = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * (config.resolution // 4) ** 2, config.feature_dim),
            nn.BatchNorm1d(config.feature_dim),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> penultimate features (B, feature_dim), float32 (after ReLU, >= 0)."""
        return self.hidden(self.stages(to_unit_range(images)))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> class logits (B, num_classes)."""
        return self.head(self.dropout(self.features(images)))

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Cross-entropy in nats and the batch accuracy; in training mode with augmentation, plus the
        outlier-exposure term (cross-entropy of outlier images to the uniform distribution [5]) in "loss"."""
        config = self.config
        images, labels = batch["images"], batch["labels"]
        x = to_unit_range(images)
        num_outliers = int(len(x) * config.outlier_fraction) if self.training and config.outlier_weight > 0 else 0
        if self.training:
            # Augment on the [0, 2] scale so that the zero padding of grid_sample is black (-1 after the shift).
            x = random_affine(x + 1, config.max_rotation_degrees, config.max_shift_pixels, config.max_scale_change) - 1
        if num_outliers:
            x = torch.cat([x, outlier_images(x[:num_outliers])])  # one batch: batch norm sees both
        logits = self.head(self.dropout(self.hidden(self.stages(x)))).float()
        logits, outlier_logits = logits[: len(labels)], logits[len(labels) :]
        cross_entropy = F.cross_entropy(logits, labels)
        outputs = {"loss": cross_entropy, "cross_entropy": cross_entropy, "accuracy": (logits.argmax(1) == labels).float().mean()}
        if num_outliers:
            outputs["outlier_cross_entropy"] = -outlier_logits.log_softmax(1).mean()
            outputs["loss"] = cross_entropy + config.outlier_weight * outputs["outlier_cross_entropy"]
        return outputs

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.loss(batch)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 (N, C, H, W) -> features (N, feature_dim), class probabilities (N, num_classes), labels (N,).

        Runs in evaluation mode in batches on the model's device; results are float32 on the CPU.
        """
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        features, probabilities = [], []
        for start in range(0, len(images), batch_size):
            chunk = self.features(images[start : start + batch_size].to(device)).float()
            features.append(chunk.cpu())
            probabilities.append(self.head(chunk).softmax(1).cpu())
        self.train(was_training)
        features, probabilities = torch.cat(features), torch.cat(probabilities)
        return features, probabilities, probabilities.argmax(1)

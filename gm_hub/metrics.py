"""Evaluation: one place for the numbers every family reports.

Likelihoods are reported in bits per dimension of the 8-bit data. A model with a discrete likelihood over
the 256 levels (the VAE's decoder, PixelCNN) gives -log2 P(x) / D directly. A continuous density p over
dequantized data y = (x + u) / 256, u ~ U[0, 1)^D (flows), bounds the discrete likelihood:
log P(x) >= E_u[log p(y)] - D log 256, so its bits/dim are `dequantized_bits_per_dim`.

Samples of MNIST-shaped models (1 x 28 x 28) are judged by the digit classifier shipped in
`gm_hub/weights/mnist-classifier` (`gm_hub.models.classifier`), standing in for the Inception network of
standard FID [1], which can't be downloaded here and does not know digits:

- classifier FID: the Frechet distance between Gaussians fitted to the classifier's penultimate features of
  the samples and of reference images (the MNIST test set). Like FID it is biased upwards for few images,
  so numbers compare only at equal sample and reference counts (both are reported with it);
- confident share: the share of samples whose most likely class has probability >= 0.9 (sharp, legible
  digits), and the share of samples per predicted class (mode dropping shows as a class near 0);
- memorization: each sample's Euclidean distance (pixels in [0, 1]) to its nearest training image, against
  the same distance for held-out reference images; copies of training images sit far below the latter.

[1] Heusel et al., GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium, 2017.
    https://arxiv.org/abs/1706.08500
"""

import functools
import importlib.resources
import inspect
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .distributions import NUM_LEVELS
from .errors import UserError

logger = logging.getLogger(__name__)

CLASSIFIER_FOLDER = "weights/mnist-classifier"  # inside the gm_hub package
CLASSIFIER_IMAGE_SHAPE = (1, 28, 28)  # what the shipped classifier judges


@dataclass
class EvaluationConfig:
    """How models are scored at the end of training and by `gm-hub evaluate`."""

    num_importance_samples: int = 100  # k of the IWAE bound, for models whose likelihood is a bound
    max_eval_items: int | None = None  # evaluate on the first N items, and at most N samples (quick checks)
    num_eval_samples: int = 5000  # generated samples for classifier FID, confident share and memorization
    sample_batch_size: int = 500  # samples drawn per call of the model's sample()
    eval_seed: int = 0  # seed of the generator that draws the evaluation samples
    confidence_threshold: float = 0.9  # a sample is confident when its top class probability reaches this
    classifier: str | None = None  # a DigitClassifier folder or repo id; default: the one shipped with gm-hub
    sample_kwargs: str | None = None  # JSON keyword arguments of the model's sample(), e.g. '{"temperature": 0.7}'

    def __post_init__(self) -> None:
        parse_sample_kwargs(self.sample_kwargs)  # refuses anything but a JSON object now, before any evaluation work
        if self.num_importance_samples < 1:
            raise UserError(f"--num_importance_samples must be at least 1, got {self.num_importance_samples}")
        if self.max_eval_items is not None and self.max_eval_items < 1:
            raise UserError(f"--max_eval_items must be positive, got {self.max_eval_items}")
        if self.num_eval_samples < 0:
            raise UserError(f"--num_eval_samples must be 0 (no sample metrics) or more, got {self.num_eval_samples}")
        if self.sample_batch_size < 1:
            raise UserError(f"--sample_batch_size must be positive, got {self.sample_batch_size}")
        if not 0.0 < self.confidence_threshold <= 1.0:
            raise UserError(f"--confidence_threshold must be in (0, 1], got {self.confidence_threshold}")


def parse_sample_kwargs(sample_kwargs: str | None) -> dict:
    """--sample_kwargs (JSON) as keyword arguments of a model's sample() ({} when not given)."""
    if sample_kwargs is None:
        return {}
    try:
        keywords = json.loads(sample_kwargs)
    except json.JSONDecodeError as err:
        raise UserError(f"--sample_kwargs must be a JSON object, e.g. '{{\"temperature\": 0.7}}': {err}") from None
    if not isinstance(keywords, dict):
        raise UserError(f"--sample_kwargs must be a JSON object, e.g. '{{\"temperature\": 0.7}}', got {sample_kwargs}")
    return keywords


def sample_batches(model, num_samples: int, batch_size: int, generator: torch.Generator,
                   **sample_kwargs) -> Iterator[torch.Tensor | list[str]]:
    """`model.sample(..., generator=generator, **sample_kwargs)` in batches of at most `batch_size`, which add
    up to `num_samples`. A keyword that sample() does not take is refused first, naming those it does."""
    accepted = inspect.signature(model.sample).parameters
    unknown = sorted(set(sample_kwargs) - set(accepted))
    if unknown:
        options = ", ".join(name for name in accepted if name not in ("num_samples", "generator"))
        raise UserError(f"--sample_kwargs: {type(model).__name__}.sample() takes no {', '.join(unknown)}; "
                        f"it takes {options or 'no keywords'}")
    for start in range(0, num_samples, batch_size):
        with torch.no_grad():
            yield model.sample(min(batch_size, num_samples - start), generator=generator, **sample_kwargs)


# --- likelihoods -----------------------------------------------------------------------------------------


def bits_per_dim(log_prob: torch.Tensor, num_dims: int) -> torch.Tensor:
    """log P(x) in nats of discrete 8-bit data, (B,) -> bits per dimension (B,)."""
    return -log_prob / (num_dims * math.log(2))


def dequantized_bits_per_dim(log_density: torch.Tensor, num_dims: int, data_scale: float = 1.0 / NUM_LEVELS) -> torch.Tensor:
    """log p(y) in nats of a density over y = (x + u) * data_scale, (B,) -> bits/dim of the 8-bit x (B,).

    The change of variables from x + u (unit bins) to y adds D log(data_scale) to the log-density.
    """
    log_prob_unit_bins = log_density + num_dims * math.log(data_scale)
    return bits_per_dim(log_prob_unit_bins, num_dims)


def _device(model: torch.nn.Module) -> torch.device:
    """Where a module's tensors live (CPU for a module with none)."""
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@torch.no_grad()
def evaluate_bits_per_dim(model, dataset: Dataset, accelerator=None, batch_size: int = 256, max_items: int | None = None,
                          **log_prob_kwargs) -> float:
    """Mean bits/dim of `model.log_prob` (exact or a bound, as the model states) over `dataset`.

    With an accelerator, each process takes its share and the results are gathered.
    """
    return bits_per_dim_per_item(model, dataset, accelerator, batch_size, max_items, **log_prob_kwargs).mean().item()


def bits_per_dim_per_item(model, dataset: Dataset, accelerator=None, batch_size: int = 256, max_items: int | None = None,
                          **log_prob_kwargs) -> torch.Tensor:
    """Bits/dim of `model.log_prob` for each item of `dataset`, (N,): the spread behind the mean (outliers)."""
    if max_items is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(max_items, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size)
    device = _device(model)
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    values = []
    main_process = accelerator is None or accelerator.is_main_process
    for batch in tqdm(loader, desc="test bits/dim", leave=False, disable=not main_process):
        images = batch["images"].to(device)
        bits = bits_per_dim(model.log_prob(images, **log_prob_kwargs), images[0].numel())
        values.append(accelerator.gather_for_metrics(bits) if accelerator is not None else bits)
    return torch.cat(values)


class PixelGaussianBaseline(torch.nn.Module):
    """The trivial reference model: every pixel independent, a Gaussian with that pixel's mean and variance over
    the training images, discretized to the 256 levels (edge bins take the tails). Exact `log_prob`."""

    def __init__(self, images: torch.Tensor, min_std: float = 1.0):
        """images: uint8 (N, C, H, W) training images; min_std (levels) keeps always-black pixels finite."""
        super().__init__()
        pixels = images.double()
        self.register_buffer("mean", pixels.mean(0).float())  # (C, H, W), levels 0..255
        self.register_buffer("std", pixels.std(0).clamp(min=min_std).float())

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Rounded, clamped Gaussian noise: (num_samples, C, H, W) uint8."""
        noise = torch.randn((num_samples, *self.mean.shape), generator=generator).to(self.mean.device)
        return (self.mean + self.std * noise).round().clamp(0, NUM_LEVELS - 1).to(torch.uint8)

    @torch.no_grad()
    def log_prob(self, images: torch.Tensor) -> torch.Tensor:
        """log P(x) in nats, exact: uint8 (B, C, H, W) -> (B,)."""
        x = images.double()
        mean, std = self.mean.double(), self.std.double()
        upper = torch.where(x >= NUM_LEVELS - 1, torch.full_like(x, math.inf), (x + 0.5 - mean) / std)
        lower = torch.where(x <= 0, torch.full_like(x, -math.inf), (x - 0.5 - mean) / std)
        # log(Phi(upper) - Phi(lower)) = log Phi(upper) + log(1 - exp(log Phi(lower) - log Phi(upper))), stable in the tails
        # by symmetry: evaluate on the side of the mean where the CDFs are small.
        flip = lower > 0
        upper, lower = torch.where(flip, -lower, upper), torch.where(flip, -upper, lower)
        log_upper, log_lower = torch.special.log_ndtr(upper), torch.special.log_ndtr(lower)
        log_mass = log_upper + torch.log1p(-torch.exp(log_lower - log_upper).clamp(max=1 - 1e-15))
        return log_mass.flatten(1).sum(1).float()


# --- the digit classifier's judgement --------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _cached_classifier(name_or_path: str, device: str):
    from .models.classifier import DigitClassifier

    return DigitClassifier.from_pretrained(name_or_path, map_location=device).eval()


def default_classifier_path() -> str:
    """The folder of the classifier shipped inside the gm_hub package."""
    return str(importlib.resources.files("gm_hub").joinpath(CLASSIFIER_FOLDER))


def load_digit_classifier(name_or_path: str | None = None, device: str | torch.device = "cpu"):
    """The digit classifier (shipped, or from a folder or repo id), loaded once per process and device."""
    return _cached_classifier(str(name_or_path or default_classifier_path()), str(torch.device(device)))


def classifier_outputs(images: torch.Tensor, classifier=None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 1, 28, 28) -> penultimate features (N, F) and class probabilities (N, 10), float32 on the CPU."""
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != CLASSIFIER_IMAGE_SHAPE:
        raise ValueError(f"the digit classifier judges uint8 (N, 1, 28, 28) images, got {images.dtype} {tuple(images.shape)}")
    classifier = classifier or load_digit_classifier()
    features, probabilities, _ = classifier.predict(images)
    return features, probabilities


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """||m_a - m_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)) between two Gaussians, in float64.

    Tr (C_a C_b)^(1/2) is the sum of the square roots of the eigenvalues of C_a^(1/2) C_b C_a^(1/2), which is
    symmetric positive semi-definite: two symmetric eigen-decompositions, no complex sqrtm residue.
    """
    mean_a, mean_b, cov_a, cov_b = (np.asarray(a, dtype=np.float64) for a in (mean_a, mean_b, cov_a, cov_b))
    values, vectors = np.linalg.eigh(cov_a)
    sqrt_a = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = np.sqrt(np.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0)).sum()
    distance = ((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    return float(max(distance, 0.0))


def feature_statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(N, F) features -> mean (F,) and unbiased covariance (F, F), float64."""
    array = features.double().numpy()
    return array.mean(0), np.cov(array, rowvar=False)


def classifier_fid(images: torch.Tensor, reference_images: torch.Tensor, classifier=None) -> float:
    """Frechet distance of the classifier's penultimate features: uint8 (N, 1, 28, 28) vs (M, 1, 28, 28)."""
    features, _ = classifier_outputs(images, classifier)
    reference, _ = classifier_outputs(reference_images, classifier)
    return frechet_distance(*feature_statistics(features), *feature_statistics(reference))


def confident_share(images: torch.Tensor, classifier=None, threshold: float = 0.9) -> float:
    """Share of images (uint8 (N, 1, 28, 28)) whose most likely class has probability >= threshold."""
    _, probabilities = classifier_outputs(images, classifier)
    return (probabilities.max(1).values >= threshold).float().mean().item()


def class_shares(images: torch.Tensor, classifier=None) -> torch.Tensor:
    """Share of images (uint8 (N, 1, 28, 28)) per predicted class: (num_classes,), sums to 1."""
    _, probabilities = classifier_outputs(images, classifier)
    return torch.bincount(probabilities.argmax(1), minlength=probabilities.shape[1]).float() / len(probabilities)


# --- memorization ----------------------------------------------------------------------------------------


def nearest_neighbour_distances(images: torch.Tensor, train_images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Euclidean distance, pixels scaled to [0, 1], from each image to its nearest training image: (N,) float32.

    Computed in float64 through matrix products (|a|^2 + |b|^2 - 2 a.b, error ~1e-12); two different 8-bit
    images are at least 1/255 apart, so anything below half of that is an exact copy and is set to 0.
    """
    train = train_images.flatten(1).double() / (NUM_LEVELS - 1)  # (M, D)
    distances = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size].flatten(1).double() / (NUM_LEVELS - 1)  # (B, D)
        nearest = torch.cdist(chunk, train, compute_mode="use_mm_for_euclid_dist").min(1).values
        distances.append(torch.where(nearest < 0.5 / (NUM_LEVELS - 1), torch.zeros_like(nearest), nearest))
    return torch.cat(distances).float()


def memorization(images: torch.Tensor, train_images: torch.Tensor, held_out_images: torch.Tensor,
                 copy_quantile: float = 0.01) -> dict[str, float]:
    """How close samples sit to the training images, against held-out images (all uint8 (N, C, H, W)).

    Returns the median nearest-training distance of the samples and of the held-out images, their ratio
    (about 1 for a model that generalizes, well below 1 when it recalls training images), the share of
    samples closer than the `copy_quantile` quantile of the held-out distances (`copy_quantile` by
    construction for held-out-like samples; 1 for copies) and the share of exact copies (distance 0).
    """
    sample_distances = nearest_neighbour_distances(images, train_images)
    held_out_distances = nearest_neighbour_distances(held_out_images, train_images)
    threshold = torch.quantile(held_out_distances, copy_quantile)
    sample_median, held_out_median = sample_distances.median().item(), held_out_distances.median().item()
    return {
        "memorization_sample_distance": sample_median,
        "memorization_held_out_distance": held_out_median,
        "memorization_distance_ratio": sample_median / max(held_out_median, 1e-12),
        "memorization_copy_share": (sample_distances < threshold).float().mean().item(),
        "memorization_exact_copy_share": (sample_distances == 0).float().mean().item(),
    }


# --- all sample metrics at once ----------------------------------------------------------------------------


def sample_metrics(images: torch.Tensor, reference_images: torch.Tensor, train_images: torch.Tensor | None = None,
                   classifier=None, confidence_threshold: float = 0.9) -> dict[str, float]:
    """Classifier FID, confident share, class shares and (with train_images) memorization of uint8 samples
    (N, 1, 28, 28), against held-out reference images (M, 1, 28, 28); one classifier pass per set."""
    features, probabilities = classifier_outputs(images, classifier)
    reference_features, _ = classifier_outputs(reference_images, classifier)
    shares = torch.bincount(probabilities.argmax(1), minlength=probabilities.shape[1]).float() / len(images)
    metrics = {}
    if min(len(images), len(reference_images)) >= 2:  # a covariance needs two items
        metrics["classifier_fid"] = frechet_distance(*feature_statistics(features), *feature_statistics(reference_features))
    else:
        logger.warning("no classifier FID: %d samples against %d reference images (it needs 2 of each)",
                       len(images), len(reference_images))
    metrics |= {
        "num_eval_samples": float(len(images)),
        "num_reference_images": float(len(reference_images)),
        "confident_share": (probabilities.max(1).values >= confidence_threshold).float().mean().item(),
        # 0 when every class is equally frequent, 0.9 when all samples are one class (of 10).
        "class_share_total_variation": 0.5 * (shares - 1 / len(shares)).abs().sum().item(),
    }
    metrics.update({f"class_share_{label}": share for label, share in enumerate(shares.tolist())})
    if train_images is not None:
        metrics.update(memorization(images, train_images, reference_images))
    return metrics


def draw_samples(model, num_samples: int, batch_size: int = 500, seed: int = 0, **sample_kwargs) -> torch.Tensor | None:
    """`num_samples` samples of `model.sample(..., **sample_kwargs)` in batches, from one seeded generator, on
    the CPU; None when the model does not produce images (a text model)."""
    batches = []
    with tqdm(total=num_samples, desc="samples", leave=False) as progress:
        for batch in sample_batches(model, num_samples, batch_size, torch.Generator().manual_seed(seed), **sample_kwargs):
            if not isinstance(batch, torch.Tensor):
                return None
            batches.append(batch.cpu())
            progress.update(len(batch))
    return torch.cat(batches)


def conditional_metrics(model, per_class: int, classifier=None, seed: int = 0, batch_size: int = 500,
                        confidence_threshold: float = 0.9, **sample_kwargs) -> tuple[dict[str, float], torch.Tensor]:
    """How well a class-conditional model draws the digit it is asked for: `per_class` samples of each label
    0..9 (`model.sample(..., label=k, **sample_kwargs)`, one seeded generator throughout), classified.

    Returns the share classified as the requested digit ("conditional_accuracy"), the confident share, and the
    samples, uint8 (10, per_class, 1, 28, 28).
    """
    generator = torch.Generator().manual_seed(seed)
    samples = torch.stack([
        torch.cat([batch.cpu() for batch in sample_batches(model, per_class, batch_size, generator, label=label, **sample_kwargs)])
        for label in range(10)
    ])
    _, probabilities = classifier_outputs(samples.flatten(0, 1), classifier)
    requested = torch.arange(10).repeat_interleave(per_class)
    metrics = {
        "conditional_accuracy": (probabilities.argmax(1) == requested).float().mean().item(),
        "conditional_confident_share": (probabilities.max(1).values >= confidence_threshold).float().mean().item(),
    }
    return metrics, samples


def _default_train_images() -> torch.Tensor:
    """The training split every image family trains on by default (embedded MNIST)."""
    from .data import ImageDataConfig, load_image_datasets

    return load_image_datasets(ImageDataConfig())[0].images


def _images_of(dataset: Dataset, max_items: int | None) -> torch.Tensor:
    if hasattr(dataset, "images"):
        images = dataset.images
    else:
        images = torch.stack([dataset[i]["images"] for i in range(len(dataset))])
    return images[:max_items] if max_items is not None else images


@torch.no_grad()
def classifier_accuracy(classifier, dataset: Dataset, max_items: int | None = None) -> float:
    """Share of a labelled dataset's images that the classifier labels correctly."""
    labels = dataset.labels if hasattr(dataset, "labels") else torch.stack([dataset[i]["labels"] for i in range(len(dataset))])
    images = _images_of(dataset, max_items)
    _, _, predicted = classifier.predict(images)
    return (predicted == labels[: len(images)].cpu()).float().mean().item()


def evaluate_model(model, accelerator, dataset: Dataset, evaluation: EvaluationConfig, batch_size: int = 64,
                   train_images: torch.Tensor | None = None) -> dict[str, float]:
    """The metrics `model`'s family supports on `dataset` (its registry record says which), as a flat dict of
    floats (accelerator may be None).

    - a likelihood (exact, or a bound that takes `num_importance_samples`): bits_per_dim over the dataset;
    - images: `sample_metrics` of `num_eval_samples` samples (at most `max_eval_items`) against the dataset's
      images, for uint8 (N, 1, 28, 28) digits; memorization against `train_images` (default: the embedded
      MNIST training split, what the families train on unless told otherwise);
    - labels (the classifier), on a labelled dataset: accuracy.

    Every process computes the sample metrics from the same seed (the same numbers on each).
    """
    from .registry import family_of_class

    family = family_of_class(type(model).__name__)
    metrics = {}
    if family.likelihood != "none":
        kwargs = {}
        if family.likelihood == "bound":  # say how tight
            kwargs["num_importance_samples"] = evaluation.num_importance_samples
            metrics["num_importance_samples"] = float(evaluation.num_importance_samples)
        metrics["bits_per_dim"] = evaluate_bits_per_dim(model, dataset, accelerator, batch_size, evaluation.max_eval_items, **kwargs)
    if family.produces == "labels" and getattr(dataset, "labels", None) is not None:
        metrics["accuracy"] = classifier_accuracy(model, dataset, evaluation.max_eval_items)
    num_samples = min(evaluation.num_eval_samples, evaluation.max_eval_items or evaluation.num_eval_samples)
    if family.produces == "images" and num_samples >= 2:
        samples = draw_samples(model, num_samples, evaluation.sample_batch_size, evaluation.eval_seed,
                               **parse_sample_kwargs(evaluation.sample_kwargs))
        if samples is None or samples.dtype != torch.uint8 or tuple(samples.shape[1:]) != CLASSIFIER_IMAGE_SHAPE:
            logger.info("no sample metrics: the digit classifier judges uint8 (N, 1, 28, 28) images only")
            return metrics
        reference = _images_of(dataset, evaluation.max_eval_items)
        if train_images is None:
            train_images = _default_train_images()
        classifier = load_digit_classifier(evaluation.classifier, _device(model))
        metrics.update(sample_metrics(samples, reference, train_images, classifier, evaluation.confidence_threshold))
    return metrics


def image_evaluation(data, validation_set: Dataset, evaluation: EvaluationConfig):
    """What every image training script hands the loop: eval_fn(model, accelerator) scoring on the test set
    (if `--eval_data_dir` is given) or the validation split, and the model card's data description."""
    from .data import dataset_tags, evaluation_dataset

    dataset, name = evaluation_dataset(data, validation_set)
    eval_fn = functools.partial(evaluate_model, dataset=dataset, evaluation=evaluation)
    return eval_fn, {"metrics_dataset": name, "datasets": dataset_tags(data)}

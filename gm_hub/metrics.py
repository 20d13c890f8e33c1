"""Evaluation: one place for the numbers every family reports.

Likelihoods are reported in bits per dimension of the 8-bit data. A model with a discrete likelihood over
the 256 levels (the VAE's decoder, PixelCNN) gives -log2 P(x) / D directly. A continuous density p over
dequantized data y = (x + u) / 256, u ~ U[0, 1)^D (flows), bounds the discrete likelihood:
log P(x) >= E_u[log p(y)] - D log 256, so its bits/dim are `dequantized_bits_per_dim`.
"""

import math
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from .distributions import NUM_LEVELS
from .errors import UserError


@dataclass
class EvaluationConfig:
    """How models are scored at the end of training and by `gm-hub evaluate`."""

    num_importance_samples: int = 100  # k of the IWAE bound, for models whose likelihood is a bound
    max_eval_items: int | None = None  # evaluate on the first N items only (quick checks)

    def __post_init__(self) -> None:
        if self.num_importance_samples < 1:
            raise UserError(f"--num_importance_samples must be at least 1, got {self.num_importance_samples}")
        if self.max_eval_items is not None and self.max_eval_items < 1:
            raise UserError(f"--max_eval_items must be positive, got {self.max_eval_items}")


def bits_per_dim(log_prob: torch.Tensor, num_dims: int) -> torch.Tensor:
    """log P(x) in nats of discrete 8-bit data, (B,) -> bits per dimension (B,)."""
    return -log_prob / (num_dims * math.log(2))


def dequantized_bits_per_dim(log_density: torch.Tensor, num_dims: int, data_scale: float = 1.0 / NUM_LEVELS) -> torch.Tensor:
    """log p(y) in nats of a density over y = (x + u) * data_scale, (B,) -> bits/dim of the 8-bit x (B,).

    The change of variables from x + u (unit bins) to y adds D log(data_scale) to the log-density.
    """
    log_prob_unit_bins = log_density + num_dims * math.log(data_scale)
    return bits_per_dim(log_prob_unit_bins, num_dims)


@torch.no_grad()
def evaluate_bits_per_dim(model, dataset: Dataset, accelerator=None, batch_size: int = 256, max_items: int | None = None,
                          **log_prob_kwargs) -> float:
    """Mean bits/dim of `model.log_prob` (exact or a bound, as the model states) over `dataset`.

    With an accelerator, each process takes its share and the results are gathered.
    """
    if max_items is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(max_items, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size)
    device = next(model.parameters()).device
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    values = []
    for batch in loader:
        images = batch["images"].to(device)
        bits = bits_per_dim(model.log_prob(images, **log_prob_kwargs), images[0].numel())
        values.append(accelerator.gather_for_metrics(bits) if accelerator is not None else bits)
    return torch.cat(values).mean().item()


def evaluate_model(model, accelerator, dataset: Dataset, evaluation: EvaluationConfig, batch_size: int = 64) -> dict[str, float]:
    """The metrics `model` supports on `dataset`, as a flat dict of floats (accelerator may be None)."""
    metrics = {}
    if hasattr(model, "log_prob"):
        kwargs = {}
        if "num_importance_samples" in model.log_prob.__code__.co_varnames:  # a bound: say how tight
            kwargs["num_importance_samples"] = evaluation.num_importance_samples
            metrics["num_importance_samples"] = float(evaluation.num_importance_samples)
        metrics["bits_per_dim"] = evaluate_bits_per_dim(model, dataset, accelerator, batch_size, evaluation.max_eval_items, **kwargs)
    return metrics

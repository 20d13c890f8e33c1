"""Conditional Gated PixelCNN [1] for 8-bit images: p(x | y) = prod_i p(x_i | x_<i, y), pixels in raster order.

Two stacks of masked convolutions [1, section 2.2] remove the blind spot of the original PixelCNN [2]: the
vertical stack sees every pixel in the rows above (a (k//2 + 1) x k kernel), the horizontal stack the pixels
to the left in the current row (a 1 x (k//2 + 1) kernel), and each layer feeds the vertical stack into the
horizontal one. Layers are gated, tanh(W_f * x + V_f y) * sigmoid(W_g * x + V_g y) [1, eq. 4], with the class
label y entering both stacks through a per-layer embedding; the horizontal stack is residual. The model's
unconditional p(x) is its mixture over the classes with a uniform prior, (1/K) sum_y p(x | y): `log_prob(images)`
without labels computes it exactly (one pass per class), and `sample` without a label draws y first, as the
mixture says. Labels are also dropped to an extra "no label" class during training (`label_dropout`), a second
estimate of p(x) that classifier-free guidance [5] contrasts with p(x | y). On the model shipped in session 7 the mixture
is the better p(x) by both measures: 1.062 against 1.069 test bits/dim, and samples confidently classified 84%
of the time against 59% (benchmarks/pixelcnn_unconditional.md).

The output head is [1]'s 256-way softmax per subpixel (`output_head="softmax"`), or PixelCNN++'s [3]
discretized logistic mixture (`"mixture"`, fewer outputs). On MNIST the softmax learns faster: the same
network reached 1.176 test bits/dim in 5 CPU minutes with it and 1.260 with the mixture (797 and 1,058 steps;
benchmarks/pixelcnn_heads.md), because MNIST's levels are not smooth (most pixels are exactly 0, and strokes
sit on a few values near 255).
Departures from [1]: the subpixels of an RGB pixel are independent given the pixels before it (exact for
grayscale); the vertical stack is shifted down once at its input, rather than before each
vertical-to-horizontal link, so every vertical feature at row r already sees only rows < r; a constant channel
of ones marks the image inside the zero padding (as [3]).

Sampling. `method="naive"` evaluates the whole network once per pixel; `method="cached"` computes only what a
new pixel changes (as the fast sampler of [4]): each vertical row once, when the rows above it are complete, and
the horizontal stack at the new position only, from cached features of the positions to its left. Both use the
same row and position kernels on identically shaped tensors and draw the same random numbers in the same order,
so they give the same images bit for bit (a full-image convolution would agree only to float rounding, and a
rounding flip in one pixel changes every pixel after it). The full-image convolutions of `forward`, used for
training and `log_prob`, agree with these kernels to float rounding. Because the label dropout trains p(x) and
p(x | y) in one model, conditional samples can be guided [5] pixel by pixel.

[1] van den Oord et al., Conditional Image Generation with PixelCNN Decoders, 2016. https://arxiv.org/abs/1606.05328
[2] van den Oord, Kalchbrenner & Kavukcuoglu, Pixel Recurrent Neural Networks, 2016. https://arxiv.org/abs/1601.06759
[3] Salimans et al., PixelCNN++, 2017. https://arxiv.org/abs/1701.05517
[4] Ramachandran et al., Fast Generation for Convolutional Autoregressive Models, 2017. https://arxiv.org/abs/1704.06001
[5] Ho & Salimans, Classifier-Free Diffusion Guidance, 2021. https://arxiv.org/abs/2207.12598
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError, ImageShape, check_ranges
from ..data import batch_labels
from ..distributions import (
    NUM_LEVELS,
    discretized_logistic_mixture_level_log_probs,
    discretized_logistic_mixture_log_prob,
    gumbel_max,
    sample_discretized_logistic_mixture,
    scale_mixture_temperature,
    to_unit_range,
)
from ..errors import UserError
from ..hub import HubModel


OUTPUT_HEADS = ("softmax", "mixture")


@dataclass
class PixelCNNConfig(ImageShape):
    """The network's size, its output and the label handling; the defaults are the shipped model's network
    (1.4 s per step of 64 images on 2 CPU cores with --mixed_precision bf16)."""

    hidden_channels: int = 64  # width of both stacks
    num_layers: int = 15  # gated layers; with 3 x 3 kernels after a 7 x 7, a pixel sees 18 rows above it
    kernel_size: int = 3  # odd k: vertical kernels (k//2 + 1) x k, horizontal 1 x (k//2 + 1)
    first_kernel_size: int = 7  # the masked first layer sees a wider context for almost no cost
    output_head: str = "softmax"  # "softmax": 256 logits per subpixel [1]; "mixture": a logistic mixture [3]
    num_mixtures: int = 5  # logistic components per subpixel (the mixture head only)
    num_classes: int = 10  # class labels (digits); 0 makes an unconditional model
    label_dropout: float = 0.2  # share of training labels replaced by "no label": the p(x) that guidance needs

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(
            self, ("hidden_channels", 1, 1024), ("num_layers", 1, 64), ("kernel_size", 1, 15),
            ("first_kernel_size", 1, 15), ("num_mixtures", 1, 32), ("num_classes", 0, 1000), ("label_dropout", 0.0, 1.0),
        )
        if self.output_head not in OUTPUT_HEADS:
            raise ConfigError(f"output_head must be one of {OUTPUT_HEADS}, got {self.output_head!r}")
        for name in ("kernel_size", "first_kernel_size"):
            if getattr(self, name) % 2 == 0:
                raise ConfigError(f"{name} must be odd, got {getattr(self, name)}")


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run a sampler's thousands of small ops on one CPU thread, then restore the thread count.

    Intra-op threads only add synchronization to (B, 2C) matrix products: on a busy 2-core machine
    two threads made sampling 8-80x slower. Other devices are left alone.
    """
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def gate(x: torch.Tensor) -> torch.Tensor:
    """Gated activation [1, eq. 2]: (B, 2C, ...) -> tanh(first half) * sigmoid(second half), (B, C, ...)."""
    filter_part, gate_part = x.chunk(2, dim=1)
    return torch.tanh(filter_part) * torch.sigmoid(gate_part)


def pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A convolution applied to one flattened receptive field per row: (B, C_in * kh * kw) -> (B, C_out)."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


class GatedLayer(nn.Module):
    """One layer of the vertical and horizontal stacks [1, figure 2], conditioned on a label embedding."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, num_labels: int, residual: bool):
        super().__init__()
        self.pad = kernel_size // 2
        self.residual = residual
        self.vertical = nn.Conv2d(in_channels, 2 * channels, (self.pad + 1, kernel_size))  # rows r-p..r
        self.horizontal = nn.Conv2d(in_channels, 2 * channels, (1, self.pad + 1))  # columns c-p..c
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1)  # vertical -> horizontal
        self.out = nn.Conv2d(channels, channels, 1)
        self.label_embedding = nn.Embedding(num_labels, 4 * channels)  # V y of both stacks' gates [1, eq. 4]

    def conditions(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """labels (B,) -> the gate biases of the vertical and horizontal stacks, (B, 2C) each."""
        return self.label_embedding(labels).chunk(2, dim=1)

    def forward(self, v: torch.Tensor, h: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole images: v, h (B, C_in, H, W) -> v, h (B, C, H, W); causal through the padding alone."""
        p = self.pad
        condition_v, condition_h = self.conditions(labels)
        v_pre = self.vertical(F.pad(v, (p, p, p, 0))) + condition_v[:, :, None, None]  # (B, 2C, H, W)
        h_pre = self.horizontal(F.pad(h, (p, 0, 0, 0))) + self.link(v_pre) + condition_h[:, :, None, None]
        h_out = self.out(gate(h_pre))
        return gate(v_pre), (h + h_out if self.residual else h_out)

    def vertical_row(self, band: torch.Tensor, condition_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One row: band (B, C_in, p + 1, W + 2p) of padded input rows r-p..r -> v (B, C, W), link (B, 2C, W)."""
        v_pre = self.vertical(band) + condition_v[:, :, None, None]  # (B, 2C, 1, W)
        return gate(v_pre).squeeze(2), self.link(v_pre).squeeze(2)

    def horizontal_position(self, window: torch.Tensor, link: torch.Tensor, h: torch.Tensor | None,
                            condition_h: torch.Tensor) -> torch.Tensor:
        """One position: window (B, C_in, p + 1) of columns c-p..c, link (B, 2C), h (B, C) at c -> h (B, C)."""
        h_pre = pointwise(self.horizontal, window.reshape(len(window), -1)) + link + condition_h
        h_out = pointwise(self.out, gate(h_pre))
        return h + h_out if self.residual else h_out


@dataclass
class SamplerState:
    """What the sampler keeps between pixels; p is each layer's kernel_size // 2."""

    x: torch.Tensor  # the canvas as the network's input, (B, C + 1, H, W)
    unit_values: torch.Tensor  # [-1, 1] value of each of the 256 levels, (256,)
    vertical: list[torch.Tensor]  # per layer, its padded vertical input (B, C_in, H + p, W + 2p); the image shifted down one
    horizontal: list[torch.Tensor]  # per layer, its left-padded horizontal input in the current row (B, C_in, W + p)
    links: list[torch.Tensor]  # per layer, the vertical stack's link into the current row (B, 2C, W)
    conditions: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, the label's gate biases (B, 2C) twice


class PixelCNN(HubModel, family="pixelcnn", tags=["image-generation", "autoregressive"]):
    """A conditional Gated PixelCNN (van den Oord et al., 2016) with a 256-way softmax or a discretized logistic
    mixture output (Salimans et al., 2017): exact log-likelihood, class-conditional or unconditional sampling, completion."""

    def __init__(self, config: PixelCNNConfig):
        super().__init__()
        self.config = config
        width, image_channels = config.hidden_channels, config.num_channels
        num_labels = config.num_classes + 1  # the last index is "no label"
        self.layers = nn.ModuleList(
            [GatedLayer(image_channels + 1, width, config.first_kernel_size, num_labels, residual=False)]
            + [GatedLayer(width, width, config.kernel_size, num_labels, residual=True) for _ in range(config.num_layers - 1)]
        )
        self.head_hidden = nn.Conv2d(width, width, 1)
        outputs_per_subpixel = NUM_LEVELS if config.output_head == "softmax" else 3 * config.num_mixtures
        self.head_out = nn.Conv2d(width, outputs_per_subpixel * image_channels, 1)

    @property
    def num_dims(self) -> int:
        return self.config.num_channels * self.config.resolution**2

    @property
    def no_label(self) -> int:
        return self.config.num_classes

    def _labels(self, labels: torch.Tensor | int | None, batch_size: int, device: torch.device) -> torch.Tensor:
        """None, an int or (B,) labels -> (B,) int64 on `device`; None means "no label"."""
        if labels is None or self.config.num_classes == 0:
            return torch.full((batch_size,), self.no_label, dtype=torch.long, device=device)
        return batch_labels(labels, self.config.num_classes, batch_size, device)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, C + 1, H, W) with a channel of ones that tells image from padding."""
        return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)

    def network(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Output-head parameters of every pixel given the pixels before it: 256 logits or 3 K mixture parameters
        per subpixel. x: (B, C, H, W) in [-1, 1]; labels: (B,) int64 -> params (B, P, H, W).
        """
        x = self._input(x)
        v = F.pad(x, (0, 0, 1, 0))[:, :, :-1]  # shifted down one row: the vertical stack sees rows < r
        h = F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]  # shifted right one column: mask A of the first layer
        for layer in self.layers:
            v, h = layer(v, h, labels)
        return self.head_out(F.relu(self.head_hidden(F.relu(h))))

    def _level_log_probs(self, params: torch.Tensor) -> torch.Tensor:
        """log p(value) of each of the 256 values of every subpixel: params (B, P, H, W) -> (B, 256, C, H, W)."""
        config = self.config
        if config.output_head == "mixture":
            return discretized_logistic_mixture_level_log_probs(params, config.num_channels, config.num_mixtures)
        batch, _, height, width = params.shape
        return F.log_softmax(params.float().view(batch, NUM_LEVELS, config.num_channels, height, width), dim=1)

    def _log_prob(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p(images | labels) in nats, labels (B,) with the "no label" index allowed -> (B,)."""
        params = self.network(to_unit_range(images), labels).float()
        if self.config.output_head == "mixture":
            return discretized_logistic_mixture_log_prob(images, params, self.config.num_mixtures)
        levels = self._level_log_probs(params)  # (B, 256, C, H, W)
        return levels.gather(1, images.long().unsqueeze(1)).flatten(1).sum(1)

    def log_prob(self, images: torch.Tensor, labels: torch.Tensor | int | None = None) -> torch.Tensor:
        """Exact log p(images | labels), or with labels None log p(images) = log (1/K) sum_y p(images | y) (K
        passes), in nats: uint8 (B, C, H, W) -> (B,)."""
        if labels is not None or self.config.num_classes == 0:
            return self._log_prob(images, self._labels(labels, len(images), images.device))
        per_class = torch.stack([self.log_prob(images, label) for label in range(self.config.num_classes)], dim=1)
        return per_class.logsumexp(1) - math.log(self.config.num_classes)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Negative log-likelihood per dimension in nats ("loss") and in bits ("bits_per_dim")."""
        images = batch["images"]
        if self.config.num_classes and batch.get("labels") is None:
            raise UserError(f"this PixelCNN is conditional on {self.config.num_classes} classes and the data has no "
                            "labels: train with --num_classes 0, or on labelled data")
        labels = self._labels(batch.get("labels"), len(images), images.device)
        if self.training and self.config.label_dropout > 0:
            # Like dropout, this draws on the global RNG, which the training loop seeds and checkpoints.
            dropped = torch.rand(len(images), device=images.device) < self.config.label_dropout
            labels = torch.where(dropped, torch.full_like(labels, self.no_label), labels)
        loss = -self._log_prob(images, labels).mean() / self.num_dims
        return {"loss": loss, "bits_per_dim": loss / math.log(2)}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.loss(batch)

    # --- sampling: the network one row and one position at a time ------------------------------------------

    def _start(self, canvas: torch.Tensor, labels: torch.Tensor) -> "SamplerState":
        """The sampler's state for a canvas, uint8 (B, C, H, W), of which only finished pixels are ever read."""
        batch, _, height, width = canvas.shape
        # A lookup, not arithmetic, so a pixel written alone has exactly the value it has in a whole image.
        unit_values = to_unit_range(torch.arange(256, dtype=torch.uint8, device=canvas.device))
        x = self._input(unit_values[canvas.long()])
        vertical = []
        for index, layer in enumerate(self.layers):
            p, channels = layer.pad, layer.vertical.in_channels
            extra_row = 1 if index == 0 else 0
            vertical.append(torch.zeros(batch, channels, height + p + extra_row, width + 2 * p, device=canvas.device))
        p0 = self.layers[0].pad
        vertical[0][:, :, p0 + 1 :, p0 : p0 + width] = x
        conditions = [layer.conditions(labels) for layer in self.layers]
        return SamplerState(x, unit_values, vertical, [], [], conditions)

    def _vertical_row(self, state: SamplerState, row: int) -> None:
        """Run the vertical stack on one row (every layer), once the rows above it are final."""
        state.links = []
        for index, layer in enumerate(self.layers):
            p = layer.pad
            band = state.vertical[index][:, :, row : row + p + 1]  # padded rows r-p..r (the image: r-p-1..r-1)
            v, link = layer.vertical_row(band, state.conditions[index][0])
            state.links.append(link)
            if index + 1 < len(self.layers):
                next_p = self.layers[index + 1].pad
                state.vertical[index + 1][:, :, row + next_p, next_p : next_p + v.shape[-1]] = v

    def _begin_row(self, state: SamplerState, row: int) -> None:
        """Fresh horizontal inputs for a row: the image row (read left of the current pixel only), zero padding."""
        x_row = state.x[:, :, row]  # (B, C + 1, W)
        batch, width = len(x_row), x_row.shape[-1]
        state.horizontal = []
        for index, layer in enumerate(self.layers):
            p, channels = layer.pad, layer.horizontal.in_channels
            state.horizontal.append(torch.zeros(batch, channels, width + p + (1 if index == 0 else 0), device=x_row.device))
        p0 = self.layers[0].pad
        state.horizontal[0][:, :, p0 + 1 :] = x_row

    def _horizontal_position(self, state: SamplerState, column: int) -> torch.Tensor:
        """Run the horizontal stack and the head at one position of the current row -> params (B, P)."""
        h = None
        for index, layer in enumerate(self.layers):
            p = layer.pad
            window = state.horizontal[index][:, :, column : column + p + 1]  # columns c-p..c of its input
            residual = state.horizontal[index][:, :, column + p] if layer.residual else None
            h = layer.horizontal_position(window, state.links[index][:, :, column], residual, state.conditions[index][1])
            if index + 1 < len(self.layers):
                state.horizontal[index + 1][:, :, column + self.layers[index + 1].pad] = h
        return pointwise(self.head_out, F.relu(pointwise(self.head_hidden, F.relu(h))))

    def _write_pixel(self, state: SamplerState, row: int, column: int, pixel: torch.Tensor) -> None:
        """Put a sampled pixel, uint8 (B, C), into the inputs of both stacks."""
        p0 = self.layers[0].pad
        value = state.unit_values[pixel.long()]  # (B, C); the ones channel is already in place
        state.x[:, : pixel.shape[1], row, column] = value
        state.horizontal[0][:, : pixel.shape[1], column + p0 + 1] = value
        state.vertical[0][:, : pixel.shape[1], row + p0 + 1, column + p0] = value

    def stepwise_params(self, canvas: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """`network` evaluated with the sampler's row and position kernels: uint8 (B, C, H, W) -> (B, P, H, W)."""
        state = self._start(canvas, labels)
        rows = []
        for row in range(canvas.shape[2]):
            self._vertical_row(state, row)
            self._begin_row(state, row)
            rows.append(torch.stack([self._horizontal_position(state, column) for column in range(canvas.shape[3])], -1))
        return torch.stack(rows, dim=2)

    def _draw(self, params: torch.Tensor, temperature: float, guidance_scale: float,
              generator: torch.Generator | None) -> torch.Tensor:
        """One pixel per image from its output head: params (B, P) -> uint8 (B, C).

        With guidance, the batch is the labelled images then the same images without labels (2B rows), and each
        pixel is drawn from p(v | y)^(1 + w) / p(v)^w over its 256 values, renormalized (classifier-free guidance
        [5], exact here because the head gives every value's probability); both halves get the same pixel.
        """
        config = self.config
        params = params.float()[:, :, None, None]  # one pixel as a 1 x 1 image
        if config.output_head == "mixture":
            params = scale_mixture_temperature(params, config.num_channels, config.num_mixtures, temperature)
            if not guidance_scale:
                return sample_discretized_logistic_mixture(params, config.num_channels, config.num_mixtures, generator)[:, :, 0, 0]
        else:
            params = params / temperature  # the logits of a softmax
        log_probs = self._level_log_probs(params)[..., 0, 0]  # (B, 256, C)
        if not guidance_scale:
            return gumbel_max(log_probs, 1, generator).to(torch.uint8)
        conditional, unconditional = log_probs.chunk(2)  # (B, 256, C) each
        guided = (1 + guidance_scale) * conditional - guidance_scale * unconditional
        return gumbel_max(guided, 1, generator).to(torch.uint8).repeat(2, 1)  # a draw from softmax(guided)

    @torch.no_grad()
    def _fill(self, canvas: torch.Tensor, first_row: int, labels: torch.Tensor, temperature: float, guidance_scale: float,
              generator: torch.Generator | None, method: str) -> torch.Tensor:
        """Sample the rows from `first_row` on, in raster order, into `canvas` (uint8 (B, C, H, W)) -> the canvas.

        Both methods draw each pixel from the same parameters, computed by the same kernels, with the same
        random numbers: "naive" recomputes the whole network from the canvas, "cached" reuses the state.
        Guidance runs the network on the canvas twice over, with the labels and without.
        """
        if method not in ("cached", "naive"):
            raise ValueError(f"method must be 'cached' or 'naive', got {method!r}")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        if guidance_scale < 0 or not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}")
        batch_size = len(canvas)
        if guidance_scale:
            if self.config.num_classes == 0:
                raise ValueError("guidance_scale needs a class-conditional model (num_classes > 0)")
            canvas = torch.cat([canvas, canvas])
            labels = torch.cat([labels, torch.full_like(labels, self.no_label)])
        height, width = canvas.shape[2:]
        with one_cpu_thread(canvas.device):
            if method == "naive":
                for row in range(first_row, height):
                    for column in range(width):
                        params = self.stepwise_params(canvas, labels)[:, :, row, column]  # the whole network
                        canvas[:, :, row, column] = self._draw(params, temperature, guidance_scale, generator)
                return canvas[:batch_size]
            state = self._start(canvas, labels)
            for row in range(height):
                self._vertical_row(state, row)  # also above `first_row`: later rows read these features
                if row < first_row:
                    continue
                self._begin_row(state, row)
                for column in range(width):
                    pixel = self._draw(self._horizontal_position(state, column), temperature, guidance_scale, generator)
                    canvas[:, :, row, column] = pixel
                    self._write_pixel(state, row, column, pixel)
        return canvas[:batch_size]

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None, label: int | torch.Tensor | None = None,
               temperature: float = 1.0, method: str = "cached", guidance_scale: float = 0.0) -> torch.Tensor:
        """Images from p(x | label), or from p(x) with label None: (num_samples, C, H, W) uint8.

        `label`: an int for all samples, (num_samples,) labels, or None (each sample's label drawn uniformly
        from `generator`, then as if given: p(x) is the mixture over the classes). `temperature` T divides the softmax's
        logits (or the mixture's logits, and multiplies its logistic scales): T < 1 gives cleaner, less varied digits. `guidance_scale` w > 0
        (with a label) samples each pixel from p(v | y)^(1 + w) / p(v)^w, classifier-free guidance [5]: digits
        more clearly of their class, at twice the work. `method`: "cached" (fast) or "naive" (the whole network
        per pixel); both give the same images for the same generator.
        """
        device = next(self.parameters()).device
        config = self.config
        canvas = torch.zeros(num_samples, config.num_channels, config.resolution, config.resolution, dtype=torch.uint8, device=device)
        if label is None and config.num_classes:
            label = gumbel_max(torch.zeros(num_samples, config.num_classes, device=device), 1, generator)  # uniform
        labels = self._labels(label, num_samples, device)
        return self._fill(canvas, 0, labels, temperature, guidance_scale, generator, method)

    def _given_rows_log_likelihoods(self, canvas: torch.Tensor, num_rows_given: int) -> torch.Tensor:
        """log p(top `num_rows_given` rows | y) for every class y: uint8 (B, C, H, W) -> (B, K).

        The network runs on the given rows alone (no pixel of theirs sees a row below), once per distinct image.
        """
        if num_rows_given == 0:
            return torch.zeros(len(canvas), self.config.num_classes, device=canvas.device)
        top, index = torch.unique(canvas[:, :, :num_rows_given], dim=0, return_inverse=True)  # completions of one digit share it
        per_class = []
        for label in range(self.config.num_classes):
            levels = self._level_log_probs(self.network(to_unit_range(top), self._labels(label, len(top), top.device)).float())
            per_class.append(levels.gather(1, top.long().unsqueeze(1)).flatten(1).sum(1))
        return torch.stack(per_class, dim=1)[index]

    @torch.no_grad()
    def complete(self, images: torch.Tensor, num_rows_given: int, generator: torch.Generator | None = None,
                 label: int | torch.Tensor | None = None, temperature: float = 1.0, guidance_scale: float = 0.0) -> torch.Tensor:
        """Keep the top `num_rows_given` rows of uint8 (B, C, H, W) images and sample the rest -> uint8 (B, C, H, W).

        With label None, each image's label is first drawn from p(y | the given rows): the model guesses the
        digit from its top and finishes that digit."""
        if not 0 <= num_rows_given <= images.shape[2]:
            raise ValueError(f"num_rows_given must be in [0, {images.shape[2]}], got {num_rows_given}")
        device = next(self.parameters()).device
        canvas = images.to(device=device, dtype=torch.uint8, copy=True)
        canvas[:, :, num_rows_given:] = 0  # nothing below the given rows is read before it is sampled
        if label is None and self.config.num_classes:
            # y ~ p(y | rows) = p(rows | y) / sum_k p(rows | k) under the uniform prior
            label = gumbel_max(self._given_rows_log_likelihoods(canvas, num_rows_given), 1, generator)
        labels = self._labels(label, len(images), device)
        return self._fill(canvas, num_rows_given, labels, temperature, guidance_scale, generator, "cached")

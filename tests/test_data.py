import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from gm_hub.data import (
    DataError,
    ImageDataConfig,
    image_grid,
    load_image_datasets,
    load_mnist_idx,
    load_test_dataset,
    load_text,
    read_idx,
    split_text,
    to_uint8_images,
)


def test_embedded_mnist_split_is_deterministic_and_disjoint():
    train_a, validation_a = load_image_datasets(ImageDataConfig())
    train_b, validation_b = load_image_datasets(ImageDataConfig())
    assert (len(train_a), len(validation_a)) == (4500, 500)
    assert train_a.images.dtype == torch.uint8 and train_a.images.shape[1:] == (1, 28, 28)
    assert torch.equal(validation_a.images, validation_b.images) and torch.equal(train_a.labels, train_b.labels)
    train_rows = {bytes(image.numpy()) for image in train_a.images}
    assert not any(bytes(image.numpy()) in train_rows for image in validation_a.images)
    assert set(validation_a.labels.tolist()) == set(range(10))


def test_resolution_and_channels_are_configurable():
    train, _ = load_image_datasets(ImageDataConfig(resolution=32, num_channels=3))
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype == torch.uint8


def test_image_folder_of_mixed_sizes_and_modes(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "nested").mkdir()
    for i in range(6):
        size = (20 + i, 24)
        array = rng.integers(0, 256, size=(*size[::-1], 3), dtype=np.uint8)
        Image.fromarray(array).save(tmp_path / ("nested" if i % 2 else ".") / f"{i}.png")
    Image.fromarray(np.full((16, 16), 200, dtype=np.uint8)).save(tmp_path / "gray.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    train, validation = load_image_datasets(ImageDataConfig(train_data_dir=str(tmp_path), resolution=16))
    assert len(train) + len(validation) == 7
    assert train.images.shape[1:] == (1, 16, 16) and train.labels is None


def test_missing_or_empty_folder_says_which_flag(tmp_path):
    with pytest.raises(DataError, match="--train_data_dir .* is not a folder"):
        load_image_datasets(ImageDataConfig(train_data_dir=str(tmp_path / "missing")))
    with pytest.raises(DataError, match="holds no images"):
        load_image_datasets(ImageDataConfig(train_data_dir=str(tmp_path)))


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_files_in_the_mnist_layout(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 10, 7)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    assert np.array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), images)
    dataset = load_mnist_idx(tmp_path)
    assert torch.equal(dataset.images[:, 0], torch.from_numpy(images.astype(np.uint8)))
    assert dataset.labels.tolist() == labels.tolist()
    test_set = load_test_dataset(ImageDataConfig(eval_data_dir=str(tmp_path), resolution=32))
    assert test_set.images.shape == (7, 1, 32, 32)


def test_truncated_idx_is_refused(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", 10, 28, 28) + b"\0" * 100)
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_hub_dataset_offline_names_the_local_flag():
    with pytest.raises(DataError, match="--train_data_dir"):
        load_image_datasets(ImageDataConfig(dataset_name="someone/not-cached-anywhere"))
    with pytest.raises(DataError, match="--eval_data_dir"):
        load_test_dataset(ImageDataConfig())


def test_to_uint8_images_keeps_constant_images_exact():
    images = torch.full((2, 3, 10, 10), 77, dtype=torch.uint8)
    out = to_uint8_images(images, 20, 1)
    assert out.shape == (2, 1, 20, 20) and (out == 77).all()


def test_image_grid_layout():
    images = torch.stack([torch.full((1, 4, 4), v, dtype=torch.uint8) for v in (10, 20, 30, 40, 50)])
    grid = np.asarray(image_grid(images, num_columns=3, padding=1))
    assert grid.shape == (1 + 2 * 5, 1 + 3 * 5)
    assert grid[1, 1] == 10 and grid[1, 6] == 20 and grid[6, 1] == 40 and grid[6, 11] == 0


def test_text_split_is_the_last_ten_percent(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("abcdefghij" * 10, encoding="utf-8")
    text = load_text(train_file=str(path))
    train, validation = split_text(text)
    assert train + validation == text and len(validation) == 10 and validation == text[-10:]
    with pytest.raises(DataError, match="--train_file"):
        load_text(train_file=str(tmp_path / "missing.txt"))


def test_hugging_face_dataset_code_path_with_a_local_dataset(tmp_path):
    """--dataset_name goes through datasets.load_dataset; a local dataset folder exercises it offline."""
    import datasets

    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)) for _ in range(10)]
    table = datasets.Dataset.from_dict({"picture": pictures, "label": list(range(10))}).cast_column("picture", datasets.Image())
    (tmp_path / "data").mkdir()
    table.to_parquet(str(tmp_path / "data" / "train-00000.parquet"))
    train, validation = load_image_datasets(ImageDataConfig(dataset_name=str(tmp_path), resolution=8))
    assert len(train) + len(validation) == 10 and train.images.shape[1:] == (1, 8, 8)
    assert sorted(train.labels.tolist() + validation.labels.tolist()) == list(range(10))
    with pytest.raises(DataError, match="--image_column 'photo' is not in"):
        load_image_datasets(ImageDataConfig(dataset_name=str(tmp_path), image_column="photo"))

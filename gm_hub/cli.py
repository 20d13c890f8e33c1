"""The `gm-hub` command: train a family, sample or evaluate any saved model.

    gm-hub train vae --max_train_steps 2000          # the same as: accelerate launch training/train_vae.py ...
    gm-hub sample ./vae-mnist --num_samples 64 --seed 0 --output grid.png
    gm-hub sample ./glow-mnist --sample_kwargs '{"temperature": 0.7}'   # any keywords of the model's sample()
    gm-hub evaluate ./vae-mnist --eval_data_dir ../shared/data/mnist
"""

import argparse
import importlib.resources
import json
import os
import runpy
import sys
from pathlib import Path

from .errors import UserError
from .training import ArgumentParser


MAX_NUM_SAMPLES = 100_000  # a .npy of 100,000 MNIST digits is 78 MB; drawn in batches, so memory stays flat
SAMPLE_BATCH_SIZE = 256


def available_families() -> list[str]:
    """Families with a training script (training/train_<family>.py, shipped as gm_hub.recipes)."""
    from .registry import FAMILIES

    scripts = {p.name for p in importlib.resources.files("gm_hub.recipes").iterdir()}
    return sorted(name for name, family in FAMILIES.items() if family.training_script in scripts)


def train(family: str, flags: list[str]) -> None:
    families = available_families()
    if family not in families:
        raise UserError(f"unknown family {family!r}; choose one of {', '.join(families)}")
    module = f"gm_hub.recipes.train_{family}"
    sys.argv = [f"train_{family}.py", *flags]  # the script parses its own flags, as under accelerate launch
    runpy.run_module(module, run_name="__main__")


def _check_writable(output: str) -> Path:
    path = Path(output)
    if path.is_dir():
        raise UserError(f"--output {output} is a folder; give a file name")
    if not path.parent.is_dir():
        raise UserError(f"--output {output}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"--output {output} can't be written (permission denied)")
    return path


def sample(model_name: str, num_samples: int, seed: int, output: str, device: str, sample_kwargs: str | None = None) -> None:
    """Samples of any saved model: images as a .png grid or an .npy array, text as a .txt file; `sample_kwargs`
    (JSON) are keyword arguments of the model's sample()."""
    import numpy as np
    import torch

    from .data import save_image_grid
    from .hub import load_model
    from .metrics import parse_sample_kwargs, sample_batches

    if not 1 <= num_samples <= MAX_NUM_SAMPLES:
        raise UserError(f"--num_samples must be in [1, {MAX_NUM_SAMPLES:,}], got {num_samples}")
    if not 0 <= seed < 2**63:
        raise UserError(f"--seed must be in [0, 2^63), got {seed}")
    if not output.endswith((".png", ".npy", ".txt")):
        raise UserError(f"--output must end in .png (a grid), .npy (an N x C x H x W uint8 array) or .txt (texts), got {output!r}")
    path = _check_writable(output)
    keywords = parse_sample_kwargs(sample_kwargs)
    if output.endswith(".png") and num_samples > 1024:
        raise UserError(f"a .png grid holds at most 1,024 samples, got --num_samples {num_samples}; write .npy for more")
    model = load_model(model_name, map_location=device)
    batches = sample_batches(model, num_samples, SAMPLE_BATCH_SIZE, torch.Generator().manual_seed(seed), **keywords)
    first = next(batches)
    if isinstance(first, list):  # texts
        if not output.endswith(".txt"):
            raise UserError(f"{model_name} generates text: give --output FILE.txt")
        with open(path, "w", encoding="utf-8") as f:
            for texts in (first, *batches):
                f.write("".join(text + "\n\n----\n\n" for text in texts))
        print(f"wrote {num_samples} texts to {output}")
        return
    if output.endswith(".txt"):
        raise UserError(f"{model_name} generates images: give --output FILE.png or FILE.npy")
    shape = tuple(first.shape[1:])
    if output.endswith(".png"):
        save_image_grid(torch.cat([first.cpu(), *(b.cpu() for b in batches)]), path)
    else:  # written batch by batch into a memory-mapped .npy, so memory stays flat for any count
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(num_samples, *shape))
        start = 0
        for images in (first, *batches):
            array[start : start + len(images)] = images.cpu().numpy()
            start += len(images)
        array.flush()
    print(f"wrote {num_samples} samples of shape {shape} to {output}")


def evaluate(model_name: str, flags: list[str], write_card: bool) -> None:
    from .data import ImageDataConfig, TextDataConfig, evaluation_dataset, load_image_datasets, load_text, split_text
    from .hub import load_model, update_model_card_metrics
    from .metrics import EvaluationConfig, evaluate_model
    from .training import parse_args

    from .registry import family_of_class

    model = load_model(model_name)
    if family_of_class(type(model).__name__).produces != "text":  # images: the test set or the embedded validation split
        data_defaults = {"resolution": model.config.resolution, "num_channels": model.config.num_channels}
        data, evaluation = parse_args([ImageDataConfig, EvaluationConfig], flags, defaults=data_defaults)
        _, validation_set = load_image_datasets(data) if not data.eval_data_dir else (None, None)
        dataset, dataset_name = evaluation_dataset(data, validation_set)
        metrics = evaluate_model(model, None, dataset, evaluation)
    else:  # a text model: the held-out end of a text
        data, evaluation = parse_args([TextDataConfig, EvaluationConfig], flags)
        _, validation_text = split_text(load_text(data.train_file, data.dataset_name, data.text_column), data.validation_fraction)
        metrics = model.evaluate(validation_text)
        dataset_name = f"last {data.validation_fraction:.0%} of {data.train_file or data.dataset_name}"
    print(json.dumps({"model": str(model_name), "dataset": dataset_name, **metrics}, indent=2))
    if write_card:
        update_model_card_metrics(Path(model_name), model, metrics, dataset_name, evaluation.sample_kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="gm-hub", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train a family (flags: gm-hub train FAMILY --help)", add_help=False)
    train_parser.add_argument("family")
    sample_parser = commands.add_parser("sample", help="sample any saved model (images or text)")
    sample_parser.add_argument("model", help="a model folder or Hub repo id")
    sample_parser.add_argument("--num_samples", type=int, default=16)
    sample_parser.add_argument("--seed", type=int, default=0)
    sample_parser.add_argument("--output", default="samples.png", help=".png for a grid, .npy for a uint8 N x C x H x W array, .txt for texts")
    sample_parser.add_argument("--device", default="cpu")
    sample_parser.add_argument("--sample_kwargs", default=None,
                               help='JSON keyword arguments of the model\'s sample(), e.g. \'{"temperature": 0.7}\'')
    evaluate_parser = commands.add_parser("evaluate", help="metrics of a saved model as JSON (flags: --eval_data_dir, --write_card, ...)",
                                          add_help=False)
    evaluate_parser.add_argument("model")
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args, rest = build_parser().parse_known_args(argv)
    try:
        if args.command == "train":
            train(args.family, rest)
        elif args.command == "sample":
            if rest:
                raise UserError(f"unrecognized arguments: {' '.join(rest)}")
            sample(args.model, args.num_samples, args.seed, args.output, args.device, args.sample_kwargs)
        else:
            evaluate(args.model, [flag for flag in rest if flag != "--write_card"], "--write_card" in rest)
    except UserError as err:
        print(f"gm-hub: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

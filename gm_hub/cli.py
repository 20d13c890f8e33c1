"""The `gm-hub` command: train a family, sample or evaluate any saved model.

    gm-hub train vae --max_train_steps 2000          # the same as: accelerate launch training/train_vae.py ...
    gm-hub sample ./vae-mnist --num_samples 64 --seed 0 --output grid.png
    gm-hub evaluate ./vae-mnist --eval_data_dir ../shared/data/mnist
"""

import argparse
import importlib
import importlib.resources
import json
import runpy
import sys
from pathlib import Path

from .errors import UserError
from .training import ArgumentParser


def available_families() -> list[str]:
    """Families with a training script (training/train_<family>.py, shipped as gm_hub.recipes)."""
    scripts = importlib.resources.files("gm_hub.recipes").iterdir()
    return sorted(p.name[len("train_"):-3] for p in scripts if p.name.startswith("train_") and p.name.endswith(".py"))


def train(family: str, flags: list[str]) -> None:
    families = available_families()
    if family not in families:
        raise UserError(f"unknown family {family!r}; choose one of {', '.join(families)}")
    module = f"gm_hub.recipes.train_{family}"
    sys.argv = [f"train_{family}.py", *flags]  # the script parses its own flags, as under accelerate launch
    runpy.run_module(module, run_name="__main__")


def sample(model_name: str, num_samples: int, seed: int, output: str, device: str) -> None:
    import numpy as np
    import torch

    from .data import save_image_grid
    from .hub import load_model

    if num_samples <= 0:
        raise UserError(f"--num_samples must be positive, got {num_samples}")
    if not output.endswith((".png", ".npy")):
        raise UserError(f"--output must end in .png (a grid) or .npy (an N x C x H x W uint8 array), got {output!r}")
    model = load_model(model_name, map_location=device)
    images = model.sample(num_samples, generator=torch.Generator().manual_seed(seed)).cpu()
    if output.endswith(".png"):
        save_image_grid(images, output)
    else:
        np.save(output, images.numpy())
    print(f"wrote {num_samples} samples of shape {tuple(images.shape[1:])} to {output}")


def evaluate(model_name: str, flags: list[str], write_card: bool) -> None:
    from .data import ImageDataConfig, TextDataConfig, evaluation_dataset, load_image_datasets, load_text, split_text
    from .hub import load_model, update_model_card_metrics
    from .metrics import EvaluationConfig, evaluate_model
    from .training import parse_args

    model = load_model(model_name)
    if hasattr(model.config, "resolution"):  # an image model: the test set or the embedded validation split
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
        update_model_card_metrics(Path(model_name), model, metrics, dataset_name)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="gm-hub", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train a family (flags: gm-hub train FAMILY --help)", add_help=False)
    train_parser.add_argument("family")
    sample_parser = commands.add_parser("sample", help="sample any saved image model")
    sample_parser.add_argument("model", help="a model folder or Hub repo id")
    sample_parser.add_argument("--num_samples", type=int, default=16)
    sample_parser.add_argument("--seed", type=int, default=0)
    sample_parser.add_argument("--output", default="samples.png", help=".png for a grid, .npy for a uint8 N x C x H x W array")
    sample_parser.add_argument("--device", default="cpu")
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
            sample(args.model, args.num_samples, args.seed, args.output, args.device)
        else:
            evaluate(args.model, [flag for flag in rest if flag != "--write_card"], "--write_card" in rest)
    except UserError as err:
        print(f"gm-hub: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""PixelCNN: two ways to be unconditional, scored on likelihood and on samples.

    python benchmarks/pixelcnn_unconditional.py pretrained/pixelcnn-mnist --num_test 2000 --num_samples 2000

A class-conditional PixelCNN trained with label dropout holds two estimates of p(x): the "no label" class
(trained on the dropped 20% of labels; what classifier-free guidance contrasts with p(x | y)), and the mixture
over the classes, (1/K) sum_y p(x | y) (what `log_prob(images)` and `sample(n)` use). For each: test bits/dim
on the first --num_test MNIST test digits (the true-label p(x | y) beside them, which is not unconditional),
and --num_samples samples per temperature (seed 0) scored by the project's classifier. Writes
benchmarks/pixelcnn_unconditional.md and a grid of 64 samples per row.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

BENCHMARKS_DIR = Path(__file__).resolve().parent


def no_label_log_prob(model, images: torch.Tensor) -> torch.Tensor:
    """log p(images) from the "no label" class, (B,) nats (the model's private path: `log_prob` takes the mixture)."""
    return model._log_prob(images, model._labels(None, len(images), images.device))


def no_label_samples(model, num_samples: int, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Samples of the "no label" class, uint8 (N, C, H, W)."""
    config = model.config
    canvas = torch.zeros(num_samples, config.num_channels, config.resolution, config.resolution, dtype=torch.uint8)
    return model._fill(canvas, 0, model._labels(None, num_samples, canvas.device), temperature, 0.0, generator, "cached")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--num_test", type=int, default=2000)
    parser.add_argument("--num_samples", type=int, default=2000)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--eval_data_dir", default="../shared/data/mnist", help="MNIST test-set IDX files")
    parser.add_argument("--output", default=str(BENCHMARKS_DIR / "pixelcnn_unconditional"))
    args = parser.parse_args()

    from tqdm.auto import tqdm

    from gm_hub import load_model
    from gm_hub.data import load_mnist_idx, save_image_grid
    from gm_hub.metrics import bits_per_dim, load_digit_classifier, sample_metrics

    model = load_model(args.model).eval()
    test = load_mnist_idx(args.eval_data_dir)
    images, labels = test.images[: args.num_test], test.labels[: args.num_test]
    paths = {
        "no label": lambda batch, _: no_label_log_prob(model, batch),
        "mixture over the classes": lambda batch, _: model.log_prob(batch),
        "the true label: p(x given y), not unconditional": lambda batch, batch_labels: model.log_prob(batch, batch_labels),
    }
    lines = ["# PixelCNN: the no-label path against the mixture over the classes", "",
             f"```bash\npython {' '.join(sys.argv)}\n```", "", f"Model `{args.model}`.", "",
             f"Test bits/dim on the first {len(images)} MNIST test digits:", "",
             "| p(x) from | bits/dim | time |", "|---|---|---|"]
    with torch.no_grad():
        for name, log_prob in paths.items():
            start = time.perf_counter()
            bits = torch.cat([bits_per_dim(log_prob(images[i:i + args.batch_size], labels[i:i + args.batch_size]), model.num_dims)
                              for i in tqdm(range(0, len(images), args.batch_size), desc=name, leave=False)])
            lines.append(f"| {name} | {bits.mean().item():.4f} | {time.perf_counter() - start:.0f} s |")
            print(lines[-1], flush=True)

    classifier = load_digit_classifier()
    lines += ["", f"{args.num_samples} samples per row (seed 0) against the {len(test.images)} MNIST test digits, scored by "
              "the project's classifier:", "",
              "| samples from | temperature | classifier FID | confident share (p >= 0.9) | class shares, min-max | time | 64 samples |",
              "|---|---|---|---|---|---|---|"]
    output = Path(args.output)
    grids = 0
    for temperature in args.temperatures:
        for name in ("no label", "mixture over the classes"):
            generator = torch.Generator().manual_seed(0)
            start = time.perf_counter()
            batches = []
            for first in tqdm(range(0, args.num_samples, args.batch_size), desc=f"{name}, T={temperature}", leave=False):
                size = min(args.batch_size, args.num_samples - first)
                batches.append(no_label_samples(model, size, temperature, generator) if name == "no label"
                               else model.sample(size, generator=generator, temperature=temperature))
            seconds = time.perf_counter() - start
            samples = torch.cat(batches)
            metrics = sample_metrics(samples, test.images, classifier=classifier)
            shares = [metrics[f"class_share_{label}"] for label in range(10)]
            grid = f"{output.name}_{grids}.png"
            grids += 1
            save_image_grid(samples[:64], output.parent / grid, num_columns=8)
            lines.append(f"| {name} | {temperature} | {metrics['classifier_fid']:.2f} | {metrics['confident_share']:.3f} "
                         f"| {100 * min(shares):.1f}-{100 * max(shares):.1f}% | {seconds:.0f} s | ![64 samples]({grid}) |")
            print(lines[-1], flush=True)
    Path(f"{args.output}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

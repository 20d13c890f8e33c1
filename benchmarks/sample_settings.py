"""Sample quality of image models under several sampling settings (a temperature sweep, for one).

    python benchmarks/sample_settings.py pretrained/realnvp-mnist pretrained/glow-mnist \
        --sample_kwargs '{"temperature": 0.5}' '{"temperature": 0.7}' '{"temperature": 1.0}' --output benchmarks/flow_temperatures

For each model and JSON set of `sample()` keywords: --num_samples samples (seed 0), scored against the MNIST
test set by the project's classifier (`gm_hub.metrics.sample_metrics`): classifier FID, confident share
(p >= 0.9), the smallest and largest class share, and the time. Writes OUTPUT.md and one grid of 64 samples
per row, OUTPUT_<k>.png.
"""

import argparse
import shlex
import sys
import time
from pathlib import Path


def settings_table(model_paths: list[str], settings: list[dict], num_samples: int, eval_data_dir: str,
                   output: Path) -> list[str]:
    """Markdown lines: one row per (model, `sample()` keyword set), with its grid written beside `output`."""
    from gm_hub import load_model
    from gm_hub.data import load_mnist_idx, save_image_grid
    from gm_hub.metrics import draw_samples, load_digit_classifier, sample_metrics

    classifier = load_digit_classifier()
    reference = load_mnist_idx(eval_data_dir).images
    lines = [f"{num_samples} samples per row (seed 0) against the {len(reference)} MNIST test digits, scored by "
             "the project's classifier:", "",
             "| model | sample() keywords | classifier FID | confident share (p >= 0.9) | class shares, min-max "
             "| sampling time | 64 samples |",
             "|---|---|---|---|---|---|---|"]
    index = 0
    for path in model_paths:
        model = load_model(path).eval()
        for sample_kwargs in settings:
            start = time.perf_counter()
            samples = draw_samples(model, num_samples, **sample_kwargs)
            seconds = time.perf_counter() - start
            metrics = sample_metrics(samples, reference, classifier=classifier)
            shares = [metrics[f"class_share_{label}"] for label in range(10)]
            grid = f"{output.name}_{index}.png"
            save_image_grid(samples[:64], output.parent / grid, num_columns=8)
            keywords = ", ".join(f"{k}={v}" for k, v in sample_kwargs.items()) or "defaults"
            lines.append(f"| `{Path(path).name}` | {keywords} | {metrics['classifier_fid']:.2f} "
                         f"| {metrics['confident_share']:.3f} | {100 * min(shares):.1f}-{100 * max(shares):.1f}% "
                         f"| {seconds:.1f} s | ![64 samples]({grid}) |")
            print(lines[-1], flush=True)
            index += 1
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model folders or repo ids")
    parser.add_argument("--sample_kwargs", nargs="+", default=["{}"], help="one JSON object of sample() keywords per row")
    parser.add_argument("--num_samples", type=int, default=5000)
    parser.add_argument("--eval_data_dir", default="../shared/data/mnist", help="MNIST test-set IDX files")
    parser.add_argument("--output", required=True, help="OUTPUT.md and OUTPUT_<k>.png are written")
    args = parser.parse_args()

    from gm_hub.metrics import parse_sample_kwargs

    output = Path(args.output)
    settings = [parse_sample_kwargs(text) for text in args.sample_kwargs]
    lines = ["# Sample quality under several sampling settings", "", f"```bash\npython {shlex.join(sys.argv)}\n```", "",
             *settings_table(args.models, settings, args.num_samples, args.eval_data_dir, output)]
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

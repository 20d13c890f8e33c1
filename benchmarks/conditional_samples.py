"""How often a class-conditional model draws the digit it is asked for, under several sampling settings.

    python benchmarks/conditional_samples.py pretrained/gan-mnist --per_class 500
    python benchmarks/conditional_samples.py pretrained/pixelcnn-mnist --per_class 50 \
        --sample_kwargs '{"guidance_scale": 0}' '{"guidance_scale": 3}'

For each JSON set of `sample()` keywords: --per_class samples of each digit 0..9 (seed 1), classified by the
project's classifier (`gm_hub.metrics.conditional_metrics`): the share classified as the requested digit, the
confident share, the time, and a grid of one row per digit. Writes OUTPUT.md and OUTPUT_<k>.png (k: the row).
"""

import argparse
import shlex
import sys
import time
from pathlib import Path

BENCHMARKS_DIR = Path(__file__).resolve().parent


def conditional_table(model, per_class: int, settings: list[dict], output: Path) -> list[str]:
    """Markdown lines: one row per `sample()` keyword set, with a grid of one row per digit written beside `output`."""
    from gm_hub.data import save_image_grid
    from gm_hub.metrics import conditional_metrics, load_digit_classifier

    classifier = load_digit_classifier()
    lines = [f"Conditional samples, {per_class} per digit (seed 1), scored by the project's classifier:", "",
             "| sample() keywords | classified as the requested digit | confident share (p >= 0.9) | sampling time | grid |",
             "|---|---|---|---|---|"]
    for index, sample_kwargs in enumerate(settings):
        start = time.perf_counter()
        metrics, samples = conditional_metrics(model, per_class, classifier, seed=1, **sample_kwargs)
        seconds = time.perf_counter() - start
        grid = f"{output.name}_{index}.png"
        save_image_grid(samples[:, :10].flatten(0, 1), output.parent / grid, num_columns=10)
        keywords = ", ".join(f"{k}={v}" for k, v in sample_kwargs.items()) or "defaults"
        lines.append(f"| {keywords} | {metrics['conditional_accuracy']:.3f} | {metrics['conditional_confident_share']:.3f} "
                     f"| {seconds:.1f} s | ![one row per digit]({grid}) |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--per_class", type=int, default=100)
    parser.add_argument("--sample_kwargs", nargs="+", default=["{}"], help="one JSON object of sample() keywords per row")
    parser.add_argument("--output", default=None, help="default: benchmarks/<model folder>_conditional")
    args = parser.parse_args()

    from gm_hub import load_model
    from gm_hub.metrics import parse_sample_kwargs

    output = Path(args.output or BENCHMARKS_DIR / f"{Path(args.model).name}_conditional")
    settings = [parse_sample_kwargs(text) for text in args.sample_kwargs]
    lines = [f"# Conditional samples of `{args.model}`", "", f"```bash\npython {shlex.join(sys.argv)}\n```", "",
             *conditional_table(load_model(args.model), args.per_class, settings, output)]
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""PixelCNN: naive against cached sampling time, conditional accuracy, and a grid of one row per digit class.

    python benchmarks/pixelcnn_sampling.py pretrained/pixelcnn-mnist
    python benchmarks/pixelcnn_sampling.py pretrained/pixelcnn-mnist --per_class 100 --skip_naive --guidance_scales 0 1 3

16 samples with each method from one seed, timed in one run (the two must be identical images, which is
checked); conditional accuracy: --per_class samples of each digit at each classifier-free guidance scale,
classified by the project's classifier; class-conditional samples at temperature 1. Writes
benchmarks/pixelcnn_sampling.md and a PNG grid (one row per digit) per guidance scale.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from conditional_samples import conditional_table

BENCHMARKS_DIR = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--per_class", type=int, default=100)
    parser.add_argument("--skip_naive", action="store_true")
    parser.add_argument("--guidance_scales", type=float, nargs="+", default=[0.0])
    parser.add_argument("--output", default=str(BENCHMARKS_DIR / "pixelcnn_sampling"))
    args = parser.parse_args()

    from gm_hub import load_model

    model = load_model(args.model)
    lines = ["# PixelCNN sampling", "", f"```bash\npython {' '.join(sys.argv)}\n```", "", f"Model `{args.model}`.", ""]
    start = time.perf_counter()
    cached = model.sample(16, generator=torch.Generator().manual_seed(0), method="cached")
    cached_seconds = time.perf_counter() - start
    lines.append(f"16 samples, cached sampler: {cached_seconds:.2f} s.")
    if not args.skip_naive:
        start = time.perf_counter()
        naive = model.sample(16, generator=torch.Generator().manual_seed(0), method="naive")
        naive_seconds = time.perf_counter() - start
        lines.append(f"16 samples, naive sampler (the whole network once per pixel): {naive_seconds:.1f} s; "
                     f"speed-up {naive_seconds / cached_seconds:.0f}x; identical images: {torch.equal(naive, cached)}.")
    settings = [{"guidance_scale": scale} for scale in args.guidance_scales]
    lines += ["", *conditional_table(model, args.per_class, settings, Path(args.output))]
    Path(f"{args.output}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

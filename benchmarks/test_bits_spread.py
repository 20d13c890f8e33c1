"""The spread of test bits/dim over digits, for the flows: a mean can hide a few digits whose
density overflows (Glow's tanh coupling sent one to bits/dim 28,311; `benchmarks/flow_results.md`).

    python benchmarks/test_bits_spread.py pretrained/realnvp-mnist pretrained/glow-mnist

Each model's `log_prob` on the 10,000 MNIST test digits (one dequantization draw, seed 0): mean, median,
99.9th percentile and largest bits/dim, and how many digits score over 3 bits/dim. Prints a Markdown table.
"""

import argparse
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model folders or repo ids")
    parser.add_argument("--eval_data_dir", default="../shared/data/mnist", help="MNIST test-set IDX files")
    args = parser.parse_args()

    from gm_hub import load_model
    from gm_hub.data import load_mnist_idx
    from gm_hub.metrics import bits_per_dim_per_item

    test_set = load_mnist_idx(args.eval_data_dir)
    print("| model | mean | median | 99.9th percentile | largest | digits over 3 bits/dim |")
    print("|---|---|---|---|---|---|")
    for path in args.models:
        model = load_model(path).eval()
        with torch.no_grad():
            bits = bits_per_dim_per_item(model, test_set, generator=torch.Generator().manual_seed(0)).double()
        print(f"| `{Path(path).name}` | {bits.mean():.4f} | {bits.median():.4f} | {bits.quantile(0.999):.3f} "
              f"| {bits.max():.3g} | {int((bits > 3).sum())} |", flush=True)


if __name__ == "__main__":
    main()

"""PixelCNN output heads on one budget: the 256-way softmax against the discretized logistic mixture.

    python benchmarks/pixelcnn_heads.py --minutes 5 --hidden_channels 32 --num_layers 8 --kernel_size 3

Each head trains the same network from the same seed for the same wall-clock time on the embedded 5,000
digits (batch 64, Adam 1e-3, gradients clipped at 1, fp32, no schedule), then is scored on the first
--eval_items official MNIST test digits. The heads run one after the other, so both get the whole machine.
Writes benchmarks/pixelcnn_heads.md.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

BENCHMARKS_DIR = Path(__file__).resolve().parent


def train_for(minutes: float, config, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.nn.Module, int]:
    """Train a PixelCNN for `minutes` of wall-clock time -> (the model in eval mode, the steps taken)."""
    from gm_hub.models.pixelcnn import PixelCNN

    torch.manual_seed(0)
    model = PixelCNN(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = torch.Generator().manual_seed(0)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < minutes * 60:
        index = torch.randint(0, len(images), (64,), generator=batches)
        outputs = model({"images": images[index], "labels": labels[index]})
        outputs["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        steps += 1
        if steps % 100 == 0:
            print(f"{config.output_head}: step {steps}, {time.perf_counter() - start:.0f} s, "
                  f"{outputs['bits_per_dim'].item():.3f} bits/dim", flush=True)
    return model.eval(), steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--hidden_channels", type=int, default=32)
    parser.add_argument("--num_layers", type=int, default=8)
    parser.add_argument("--kernel_size", type=int, default=3)
    parser.add_argument("--eval_items", type=int, default=2000)
    parser.add_argument("--mnist_dir", default=str(BENCHMARKS_DIR.parent.parent / "shared" / "data" / "mnist"))
    args = parser.parse_args()

    from gm_hub.data import load_embedded_mnist, load_mnist_idx
    from gm_hub.metrics import evaluate_bits_per_dim
    from gm_hub.models.pixelcnn import PixelCNNConfig

    torch.set_num_threads(2)
    train_set, test_set = load_embedded_mnist(), load_mnist_idx(args.mnist_dir)
    images = torch.stack([train_set[i]["images"] for i in range(len(train_set))])
    labels = torch.tensor([int(train_set[i]["labels"]) for i in range(len(train_set))])
    rows = []
    for head in ("softmax", "mixture"):
        config = PixelCNNConfig(hidden_channels=args.hidden_channels, num_layers=args.num_layers,
                                kernel_size=args.kernel_size, output_head=head)
        model, steps = train_for(args.minutes, config, images, labels)
        with torch.no_grad():
            bits = evaluate_bits_per_dim(model, test_set, max_items=args.eval_items)
        rows.append(f"| {head} | {sum(p.numel() for p in model.parameters()):,} | {steps:,} | {bits:.4f} |")
    lines = [
        "# PixelCNN output heads on one budget", "", f"```bash\npython {' '.join(sys.argv)}\n```", "",
        f"A Gated PixelCNN of {args.hidden_channels} channels and {args.num_layers} layers ({args.kernel_size}x"
        f"{args.kernel_size}), {args.minutes:g} minutes of training each on 2 CPU threads, one after the other; "
        f"test bits/dim on the first {args.eval_items:,} official MNIST test digits.", "",
        "| head | parameters | steps | test bits/dim |", "|---|---|---|---|", *rows,
    ]
    (BENCHMARKS_DIR / "pixelcnn_heads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

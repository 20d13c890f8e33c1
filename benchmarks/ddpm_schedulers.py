"""Classifier FID against sampling cost for every diffusers scheduler of a trained DDPM, at several step counts.

    python benchmarks/ddpm_schedulers.py pretrained/ddpm-mnist --eval_data_dir ../shared/data/mnist
    python benchmarks/ddpm_schedulers.py pretrained/ddpm-mnist --num_samples 1000 --steps 10 20 50 100

Each (scheduler, steps) draws the same number of samples from the same seed, times them on this machine
(batches of --batch_size, one after the other) and scores them with the project's digit classifier against
the first --num_samples images of the MNIST test set (classifier FID, confident share, class shares). DDPM
also runs its full 1000 steps (ancestral sampling as Ho et al.). Writes benchmarks/ddpm_schedulers.md, a
JSON file and a plot of FID against seconds. FID depends on the number of samples: compare rows of one run.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

BENCHMARKS_DIR = Path(__file__).resolve().parent


def sample_timed(model, scheduler: str, steps: int, num_samples: int, batch_size: int, seed: int = 0):
    """-> (uint8 samples (N, C, H, W), seconds)."""
    generator = torch.Generator().manual_seed(seed)
    start, batches = time.perf_counter(), []
    for first in range(0, num_samples, batch_size):
        batches.append(model.sample(min(batch_size, num_samples - first), generator=generator, scheduler=scheduler,
                                    num_inference_steps=steps))
    return torch.cat(batches), time.perf_counter() - start


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    for scheduler in dict.fromkeys(row["scheduler"] for row in rows):
        points = sorted((row["seconds_per_16"], row["classifier_fid"]) for row in rows if row["scheduler"] == scheduler)
        axis.plot(*zip(*points), marker="o", label=scheduler.removesuffix("Scheduler"))
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("seconds for 16 samples on this machine (log)")
    axis.set_ylabel("classifier FID (log; lower is better)")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a DDPM folder or Hub repo id")
    parser.add_argument("--eval_data_dir", default=str(BENCHMARKS_DIR.parents[1] / "shared" / "data" / "mnist"))
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100])
    parser.add_argument("--schedulers", nargs="+", help="default: every scheduler the model supports")
    parser.add_argument("--skip_ddpm_1000", action="store_true")
    parser.add_argument("--output", default=str(BENCHMARKS_DIR / "ddpm_schedulers"))
    args = parser.parse_args()

    from gm_hub import load_model
    from gm_hub.data import load_mnist_idx
    from gm_hub.metrics import load_digit_classifier, sample_metrics
    from gm_hub.models.ddpm import SCHEDULERS

    model = load_model(args.model)
    classifier = load_digit_classifier()
    reference = load_mnist_idx(args.eval_data_dir).images[: args.num_samples]
    runs = [(scheduler, steps) for scheduler in (args.schedulers or list(SCHEDULERS)) for steps in args.steps]
    if not args.skip_ddpm_1000:
        runs.append(("DDPMScheduler", model.config.num_train_timesteps))
    rows = []
    for scheduler, steps in tqdm(runs, desc="schedulers"):
        samples, seconds = sample_timed(model, scheduler, steps, args.num_samples, args.batch_size)
        metrics = sample_metrics(samples, reference, None, classifier)
        rows.append({"scheduler": scheduler, "steps": steps, "seconds_per_16": seconds * 16 / args.num_samples,
                     **{k: v for k, v in metrics.items() if not k.startswith("memorization")}})
        print(json.dumps(rows[-1]), file=sys.stderr)
    reference_row = next((row for row in rows if row["scheduler"] == "DDPMScheduler"
                          and row["steps"] == model.config.num_train_timesteps), None)
    few = [row for row in rows if row["steps"] <= 20]
    best_few = min(few, key=lambda row: row["classifier_fid"]) if few else None
    output = Path(args.output)
    Path(f"{output}.json").write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "rows": rows}, indent=1))
    plot(rows, Path(f"{output}.png"))
    lines = [
        "# DDPM: classifier FID against sampling cost, per scheduler", "",
        f"```bash\npython {' '.join(sys.argv)}\n```", "",
        f"Model `{args.model}`; {args.num_samples} samples per row (seed 0) against the first {args.num_samples} "
        "MNIST test digits; seconds for 16 samples measured here in batches of "
        f"{args.batch_size} (total time x 16 / {args.num_samples}).", "",
        "| scheduler | steps | s / 16 samples | classifier FID | confident share | class TV |", "|---|---|---|---|---|---|",
        *[f"| {row['scheduler']} | {row['steps']} | {row['seconds_per_16']:.2f} | {row['classifier_fid']:.2f} | "
          f"{row['confident_share']:.3f} | {row['class_share_total_variation']:.3f} |" for row in rows], "",
    ]
    if reference_row and best_few:
        ratio = best_few["classifier_fid"] / reference_row["classifier_fid"]
        lines += [f"Best at <= 20 steps: {best_few['scheduler']} with {best_few['steps']} steps, FID "
                  f"{best_few['classifier_fid']:.2f}, {ratio:.2f}x DDPM-{reference_row['steps']}'s "
                  f"{reference_row['classifier_fid']:.2f}, in {best_few['seconds_per_16']:.2f} s for 16 samples against "
                  f"{reference_row['seconds_per_16']:.1f} s.", ""]
    lines.append(f"![FID against time]({output.name}.png)")
    Path(f"{output}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

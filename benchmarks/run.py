"""One scoreboard for every gm-hub family: speed, memory and sample quality, measured the same way.

    python benchmarks/run.py                         # every family present; writes benchmarks/BENCHMARKS.md
    python benchmarks/run.py --quick                 # a smoke run: few steps, few samples
    python benchmarks/run.py --model vae=./vae-mnist # score this folder (or repo id) instead of pretrained/vae-mnist

For each family: training throughput through the model's forward (what the loop calls), fp32 and bf16
autocast, measured in one process so that the speedup is a ratio of the same run; sampling latency for 1,
16 and 64 samples; peak memory of each phase (a fresh process per phase: resident set on the CPU, allocator
peak on CUDA); and the quality metrics of `gm_hub.metrics` on the shipped (`pretrained/<name>/`) or given
model. Reference rows (real held-out digits, pixel-wise Gaussian noise) bound every metric from both sides.
Timings are medians over repeated runs with their interquartile range.

The families are those of `gm_hub/registry.py`; a family with no shipped model is timed with its default config.
"""

import argparse
import importlib
import json
import logging
import multiprocessing
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from gm_hub.registry import FAMILIES, get_family

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EVAL_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"
SAMPLE_COUNTS = (1, 16, 64)
BENCHMARKS_DIR = Path(__file__).resolve().parent  # results.json, plots/ and the family sections live here
# Written by the family engineers and the family benchmarks, shown as they are.
INCLUDED_RESULTS = (
    "gpu_runs.md", "cuda_check.md", "family_timing.md", "vae_results.md", "gan_results.md", "gpt_results.md",
    "ddpm_schedulers.md", "ddpm_default.md", "pixelcnn_heads.md", "pixelcnn_results.md", "pixelcnn_sampling.md", "pixelcnn_unconditional.md", "pixelcnn_settings.md",
    "bad_requests_results.md",
    "load_test_results.md",
    "browser_latency.md", "flow_grids.md", "flow_results.md", "flow_temperatures.md", "gan-mnist_conditional.md",
)

logger = logging.getLogger("benchmarks")


# --- the families ------------------------------------------------------------------------------------------


def build_training_module(family, folder: str | None):
    """What the loop trains for a family: from the shipped folder (its size and weights) or the default config.

    A family whose training module differs from its published model (the GAN: G and D) builds it with the
    training class's `from_published(model)`."""
    if folder is not None:
        from gm_hub.hub import load_model

        model = load_model(folder)
    else:
        model_class = family.load_class()
        model = model_class(model_class.config_class()())
    if family.training_module:
        module, name = family.training_module.split(":")
        return getattr(importlib.import_module(module), name).from_published(model)
    return model


def _shakespeare() -> str:
    path = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
    return path.read_text(encoding="utf-8") if path.is_file() else "To be, or not to be, that is the question.\n" * 2000


def training_batch(family, model, batch_size: int) -> tuple[dict, int]:
    """A batch the loop would give the family -> (batch, units it holds: images or tokens)."""
    if family.produces == "text":
        block = model.config.block_size
        tokens = model.encode(_shakespeare()[: 200 * block])
        windows = torch.stack([tokens[i * block : i * block + block + 1] for i in range(batch_size)])  # (B, T + 1)
        return {"input_ids": windows}, batch_size * block
    from gm_hub.data import ImageDataConfig, load_image_datasets

    train_set = load_image_datasets(ImageDataConfig())[0]
    return {"images": train_set.images[:batch_size], "labels": train_set.labels[:batch_size]}, batch_size


def shipped_folder(family, given: dict[str, str]) -> str | None:
    path = family.shipped_path()
    if family.name in given:
        return given[family.name]
    return str(path) if path is not None and any((path / name).is_file() for name in ("config.json", "model_index.json")) else None


# --- timing and memory (each phase in a fresh process) ------------------------------------------------------


def spread(values: list[float]) -> dict[str, float]:
    """Median and interquartile range of repeated measurements."""
    values = sorted(values)
    if len(values) >= 4:
        q1, _, q3 = statistics.quantiles(values, n=4)
    else:
        q1, q3 = values[0], values[-1]
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "runs": len(values)}


def _status_mb(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS: now, VmHWM: peak) in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _start_memory(device: torch.device) -> float:
    """Reset the peak counters; the resident set now, in MB."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # ru_maxrss survives fork and exec (it would report the parent's peak); VmHWM is this process's, and
    # writing 5 to clear_refs resets it to the current resident set.
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _peak_mb(device: torch.device, rss_before: float) -> dict[str, float]:
    if device.type == "cuda":
        return {"peak_mb": torch.cuda.max_memory_allocated(device) / 2**20, "kind": "CUDA allocator peak"}
    peak = _status_mb("VmHWM")
    return {"peak_mb": peak, "phase_mb": peak - rss_before, "kind": "resident set"}


def _phase(job: dict) -> dict:
    """One measurement in a fresh process: "train" (one precision) or "sample"."""
    torch.set_num_threads(job["num_threads"])
    logging.basicConfig(level=logging.WARNING)
    family = get_family(job["family"])
    device = torch.device(job["device"])
    torch.manual_seed(0)
    if job["phase"] == "sample" and job["model_path"]:
        from gm_hub.hub import load_model

        return _time_sampling(load_model(job["model_path"], map_location=str(device)).eval(), device, job)
    model = build_training_module(family, job["model_path"]).to(device)
    if job["phase"] == "sample":
        return _time_sampling(model.eval(), device, job)
    return _time_training(model, family, device, job)


def _time_training(model, family, device: torch.device, job: dict) -> dict:
    batch, units = training_batch(family, model, job["batch_size"])
    batch = {key: value.to(device) for key, value in batch.items()}
    groups = {name: [p for n, p in model.named_parameters() if n.startswith(name)] for name in family.players}
    optimizers = {name: torch.optim.AdamW(params, lr=1e-4) for name, params in groups.items()} or {
        "model": torch.optim.AdamW(model.parameters(), lr=1e-4)}
    bf16 = job["phase"] == "train_bf16"
    model.train()

    def step() -> None:
        for name, optimizer in optimizers.items():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                outputs = model(batch, player=name) if family.players else model(batch)
            outputs["loss"].backward()
            optimizer.step()
            model.zero_grad(set_to_none=True)

    rss_before = _start_memory(device)
    for _ in range(job["warmup"]):
        step()
    seconds = []
    for _ in range(job["repeats"]):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return {"step_seconds": spread(seconds), "throughput": spread([units / s for s in seconds]),
            "batch_size": job["batch_size"], "memory": _peak_mb(device, rss_before)}


def _time_sampling(model, device: torch.device, job: dict) -> dict:
    rss_before = _start_memory(device)
    latency = {}
    for count in SAMPLE_COUNTS:
        generator = torch.Generator().manual_seed(0)
        model.sample(count, generator=generator)  # warm-up
        seconds = []
        for _ in range(job["repeats"]):
            _sync(device)
            start = time.perf_counter()
            model.sample(count, generator=generator)
            _sync(device)
            seconds.append(time.perf_counter() - start)
        latency[str(count)] = spread(seconds)
    return {"latency_seconds": latency, "memory": _peak_mb(device, rss_before)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_phase(job: dict) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_phase, (job,))


# --- quality ------------------------------------------------------------------------------------------------


def reference_data(eval_data_dir: Path | None, num_reference: int):
    """(train images, reference images, held-out images, labelled test set, description)."""
    from gm_hub.data import ImageDataConfig, load_image_datasets, load_mnist_idx

    train, validation = load_image_datasets(ImageDataConfig())
    if eval_data_dir is not None and eval_data_dir.is_dir():
        test = load_mnist_idx(eval_data_dir)
        count = min(num_reference, len(test) // 2)
        return (train.images, test.images[:count], test.images[count : 2 * count], test,
                f"MNIST test set ({eval_data_dir}): reference images 0..{count - 1}, real held-out digits {count}..{2 * count - 1}")
    half = len(validation) // 2
    return (train.images, validation.images[:half], validation.images[half:], validation,
            f"embedded validation split (no MNIST test set found): {half} reference, {half} held-out images")


def quality_row(model, name: str, data: tuple, args, classifier, likelihood: str) -> dict:
    """Sample metrics (and bits/dim for a model with log_prob) of one model."""
    from gm_hub.data import ImageDataset
    from gm_hub.metrics import draw_samples, evaluate_bits_per_dim, sample_metrics

    train_images, reference, _, test, _ = data
    start = time.perf_counter()
    samples = draw_samples(model, args.num_eval_samples, seed=0)
    row = {"name": name, "sampling_seconds": time.perf_counter() - start}
    if samples is not None and tuple(samples.shape[1:]) == (1, 28, 28):
        row.update(sample_metrics(samples, reference, train_images, classifier))
    if likelihood != "none":
        kwargs = {}
        if likelihood == "bound":  # a family with a bound takes the number of importance samples
            kwargs["num_importance_samples"] = args.num_importance_samples
            row["num_importance_samples"] = float(args.num_importance_samples)
        torch.manual_seed(0)
        row["bits_per_dim"] = evaluate_bits_per_dim(model, ImageDataset(test.images), max_items=args.num_bits_items, batch_size=50, **kwargs)
        row["num_bits_items"] = float(min(args.num_bits_items, len(test)))
    return row


# --- report -------------------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = platform.processor()
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _fmt_spread(stats: dict, scale: float = 1.0, digits: int = 1) -> str:
    return f"{stats['median'] * scale:.{digits}f} (IQR {stats['q1'] * scale:.{digits}f}-{stats['q3'] * scale:.{digits}f}, n={stats['runs']})"


def _fmt_memory(memory: dict) -> str:
    if "phase_mb" in memory:
        return f"+{memory['phase_mb']:.0f} MB during the phase (process peak {memory['peak_mb']:.0f} MB RSS)"
    return f"{memory['peak_mb']:.0f} MB ({memory['kind']})"


QUALITY_COLUMNS = [
    ("classifier_fid", "classifier FID", "{:.2f}"),
    ("confident_share", "confident share", "{:.3f}"),
    ("class_share_total_variation", "class TV", "{:.3f}"),
    ("memorization_distance_ratio", "NN-distance ratio", "{:.3f}"),
    ("memorization_copy_share", "copy share", "{:.3f}"),
    ("bits_per_dim", "bits/dim", "{:.3f}"),
]


def quality_table(rows: list[dict]) -> list[str]:
    lines = ["| | " + " | ".join(title for _, title, _ in QUALITY_COLUMNS) + " | class shares 0-9 |",
             "|---" * (len(QUALITY_COLUMNS) + 2) + "|"]
    for row in rows:
        cells = [fmt.format(row[key]) if key in row else "-" for key, _, fmt in QUALITY_COLUMNS]
        shares = " ".join(f"{row[f'class_share_{k}']:.2f}" for k in range(10)) if "class_share_0" in row else "-"
        lines.append(f"| {row['name']} | " + " | ".join(cells) + f" | {shares} |")
    return lines


def merge_results(previous: dict, update: dict) -> dict:
    """A run over some families (`--families`) replaces their entries and quality rows in the previous results and
    keeps every other family's, with the update's command and date listed under the previous run's."""
    merged = {**previous, "families": {**previous["families"], **update["families"]}}
    updated_rows = {row["name"]: row for row in update["quality"]}
    merged["quality"] = [updated_rows.pop(row["name"], row) for row in previous["quality"]] + list(updated_rows.values())
    merged["updates"] = [*previous.get("updates", []),
                         {"command": update["command"], "date": update["date"], "families": sorted(update["families"])}]
    return merged


def write_report(results: dict, output_dir: Path) -> None:
    info, settings = results["machine"], results["settings"]
    lines = [
        "# gm-hub benchmarks", "",
        "Written by `benchmarks/run.py`; do not edit by hand. Command:", "",
        f"```bash\n{results['command']}\n```", "",
        *[f"Then, on {update['date']}, `{update['command']}` measured {', '.join(update['families'])} anew." for update in
          results.get("updates", [])], "",
        f"Machine: {info['cpu']}, {info['cpu_count']} cores ({settings['num_threads']} torch thread(s) used, shared with "
        f"other work), torch {info['torch']}, Python {info['python']}, device `{settings['device']}`"
        + (f", GPU {info['gpu']}" if "gpu" in info else "") + f". Run on {results['date']}.", "",
        "Timings: median over repeated runs, with the interquartile range (IQR) and the number of runs. Speedups are "
        "ratios of medians measured in the same invocation. Memory: each phase runs in a fresh process; on the CPU the "
        "growth of its resident set during the phase, and the process peak (which includes Python and torch).", "",
        "## Quality scoreboard", "",
        f"Reference images: {results['data']}. Samples per model: {settings['num_eval_samples']} (seed 0); classifier FID "
        f"compares their features with those of the reference images, so numbers compare only at equal counts. "
        f"Bits/dim on the first {settings['num_bits_items']} test images (IWAE bound with k = "
        f"{settings['num_importance_samples']} where the model's likelihood is a bound). NN-distance ratio: median "
        "distance of samples to their nearest training image over the same for real held-out digits (about 1: no "
        "copying); copy share: samples closer to a training image than 99% of held-out digits (0.01 by construction "
        "for held-out digits, 1 for copies). Class TV: total-variation distance of the predicted class shares from "
        "uniform (0.9 = one class only).", "",
        *quality_table(results["quality"]), "",
        f"Digit classifier (the judge, `gm_hub/weights/mnist-classifier`): accuracy {results['classifier']['accuracy']:.4f} "
        f"on {results['classifier']['num_images']} images of the {results['classifier']['dataset']}.", "",
    ]
    for name, family in results["families"].items():
        if "error" in family:
            lines += [f"## {name}", "", f"Not measured: `{family['error']}`.", ""]
            continue
        unit = family["unit"]
        lines += [f"## {name}", "", f"Model scored: {family['model'] or 'none shipped (timings use untrained weights of the default config)'}.", "",
                  "| measure | value |", "|---|---|"]
        for precision in ("train_fp32", "train_bf16"):
            phase = family[precision]
            label = "fp32" if precision == "train_fp32" else "bf16 autocast"
            lines.append(f"| training throughput, {label}, batch {phase['batch_size']} ({unit}/s) | {_fmt_spread(phase['throughput'])} |")
        lines.append(f"| bf16 autocast speedup (fp32 / bf16 median step time) | {family['bf16_speedup']:.2f}x |")
        for count, stats in family["sample"]["latency_seconds"].items():
            lines.append(f"| sampling latency, {count} sample(s) (ms) | {_fmt_spread(stats, 1000.0)} |")
        lines.append(f"| peak memory, training fp32 | {_fmt_memory(family['train_fp32']['memory'])} |")
        lines.append(f"| peak memory, training bf16 | {_fmt_memory(family['train_bf16']['memory'])} |")
        lines.append(f"| peak memory, sampling (up to 64) | {_fmt_memory(family['sample']['memory'])} |")
        if family.get("quality"):
            for key, title, fmt in QUALITY_COLUMNS:
                if key in family["quality"]:
                    lines.append(f"| {title} | {fmt.format(family['quality'][key])} |")
        lines.append("")
    plots = sorted(p.name for p in (BENCHMARKS_DIR / "plots").glob("*.png"))
    plots_link = os.path.relpath(BENCHMARKS_DIR / "plots", output_dir)
    if plots:
        lines += ["## Plots", "", *[f"![{p}]({plots_link}/{p})" for p in plots], ""]
    for filename in INCLUDED_RESULTS:
        path = BENCHMARKS_DIR / filename
        if path.is_file():  # its relative image links point into benchmarks/
            text = re.sub(r"\]\((?!https?://|/)([^)]+\.png)\)", lambda m: f"]({os.path.relpath(BENCHMARKS_DIR, output_dir)}/{m.group(1)})",
                          path.read_text().strip())
            lines += [f"## From `benchmarks/{filename}`", "", text, ""]
    (output_dir / "BENCHMARKS.md").write_text("\n".join(lines))


def write_plots(results: dict, histories: dict[str, Path], output_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = BENCHMARKS_DIR / "plots"
    plots.mkdir(exist_ok=True)
    if results["families"]:
        figure, axis = plt.subplots(figsize=(5, 3.5))
        for name, family in results["families"].items():
            if "error" in family:
                continue
            latency = family["sample"]["latency_seconds"]
            counts = [int(c) for c in latency]
            axis.errorbar(counts, [latency[str(c)]["median"] * 1000 for c in counts],
                          yerr=[[(latency[str(c)]["median"] - latency[str(c)]["q1"]) * 1000 for c in counts],
                                [(latency[str(c)]["q3"] - latency[str(c)]["median"]) * 1000 for c in counts]],
                          marker="o", label=name, capsize=3)
        axis.set(xscale="log", yscale="log", xlabel="samples per call", ylabel="latency (ms)", title="sampling latency")
        axis.legend()
        axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(plots / "sampling_latency.png", dpi=100)
        plt.close(figure)
    for name, history in histories.items():
        rows = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
        keys = [k for k in sorted({k for row in rows for k in row}) if k.endswith(("loss", "accuracy", "bits_per_dim"))]
        if not keys:
            continue
        figure, axes = plt.subplots(len(keys), 1, figsize=(6, 2.2 * len(keys)), sharex=True, squeeze=False)
        for axis, key in zip(axes[:, 0], keys):
            axis.plot(*zip(*[(row["step"], row[key]) for row in rows if key in row]))
            axis.set_ylabel(key)
            axis.grid(alpha=0.3)
        axes[0, 0].set_title(f"{name}: training curves")
        axes[-1, 0].set_xlabel("step")
        figure.tight_layout()
        figure.savefig(plots / f"training_{name}.png", dpi=100)
        plt.close(figure)


# --- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: few repeats, 200 samples, 50 bits/dim images")
    parser.add_argument("--model", action="append", default=[], metavar="FAMILY=PATH", help="score this folder or repo id")
    parser.add_argument("--families", nargs="+", help="only these families (default: every family present)")
    parser.add_argument("--eval_data_dir", default=str(DEFAULT_EVAL_DATA_DIR), help="MNIST test set IDX files")
    parser.add_argument("--output_dir", default=str(REPO_ROOT), help="where BENCHMARKS.md goes (results.json and plots/ stay in benchmarks/)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num_threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--batch_size", type=int, default=64, help="training batch for the throughput runs")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per measurement")
    parser.add_argument("--num_eval_samples", type=int, default=5000)
    parser.add_argument("--num_reference", type=int, default=5000, help="reference test images (the next as many are the held-out row)")
    parser.add_argument("--num_bits_items", type=int, default=500, help="test images for bits/dim")
    parser.add_argument("--num_importance_samples", type=int, default=50, help="k of IWAE-bound likelihoods")
    parser.add_argument("--report_only", action="store_true",
                        help="measure nothing: write BENCHMARKS.md anew from benchmarks/results.json and the included files")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.num_eval_samples, args.num_bits_items, args.num_importance_samples = 3, 200, 50, 10
        args.num_reference = min(args.num_reference, 1000)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.report_only:
        write_report(json.loads((BENCHMARKS_DIR / "results.json").read_text()), Path(args.output_dir))
        return
    torch.set_num_threads(args.num_threads)
    output_dir = Path(args.output_dir)
    given = dict(item.split("=", 1) for item in args.model)
    from gm_hub.hub import load_model
    from gm_hub.metrics import PixelGaussianBaseline, classifier_accuracy, load_digit_classifier, sample_metrics

    classifier = load_digit_classifier(device=args.device)
    data = reference_data(Path(args.eval_data_dir) if args.eval_data_dir else None, args.num_reference)
    train_images, reference, held_out, test, description = data
    logger.info("reference rows")
    quality = [{"name": "real held-out digits", **sample_metrics(held_out, reference, train_images, classifier)}]
    quality.append(quality_row(PixelGaussianBaseline(train_images), "pixel-wise Gaussian noise", data, args, classifier, "exact"))
    results = {
        "command": " ".join(["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "settings": {
            k: getattr(args, k) for k in ("device", "num_threads", "batch_size", "repeats", "num_eval_samples",
                                          "num_reference", "num_bits_items", "num_importance_samples", "quick")},
        "data": description, "quality": quality, "families": {},
        "classifier": {"accuracy": classifier_accuracy(classifier, test), "num_images": len(test), "dataset": description.split(":")[0]},
    }
    # Training curves kept beside the benchmarks (data/<name>-history.jsonl, copied from the runs' logs/).
    histories = {path.name.removesuffix("-history.jsonl"): path
                 for path in sorted((Path(__file__).resolve().parent / "data").glob("*-history.jsonl"))}
    for family in FAMILIES.values():
        if family.produces == "labels" or args.families and family.name not in args.families:
            continue
        folder = shipped_folder(family, given)
        unit = "tokens" if family.produces == "text" else "images"
        entry = {"unit": unit, "model": folder}
        job = {"family": family.name, "device": args.device, "num_threads": args.num_threads,
               "model_path": folder, "batch_size": args.batch_size, "warmup": 2, "repeats": args.repeats}
        try:
            for phase in ("train_fp32", "train_bf16", "sample"):
                logger.info("%s: %s", family.name, phase)
                entry[phase] = run_phase({**job, "phase": phase})
        except Exception as err:  # a family under construction must not hide the others: its error is the report
            logger.exception("%s failed", family.name)
            results["families"][family.name] = {"unit": unit, "model": folder, "error": f"{type(err).__name__}: {err}"}
            continue
        entry["bf16_speedup"] = entry["train_fp32"]["step_seconds"]["median"] / entry["train_bf16"]["step_seconds"]["median"]
        if folder is not None and family.produces == "images":
            logger.info("%s: quality", family.name)
            entry["quality"] = quality_row(load_model(folder, map_location=args.device), family.name, data, args, classifier,
                                           family.likelihood)
            quality.append(entry["quality"])
            if folder and (Path(folder) / "logs" / "history.jsonl").is_file():
                histories[family.name] = Path(folder) / "logs" / "history.jsonl"
        results["families"][family.name] = entry
    if args.families and (BENCHMARKS_DIR / "results.json").is_file():
        results = merge_results(json.loads((BENCHMARKS_DIR / "results.json").read_text()), results)
    output_dir.mkdir(parents=True, exist_ok=True)
    (BENCHMARKS_DIR / "results.json").write_text(json.dumps(results, indent=1))
    write_plots(results, histories, output_dir)
    write_report(results, output_dir)
    logger.info("wrote %s", output_dir / "BENCHMARKS.md")


if __name__ == "__main__":
    main()

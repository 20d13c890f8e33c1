"""Training throughput (fp32 and bf16 autocast) and sampling latency of chosen families' shipped models, by the
same measurements as `benchmarks/run.py` but without its quality scoreboard (which takes 5,000 samples per
model). Writes benchmarks/family_timing.md, included in BENCHMARKS.md.

    python benchmarks/family_timing.py ddpm realnvp glow --repeats 10
"""

import argparse
import time

from run import BENCHMARKS_DIR, _fmt_memory, _fmt_spread, machine, run_phase, shipped_folder

from gm_hub.registry import get_family


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("families", nargs="+")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--num_threads", type=int, default=2)
    args = parser.parse_args()
    info = machine()
    lines = ["## Training throughput and sampling latency of the newer families", "",
             f"```bash\npython benchmarks/family_timing.py {' '.join(args.families)} --repeats {args.repeats} "
             f"--num_threads {args.num_threads}\n```", "",
             f"{info['cpu']}, {info['cpu_count']} cores, {args.num_threads} torch thread(s), torch {info['torch']}; "
             f"{time.strftime('%Y-%m-%d %H:%M')}. Medians with IQR; each phase in a fresh process; ratios from one run.", "",
             "| family | fp32 training (images/s) | bf16 autocast training (images/s) | bf16 speedup | 1 sample (ms) | 16 samples (ms) | 64 samples (ms) | training memory fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    for name in args.families:
        folder = shipped_folder(get_family(name), {})
        job = {"family": name, "device": "cpu", "num_threads": args.num_threads, "model_path": folder,
               "batch_size": args.batch_size, "warmup": 2, "repeats": args.repeats}
        fp32, bf16, sample = (run_phase({**job, "phase": phase}) for phase in ("train_fp32", "train_bf16", "sample"))
        speedup = fp32["step_seconds"]["median"] / bf16["step_seconds"]["median"]
        latency = [_fmt_spread(stats, 1000.0, 0) for stats in sample["latency_seconds"].values()]
        lines.append(f"| {name} (`{folder}`) | {_fmt_spread(fp32['throughput'])} | {_fmt_spread(bf16['throughput'])} | "
                     f"{speedup:.2f}x | {' | '.join(latency)} | {_fmt_memory(fp32['memory'])} |")
        print(lines[-1], flush=True)
    (BENCHMARKS_DIR / "family_timing.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Every shipped model on CUDA: loaded, moved, sampled in fp32 and under bf16 autocast, with each result's
device, dtype, shape and time. Run on a machine with a GPU; writes benchmarks/cuda_check.md.

    python benchmarks/cuda_check.py
"""

import time
from pathlib import Path

import torch

from gm_hub import load_model
from gm_hub.registry import FAMILIES

ROOT = Path(__file__).resolve().parents[1]


def check(name: str, folder: Path, device: torch.device) -> list[str]:
    model = load_model(folder).to(device).eval()
    placed = {p.device.type for p in model.parameters()}
    rows = []
    for precision in ("fp32", "bf16 autocast"):
        generator = torch.Generator().manual_seed(0)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision != "fp32"):
            torch.cuda.synchronize()
            start = time.perf_counter()
            samples = model.sample(16, generator=generator)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        if isinstance(samples, list):  # text
            what = f"{len(samples)} texts, {sum(map(len, samples))} characters"
        else:
            assert samples.dtype == torch.uint8 and samples.shape[0] == 16, (samples.dtype, samples.shape)
            what = f"{tuple(samples.shape)} {samples.dtype} on {samples.device.type}, mean {samples.float().mean():.1f}"
        rows.append(f"| {name} | {', '.join(sorted(placed))} | {precision} | {what} | {seconds:.2f} |")
    return rows


def main() -> None:
    device = torch.device("cuda")
    lines = ["# Shipped models on CUDA", "", f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}; "
             "`python benchmarks/cuda_check.py`. 16 samples each (the second call of a family is warm).", "",
             "| family | parameters on | precision | samples | seconds |", "|---|---|---|---|---|"]
    for family in FAMILIES.values():
        folder = ROOT / "pretrained" / (family.shipped_model or "")
        if family.shipped_model and folder.is_dir():
            lines += check(family.name, folder, device)
    text = "\n".join(lines) + "\n"
    (ROOT / "benchmarks" / "cuda_check.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

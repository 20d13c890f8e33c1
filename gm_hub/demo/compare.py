"""The Compare tab: every image family sampled with the same seed and count, side by side, each with its
sampling time on this machine and the metrics of its model card, and a plot of quality against time."""

import time
from functools import partial

import gradio as gr
import torch

from ..registry import Family
from . import check_number, check_seed, gpu, load_error, model_on_device, model_source, on_click, slider, timed_grid

CARD_METRICS = ("classifier_fid", "confident_share", "bits_per_dim")
MAX_COMPARE_IMAGES = 16  # per family: the autoregressive and diffusion families take seconds per batch


def card_metrics(family: Family) -> dict[str, float]:
    """The model card's measured metrics (model-index in its YAML), for a local folder or a Hub repo in the cache."""
    from huggingface_hub import ModelCard

    from ..errors import UserError
    from ..hub import resolve_file

    try:
        card = ModelCard.load(resolve_file(model_source(family), "README.md"))
    except (UserError, OSError, ValueError):  # no card: the tab shows the time alone
        return {}
    return {result.metric_type: float(result.metric_value) for result in card.data.eval_results or []
            if result.metric_type in CARD_METRICS}


def quality_plot(rows: list[dict]):
    """Classifier FID (lower is better) against sampling time, one point per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    for row in rows:
        if "classifier_fid" in row:
            axis.scatter(row["seconds"], row["classifier_fid"], s=40)
            axis.annotate(row["title"], (row["seconds"], row["classifier_fid"]), textcoords="offset points", xytext=(5, 5))
    if not any("classifier_fid" in row for row in rows):  # else an empty frame with no word of why
        axis.text(0.5, 0.5, "no model card here reports a classifier FID", ha="center", transform=axis.transAxes)
    axis.set_xscale("log")
    axis.set_xlabel("seconds for the grid on this machine (log scale)")
    axis.set_ylabel("classifier FID (model card)")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


@gpu
def compare(families: list[Family], num_samples, seed):
    """-> one (grid, caption) per family, then the quality-vs-time plot."""
    num_samples = check_number("Number of samples", num_samples, 1, MAX_COMPARE_IMAGES, integer=True)
    seed = check_seed(seed)
    outputs, rows = [], []
    for family in families:
        start = time.perf_counter()
        images = model_on_device(family).sample(num_samples, generator=torch.Generator().manual_seed(seed))
        grid, took = timed_grid(images, start)
        metrics = card_metrics(family)
        rows.append({"title": family.title, "seconds": time.perf_counter() - start, **metrics})
        shown = ", ".join(f"{name.replace('_', ' ')} {value:.3g}" for name, value in metrics.items())
        outputs += [grid, f"**{family.title}**: {took}" + (f"; card: {shown}" if shown else "")]
    return *outputs, quality_plot(rows)


def build_tab(families: list[Family]) -> None:
    """`families`: the image families whose models load."""
    families = [family for family in families if family.produces == "images" and load_error(family) is None]
    gr.Markdown("Every image family with the same seed and count: its samples, how long they took here, and the "
                "metrics its model card reports (classifier FID: lower is better).")
    with gr.Row():
        count = slider(1, MAX_COMPARE_IMAGES, value=9, step=1, label="Number of samples per family")
        seed = gr.Number(value=0, precision=0, label="Seed")
    button = gr.Button("Sample every family", variant="primary")
    outputs = []
    with gr.Row():
        for family in families:
            with gr.Column(min_width=160):
                outputs.append(gr.Image(label=family.title, type="pil", format="png"))
                outputs.append(gr.Markdown())
    plot = gr.Plot(label="Quality against sampling time")
    on_click(button, partial(compare, families), [count, seed], [*outputs, plot], api_name="compare", slow=True)

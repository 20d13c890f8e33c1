"""gm-hub demo: sample every family of generative models in the browser.

    python app.py                                    # http://127.0.0.1:7860
    GM_HUB_VAE_MODEL=you/vae-mnist python app.py     # any folder or Hub repo id instead of pretrained/vae-mnist

One tab per family of `gm_hub/registry.py` with a demo tab, built by that family's module under
`gm_hub/demo/`, then Compare (every image family side by side) and About; models load lazily, once per process (`GM_HUB_<NAME>_MODEL`, else the shipped folder). A
family whose model is missing or fails to load shows why in its own tab. On a GPU the models run there: on
a ZeroGPU Space each GPU-bound event holds a GPU through `@spaces.GPU`; elsewhere on CUDA if present, else
on the CPU. Events queue in two groups (`gm_hub.demo.on_click`): those that take seconds (diffusion, PixelCNN, text,
Compare) one at a time, and those that take milliseconds apart from them, so a GAN sample never waits behind a
diffusion run.
"""

import importlib

import gradio as gr

from gm_hub.demo import about, compare, device, load_error
from gm_hub.registry import FAMILIES, Family


def demo_families() -> list[Family]:
    """The families with a demo tab, in registry order."""
    return [family for family in FAMILIES.values() if family.demo_tab]


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="gm-hub: generative models", analytics_enabled=False) as demo:  # no calls home: works offline
        gr.Markdown(
            "# gm-hub\nGenerative models of every family ("
            + ", ".join(family.title for family in demo_families())
            + "), trained with accelerate and shared on the Hub. "
            f"Running on **{device().type.upper()}**."
        )
        for family in demo_families():
            with gr.Tab(family.title):
                error = load_error(family)
                if error:
                    gr.Markdown(f"**This model is not available:** {error}")
                else:
                    importlib.import_module(family.demo_tab).build_tab(family)
        with gr.Tab("Compare"):
            compare.build_tab(demo_families())
        with gr.Tab("About"):
            about.build_tab()
    return demo


if __name__ == "__main__":
    build_demo().queue(default_concurrency_limit=1).launch()  # the default binds only events outside on_click

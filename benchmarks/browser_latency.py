"""Click-to-result latency of every demo tab in headless Chromium, on the shipped models (pretrained/).

    python benchmarks/browser_latency.py                               # 5 timed clicks a tab -> browser_latency.md
    python benchmarks/browser_latency.py --repeats 1 --output ''       # a quick look, no file

Starts app.py on a free loopback port with the shipped models, opens it in Debian's Chromium the way
tests/test_browser.py does (its launch_page and Tab), and on each tab clicks the generate button once to warm up,
then --repeats times more. A click's latency runs from the button's click event to the first animation frame on
which its whole result is on the page, both on the page's own clock (performance.now): the new image loaded at its
full size and, for DDPM, the final "X s on CPU" line after the streamed steps; for GPT all the new tokens in the
Continuation box; for Compare every family's new grid and the plot. Every setting is the tab's default except the
seed, 1, 2, 3, ... one click after another, so that every result differs from the one before (the same seed gives
the same image file, which leaves the page unchanged). Writes the median and min-max per tab, against the targets
of issue #13, with the command and the machine's load average, to --output.
"""

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import load_test

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))
from test_browser import CHROMIUM, TOOK, Tab, grid_size, launch_page  # noqa: E402  (the browser test's helpers)

from gm_hub.registry import FAMILIES  # noqa: E402

TIMEOUT_MS = 300_000  # per click: the shipped DDPM and Compare take seconds on a loaded CPU
TEXT_FAMILY = "gpt"
# image tab -> the label of the image its Sample button fills; the families in issue #13's order.
IMAGE_TABS = {"vae": "Samples", "gan": "Samples", "realnvp": "Samples", "glow": "Samples",
              "ddpm": "Denoising (x_t), then the samples", "pixelcnn": "Samples"}
COMPARE = "Compare"
# Issue #13's targets in seconds: VAE, GAN and flow samples < 0.5 s; diffusion (default scheduler) and PixelCNN
# (cached) < 5 s; 200 tokens of text < 2 s; Compare none.
TARGETS = {"vae": 0.5, "gan": 0.5, "realnvp": 0.5, "glow": 0.5, "ddpm": 5.0, "pixelcnn": 5.0, TEXT_FAMILY: 2.0,
           COMPARE: None}
PLOT = "Quality against sampling time"

# True once the click's whole result is on the page; then the seconds since the click (performance.now()).
DONE = """({images, old, sizes, panel, took, tookCount, text, oldText, textLength}) => {
    for (let i = 0; i < images.length; i++) {
        const img = images[i].querySelector("img");
        if (!img || (old[i] !== null && img.src === old[i]) || !img.complete || img.naturalWidth === 0) return false;
        if (sizes[i] && (img.naturalWidth !== sizes[i][0] || img.naturalHeight !== sizes[i][1])) return false;
    }
    if (tookCount !== null) {
        const pattern = new RegExp(took);
        const lines = [...panel.querySelectorAll("p")].filter(p => pattern.test(p.textContent.trim()));
        if (lines.length !== tookCount) return false;
    }
    if (text && (text.value === oldText || [...text.value].length < textLength)) return false;
    return (performance.now() - window.gmHubClick) / 1000;
}"""


def shipped_models() -> dict[str, str]:
    """Every family with a demo tab -> its shipped folder; SystemExit when one is missing."""
    models = {}
    for family in FAMILIES.values():
        if family.demo_tab:
            path = family.shipped_path()
            if path is None or not path.is_dir():
                raise SystemExit(f"no shipped model for {family.name} (expected {path})")
            models[family.name] = str(path)
    return models


def timed_click(tab: Tab, button: str, seed: int, images: list[str], sizes: list, loaded: tuple[str, ...] = (),
                took: bool = False, text_length: int = 0) -> float:
    """Set the seed, click `button`, wait for the result: seconds from the click to the result on the page.

    images: labels of the image blocks (Tab.block) that must show a new, loaded picture (sizes: their (width, height)
        or None); loaded: those of `images` whose picture may be the same as before (the Compare plot), loaded again;
    took: also wait for the final "X s on CPU" line (DDPM streams "step k of n" lines first): as many as before the
        click, one more on the button's first click;
    text_length: also wait for that many new characters, changed, in the Continuation box.
    """
    tab.panel.get_by_label("Seed", exact=True).first.fill(str(seed))
    blocks = [tab.block(label).element_handle() for label in images]
    old = [None if label in loaded else block.evaluate("block => block.querySelector('img')?.src ?? null")
           for label, block in zip(images, blocks)]
    panel = tab.panel.element_handle()
    took_count = panel.evaluate("(panel, took) => [...panel.querySelectorAll('p')].filter(p => new RegExp(took)"
                                ".test(p.textContent.trim())).length", TOOK.pattern) if took else None
    if took:  # one more final line when this is the button's first result (its timing line was empty until now)
        took_count += sum(src is None for label, src in zip(images, old) if label not in loaded)
    text = tab.panel.get_by_role("textbox", name="Continuation").element_handle() if text_length else None
    old_text = text.evaluate("box => box.value") if text else None
    target = tab.panel.get_by_role("button", name=button, exact=True)
    target.evaluate("button => button.addEventListener('click', () => { window.gmHubClick = performance.now(); }, "
                    "{capture: true, once: true})")
    target.click()
    done = tab.page.wait_for_function(DONE, arg={
        "images": blocks, "old": old, "sizes": [list(size) if size else None for size in sizes], "panel": panel,
        "took": TOOK.pattern, "tookCount": took_count, "text": text, "oldText": old_text, "textLength": text_length,
    }, polling="raf")
    return float(done.json_value())


def title(name: str) -> str:
    return FAMILIES[name].title if name in FAMILIES else name


def tab_clicks(page) -> dict:
    """Tab name -> a function that opens the tab and returns its timed click(seed)."""
    def image_tab(name: str):
        tab = Tab(page, FAMILIES[name].title)
        size = grid_size(tab.slider_value("Number of samples"))
        return lambda seed: timed_click(tab, "Sample", seed, [IMAGE_TABS[name]], [size], took=name == "ddpm")

    def text_tab():
        tab = Tab(page, FAMILIES[TEXT_FAMILY].title)
        tokens = tab.slider_value("New tokens")
        return lambda seed: timed_click(tab, "Generate", seed, [], [], text_length=tokens)

    def compare_tab():
        titles = [family.title for family in FAMILIES.values() if family.demo_tab and family.produces == "images"]
        tab = Tab(page, COMPARE)
        size = grid_size(tab.slider_value("Number of samples per family"))
        return lambda seed: timed_click(tab, "Sample every family", seed, [*titles, PLOT],
                                        [*[size] * len(titles), None], loaded=(PLOT,))

    tabs = {name: lambda name=name: image_tab(name) for name in IMAGE_TABS}
    return {**tabs, TEXT_FAMILY: text_tab, COMPARE: compare_tab}


def measure(page, url: str, repeats: int) -> dict[str, list[float]]:
    """Tab name -> the seconds of its `repeats` timed clicks, each tab after one warm-up click."""
    page.goto(url)
    times = {}
    for name, open_tab in tab_clicks(page).items():
        click = open_tab()
        seconds = [click(seed) for seed in range(1, repeats + 2)]  # seed 1: the warm-up
        times[name] = seconds[1:]
        print(f"{title(name)}: warm-up {seconds[0]:.2f} s, then {', '.join(f'{s:.2f}' for s in seconds[1:])} s",
              flush=True)
    return times


def report(times: dict[str, list[float]], command: str, repeats: int, wall_seconds: float, load_before: tuple,
           load_after: tuple) -> str:
    load = lambda values: ", ".join(f"{value:.2f}" for value in values)  # noqa: E731
    lines = ["# Click-to-result latency in the browser", "", "```bash", command, "```", "",
             f"The shipped models (pretrained/) in headless Chromium, {repeats} timed click(s) per tab after one "
             f"warm-up click, every tab at its default settings (a new seed each click); {wall_seconds:.0f} s in all "
             f"on {os.cpu_count()} CPU cores, browser and app on the same machine. Load average (1, 5, 15 min) "
             f"{load(load_before)} before and {load(load_after)} after (the run's own load included; other jobs may "
             "share the machine). A click's latency runs from the button's click event to the first frame on which "
             "the whole result is on the page (the new images loaded; all the new tokens shown).", "",
             "| tab | median (s) | min-max | target |", "|---|---|---|---|"]
    for name, seconds in times.items():
        median, target = statistics.median(seconds), TARGETS[name]
        verdict = "" if target is None else f"< {target:g} s ({'met' if median < target else 'missed'})"
        lines.append(f"| {title(name)} | {median:.2f} | {min(seconds):.2f}-{max(seconds):.2f} | {verdict or 'none'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed clicks per tab, after one warm-up click")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "browser_latency.md"),
                        help="markdown file to write ('' for none)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"no Chromium at {CHROMIUM}: apt-get install -y chromium chromium-driver")
    from playwright.sync_api import sync_playwright

    port = load_test.free_port()
    server = load_test.start_app(port, shipped_models())
    try:
        load_test.connect(port, server)
        load_before = os.getloadavg()
        start = time.perf_counter()
        with sync_playwright() as playwright:
            page = launch_page(playwright, TIMEOUT_MS)
            try:
                times = measure(page, f"http://127.0.0.1:{port}/", args.repeats)
            finally:
                page.context.browser.close()
        wall_seconds = time.perf_counter() - start
        load_after = os.getloadavg()
    finally:
        server.terminate()
        server.wait(timeout=30)
    command = "python benchmarks/browser_latency.py " + shlex.join([f"--repeats={args.repeats}"])
    text = report(times, command, args.repeats, wall_seconds, load_before, load_after)
    print(text)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

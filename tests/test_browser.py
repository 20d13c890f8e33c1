"""The launched app as users reach it: headless Chromium clicking through every tab, and several gradio_client
users at once (the short version of benchmarks/load_test.py).

Chromium is Debian's (`apt-get install -y chromium chromium-driver`, which .ci/run does), driven by Playwright
from PyPI; a missing browser fails the test, it is never skipped. Screenshots of every tab land in the test's
tmp folder and, when GM_HUB_ARTIFACTS_DIR is set, there too. Tiny untrained models by default; with
GM_HUB_BROWSER_SHIPPED=1 the shipped pretrained/ models where there are some (for the README's screenshot).
"""

import io
import math
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import CORPUS, REPO_ROOT
from gm_hub.registry import FAMILIES
from test_demo_tabs import CELL, TINY_MODELS

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import load_test  # noqa: E402  (benchmarks/ is not a package)

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 30_000  # per wait; tiny models answer in well under a second, the first request loads torch code
TOOK = re.compile(r"^\d+\.\d\d s on CPU$")  # an image tab's final timing line (streamed steps start "step")
DRAWN = "drawn below"


def tiny_models() -> dict:
    """Every family with a demo tab: a builder of a tiny untrained model (28-pixel images, a 2-layer GPT)."""
    from gm_hub.data import split_text
    from gm_hub.models.gan import Generator, GeneratorConfig
    from gm_hub.models.gpt import GPT, GPTConfig, train_tokenizer

    gpt_config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, sample_length=8)
    return {
        **TINY_MODELS,
        "gan": lambda: Generator(GeneratorConfig(latent_dim=8, hidden_channels=8)),
        "gpt": lambda: GPT(gpt_config, train_tokenizer(gpt_config, *split_text(CORPUS))),
    }


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """The app on a free loopback port, with a model folder for every tab."""
    root = tmp_path_factory.mktemp("models")
    shipped = os.environ.get("GM_HUB_BROWSER_SHIPPED") == "1"
    models = {}
    for name, build in tiny_models().items():
        path = FAMILIES[name].shipped_path()
        if shipped and path is not None and path.is_dir():
            models[name] = str(path)
        else:
            torch.manual_seed(0)
            build().eval().save_pretrained(root / name)
            models[name] = str(root / name)
    assert set(models) == {family.name for family in FAMILIES.values() if family.demo_tab}
    port = load_test.free_port()
    server = load_test.start_app(port, models)
    try:
        load_test.connect(port, server)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(timeout=30)


def launch_page(playwright, timeout_ms: int = TIMEOUT_MS):
    """A 1280 x 900 page of a new headless Chromium (Debian's); every wait and expect gives up after `timeout_ms`.
    Also benchmarks/browser_latency.py's browser; close it with `page.context.browser.close()`."""
    from playwright.sync_api import expect

    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(timeout_ms)
    expect.set_options(timeout=timeout_ms)
    return page


@pytest.fixture
def page():
    """A Chromium page; the test fails, not skips, when Chromium or Playwright is missing."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium chromium-driver (as .ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("no Playwright: pip install -e '.[test]' (never `playwright install`: Debian's Chromium is used)")
    with sync_playwright() as playwright:
        page = launch_page(playwright)
        yield page
        page.context.browser.close()


def grid_size(num_images: int, num_columns: int | None = None) -> tuple[int, int]:
    """(width, height) of gm_hub.data.image_grid of 84-pixel digits, square unless `num_columns`."""
    num_columns = num_columns or math.ceil(math.sqrt(num_images))
    return 2 + num_columns * CELL, 2 + math.ceil(num_images / num_columns) * CELL


class Tab:
    """One tab of the page: open it, click its buttons, wait for what users would see."""

    def __init__(self, page, title: str):
        from playwright.sync_api import expect

        self.page, self.expect = page, expect
        page.get_by_role("tab", name=title, exact=True).click()
        self.panel = page.locator("[role=tabpanel]:visible")
        expect(self.panel).to_have_count(1)
        self.results = 0

    def click(self, button: str) -> None:
        self.panel.get_by_role("button", name=button, exact=True).click()

    def block(self, label: str):
        """The block (a component with its label) labelled `label`."""
        return self.panel.locator(".block").filter(has=self.page.get_by_test_id("block-label").filter(
            has_text=re.compile(rf"^\s*{re.escape(label)}$"))).last

    def image(self, label: str):
        """The <img> of the image block labelled `label`."""
        return self.block(label).locator("img")

    def expect_image(self, label: str, size: tuple[int, int]) -> Image.Image:
        """Wait until the image labelled `label` is shown at `size` (its real pixels), and return those pixels."""
        image = self.image(label)
        self.expect(image).to_have_js_property("naturalWidth", size[0])
        self.expect(image).to_have_js_property("naturalHeight", size[1])
        return Image.open(io.BytesIO(self.page.request.get(image.get_attribute("src")).body()))

    def expect_timing(self) -> None:
        """Each image result adds one final "X s on CPU" line."""
        self.results += 1
        self.expect(self.panel.locator("p").filter(has_text=TOOK)).to_have_count(self.results)

    def slider_value(self, label: str) -> int:
        return int(self.panel.get_by_label(f"number input for {label}", exact=True).input_value())

    def choose(self, label: str, option: str) -> None:
        self.panel.get_by_label(label, exact=True).click()
        self.page.get_by_role("option", name=option, exact=True).click()


def save_screenshot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    artifacts = os.environ.get("GM_HUB_ARTIFACTS_DIR")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(artifacts) / path.name)


def expect_drawn_stroke(grid: Image.Image) -> None:
    """The first digit of a grid holds a bright stroke: the drawing reached the model."""
    given = grid.convert("L").crop((2, 2, 2 + 84, 2 + 84))
    assert given.getextrema()[1] > 200, "the drawn stroke did not reach the model"


def draw_stroke(page, tab: Tab) -> None:
    """A vertical white stroke down the middle of the sketchpad, as a mouse draws it."""
    canvas = tab.panel.locator("canvas").last
    tab.expect(canvas).to_be_visible()
    canvas.scroll_into_view_if_needed()  # the mouse only reaches what is in the viewport
    box = canvas.bounding_box()
    x, top, height = box["x"] + box["width"] / 2, box["y"] + 0.15 * box["height"], 0.7 * box["height"]
    page.mouse.move(x, top)
    page.mouse.down()
    for step in range(1, 21):
        page.mouse.move(x, top + step * height / 20)
    page.mouse.up()


def test_every_tab_generates_in_chromium(app_url, page, tmp_path):
    from playwright.sync_api import expect

    outside = []  # the page must work offline: no CDN asset, no analytics
    page.on("request", lambda request: outside.append(request.url)
            if not request.url.startswith(("http://127.0.0.1", "data:", "blob:")) else None)
    page.goto(app_url)
    titles = [family.title for family in FAMILIES.values() if family.demo_tab]
    expect(page.get_by_role("tab")).to_have_text([*titles, "Compare", "About"])
    expect(page.get_by_text("not available")).to_have_count(0)

    for family in FAMILIES.values():
        if family.produces != "images" or not family.demo_tab:
            continue
        tab = Tab(page, family.title)
        num_images = int(tab.slider_value("Number of samples"))
        tab.click("Sample")
        tab.expect_image("Denoising (x_t), then the samples" if family.name == "ddpm" else "Samples", grid_size(num_images))
        tab.expect_timing()
        if family.name == "pixelcnn":
            tab.choose("Digit to complete", DRAWN)
            draw_stroke(page, tab)
            tab.click("Complete")
            num_completions = int(tab.slider_value("Number of completions"))
            expect_drawn_stroke(tab.expect_image("Given rows, then completions",
                                                 grid_size(num_completions + 1, num_completions + 1)))
            tab.expect_timing()
        elif family.name != "ddpm":
            tab.click("Interpolate")
            steps = int(tab.slider_value("Steps"))
            label = "Interpolation in z" if family.demo_tab == "gm_hub.demo.flow" else "Latent interpolation"
            tab.expect_image(label, grid_size(steps, steps))
            tab.expect_timing()
        if family.name == "vae":
            draw_stroke(page, tab)
            tab.click("Reconstruct")
            expect_drawn_stroke(tab.expect_image("Your digit, then its reconstruction", grid_size(2, 2)))
            tab.expect_timing()
        save_screenshot(page, tmp_path, family.name)

    tab = Tab(page, FAMILIES["gpt"].title)
    tab.panel.get_by_role("textbox", name=re.compile("^Prompt")).fill("Speak")  # in the tiny corpus's vocabulary
    tab.click("Generate")
    expect(tab.panel.get_by_role("textbox", name="Continuation")).to_have_value(re.compile(r"\S"))
    save_screenshot(page, tmp_path, "gpt")

    tab = Tab(page, "Compare")
    num_images = int(tab.slider_value("Number of samples per family"))
    tab.click("Sample every family")
    image_families = [family for family in FAMILIES.values() if family.demo_tab and family.produces == "images"]
    for family in image_families:
        tab.expect_image(family.title, grid_size(num_images))
        expect(tab.panel.get_by_text(re.compile(rf"^{re.escape(family.title)}: \d+\.\d\d s on CPU"))).to_have_count(1)
    expect(tab.panel.locator("img")).to_have_count(len(image_families) + 1)  # one grid per family, then the plot
    expect(tab.image("Quality against sampling time")).to_be_visible()
    save_screenshot(page, tmp_path, "compare")

    tab = Tab(page, "About")
    expect(tab.panel.locator(".katex").first).to_be_visible()  # the equations render, from the page's own assets
    save_screenshot(page, tmp_path, "about")
    expect(page.get_by_text(re.compile("^Error"))).to_have_count(0)
    assert outside == []


def test_concurrent_users_get_every_response_right(app_url):
    results = load_test.run_load(app_url, num_users=3, requests_per_user=3)
    assert len(results) == 9
    assert [result for result in results if result.error] == []

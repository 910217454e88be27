"""The UI in a real browser (Debian's chromium driven by Playwright): upload a product, generate, see creatives."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_server import serve_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


BOTTLE, BACKDROP = (30, 80, 200), (250, 250, 250)


def a_product_photo(path: Path) -> Path:
    """A blue bottle (110x40 px) with a black cap on a plain near-white backdrop."""
    pixels = np.full((160, 160, 3), BACKDROP, dtype=np.uint8)
    pixels[30:140, 60:100] = BOTTLE
    pixels[15:30, 72:88] = (20, 20, 20)
    Image.fromarray(pixels).save(path)
    return path


def count_pixels(path: Path, colour) -> int:
    return int((np.asarray(Image.open(path).convert("RGB")) == colour).all(axis=2).sum())


def test_a_marketer_uploads_a_product_paints_the_mask_generates_and_sees_creatives(browser, tmp_path):
    photo = a_product_photo(tmp_path / "bottle.png")
    with serve_app(tmp_path / "out") as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(url)
        page.locator("#generator-notice").get_by_text("the small embedded model this project trained").wait_for()

        page.locator("#product-photo input[type=file]").set_input_files(str(photo))
        page.locator("#mask-message").get_by_text("Product found").wait_for(timeout=30_000)

        # Add a price-tag-sized blob beside the bottle with the magenta brush (a drag in the lower left).
        page.locator("#mask-editor button[aria-label=Brush]").click()
        box = page.locator("#mask-editor canvas").first.bounding_box()
        x, y = box["x"] + box["width"] / 2 - 130, box["y"] + box["height"] / 2 + 100
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 45, y, steps=10)
        page.mouse.up()

        page.locator("#prompt textarea").fill("a wooden table in warm morning light")
        page.locator("#count input[type=number]").fill("1")
        page.locator("#count input[type=number]").press("Enter")
        # Advanced stays closed: the default path (its untouched model box sends None) must work as it is.
        page.locator("#generate").click()

        images = page.locator("#creatives img")
        try:
            images.first.wait_for(state="attached", timeout=120_000)  # lazy images have no size until scrolled to
            images.first.scroll_into_view_if_needed()
            images.first.wait_for(state="visible")
        finally:
            page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
            if os.environ.get("STUDIO_UI_SCREENSHOT"):
                shutil.copy(tmp_path / "ui.png", os.environ["STUDIO_UI_SCREENSHOT"])
        assert images.count() == 1
        written = sorted((tmp_path / "out").glob("bottle-background-*.png"))
        assert [Image.open(path).size for path in written] == [(1024, 1024)]
        for path in written:
            assert count_pixels(path, BOTTLE) == 110 * 40  # the detected bottle, bit-exact
            assert count_pixels(path, BACKDROP) > 500  # the painted blob of backdrop was kept too

        images.first.click()
        page.get_by_text("a wooden table in warm morning light").first.wait_for()  # the recipe of the selection
        page.locator("#ai-badge").get_by_text("AI-generated").wait_for()  # the disclosure, before the recipe
        page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
        if os.environ.get("STUDIO_UI_SCREENSHOT"):  # keep a copy to look at
            shutil.copy(tmp_path / "ui.png", os.environ["STUDIO_UI_SCREENSHOT"])
        page.close()

"""The UI in a real browser (Debian's chromium driven by Playwright): upload a product, generate, see creatives with
their predicted CTR, accept one into the campaign cache, read a known experiment."""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from app_server import serve_app
from PIL import Image

from studio.jobs.cache import CreativeCache
from studio.ui.create import predict_ctr

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
        page.locator("#token-count").get_by_text("tokens").wait_for()  # the live counter, against the model's limit
        page.locator("#group-profile").get_by_text("Group 0").wait_for()  # the default group and its profile
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


def keep_screenshot(page, tmp_path: Path, name: str) -> None:
    """A full-page screenshot as a test artefact (copied into $STUDIO_UI_SCREENSHOTS when set)."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("STUDIO_UI_SCREENSHOTS"):
        Path(os.environ["STUDIO_UI_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["STUDIO_UI_SCREENSHOTS"]) / path.name)


def test_a_marketer_picks_a_group_uses_a_suggestion_sees_predicted_ctr_and_accepts_into_the_campaign(browser, tmp_path):
    photo = a_product_photo(tmp_path / "bottle.png")
    with serve_app(tmp_path / "out") as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(url)
        page.locator("#product-photo input[type=file]").set_input_files(str(photo))
        page.locator("#mask-message").get_by_text("Product found").wait_for(timeout=30_000)
        # Click-to-select: a click on the backdrop makes the product everything else, the bottle and its cap.
        page.get_by_text("Select by click, or upload a mask").click()
        page.get_by_label("I clicked the backdrop: the product is the rest").check()
        image = page.locator("#click-select img").first
        image.wait_for()
        box = image.bounding_box()
        page.mouse.click(box["x"] + 4, box["y"] + 4)
        page.locator("#mask-message").get_by_text(f"Selected {110 * 40 + 15 * 16:,} pixels").wait_for(timeout=30_000)
        page.locator("#title textarea").fill("cold brew")
        page.locator("#product-id textarea").fill("sku-1")
        page.locator("#category input").click()
        page.get_by_role("option", name="beverage").click()

        page.locator("#group input").click()  # the picker lists every group with its size and interests
        page.get_by_role("option", name="Group 2").click()
        page.locator("#group-profile").get_by_text("Group 2").wait_for()
        # personalising shows its strength and the colour switch (on); back to the prompt alone hides them
        page.locator("#personal-group input").click()
        page.get_by_role("option", name="Group 2 (its clicked creatives)").click()
        page.locator("#history-guidance").wait_for()
        assert page.locator("#keep-colours input[type=checkbox]").is_checked()
        page.locator("#personal-group input").click()
        page.get_by_role("option", name="None: the prompt alone").click()
        page.locator("#keep-colours").wait_for(state="hidden")
        page.locator("#suggest").click()
        first = page.locator("#suggestions label").first
        first.wait_for(timeout=30_000)
        suggestion = first.inner_text().strip()
        first.click()
        page.wait_for_function("text => document.querySelector('#prompt textarea').value === text", arg=suggestion)
        page.locator("#count input[type=number]").fill("2")
        page.locator("#count input[type=number]").press("Enter")
        page.locator("#generate").click()

        # Creatives stream in: the first one's row shows before the second is painted.
        for seed in (0, 1):
            page.wait_for_function("s => document.querySelector('#scores').innerText.includes(s)",
                                   arg=f"bottle-background-s{seed}-", timeout=120_000)
        keep_screenshot(page, tmp_path, "ui-create")
        written = sorted((tmp_path / "out").glob("bottle-background-*.png"))
        assert len(written) == 2
        ctr = predict_ctr(written, [suggestion] * 2, 2, "beverage")  # the reward model's own prediction
        table = page.locator("#scores").inner_text()
        for path, value in zip(written, ctr):
            assert f"{value:.2%}" in table and path.name in table
        best = written[max(range(2), key=lambda i: ctr[i])]

        page.locator("#accept").click()  # nothing selected: the best-ranked creative
        page.locator("#accepted").get_by_text("Accepted into the campaign cache").wait_for(timeout=30_000)
        with CreativeCache(tmp_path / "out" / "cache") as cache:
            (entry,) = cache.creatives("sku-1", group_id=2)
            assert cache.read_png(entry.creative_id) == best.read_bytes() and entry.rank == 1

        page.get_by_role("tab", name="Campaign").click()  # the accepted creative is in the group's contact sheet
        page.locator("#sheet-group input").click()
        page.get_by_role("option", name="Group 2").click()
        page.locator("#show-sheet").click()
        page.locator("#contact-sheet img").first.wait_for(state="attached", timeout=30_000)
        assert page.locator("#contact-sheet img").count() == 1
        keep_screenshot(page, tmp_path, "ui-campaign")
        for tab in ("Audience", "Models"):
            page.get_by_role("tab", name=tab).click()
            page.wait_for_timeout(1500)
            keep_screenshot(page, tmp_path, f"ui-{tab.lower()}")
        page.close()


def test_a_catalogue_job_runs_in_the_browser_and_cancel_stops_it_between_products(browser, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    bad = photos / "bad.csv"
    bad.write_text("image,product_id,title,category\nbottle-0.png,sku 0,Bottle,beverage\n")
    good = photos / "catalogue.csv"
    good.write_text("image,product_id,title,category\n" + "".join(
        f"bottle-{i}.png,sku-{i},Bottle {i},beverage\n" for i in range(4)))
    for i in range(4):
        a_product_photo(photos / f"bottle-{i}.png")
    with serve_app(tmp_path / "out") as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(url)
        page.get_by_role("tab", name="Campaign").click()
        for name, value in (("job-prompts", "1"), ("job-steps", "8")):  # a few seconds a product: time to cancel
            page.locator(f"#{name} input[type=number]").fill(value)
            page.locator(f"#{name} input[type=number]").press("Enter")
        page.locator("#catalogue-images input[type=file]").set_input_files([str(photos / f"bottle-{i}.png")
                                                                            for i in range(4)])
        page.locator("#catalogue-images").get_by_text("bottle-3", exact=True).wait_for(timeout=30_000)
        page.locator("#catalogue input[type=file]").set_input_files(str(bad))  # a bad row: one line, no work
        page.locator("#catalogue").get_by_text("bad", exact=True).wait_for(timeout=30_000)  # uploaded
        page.wait_for_timeout(1500)  # the file lists grow and move the button: let the layout settle first
        page.locator("#run-job").click()
        page.locator("#status").get_by_text("sku 0").wait_for(timeout=60_000)
        (error,) = [line for line in page.locator("#status").inner_text().splitlines() if "Error" in line]
        assert error.startswith("Error: catalogue bad.csv row 2: product_id 'sku 0'")

        page.locator("#catalogue button[aria-label='Clear']").click()
        page.locator("#catalogue input[type=file]").set_input_files(str(good))
        page.locator("#catalogue").get_by_text("catalogue", exact=True).wait_for(timeout=30_000)
        page.wait_for_timeout(1500)
        page.locator("#run-job").click()
        # any product done but not the last: a fast product can replace "1 of 4" before the page draws it
        page.locator("#job-progress").get_by_text(re.compile(r"Running: [1-3] of 4 products")).wait_for(
            timeout=180_000)
        page.locator("#cancel-job").click()
        page.locator("#job-progress").get_by_text("Cancelled:").wait_for(timeout=180_000)
        done = int(page.locator("#job-progress").inner_text().split("Cancelled:", 1)[1].split()[0])
        assert 1 <= done < 4
        with CreativeCache(tmp_path / "out" / "cache") as cache:  # exactly the products made before the cancel
            assert sorted(cache.storage_report()["by_product"]) == [f"sku-{i}" for i in range(done)]
        page.close()


def test_the_experiments_tab_shows_the_figures_of_a_known_event_log(browser, tmp_path):
    import experiment_log
    from fastapi.testclient import TestClient

    from studio.serving.app import create_app

    config, ids = experiment_log.build(tmp_path / "serving")
    with TestClient(create_app(config)) as client:
        report = client.get("/v1/report").json()
    with serve_app(tmp_path / "out", cache=config.cache, serving=config) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(url)
        page.get_by_role("tab", name="Experiments").click()
        page.locator("#refresh-experiment").click()
        impressions = sum(cell["impressions"] for cell in report["cells"])
        clicks = sum(cell["clicks"] for cell in report["cells"])
        page.locator("#experiment-summary").get_by_text(f"{impressions:,} impressions, {clicks:,} clicks").wait_for(
            timeout=30_000)
        page.locator("#experiment-lift").get_by_text(f"{report['lift']['lift']:+.1%}").wait_for()
        page.locator("#experiment-lift").get_by_text(
            f"{report['lift']['ci_low']:+.1%} to {report['lift']['ci_high']:+.1%}").wait_for()
        # The table's text: its title, the 7 headers, then the cells row by row.
        text = page.locator("#experiment-cells").inner_text().split("ci_high", 1)[1].split()
        shown = [text[i:i + 7] for i in range(0, len(text), 7)]
        assert len(shown) == len(report["cells"])
        for cell, row in zip(report["cells"], shown):
            assert row[:4] == [cell["bucket"], str(cell["group_id"]), str(cell["impressions"]), str(cell["clicks"])]
            assert [float(v) for v in row[4:]] == pytest.approx([cell["ctr"], cell["ci_low"], cell["ci_high"]],
                                                                 abs=5e-5)  # shown to 4 decimals

        page.locator("#why").click()  # group 0 is chosen: creative A wins it
        page.locator("#why-text").get_by_text(f"creative {ids['A'][:12]} leads").wait_for(timeout=30_000)
        keep_screenshot(page, tmp_path, "ui-experiments")
        page.close()

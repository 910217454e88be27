"""The UI through its API, as a script would drive it with gradio_client: upload, mask, generate (streamed, with
predicted CTR and rank), accept, cancel, the catalogue job, and errors."""

import time

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.utils import Status
from PIL import Image

from app_server import serve_app
from studio.imaging.canvas import place_product
from studio.imaging.editor import stroke_layer
from studio.imaging.provenance import read_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    """Where the app writes its creatives."""
    return tmp_path_factory.mktemp("creatives")


@pytest.fixture(scope="module")
def url(out_dir):
    with serve_app(out_dir) as address:
        yield address


@pytest.fixture()
def client(url):
    return Client(url, verbose=False)


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    """A 96x96 photo: a striped product (so every pixel is distinct) on a plain light-grey backdrop, and its mask."""
    pixels = np.full((96, 96, 3), 230, dtype=np.uint8)
    mask = np.zeros((96, 96), dtype=bool)
    mask[24:72, 32:64] = True
    rows, cols = np.nonzero(mask)
    pixels[rows, cols] = np.stack([rows * 5 % 256, cols * 7 % 256, np.full_like(rows, 40)], axis=1)
    path = tmp_path_factory.mktemp("photos") / "product.png"
    Image.fromarray(pixels).save(path)
    return path, pixels, mask


def test_uploading_a_photo_shows_the_detected_mask_for_editing(client, product):
    path, pixels, mask = product

    value, _, message, status = client.predict(handle_file(str(path)), True, api_name="/open_photo")
    assert status == ""

    assert "Product found" in message
    background = np.asarray(Image.open(value["background"]).convert("RGB"))
    tinted = np.any(background != pixels, axis=2)
    assert (tinted & mask).sum() / (tinted | mask).sum() > 0.9


def test_a_busy_photo_asks_the_user_to_paint_the_mask(client, tmp_path):
    busy = tmp_path / "busy.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(busy)

    value, _, message, _ = client.predict(handle_file(str(busy)), True, api_name="/open_photo")

    assert "Paint over the product" in message
    assert value["layers"] == []


def test_a_corrupt_upload_is_a_clear_error_not_a_traceback(client, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)

    value, _, message, status = client.predict(handle_file(str(broken)), True, api_name="/open_photo")
    assert status.startswith("**Error:** broken.png: not an image") and "\n" not in status
    assert value is None and message == ""


def editor_with_mask(tmp_path, photo_path, mask):
    """The ImageEditor value a marketer sends after painting `mask` over the photo with the magenta brush."""
    layer = tmp_path / "layer.png"
    stroke_layer(mask).save(layer)
    photo = handle_file(str(photo_path))
    return {"background": photo, "layers": [handle_file(str(layer))], "composite": photo}


def call_generate(client, photo, editor, prompt="a red marble table, soft light", **overrides):
    """Call Generate with small, fast settings; returns (gallery, recipe shown, status line)."""
    settings = dict(negative_prompt="", mode="background", placement="1:1", directions=["left", "right"],
                    amount=64, count=2, seed=0, steps=2, guidance=7.5, model="", group=None, category="beverage",
                    scale=0.6)
    settings.update(overrides)
    gallery, recipe, _scores, status = client.predict(photo, editor, prompt, *settings.values(), api_name="/generate")
    return gallery, recipe, status


def generate(client, photo, editor, prompt="a red marble table, soft light", **overrides):
    """Generate that must succeed: (gallery, recipe shown)."""
    gallery, recipe, status = call_generate(client, photo, editor, prompt, **overrides)
    assert status == "", status
    return gallery, recipe


def generate_error(client, photo, editor, **overrides) -> str:
    """Generate that must fail: the one-line status message; the gallery is left empty."""
    gallery, recipe, status = call_generate(client, photo, editor, **overrides)
    assert gallery == [] and recipe is None and status.startswith("**Error:** ") and "\n" not in status
    return status


def test_generate_returns_lossless_pngs_with_the_product_pixels_exact(client, product, tmp_path):
    path, pixels, mask = product

    gallery, recipe = generate(client, handle_file(str(path)), editor_with_mask(tmp_path, path, mask), count=2)

    assert len(gallery) == 2
    assert recipe["prompt"] == "a red marble table, soft light" and recipe["seed"] == 0
    placed = place_product(Image.fromarray(pixels), mask, aspect="1:1", size=1024)
    left, top, right, bottom = placed.box
    for item, seed in zip(gallery, (0, 1)):
        creative = Image.open(item["image"])
        assert creative.format == "PNG" and creative.size == (1024, 1024)
        assert read_recipe(item["image"]).seed == seed  # the provenance travels inside the file
        product_area = np.asarray(creative.convert("RGB"))[top:bottom, left:right]
        assert np.array_equal(product_area[mask[24:72, 32:64]], pixels[mask])  # bit-exact, not re-encoded


def test_outpainting_keeps_the_whole_photo(client, product, tmp_path):
    path, pixels, mask = product

    gallery, recipe = generate(client, handle_file(str(path)), None, mode="outpaint", directions=["left"],
                               amount=32, count=1)

    creative = np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))
    assert creative.shape == (96, 128, 3)
    assert np.array_equal(creative[:, 32:], pixels)
    assert recipe["mode"] == "outpaint" and recipe["placement"] == "left=32"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt": "   "}, "prompt is empty"),
        ({"mode": "outpaint", "directions": []}, "tick at least one side"),
        ({"model": "/no/such/model"}, "no/such/model"),
    ],
)
def test_bad_settings_are_clear_errors(client, product, tmp_path, change, message):
    path, _, mask = product
    assert message in generate_error(client, handle_file(str(path)), editor_with_mask(tmp_path, path, mask), **change)


def test_out_of_range_sliders_are_refused_by_gradio(client, product, tmp_path):
    path, _, mask = product
    with pytest.raises(Exception, match="less than minimum value 1") as error:  # the slider bounds, checked by Gradio
        call_generate(client, handle_file(str(path)), editor_with_mask(tmp_path, path, mask), steps=0)
    assert "Traceback" not in str(error.value)


def test_an_untouched_model_box_means_the_default_model(client, product, tmp_path):
    """The browser sends None for a Textbox nobody typed in (Advanced left closed): the default path must work."""
    path, _, mask = product
    gallery, _ = generate(client, handle_file(str(path)), editor_with_mask(tmp_path, path, mask), count=1,
                          model=None, negative_prompt=None)
    assert len(gallery) == 1


def test_generate_without_a_photo_or_a_mask_says_what_to_do(client, product, tmp_path):
    path, _, mask = product
    assert "upload one first" in generate_error(client, None, editor_with_mask(tmp_path, path, mask))
    assert "paint over the product with the magenta brush" in generate_error(
        client, handle_file(str(path)), editor_with_mask(tmp_path, path, np.zeros_like(mask)))


def test_cancel_stops_the_pipeline_and_writes_nothing(client, out_dir, product, tmp_path):
    path, _, mask = product
    photo, editor = handle_file(str(path)), editor_with_mask(tmp_path, path, mask)
    settings = dict(negative_prompt="", mode="background", placement="1:1", directions=[], amount=64, count=8,
                    seed=100, steps=100, guidance=7.5, model="", group=None, category="beverage", scale=0.6)
    job = client.submit(photo, editor, "a long job", *settings.values(), api_name="/generate")
    deadline = time.monotonic() + 60
    while job.status().code != Status.PROGRESS and not job.done() and time.monotonic() < deadline:  # denoising?
        time.sleep(0.2)
    assert job.status().code == Status.PROGRESS

    client.predict(api_name="/cancel")

    gallery, _, _, status = job.result(timeout=30)
    assert gallery == [] and "generation cancelled; nothing was written" in status  # the gallery is cleared
    # The engine runs one pipeline at a time, so a quick job finishing now means the long one really stopped.
    started = time.monotonic()
    gallery, _ = generate(client, photo, editor, count=1, seed=200)
    assert len(gallery) == 1 and time.monotonic() - started < 30
    assert list(out_dir.glob("*-s200-*.png"))
    assert not list(out_dir.glob("*-s10[0-7]-*.png"))


def test_the_detected_mask_is_used_when_the_marketer_paints_nothing(client, product):
    path, pixels, mask = product
    photo = handle_file(str(path))
    client.predict(photo, True, api_name="/open_photo")  # the session now holds the detected mask

    gallery, _ = generate(client, photo, {"background": photo, "layers": [], "composite": None}, count=1)

    placed = place_product(Image.fromarray(pixels), mask, aspect="1:1", size=1024)
    left, top, right, bottom = placed.box
    creative = np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))
    assert np.array_equal(creative[top:bottom, left:right][mask[24:72, 32:64]], pixels[mask])


def test_generate_decodes_the_photo_once(client, product, tmp_path, monkeypatch):
    from studio.imaging import images

    path, _, mask = product
    decodes = []
    real_open = images._open

    def counting_open(source, *args, **kwargs):
        decodes.append(source)
        return real_open(source, *args, **kwargs)

    monkeypatch.setattr(images, "_open", counting_open)  # the server runs in this process, on a thread
    gallery, _ = generate(client, handle_file(str(path)), editor_with_mask(tmp_path, path, mask), count=2, seed=300)

    assert len(gallery) == 2 and len(decodes) == 1  # one decode serves the mask and both creatives
    assert all(item["image"].endswith(".png") and "product-background-s3" in item["image"] for item in gallery)


def test_a_group_gives_each_creative_its_predicted_ctr_and_rank_and_accept_caches_the_best(client, product, tmp_path,
                                                                                          out_dir):
    from studio.jobs.cache import CreativeCache
    from studio.ui.create import predict_ctr

    path, _, mask = product
    gallery, recipe, scores, status = client.predict(
        handle_file(str(path)), editor_with_mask(tmp_path, path, mask), "a teal marble table, soft light", "",
        "background", "4:5", [], 64, 2, 10, 2, 7.5, "", "1", "beverage", 0.6, api_name="/generate")
    assert status == ""
    ctr = predict_ctr([item["image"] for item in gallery], [recipe["prompt"]] * 2, 1, "beverage")
    best = max(range(2), key=lambda i: ctr[i])
    assert gallery[best]["caption"].startswith(f"#1 · predicted CTR {ctr[best]:.2%}")
    assert [row[:2] for row in scores["data"]] == [[1, f"{ctr[best]:.2%}"], [2, f"{ctr[1 - best]:.2%}"]]

    message, status = client.predict("sku-9", api_name="/accept")  # nothing selected: the best-ranked one
    assert status == "" and "Accepted" in message
    with CreativeCache(out_dir / "cache") as cache:
        (entry,) = cache.creatives("sku-9", group_id=1, placement="4:5")
    assert entry.rank == 1 and entry.predicted_ctr == pytest.approx(ctr[best], abs=1e-7)


def test_bad_input_in_the_other_tabs_is_one_clear_line_each(client, product, tmp_path):
    path, _, _ = product
    client.predict(handle_file(str(path)), True, api_name="/open_photo")
    huge = tmp_path / "huge.png"
    Image.new("1", (8000, 6000)).save(huge)  # 48 Mpx, a few kB on disk: refused from its header, before decoding
    value, _, _, status = client.predict(handle_file(str(huge)), True, api_name="/open_photo")
    assert value is None and status.startswith("**Error:** huge.png: image is 8000x6000") and "\n" not in status

    not_an_image = tmp_path / "mask.png"
    not_an_image.write_text("hello")
    *_, status = client.predict(handle_file(str(path)), handle_file(str(not_an_image)), True,
                                api_name="/upload_mask")
    assert status.startswith("**Error:** mask.png") and "not an image" in status and "\n" not in status

    catalogue = tmp_path / "catalogue.csv"
    catalogue.write_text("image,product_id,title,category\nproduct.png,sku 1,Bottle,beverage\n")
    _, _, status = client.predict(handle_file(str(catalogue)), [handle_file(str(path))], ["1:1"], 1, 2, None,
                                  api_name="/run_catalogue")
    assert status.startswith("**Error:** ") and "sku 1" in status and "\n" not in status

    *_, status = client.predict(str(tmp_path / "no-such.db"), "", "", api_name="/experiment")
    assert status.startswith("**Error:** no serving database at") and "\n" not in status


def test_a_catalogue_job_fills_the_cache_and_its_contact_sheet_can_retire_a_creative(client, product, tmp_path):
    path, _, _ = product
    catalogue = tmp_path / "catalogue.csv"
    catalogue.write_text("image,product_id,title,category\nproduct.png,sku-7,Striped box,kitchen\n")
    # A whole folder: the CSV beside its photo, in the folder upload
    progress, storage, status = client.predict(None, [], ["9:16"], 1, 1,
                                               [handle_file(str(catalogue)), handle_file(str(path))],
                                               api_name="/run_catalogue")
    assert status == "" and progress.startswith("**Done:** 1 of 1 products, 4 creatives made")  # 4 groups x 1
    assert storage["by_product"]["sku-7"]["creatives"] == 4

    sheet, storage, status = client.predict("3", "all", api_name="/contact_sheet")
    (item,) = [item for item in sheet if item["caption"].startswith("sku-7 · 9:16")]
    creative_id = item["caption"].rsplit(" · ", 1)[1]
    message, status = client.predict(creative_id, api_name="/retire")
    assert status == "" and message == f"Creative `{creative_id}` is now **retired**."
    sheet, storage, _ = client.predict("3", "retired", api_name="/contact_sheet")
    assert [item["caption"].rsplit(" · ", 1)[1] for item in sheet] == [creative_id]


def test_creatives_stream_into_the_gallery_as_each_finishes(client, product, tmp_path):
    path, _, mask = product
    job = client.submit(handle_file(str(path)), editor_with_mask(tmp_path, path, mask), "a red wooden table", "",
                        "background", "1:1", [], 64, 3, 40, 2, 7.5, "", "0", "kitchen", 0.6, api_name="/generate")
    job.result(timeout=120)
    sizes = [len(gallery) for gallery, *_ in job.outputs()]
    assert sizes == [1, 2, 3]  # one update per finished creative, each with every creative so far

"""The UI through its API, as a script would drive it with gradio_client: upload, mask, generate, cancel, errors."""

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from app_server import serve_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with serve_app(tmp_path_factory.mktemp("creatives")) as address:
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


def editor_layer_of(value):
    """The mask layer the UI painted, as an RGBA array."""
    return np.asarray(Image.open(value["layers"][0]).convert("RGBA"))


def test_uploading_a_photo_shows_the_detected_mask_for_editing(client, product):
    path, pixels, mask = product

    value, message = client.predict(handle_file(str(path)), api_name="/open_photo")

    assert "Product found" in message
    background = np.asarray(Image.open(value["background"]).convert("RGB"))
    assert np.array_equal(background, pixels)
    painted = editor_layer_of(value)[:, :, 3] > 0
    assert (painted & mask).sum() / (painted | mask).sum() > 0.9


def test_a_busy_photo_asks_the_user_to_paint_the_mask(client, tmp_path):
    busy = tmp_path / "busy.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(busy)

    value, message = client.predict(handle_file(str(busy)), api_name="/open_photo")

    assert "Paint over the product" in message
    assert editor_layer_of(value)[:, :, 3].max() == 0


def test_a_corrupt_upload_is_a_clear_error_not_a_traceback(client, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)

    with pytest.raises(Exception, match=r"^broken.png: not an image") as error:
        client.predict(handle_file(str(broken)), api_name="/open_photo")
    assert "Traceback" not in str(error.value)

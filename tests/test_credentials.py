"""AI-content disclosure: the background watermark and the signed C2PA credentials on every creative."""

from __future__ import annotations

import datetime
import io
import struct
import zlib

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image

from studio.cli import main
from studio.imaging import credentials, provenance, watermark
from studio.imaging.credentials import COMPOSITE_SOURCE_TYPE, CredentialsError, SigningConfig, load_signing, verify
from studio.imaging.provenance import Recipe, encode_creative, encode_png, read_recipe, recipe_id
from studio.imaging.watermark import WatermarkError

DAY = datetime.timedelta(days=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Studio tests")])


def _cert(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool, start, end,
          usage: bool = True) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                            crl_sign=ca, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if not ca and usage:  # C2PA requires an end-entity certificate with an extended key usage such as emailProtection
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
    if not ca:
        builder = (builder
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                  critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _chain(*, expired: bool = False, foreign_issuer: bool = False, usage: bool = True) -> tuple[SigningConfig, bytes]:
    """A throwaway CA and an end-entity signing certificate: (config, CA PEM)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, ee_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Studio test CA", ca_key, _name("Studio test CA"), ca_key, ca=True, start=now - DAY, end=now + 30 * DAY)
    signing_key = ec.generate_private_key(ec.SECP256R1()) if foreign_issuer else ca_key
    end = now - DAY if expired else now + 30 * DAY
    ee = _cert("Studio test signer", ee_key, ca.subject, signing_key, ca=False, start=now - 2 * DAY, end=end,
               usage=usage)
    key = ee_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    return SigningConfig(_pem(ee) + _pem(ca), key), _pem(ca)


@pytest.fixture(scope="module")
def chain() -> tuple[SigningConfig, bytes]:
    return _chain()


@pytest.fixture(scope="module")
def scene() -> tuple[Image.Image, np.ndarray]:
    """A 512 x 512 textured 'creative' with a product (keep mask) in the middle."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[:512, :512]
    base = 120 + 50 * np.sin(x / 23.0) * np.cos(y / 31.0)
    pixels = np.clip(base[..., None] + rng.normal(0, 12, (512, 512, 3)), 0, 255).astype(np.uint8)
    keep = ((y - 256) / 150.0) ** 2 + ((x - 256) / 100.0) ** 2 < 1
    pixels[keep] = (200, 30, 35)
    return Image.fromarray(pixels, "RGB"), keep


@pytest.fixture
def recipe() -> Recipe:
    return Recipe(model="studio-mini", weights_hash="sha256:ab", prompt="a red marble table", negative_prompt="",
                  seed=7, steps=2, scheduler="DDIM", guidance=7.5, strength=1.0, mode="background", placement="1:1",
                  random_init=False, size=(512, 512))


def _bit_accuracy(image: Image.Image, payload: bytes) -> float:
    found = watermark.read(image)
    return float(np.mean(np.unpackbits(np.frombuffer(found.payload, np.uint8))
                         == np.unpackbits(np.frombuffer(payload, np.uint8))))


def _jpeg(image: Image.Image, quality: int = 75) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


# --- the watermark ---------------------------------------------------------------------------------------------------


def test_the_decoded_id_equals_the_embedded_id_and_the_product_stays_bit_exact(scene):
    image, keep = scene
    payload = bytes.fromhex("0123456789abcdef")
    marked = watermark.embed(image, payload, keep)
    assert watermark.read(marked).payload == payload
    before, after = np.asarray(image), np.asarray(marked)
    assert np.array_equal(after[keep], before[keep])
    assert not np.array_equal(after[~keep], before[~keep])
    mse = np.mean((after[~keep].astype(float) - before[~keep]) ** 2)
    assert 10 * np.log10(255**2 / mse) >= 40


@pytest.mark.parametrize("treatment", ["jpeg75", "half", "crop10"])
def test_the_watermark_survives_platform_treatments(scene, treatment):
    image, keep = scene
    payload = bytes.fromhex("fedcba9876543210")
    marked = watermark.embed(image, payload, keep)
    treated = {
        "jpeg75": lambda: _jpeg(marked, 75),
        "half": lambda: marked.resize((256, 256), Image.Resampling.LANCZOS),
        "crop10": lambda: marked.crop((27, 19, 27 + 461, 19 + 461)),
    }[treatment]()
    assert _bit_accuracy(treated, payload) >= 0.95


def test_an_unmarked_image_has_no_watermark(scene):
    with pytest.raises(WatermarkError, match="no Creative Studio watermark"):
        watermark.read(scene[0])


def test_an_image_too_small_is_refused_by_the_marker(recipe):
    with pytest.raises(WatermarkError, match="smaller than 256"):
        watermark.embed(Image.new("RGB", (200, 200)), b"\0" * 8)


# --- encode_png: the one function that writes creatives --------------------------------------------------------------


def test_a_signed_creative_verifies_and_keeps_product_recipe_and_id(scene, recipe, chain, tmp_path):
    image, keep = scene
    config, ca = chain
    data = encode_png(image, recipe, keep=keep, signing=config, models={"prompt_model": "prompts-mini"})
    path = tmp_path / "creative.png"
    path.write_bytes(data)
    assert read_recipe(path) == recipe  # the recipe chunk still reads
    decoded = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(decoded[keep], np.asarray(image)[keep])  # bit-exact product through the whole encoder
    checked = verify(data, trust=ca)
    assert checked.state == "Trusted"
    assert checked.source_type == COMPOSITE_SOURCE_TYPE
    claims = checked.claims
    assert claims["recipe_sha256"] == __import__("hashlib").sha256(recipe.to_json().encode()).hexdigest()
    assert claims["models"]["generator"]["id"] == "studio-mini" and claims["models"]["prompt_model"] == "prompts-mini"
    assert claims["watermark"]["embedded"] and claims["watermark"]["id"] == recipe_id(recipe).hex()
    assert claims["product_region"]["pixels"] == int(keep.sum())
    assert verify(data).state == "Valid"  # no trust list: the signature still checks, the signer is not vouched for
    assert watermark.read(_jpeg(Image.open(path))).payload == recipe_id(recipe)  # survives the platform's JPEG


def test_inspect_reads_credentials_and_watermark(scene, recipe, chain, tmp_path, capsys):
    path = tmp_path / "creative.png"
    path.write_bytes(encode_png(scene[0], recipe, keep=scene[1], signing=chain[0]))
    assert main(["inspect", str(path), "--watermark"]) == 0
    shown = capsys.readouterr().out
    assert "Valid: signed by Studio test signer" in shown
    assert f"watermark        id {recipe_id(recipe).hex()}" in shown
    jpeg = tmp_path / "reencoded.jpg"
    Image.open(path).save(jpeg, quality=75)  # what a platform serves: no metadata left, the watermark is
    assert main(["inspect", str(jpeg), "--watermark"]) == 0
    assert recipe_id(recipe).hex() in capsys.readouterr().out


def _replace_pixels(data: bytes, pixels: np.ndarray) -> bytes:
    """The same PNG chunks with other pixels: what an editor that keeps metadata would write."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    new = buffer.getvalue()
    start, end = data.index(b"IDAT") - 4, data.rindex(b"IEND") - 4
    new_start, new_end = new.index(b"IDAT") - 4, new.rindex(b"IEND") - 4
    # keep every chunk before the first IDAT (header, recipe, manifest), swap the image data
    return data[:start] + new[new_start:new_end] + data[end:]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@pytest.mark.parametrize("tamper", ["pixels", "manifest", "recipe"])
def test_a_tampered_creative_is_detected(scene, recipe, chain, tmp_path, capsys, tamper):
    data = encode_png(scene[0], recipe, keep=scene[1], signing=chain[0])
    if tamper == "pixels":
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()
        pixels[10, 10] ^= 1
        data = _replace_pixels(data, pixels)
    elif tamper == "manifest":  # one byte of the manifest changed, the chunk's CRC made right again
        start = data.index(b"caBX") - 4
        length = struct.unpack(">I", data[start:start + 4])[0]
        body = bytearray(data[start + 8:start + 8 + length])
        body[length // 2] ^= 0xFF
        data = data[:start] + _chunk(b"caBX", bytes(body)) + data[start + 12 + length:]
    else:  # another recipe in place of the signed one
        other = Recipe(**{**recipe.__dict__, "prompt": "a blue table"})
        body = provenance.RECIPE_KEY.encode() + b"\0" + other.to_json().encode()
        start = data.index(b"tEXt") - 4
        length = struct.unpack(">I", data[start:start + 4])[0]
        data = data[:start] + _chunk(b"tEXt", body) + data[start + 12 + length:]
    path = tmp_path / "tampered.png"
    path.write_bytes(data)
    assert main(["inspect", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("studio: error:") and "\n" not in error
    with pytest.raises(CredentialsError):
        provenance.inspect_creative(path)


def test_jpeg_and_webp_exports_are_signed_and_marked(scene, recipe, chain):
    for image_format in ("JPEG", "WEBP"):
        data = encode_creative(scene[0], recipe, keep=scene[1], image_format=image_format, signing=chain[0])
        assert verify(data, trust=chain[1]).state == "Trusted"
        assert watermark.read(Image.open(io.BytesIO(data))).payload == recipe_id(recipe)
    with pytest.raises(provenance.InputError, match="GIF"):
        encode_creative(scene[0], recipe, keep=scene[1], image_format="GIF", signing=chain[0])


def test_without_a_key_creatives_are_unsigned_and_the_studio_says_so_once(scene, recipe, monkeypatch, capsys):
    monkeypatch.delenv(credentials.CERT_ENV, raising=False)
    monkeypatch.delenv(credentials.KEY_ENV, raising=False)
    monkeypatch.setattr(credentials, "_noted", credentials.threading.Event())
    first = encode_png(scene[0], recipe, keep=scene[1])
    encode_png(scene[0], recipe, keep=scene[1])
    assert capsys.readouterr().err.count("no C2PA signing key configured") == 1
    with pytest.raises(CredentialsError, match="no C2PA"):
        verify(first)
    assert watermark.read(Image.open(io.BytesIO(first))).payload == recipe_id(recipe)  # still marked


def test_keys_from_the_environment(chain, tmp_path, monkeypatch):
    config, _ = chain
    (tmp_path / "chain.pem").write_bytes(config.chain)
    (tmp_path / "key.pem").write_bytes(config.key)
    monkeypatch.setenv(credentials.CERT_ENV, str(tmp_path / "chain.pem"))
    monkeypatch.setenv(credentials.KEY_ENV, str(tmp_path / "key.pem"))
    assert load_signing() == config
    monkeypatch.delenv(credentials.KEY_ENV)
    with pytest.raises(CredentialsError, match="set both"):
        load_signing()


def test_a_small_creative_is_written_unmarked_and_says_so(recipe, chain, monkeypatch, capsys):
    monkeypatch.setattr(provenance, "_small_noted", provenance.threading.Event())
    small = Image.new("RGB", (128, 128), (90, 120, 150))
    data = encode_png(small, recipe, keep=None, signing=chain[0])
    encode_png(small, recipe, keep=None, signing=chain[0])
    assert capsys.readouterr().err.count("not watermarked") == 1
    mark = verify(data).claims["watermark"]
    assert mark["embedded"] is False and "smaller than 256" in mark["reason"]


@pytest.mark.parametrize("problem, message", [
    ("expired", "valid only from"),
    ("foreign", "not issued by"),
    ("key", "does not belong"),
    ("garbage", "not valid PEM"),
    ("encrypted", "encrypted"),
    ("no-usage", "refused"),
])
def test_a_bad_signing_configuration_is_one_clear_error(chain, problem, message):
    config, _ = chain
    bad = {
        "expired": lambda: _chain(expired=True)[0],
        "foreign": lambda: _chain(foreign_issuer=True)[0],
        "key": lambda: SigningConfig(config.chain, _chain()[0].key),
        "garbage": lambda: SigningConfig(b"not a certificate", config.key),
        "encrypted": lambda: SigningConfig(config.chain, serialization.load_pem_private_key(config.key, None)
                                           .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.BestAvailableEncryption(b"secret"))),
        "no-usage": lambda: _chain(usage=False)[0],
    }[problem]()
    with pytest.raises(CredentialsError, match=message):
        load_signing(bad)


def test_inspect_of_a_file_that_is_not_an_image_is_one_line(tmp_path, capsys):
    path = tmp_path / "x.png"
    path.write_bytes(b"hello")
    assert main(["inspect", str(path), "--watermark"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_generate_creatives_writes_signed_marked_creatives(tiny_pipeline_dir, product_photo, chain, tmp_path,
                                                           monkeypatch):
    """The whole path users run: the PNG on disk is signed, watermarked in the background, product bit-exact."""
    from studio.imaging.canvas import place_product, product_mask
    from studio.imaging.creatives import CreativeSettings, generate_creatives
    from studio.imaging.images import load_image

    config, ca = chain
    (tmp_path / "chain.pem").write_bytes(config.chain)
    (tmp_path / "key.pem").write_bytes(config.key)
    monkeypatch.setenv(credentials.CERT_ENV, str(tmp_path / "chain.pem"))
    monkeypatch.setenv(credentials.KEY_ENV, str(tmp_path / "key.pem"))
    [creative] = generate_creatives(product_photo, "a red marble table", settings=CreativeSettings(steps=2, size=512),
                                    n=1, engine=str(tiny_pipeline_dir), out_dir=tmp_path / "out", progress=False)
    data = creative.path.read_bytes()
    claims = verify(data, trust=ca).claims
    assert claims["recipe_sha256"] and claims["watermark"]["embedded"], claims["watermark"]
    photo = load_image(product_photo)
    canvas = place_product(photo, product_mask(photo), aspect="1:1", size=512, scale=0.6)
    on_disk = np.asarray(Image.open(creative.path).convert("RGB"))
    assert np.array_equal(on_disk[canvas.keep], np.asarray(canvas.image)[canvas.keep])
    assert watermark.read(Image.open(creative.path)).payload == recipe_id(creative.recipe)


def test_a_background_too_busy_for_a_readable_mark_falls_back_and_says_why(recipe, chain, monkeypatch, capsys):
    monkeypatch.setattr(provenance, "_small_noted", provenance.threading.Event())
    noise = np.random.default_rng(3).integers(0, 256, (256, 256, 3), dtype=np.uint8)  # loud, at the chips' scale
    data = encode_png(Image.fromarray(noise), recipe, keep=None, signing=chain[0])
    assert "not watermarked" in capsys.readouterr().err
    mark = verify(data).claims["watermark"]
    assert mark["embedded"] is False and "too small or too busy" in mark["reason"]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), noise)  # unmarked, not half-marked


def test_inspect_shows_the_signed_recipe_of_a_jpeg_export(scene, recipe, chain, tmp_path, capsys):
    path = tmp_path / "export.jpg"
    path.write_bytes(encode_creative(scene[0], recipe, keep=scene[1], image_format="JPEG", signing=chain[0]))
    found = provenance.inspect_creative(path, read_watermark=True)
    assert found.recipe == recipe and found.watermark.payload == recipe_id(recipe)
    assert main(["inspect", str(path)]) == 0
    assert "a red marble table" in capsys.readouterr().out


def test_a_flat_product_on_a_photo_reads_back_exactly():
    """Regression: the box filter's running sums dipped below zero on a flat product, sqrt gave NaN, reads failed."""
    from sklearn.datasets import load_sample_image

    y, x = np.mgrid[:1024, :1024]
    keep = ((y - 560) / 330) ** 2 + ((x - 512) / 180) ** 2 < 1
    pixels = np.asarray(Image.fromarray(load_sample_image("china.jpg")).resize((1024, 1024), Image.Resampling.LANCZOS))
    pixels = pixels.copy()
    pixels[keep] = (200, 30, 35)
    payload = bytes.fromhex("5f82c2d9cfeb0fa3")  # one of the ids that hit it
    marked = watermark.embed(Image.fromarray(pixels), payload, keep)
    assert np.isfinite(watermark._fold(watermark._luma(np.asarray(marked)))).all()
    assert watermark.read(marked).payload == payload


def test_the_disclosure_summary_for_the_ui(scene, recipe, chain, tmp_path):
    path = tmp_path / "creative.png"
    path.write_bytes(encode_png(scene[0], recipe, keep=scene[1], signing=chain[0]))
    summary = provenance.disclosure(path)
    assert summary["label"] == "AI-generated" and summary["source_type"] == COMPOSITE_SOURCE_TYPE
    assert summary["credentials"] == "C2PA, Valid, signed by Studio test signer"
    assert summary["watermark_id"] == recipe_id(recipe).hex()

"""Benchmark: the AI-content disclosure on creatives — watermark robustness and invisibility, tamper detection, cost.

Scenes: two natural photos shipped with scikit-learn (china.jpg, flower.jpg) resized to 1024 x 1024 as the painted
background, with an elliptical product region (~18 % of the frame) that must stay bit-exact. Each scene is marked with
several random 64-bit ids and put through each platform treatment alone: JPEG quality 75, resize to 50 % (Lanczos),
a 10 % crop (90 % of each side kept, at a random offset). Signing uses a throwaway CA and end-entity certificate made
here. Time added per creative is the median of --runs encodes with the disclosure minus the median of plain encodes
(a PNG with the recipe chunk, compress level 1, as before), in the same process, alternating.

    python benchmarks/credentials.py                # goals: >= 95 % bits, >= 40 dB, bit-exact, all tampering found,
    python benchmarks/credentials.py --ids 16 --runs 15     #  <= 50 ms added per 1024 x 1024 creative
    python benchmarks/credentials.py --studio-mini 4        # also real creatives from the embedded model
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import statistics
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image, PngImagePlugin
from sklearn.datasets import load_sample_image

from studio.imaging import watermark
from studio.imaging.credentials import CredentialsError, SigningConfig, manifest, sign, verify
from studio.imaging.provenance import RECIPE_KEY, Recipe, encode_png, inspect_creative

SIZE = 1024


def throwaway_chain() -> SigningConfig:
    """A CA and an end-entity certificate (emailProtection) valid for a day: for measuring, never for production."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def cert(name, public, issuer, signer, ca):
        usage = {"content_commitment": False, "key_encipherment": False, "data_encipherment": False,
                 "key_agreement": False, "encipher_only": False, "decipher_only": False}
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer).public_key(public)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=not ca, key_cert_sign=ca, crl_sign=ca, **usage),
                                  critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False))
        if not ca:  # c2pa refuses an end-entity certificate without these two
            builder = (builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False))
        return builder.sign(signer, hashes.SHA256())

    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "benchmark CA")])
    ca = cert(ca_name, ca_key.public_key(), ca_name, ca_key, True)
    ee = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "benchmark signer")]), key.public_key(), ca_name,
              ca_key, False)
    pem = serialization.Encoding.PEM
    return SigningConfig(ee.public_bytes(pem) + ca.public_bytes(pem),
                         key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def scenes() -> list[tuple[str, Image.Image, np.ndarray]]:
    y, x = np.mgrid[:SIZE, :SIZE]
    keep = ((y - 560) / 330) ** 2 + ((x - 512) / 180) ** 2 < 1
    out = []
    for name in ("china.jpg", "flower.jpg"):
        pixels = np.asarray(Image.fromarray(load_sample_image(name)).resize((SIZE, SIZE), Image.Resampling.LANCZOS))
        pixels = pixels.copy()
        pixels[keep] = (200, 30, 35)  # the product: flat colour, where a mark would show most
        out.append((name, Image.fromarray(pixels), keep))
    return out


def recipe(seed: int) -> Recipe:
    return Recipe(model="studio-mini", weights_hash="sha256:00", prompt="a red marble table, soft light",
                  negative_prompt="", seed=seed, steps=30, scheduler="DDIM", guidance=7.5, strength=1.0,
                  mode="background", placement="1:1", random_init=False, size=(SIZE, SIZE))


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def treatments(rng: np.random.Generator) -> dict:
    def crop(image):
        width, height = image.size
        keep_w, keep_h = round(width * 0.9), round(height * 0.9)
        left, top = int(rng.integers(0, width - keep_w + 1)), int(rng.integers(0, height - keep_h + 1))
        return image.crop((left, top, left + keep_w, top + keep_h))

    return {
        "none": lambda image: image,
        "JPEG q75": lambda image: jpeg(image, 75),
        "resize 50 %": lambda image: image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS),
        "crop 10 %": crop,
        "(combined) resize 50 % + JPEG q75": lambda image: jpeg(image.resize((image.width // 2, image.height // 2),
                                                                             Image.Resampling.LANCZOS), 75),
    }


def bits(payload: bytes) -> np.ndarray:
    return np.unpackbits(np.frombuffer(payload, np.uint8))


def robustness(ids: int) -> None:
    rng = np.random.default_rng(0)
    accuracy: dict[str, list[float]] = {}
    found: dict[str, int] = {}
    psnr, exact, false_positives, trials = [], True, 0, 0
    for _, image, keep in scenes():
        try:
            watermark.read(image)
            false_positives += 1
        except watermark.WatermarkError:
            pass
        for _ in range(ids):
            payload = rng.bytes(8)
            marked = watermark.embed(image, payload, keep)
            before, after = np.asarray(image).astype(np.float64), np.asarray(marked).astype(np.float64)
            psnr.append(10 * np.log10(255**2 / np.mean((after[~keep] - before[~keep]) ** 2)))
            exact &= bool(np.array_equal(after[keep], before[keep]))
            for label, treat in treatments(rng).items():
                trials += label == "none"
                try:
                    reading = watermark.read(treat(marked))
                    accuracy.setdefault(label, []).append(float(np.mean(bits(reading.payload) == bits(payload))))
                    found[label] = found.get(label, 0) + 1
                except watermark.WatermarkError:
                    accuracy.setdefault(label, []).append(0.5)  # not found: as good as guessing
    print(f"watermark: {trials} marked creatives ({ids} random 64-bit ids x 2 scenes, 1024 x 1024)")
    print(f"  {'treatment':36} {'mean bit acc.':>13} {'min':>7} {'found':>7} {'id exact':>9}")
    for label, values in accuracy.items():
        exact_ids = sum(value == 1.0 for value in values)
        print(f"  {label:36} {100 * np.mean(values):12.2f}% {100 * min(values):6.1f}% "
              f"{found.get(label, 0):>3}/{len(values):<3} {exact_ids:>4}/{len(values)}")
    print(f"  background PSNR vs unmarked: median {statistics.median(psnr):.2f} dB, min {min(psnr):.2f} dB")
    print(f"  product pixels bit-exact: {exact}")
    print(f"  false detections on the unmarked scenes: {false_positives}/2")


def studio_mini(count: int) -> None:
    """The same treatments on real creatives: studio-mini (the embedded model) painting around a product photo."""
    from studio.imaging.creatives import CreativeSettings, generate_creatives
    from studio.imaging.provenance import recipe_id

    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as folder:
        photo = Path(folder) / "bottle.png"
        pixels = np.full((800, 600, 3), 236, np.uint8)  # the bottle of benchmarks/generate.py
        pixels[200:700, 200:400] = (200, 30, 35)
        pixels[120:200, 260:340] = (200, 30, 35)
        pixels[400:500, 200:400] = (235, 210, 45)
        Image.fromarray(pixels).save(photo)
        for size in (512, 1024):
            creatives = generate_creatives(photo, "a red marble table, soft light", n=count, progress=False,
                                           settings=CreativeSettings(steps=20, size=size), out_dir=Path(folder) / "out")
            exact = {label: 0 for label in treatments(rng)}
            for creative in creatives:
                image = Image.open(creative.path)
                for label, treat in treatments(rng).items():
                    try:
                        exact[label] += watermark.read(treat(image)).payload == recipe_id(creative.recipe)
                    except watermark.WatermarkError:
                        pass
            print(f"studio-mini creatives {size} x {size}: ids read exactly " +
                  ", ".join(f"{label} {hits}/{count}" for label, hits in exact.items()))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def tampering(config: SigningConfig) -> None:
    _, image, keep = scenes()[0]
    data = encode_png(image, recipe(1), keep=keep, signing=config)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    print(f"signed creative: product pixels bit-exact after encode_png + decode: "
          f"{np.array_equal(decoded[keep], np.asarray(image)[keep])}; manifest verifies: {verify(data).state}")

    def swap_pixels(pixels):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        new = buffer.getvalue()
        return (data[:data.index(b"IDAT") - 4] + new[new.index(b"IDAT") - 4:new.rindex(b"IEND") - 4]
                + data[data.rindex(b"IEND") - 4:])

    def edit_chunk(kind, change):
        start = data.index(kind) - 4
        length = struct.unpack(">I", data[start:start + 4])[0]
        body = change(data[start + 8:start + 8 + length])
        return data[:start] + _chunk(kind, body) + data[start + 12 + length:]

    one_pixel = decoded.copy()
    one_pixel[5, 5] ^= 1
    product = decoded.copy()
    product[keep] = 255 - product[keep]
    flip = lambda body: body[:len(body) // 2] + bytes([body[len(body) // 2] ^ 0xFF]) + body[len(body) // 2 + 1:]
    cases = {
        "one background pixel +-1": swap_pixels(one_pixel),
        "product pixels replaced": swap_pixels(product),
        "recipe chunk edited": edit_chunk(b"tEXt", lambda body: body.replace(b"marble", b"marbel")),
        "one manifest byte flipped": edit_chunk(b"caBX", flip),
    }
    detected = 0
    with tempfile.TemporaryDirectory() as folder:
        for label, tampered in cases.items():
            path = Path(folder) / "t.png"
            path.write_bytes(tampered)
            try:
                inspect_creative(path)
                print(f"  tamper NOT detected: {label}")
            except CredentialsError as error:
                detected += 1
                print(f"  tamper detected: {label:28} {str(error).split(': ', 1)[1][:90]}")
    print(f"tamper detection: {detected}/{len(cases)}")


def timing(config: SigningConfig, runs: int) -> None:
    _, image, keep = scenes()[0]
    rec = recipe(1)

    def plain():  # what encode_png did before: a PNG with the recipe chunk
        info = PngImagePlugin.PngInfo()
        info.add_text(RECIPE_KEY, rec.to_json())
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=info, compress_level=1)
        return buffer.getvalue()

    png = plain()
    sides = {"plain PNG + recipe (baseline)": plain,
             "+ watermark (no key)": lambda: encode_png(image, rec, keep=keep),
             "+ watermark + C2PA signature": lambda: encode_png(image, rec, keep=keep, signing=config),
             "(part) watermark.embed alone": lambda: watermark.embed(image, b"\1" * 8, keep),
             "(part) C2PA sign alone": lambda: sign(png, "PNG", manifest({}, generator="g", title="t"), config)}
    times: dict[str, list[float]] = {label: [] for label in sides}
    for side in sides.values():
        side()  # warm-up
    for _ in range(runs):
        for label, side in sides.items():  # alternate, so background load hits every side alike
            started = time.perf_counter()
            side()
            times[label].append(time.perf_counter() - started)
    base = statistics.median(times["plain PNG + recipe (baseline)"])
    threads = os.environ.get("OMP_NUM_THREADS")
    print(f"time per 1024 x 1024 creative (median of {runs} runs, OMP_NUM_THREADS={threads}):")
    for label, values in times.items():
        median = statistics.median(values)
        added = ("" if median == base or label.startswith("(part)")
                 else f"  (+{1000 * (median - base):.1f} ms, x{median / base:.2f} the baseline)")
        print(f"  {label:32} {1000 * median:7.1f} ms{added}")
    marked = Image.open(io.BytesIO(encode_png(image, rec, keep=keep)))
    started = time.perf_counter()
    watermark.read(marked)
    print(f"  reading the watermark (studio inspect --watermark): {1000 * (time.perf_counter() - started):.0f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=8, help="random ids marked per scene")
    parser.add_argument("--runs", type=int, default=9, help="timed encodes per side")
    parser.add_argument("--studio-mini", type=int, default=0, metavar="N",
                        help="also mark N real studio-mini creatives at 512 and 1024 px and read them back")
    args = parser.parse_args()
    os.environ.pop("STUDIO_C2PA_CERT", None)
    os.environ.pop("STUDIO_C2PA_KEY", None)
    config = throwaway_chain()
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, cores {os.cpu_count()}")
    robustness(args.ids)
    if args.studio_mini:
        studio_mini(args.studio_mini)
    tampering(config)
    timing(config, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

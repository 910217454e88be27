"""Provenance: the recipe that made a creative, stored inside its PNG so anyone can read it back with PIL.

A creative carries everything needed to make it again: the model and a hash of its weights, the LoRA, the prompts, the
seed and the sampler settings, and whether the generator was randomly initialised (then its pixels are noise).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from studio import __version__
from studio.core.atomic import write_file
from studio.core.errors import InputError
from studio.imaging import watermark
from studio.imaging.credentials import (
    COMPOSITE_SOURCE_TYPE,
    MIME_TYPES,
    CredentialsError,
    NoCredentialsError,
    SigningConfig,
    Verification,
    load_signing,
    manifest,
    note_unsigned,
    sign,
    verify,
)

# The PNG tEXt key that holds the recipe as JSON.
RECIPE_KEY = "creative-studio:recipe"

# Files whose bytes are the learned weights of a model folder (diffusers, transformers, PEFT, single-file checkpoints).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".gguf")

WATERMARK_METHOD = "creative-studio spread-spectrum v1 (tiled 128 px, luminance, background only)"

_hash_lock = threading.Lock()
_small_noted = threading.Event()  # the too-small-to-watermark notice is said once per process
_hash_memory: dict[str, str] = {}


@dataclass
class Recipe:
    """Everything that determined one creative's pixels.

    `placement` is the aspect ratio ("1:1", "4:5", ...) in background mode and the extension in pixels
    ("left=256,right=256") in outpaint mode. `seed` is this image's own seed (the batch seed plus its index).
    """

    model: str
    weights_hash: str | None
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    scheduler: str
    guidance: float
    strength: float
    mode: str
    placement: str
    random_init: bool
    lora: dict[str, Any] | None = None  # {"path": str, "scale": float, "hash": str}
    size: tuple[int, int] | None = None  # final creative (width, height) in pixels
    model_size: tuple[int, int] | None = None  # (width, height) the model painted at, in pixels
    inpaint_method: str | None = None  # "inpainting-model", or "mask-blending" for a text-to-image model
    engine_options: str = ""  # memory and speed options that were on, e.g. "vae-tiling,cpu-offload=model"
    # Personal conditions (studio.imaging.personal): the history {"source", "count", "hash", "method"} (or a note that
    # there was none) and the category, each with the guidance scale actually applied (0 = left out).
    history: dict[str, Any] | None = None
    history_guidance: float = 0.0
    category: str | None = None
    category_guidance: float = 0.0
    # What a closed-vocabulary model read of the prompt (studio.imaging.prompt_reading): {"prompt_read",
    # "prompt_replaced", "prompt_dropped"}; None when it read the prompt as typed.
    prompt_reading: dict[str, Any] | None = None
    studio_version: str = field(default=__version__)

    def to_json(self) -> str:
        """The recipe as one JSON object (keys sorted, so equal recipes give equal text)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        """Parse and check a recipe; ValueError (one line) for anything that is not a recipe object."""
        try:
            data = json.loads(text)
        except RecursionError:  # a hostile chunk nested thousands deep
            raise ValueError("JSON nested too deep") from None
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, expected an object")
        values = {}
        for item in dataclasses.fields(cls):
            if item.name not in data:
                if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                    raise ValueError(f"no {item.name!r}")
                continue
            values[item.name] = _checked(item.name, data[item.name])
        return cls(**values)

    def digest(self) -> str:
        """A short stable hash of the recipe, used in file names so different recipes never overwrite each other."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:10]


# What each recipe field may hold: a damaged or hostile chunk must not reach the code that reads a recipe.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,), "weights_hash": (str, type(None)), "prompt": (str,), "negative_prompt": (str,), "seed": (int,),
    "steps": (int,), "scheduler": (str,), "guidance": (int, float), "strength": (int, float), "mode": (str,),
    "placement": (str,), "random_init": (bool,), "lora": (dict, type(None)), "size": (list, type(None)),
    "model_size": (list, type(None)), "studio_version": (str,), "inpaint_method": (str, type(None)),
    "engine_options": (str,), "history": (dict, type(None)), "history_guidance": (int, float),
    "category": (str, type(None)), "category_guidance": (int, float), "prompt_reading": (dict, type(None)),
}


def _checked(name: str, value: Any) -> Any:
    kinds = _FIELD_TYPES[name]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ValueError(f"{name!r} is a {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name!r} is not a finite number")
    if isinstance(value, list):
        if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ValueError(f"{name!r} is not a (width, height) pair")
        return tuple(value)
    return value


def save_png(image: Image.Image, recipe: Recipe, path: str | os.PathLike, *, keep: np.ndarray | None,
             compress_level: int = 1, models: dict[str, str] | None = None,
             signing: SigningConfig | None = None) -> Path:
    """Write `encode_png`'s bytes to `path` atomically (temp file, then os.replace). Returns the final path.

    `compress_level` 1 (of 0-9) writes about 2x faster than the default 6 for files ~15 % larger; the studio's
    creatives are re-encoded for serving anyway.
    """
    data = encode_png(image, recipe, keep=keep, compress_level=compress_level, models=models, signing=signing)
    return write_file(Path(path), lambda temporary: temporary.write_bytes(data))


def encode_png(image: Image.Image, recipe: Recipe, *, keep: np.ndarray | None, compress_level: int = 1,
               models: dict[str, str] | None = None, signing: SigningConfig | None = None) -> bytes:
    """The bytes of a creative PNG: watermarked background, `recipe` in a text chunk, signed C2PA credentials.

    `keep` is the product mask (True = the photo's own pixels, `Canvas.keep`): those pixels are never marked. None
    means the whole frame was painted. See `encode_creative` for the rest.
    """
    return encode_creative(image, recipe, keep=keep, image_format="PNG", compress_level=compress_level,
                           models=models, signing=signing)


def encode_creative(image: Image.Image, recipe: Recipe, *, keep: np.ndarray | None, image_format: str = "PNG",
                    quality: int = 90, compress_level: int = 1, models: dict[str, str] | None = None,
                    signing: SigningConfig | None = None) -> bytes:
    """The one function that encodes a creative (PNG, or a JPEG/WebP export) with its disclosure.

    1. The background (not `keep`) gets an invisible watermark carrying `recipe_id(recipe)`; an image too small (or
       a background too busy) to carry a mark that reads back is written unmarked and says so in its manifest (and
       once on stderr).
    2. The image is encoded; a PNG also carries the recipe in a text chunk (`read_recipe`).
    3. With a signing key (`signing`, or STUDIO_C2PA_CERT/STUDIO_C2PA_KEY) a C2PA manifest is embedded and signed:
       source type "composite with trained algorithmic media", the models, the recipe and its hash, the watermark
       and the product region. Without one, the creative is unsigned and the studio says so once per process.
    `models`: other models that shaped the creative, e.g. {"prompt_model": ..., "reward_model": ...}.
    """
    image_format = image_format.upper()
    if image_format not in MIME_TYPES:
        raise InputError(f"cannot write a creative as {image_format!r}; use one of {', '.join(MIME_TYPES)}")
    image = image if image.mode == "RGB" else image.convert("RGB")
    config = load_signing(signing)
    text = recipe.to_json()
    identity = recipe_id(recipe)
    try:
        image = watermark.embed(image, identity, keep)
        mark = {"embedded": True, "id": identity.hex(), "bits": watermark.PAYLOAD_BITS, "method": WATERMARK_METHOD}
    except watermark.WatermarkError as error:  # the stated fallback: unmarked, and the manifest says why
        if not _small_noted.is_set():
            _small_noted.set()
            print(f"studio: note: some creatives are not watermarked ({error}); their recipe and C2PA manifest "
                  "still disclose them", file=sys.stderr)
        mark = {"embedded": False, "reason": str(error)}

    buffer = io.BytesIO()
    if image_format == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text(RECIPE_KEY, text)
        image.save(buffer, format="PNG", pnginfo=info, compress_level=compress_level)
    else:
        image.save(buffer, format=image_format, quality=quality)
    data = buffer.getvalue()
    if config is None:
        note_unsigned()
        return data
    claims = {
        "recipe": text,  # JSON text, not an object: c2pa turns JSON arrays of ints (size) into CBOR bytes
        "recipe_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "models": {"generator": {"id": recipe.model, "weights_hash": recipe.weights_hash, "lora": recipe.lora},
                   **(models or {})},
        "watermark": mark,
        "product_region": _product_region(image, keep, lossless=image_format == "PNG"),
    }
    title = f"creative-{identity.hex()}.{image_format.lower()}"
    return sign(data, image_format, manifest(claims, generator=recipe.model, title=title), config)


def recipe_id(recipe: Recipe) -> bytes:
    """The creative's 64-bit id carried by the watermark: the start of the recipe's SHA-256 (so its first 10 hex
    digits are `recipe.digest()`, the ones in the file name)."""
    return hashlib.sha256(recipe.to_json().encode()).digest()[:watermark.PAYLOAD_BITS // 8]


def _product_region(image: Image.Image, keep: np.ndarray | None, *, lossless: bool) -> dict:
    """The claim that the product's pixels are the original photo's, with where they are and a hash of them."""
    if keep is None or not keep.any():
        return {"present": False}
    rows, columns = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
    pixels = np.asarray(image)[keep]
    origin = "original product photo, not generated, not watermarked" + (
        ", pixels bit-exact (hash below)" if lossless
        else "; a lossy export: the hash is of the pixels before encoding")
    return {"present": True, "origin": origin,
            # A dict, not a list: c2pa turns a JSON array of small ints into a CBOR byte string.
            "box": {"left": int(columns[0]), "top": int(rows[0]), "right": int(columns[-1]) + 1,
                    "bottom": int(rows[-1]) + 1},
            "pixels": int(keep.sum()), "sha256": hashlib.sha256(pixels.tobytes()).hexdigest()}


def read_recipe(path: str | os.PathLike) -> Recipe:
    """Read the recipe back from a creative PNG; InputError if the file is not a PNG or has no recipe."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; pass a creative PNG written by `studio generate`")
    try:
        # The recipe chunk comes before the pixels: read the header chunks only, never decode (a bomb stays harmless).
        with Image.open(path) as image:
            text = image.info.get(RECIPE_KEY)
            kind = image.format
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InputError(f"{path}: not a readable image ({error}); pass a creative PNG written by `studio generate`") \
            from None
    if kind != "PNG" or text is None:
        raise InputError(f"{path}: has no Creative Studio recipe; only PNGs written by `studio generate` carry one")
    try:
        return Recipe.from_json(text)
    except ValueError as error:
        raise InputError(f"{path}: its recipe chunk is damaged ({error}); regenerate the creative") from None


@dataclass
class Inspection:
    """What a creative file says about itself: its recipe (PNG only), its credentials, its watermark."""

    recipe: Recipe | None
    credentials: Verification | None  # None: the file carries no C2PA manifest (unsigned)
    watermark: watermark.Reading | None = None


def inspect_creative(path: str | os.PathLike, *, read_watermark: bool = False) -> Inspection:
    """Read and check a creative: recipe, C2PA credentials (signature, tampering) and, if asked, the watermark.

    Raises InputError (one line) for a file that cannot be read, a manifest that is damaged or does not match the
    file (tampered), a watermark that is missing or contradicts the recipe.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; pass a creative written by the studio")
    try:
        credentials = verify(path.read_bytes())
    except NoCredentialsError:
        credentials = None  # unsigned, or not an image at all: read_recipe below says which
    except CredentialsError as error:
        raise CredentialsError(f"{path}: {error}") from None
    recipe = None
    try:
        recipe = read_recipe(path)
    except InputError:
        signed = None if credentials is None else credentials.claims.get("recipe")
        if isinstance(signed, str):  # a JPEG/WebP export: the recipe travels in its signed manifest
            try:
                recipe = Recipe.from_json(signed)
            except ValueError as error:
                raise CredentialsError(f"{path}: the signed recipe is not a recipe ({error})") from None
        elif not read_watermark:  # a re-encoded copy may still carry the watermark; otherwise nothing to show
            raise
    if credentials is not None and recipe is not None:
        recorded = credentials.claims.get("recipe_sha256")
        if recorded != hashlib.sha256(recipe.to_json().encode()).hexdigest():
            raise CredentialsError(f"{path}: the recipe does not match the signed manifest's: it was changed")
    reading = None
    if read_watermark:
        try:
            with Image.open(path) as image:
                image.load()
                reading = watermark.read(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            if isinstance(error, InputError):
                raise InputError(f"{path}: {error}") from None
            raise InputError(f"{path}: not a readable image ({error})") from None
        expected = recipe_id(recipe).hex() if recipe is not None else \
            (credentials.claims.get("watermark", {}).get("id") if credentials is not None else None)
        if expected is not None and reading.hex != expected:
            raise InputError(f"{path}: the watermark carries id {reading.hex}, the creative's recipe says {expected}: "
                             "the image and its recipe do not belong together")
    return Inspection(recipe, credentials, reading)


def disclosure(path: str | os.PathLike) -> dict[str, Any]:
    """A short summary for people (the UI's label): AI-generated, the credentials' state, the watermark's id."""
    found = inspect_creative(path)
    try:
        with Image.open(path) as image:
            mark = watermark.read(image).hex
    except watermark.WatermarkError:
        mark = None
    signed = found.credentials
    return {
        "label": "AI-generated",
        "source_type": COMPOSITE_SOURCE_TYPE,
        "credentials": "none (unsigned)" if signed is None else f"C2PA, {signed.state}, signed by {signed.signer}",
        "watermark_id": mark or "none",
    }


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def _cache_file() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "creative-studio" / "weights-hashes.json"


def weights_hash(path: str | os.PathLike) -> str:
    """A stable SHA-256 over a model folder's weight files (or one weights file): relative names and bytes.

    Hashing gigabytes takes seconds, so results are cached in memory and on disk
    (`$XDG_CACHE_HOME/creative-studio/weights-hashes.json`), keyed by the files' paths, sizes and modification times.
    Returns "sha256:<hex>".
    """
    path = Path(path).resolve()
    files = _weight_files(path)
    if not files:
        raise InputError(f"{path}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) to hash")
    stats = [(str(f.relative_to(path) if path.is_dir() else f.name), f.stat()) for f in files]
    key = hashlib.sha256(
        json.dumps([str(path)] + [[name, s.st_size, s.st_mtime_ns] for name, s in stats]).encode()
    ).hexdigest()
    with _hash_lock:
        if key in _hash_memory:
            return _hash_memory[key]
        cache_file = _cache_file()
        try:
            on_disk = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            on_disk = {}
        if key in on_disk:
            _hash_memory[key] = on_disk[key]
            return on_disk[key]
        digest = hashlib.sha256()
        for (name, _), file in zip(stats, files):
            digest.update(name.encode() + b"\0")
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        result = f"sha256:{digest.hexdigest()}"
        _hash_memory[key] = result
        on_disk[key] = result
        try:
            write_file(cache_file, lambda temporary: temporary.write_text(json.dumps(on_disk)))
        except OSError:
            pass  # a read-only cache only costs a re-hash next time
        return result

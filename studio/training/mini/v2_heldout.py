"""The gate's held-out real images: product cut-outs and photos that ship inside installed PyPI packages.

They never enter training (``v2_data`` reads no files). Cut-outs with their own alpha are used as they are; photos
without one become a centred elliptical cut-out. Outpainting photos are whole pictures whose borders get repainted.
`export_heldout` copies the set (downscaled to 256 px) to a folder, for a machine without those packages.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from studio.core.errors import InputError

# (name, package, path inside the package, how to cut it out)
CUTOUTS: tuple[tuple[str, str, str, str], ...] = (
    ("gift-box", "matplotlib", "mpl-data/sample_data/Minduka_Present_Blue_Pack.png", "alpha"),
    ("bus", "gradio", "media_assets/images/bus.png", "alpha"),
    ("hugging-face", "gradio", "media_assets/images/hf-logo_transpng.png", "alpha"),
    ("avatar", "gradio", "media_assets/images/avatar.png", "alpha"),
    ("figure", "gradio", "media_assets/images/groot.jpeg", "ellipse"),
    ("flower", "sklearn", "datasets/images/flower.jpg", "ellipse"),
)
PHOTOS: tuple[tuple[str, str, str], ...] = (
    ("china", "sklearn", "datasets/images/china.jpg"),
    ("tower", "gradio", "media_assets/images/tower.jpg"),
    ("cheetah", "gradio", "media_assets/images/cheetah.jpg"),
    ("portrait", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)
_EXPORT_SIDE = 256


def _package_file(package: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


def _cut_out(image: Image.Image, how: str) -> Image.Image:
    """RGBA cut-out cropped to its opaque box; "ellipse" keeps a centred ellipse of a photo."""
    if how == "ellipse":
        rgb = image.convert("RGB")
        side = min(rgb.size)
        rgb = rgb.crop(((rgb.width - side) // 2, (rgb.height - side) // 2, (rgb.width + side) // 2,
                        (rgb.height + side) // 2))
        alpha = Image.new("L", rgb.size, 0)
        ImageDraw.Draw(alpha).ellipse([side * 0.12, side * 0.05, side * 0.88, side * 0.95], fill=255)
        rgb.putalpha(alpha)
        image = rgb
    image = image.convert("RGBA")
    box = image.getchannel("A").point(lambda value: 255 if value >= 128 else 0).getbbox()
    return image.crop(box) if box else image


def heldout_cutouts(folder: str | os.PathLike | None = None) -> dict[str, Image.Image]:
    """The held-out cut-outs (name -> RGBA): from `folder` (an `export_heldout` folder) or the installed packages;
    names whose package is missing are left out."""
    if folder is not None:
        return {path.stem.removeprefix("cutout-"): Image.open(path).convert("RGBA")
                for path in sorted(Path(folder).glob("cutout-*.png"))}
    found = {}
    for name, package, relative, how in CUTOUTS:
        path = _package_file(package, relative)
        if path is not None:
            found[name] = _shrink(_cut_out(Image.open(path), how))
    return dict(sorted(found.items()))  # the order an exported folder lists them in: the gate pairs cases by it


def heldout_photos(folder: str | os.PathLike | None = None) -> dict[str, Image.Image]:
    """The held-out photos for outpainting (name -> RGB), from `folder` or the installed packages."""
    if folder is not None:
        return {path.stem.removeprefix("photo-"): Image.open(path).convert("RGB")
                for path in sorted(Path(folder).glob("photo-*.png"))}
    found = {}
    for name, package, relative in PHOTOS:
        path = _package_file(package, relative)
        if path is not None:
            found[name] = _shrink(Image.open(path).convert("RGB"))
    return dict(sorted(found.items()))


def _shrink(image: Image.Image) -> Image.Image:
    """At most 256 px a side, as `export_heldout` writes them: the gate sees the same pixels from either source."""
    image = image.copy()
    image.thumbnail((_EXPORT_SIDE, _EXPORT_SIDE), Image.LANCZOS)
    return image


def heldout_paths() -> list[Path]:
    """The files the held-out set is read from (those installed)."""
    paths = [_package_file(package, relative) for _, package, relative, _ in CUTOUTS]
    paths += [_package_file(package, relative) for _, package, relative in PHOTOS]
    return [path for path in paths if path is not None]


def export_heldout(folder: str | os.PathLike) -> Path:
    """Write the held-out set (downscaled to at most 256 px a side) as PNGs to folder; returns folder."""
    cutouts, photos = heldout_cutouts(), heldout_photos()
    if not cutouts:
        raise InputError("none of the held-out images' packages (matplotlib, gradio, scikit-learn) is installed")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, images in (("cutout", cutouts), ("photo", photos)):
        for name, image in images.items():
            image.save(folder / f"{prefix}-{name}.png")
    return folder


def pixel_fingerprints(images) -> set[bytes]:
    """A set of small, exact fingerprints (16x16 RGB thumbnails) of images, to check that none is a training one."""
    return {np.asarray(image.convert("RGB").resize((16, 16), Image.BILINEAR)).tobytes() for image in images}

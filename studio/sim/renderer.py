"""Seeded procedural product scenes: backdrops, product cut-outs, captions and masks.

The renderer is the studio's ground truth. It makes the training data of the embedded generator (studio-mini), the
material classifier of its quality gate, and the demo catalogue (`make run`, the UI, the audience simulator).

Every function is a pure function of its arguments: the same arguments and seed give the same pixels. Textures and
lighting are defined in normalised image coordinates, so a scene looks the same at 64 px and at 1024 px.

Conventions (the diffusers ones): masks are single-channel "L" images where 255 means "repaint" for inpainting masks,
and 255 means "product" for `Scene.product_mask`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from studio.core.errors import InputError
from studio.core.vocabulary import COLOURS, LAYOUTS, LIGHTING, MATERIALS, PRODUCTS

# Product body colours: desaturated tones, so the backdrop colour is what a caption's colour word is about.
PRODUCT_COLOURS: tuple[tuple[int, int, int], ...] = (
    (210, 205, 195), (90, 95, 105), (170, 150, 120), (60, 60, 62), (190, 120, 100), (110, 140, 160),
)
# The neutral product of the quality gate: a mid-grey that is no named colour's nearest neighbour by design.
NEUTRAL_PRODUCT_COLOUR: tuple[int, int, int] = (150, 150, 150)

# Caption grammar: every template names every attribute; all words are single tokens of the scene vocabulary.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {product} on a {colour} {material} backdrop {lighting} light {layout} shot",
    "{colour} {material} {layout} background with {lighting} light and a {product}",
    "product photo of a {product} {colour} {material} surface {lighting} light {layout}",
)
CAPTION_WORDS: tuple[str, ...] = tuple(sorted({
    word
    for template in CAPTION_TEMPLATES
    for word in template.split()
    if not word.startswith("{")
}))

# How far a texture swings a pixel around the backdrop colour, in 0-255 units.
_TEXTURE_AMPLITUDE = 42.0


@dataclass(frozen=True)
class Scene:
    """One rendered product shot.

    image: RGB composite (H, W). backdrop: the same scene without the product (RGB). product_mask: "L", 255 on the
    product. caption: a sentence naming every attribute. attributes: colour, material, lighting, layout, product, seed.
    """

    image: Image.Image
    backdrop: Image.Image
    product_mask: Image.Image
    caption: str
    attributes: dict = field(default_factory=dict)

    @property
    def background_mask(self) -> Image.Image:
        """The inpainting mask for background replacement: 255 everywhere except the product."""
        return Image.fromarray(255 - np.asarray(self.product_mask))


def _size_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    width, height = (size, size) if isinstance(size, int) else size
    if not (8 <= width <= 4096 and 8 <= height <= 4096):
        raise InputError(f"size must be between 8 and 4096 pixels per side, got {width}x{height}")
    return int(width), int(height)


def _check_choice(kind: str, value: str, choices) -> None:
    if value not in choices:
        raise InputError(f"unknown {kind} {value!r}; expected one of: {', '.join(choices)}")


def _rng(seed: int, *salt: str) -> np.random.Generator:
    # A stable sub-seed per (seed, purpose), so adding a texture never changes another one's pixels.
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32("/".join(salt).encode())])


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise (H, W) float32 with about `cells` blobs per side."""
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((width, height), Image.BICUBIC), dtype=np.float32)


def _texture(material: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """The material's zero-mean texture (H, W) in about [-1, 1]."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = (u + 0.5) / width, (v + 0.5) / height
    if material == "plain":
        tex = 0.12 * _smooth_noise(rng, width, height, 2)
    elif material == "marble":
        phase = 2 * np.pi * (1.2 * u + 0.8 * v + rng.uniform()) + 2.5 * _smooth_noise(rng, width, height, 4)
        tex = 0.5 - 1.4 * np.exp(-np.sin(phase) ** 2 / 0.12)
    elif material == "wood":
        phase = 2 * np.pi * (7 * v + rng.uniform()) + 1.8 * _smooth_noise(rng, width, height, 3)
        tex = 0.75 * np.sin(phase) ** 3 + 0.15 * _smooth_noise(rng, width, height, 12)
    elif material == "fabric":
        cycles = 12
        tex = 0.7 * np.sin(2 * np.pi * cycles * u) * np.sin(2 * np.pi * cycles * v)
        tex += 0.15 * _smooth_noise(rng, width, height, 6)
    elif material == "stripes":
        tex = 0.8 * np.tanh(4 * np.sin(2 * np.pi * (6 * u + rng.uniform())))
    elif material == "bokeh":
        tex = np.zeros((height, width), np.float32)
        for _ in range(9):
            cx, cy, radius = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.11)
            disc = np.clip((radius - np.hypot((u - cx) * width / height, v - cy)) / 0.015, 0, 1)
            tex += 1.3 * disc
    else:  # pragma: no cover - callers check the vocabulary first
        raise AssertionError(material)
    return (tex - tex.mean()).astype(np.float32)


def _light_and_layout(lighting: str, layout: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative brightness map (H, W), mean about 1, for a lighting mood over a layout."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = (u + 0.5) / width, (v + 0.5) / height
    if layout == "studio":  # a seamless paper sweep: darker at the top, brighter where the floor curves up
        shape = 0.9 + 0.15 * (1 / (1 + np.exp(-(v - 0.6) * 10)))
    elif layout == "tabletop":  # a table edge at two thirds of the height, the tabletop a shade darker
        shape = np.where(v < 0.66, 1.06, 0.9).astype(np.float32) - 0.08 * np.exp(-((v - 0.66) / 0.015) ** 2)
    elif layout == "horizon":  # a bright sky over a darker ground, meeting at a horizon line
        shape = np.where(v < 0.55, 1.12 - 0.1 * v, 0.86).astype(np.float32)
    else:  # pragma: no cover
        raise AssertionError(layout)
    if lighting == "soft":
        light = 1 + 0.05 * (u - 0.5) - 0.05 * (v - 0.5)
    elif lighting == "bright":
        light = np.full_like(u, 1.12)
    elif lighting == "dramatic":
        cx = rng.uniform(0.3, 0.7)
        light = 0.45 + 0.9 * np.exp(-((u - cx) ** 2 + (v - 0.35) ** 2) / 0.09)
        light = light / light.mean()
    else:  # pragma: no cover
        raise AssertionError(lighting)
    return (shape * light).astype(np.float32)


def render_backdrop(
    colour: str,
    material: str = "plain",
    lighting: str = "soft",
    layout: str = "studio",
    size: int | tuple[int, int] = 512,
    seed: int = 0,
) -> Image.Image:
    """Render an empty backdrop as an RGB image of `size` (int or (width, height), pixels).

    The backdrop's mean colour stays near `COLOURS[colour]` whatever the material, lighting and layout, so a named
    colour can be checked from pixels.
    """
    _check_choice("colour", colour, COLOURS)
    _check_choice("material", material, MATERIALS)
    _check_choice("lighting", lighting, LIGHTING)
    _check_choice("layout", layout, LAYOUTS)
    width, height = _size_pair(size)
    base = np.asarray(COLOURS[colour], np.float32)
    texture = _texture(material, width, height, _rng(seed, "texture", material))
    light = _light_and_layout(lighting, layout, width, height, _rng(seed, "light", lighting, layout))
    pixels = (base[None, None, :] + _TEXTURE_AMPLITUDE * texture[..., None]) * light[..., None]
    if lighting == "bright":
        pixels = pixels + 12.0
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def _shade(width: int, height: int, kind: str) -> np.ndarray:
    """A cylinder or box shading map (H, W) for a product body: light from the upper left."""
    u = (np.arange(width, dtype=np.float32) + 0.5) / width
    if kind == "cylinder":
        column = 0.75 + 0.35 * np.cos((u - 0.35) * np.pi) ** 2
    else:
        column = np.where(u < 0.62, 1.05, 0.78).astype(np.float32)
    return np.broadcast_to(column[None, :], (height, width))


def render_product(
    kind: str,
    seed: int = 0,
    size: int = 256,
    colour: tuple[int, int, int] | None = None,
) -> Image.Image:
    """Render a product cut-out as an RGBA image (size x size pixels) with a transparent background.

    colour: the body colour (RGB 0-255); by default a seeded pick from PRODUCT_COLOURS. The product stands on the
    bottom edge of the image, centred, so it can be placed on a floor line.
    """
    _check_choice("product", kind, PRODUCTS)
    if not isinstance(size, int) or not 8 <= size <= 4096:
        raise InputError(f"product size must be an int between 8 and 4096 pixels, got {size!r}")
    rng = _rng(seed, "product", kind)
    body = tuple(PRODUCT_COLOURS[rng.integers(len(PRODUCT_COLOURS))]) if colour is None else tuple(colour)
    accent = tuple(int(c * 0.55) for c in body)
    s = size * 4  # draw large, then downsample for anti-aliased edges
    alpha = Image.new("L", (s, s), 0)
    paint = Image.new("RGB", (s, s), body)
    a, p = ImageDraw.Draw(alpha), ImageDraw.Draw(paint)
    shading = "cylinder"
    if kind == "bottle":
        w = s * rng.uniform(0.26, 0.34)
        x0, x1 = s / 2 - w / 2, s / 2 + w / 2
        a.rounded_rectangle([x0, s * 0.35, x1, s - 1], radius=w * 0.25, fill=255)
        a.polygon([(x0 + w * 0.05, s * 0.42), (s / 2 - w * 0.16, s * 0.2), (s / 2 + w * 0.16, s * 0.2),
                   (x1 - w * 0.05, s * 0.42)], fill=255)
        a.rectangle([s / 2 - w * 0.16, s * 0.06, s / 2 + w * 0.16, s * 0.22], fill=255)
        p.rectangle([s / 2 - w * 0.17, s * 0.05, s / 2 + w * 0.17, s * 0.13], fill=accent)
        p.rectangle([x0, s * 0.55, x1, s * 0.78], fill=tuple(min(255, c + 35) for c in body))
    elif kind == "box":
        shading = "box"
        w, h = s * rng.uniform(0.5, 0.7), s * rng.uniform(0.45, 0.65)
        a.rectangle([s / 2 - w / 2, s - h, s / 2 + w / 2, s - 1], fill=255)
        p.rectangle([s / 2 - w / 2, s - h, s / 2 + w / 2, s - h + s * 0.06], fill=tuple(min(255, c + 40) for c in body))
        p.rectangle([s / 2 - w * 0.2, s - h * 0.6, s / 2 + w * 0.1, s - h * 0.4], fill=accent)
    elif kind == "shoe":
        h = s * rng.uniform(0.32, 0.42)
        a.polygon([(s * 0.08, s - s * 0.12), (s * 0.12, s - h * 0.75), (s * 0.4, s - h * 0.7), (s * 0.55, s - h),
                   (s * 0.78, s - h), (s * 0.8, s - h * 0.45), (s * 0.94, s - s * 0.14), (s * 0.94, s - 1),
                   (s * 0.08, s - 1)], fill=255)
        p.rectangle([0, s - s * 0.08, s, s], fill=(235, 232, 225))  # the sole
        p.line([(s * 0.45, s - h * 0.65), (s * 0.7, s - h * 0.85)], fill=accent, width=max(1, s // 60))
    elif kind == "mug":
        w, h = s * rng.uniform(0.45, 0.55), s * rng.uniform(0.45, 0.55)
        x0 = s / 2 - w / 2 - s * 0.06
        a.rounded_rectangle([x0, s - h, x0 + w, s - 1], radius=w * 0.08, fill=255)
        a.ellipse([x0 + w - s * 0.04, s - h * 0.8, x0 + w + s * 0.2, s - h * 0.25], fill=255)
        a.ellipse([x0 + w + s * 0.03, s - h * 0.68, x0 + w + s * 0.12, s - h * 0.37], fill=0)
        p.rectangle([x0, s - h, x0 + w, s - h + s * 0.03], fill=accent)
    elif kind == "bag":
        w, h = s * rng.uniform(0.55, 0.7), s * rng.uniform(0.45, 0.55)
        a.polygon([(s / 2 - w * 0.42, s - h), (s / 2 + w * 0.42, s - h), (s / 2 + w / 2, s - 1),
                   (s / 2 - w / 2, s - 1)], fill=255)
        a.arc([s / 2 - w * 0.25, s - h - s * 0.22, s / 2 + w * 0.25, s - h + s * 0.2], 180, 360, fill=255,
              width=max(2, s // 30))
        p.rectangle([s / 2 - w * 0.42, s - h * 0.62, s / 2 + w * 0.42, s - h * 0.55], fill=accent)
    rgb = np.asarray(paint, np.float32) * _shade(s, s, shading)[..., None]
    paint = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    product = paint.resize((size, size), Image.LANCZOS)
    product.putalpha(alpha.resize((size, size), Image.LANCZOS))
    return product


def caption_for(attributes: dict, template: int = 0) -> str:
    """The caption of a scene: CAPTION_TEMPLATES[template] filled with the attributes' words."""
    return CAPTION_TEMPLATES[template % len(CAPTION_TEMPLATES)].format(**attributes)


def render_scene(
    colour: str,
    material: str = "plain",
    lighting: str = "soft",
    layout: str = "studio",
    product: str = "bottle",
    size: int | tuple[int, int] = 512,
    seed: int = 0,
    product_colour: tuple[int, int, int] | None = None,
    template: int | None = None,
) -> Scene:
    """Render a product shot: a product standing on a backdrop, as a Scene with its caption and product mask.

    The product is centred (seeded jitter of a few per cent), stands on the floor line at about 85 % of the height
    and fills about half of the height, with a soft contact shadow. template: caption template (None: seeded).
    """
    _check_choice("product", product, PRODUCTS)
    width, height = _size_pair(size)
    rng = _rng(seed, "placement")
    backdrop = render_backdrop(colour, material, lighting, layout, (width, height), seed)
    side = max(8, int(round(min(width, height) * rng.uniform(0.45, 0.58))))
    cut_out = render_product(product, seed, side, product_colour)
    left = int(round(width / 2 - side / 2 + rng.uniform(-0.06, 0.06) * width))
    top = int(round(height * 0.86)) - side
    # The contact shadow belongs to the background: it darkens the backdrop, not the product.
    shadow = Image.new("L", (width, height), 0)
    ImageDraw.Draw(shadow).ellipse(
        [left + side * 0.1, top + side * 0.93, left + side * 0.9, top + side * 1.05], fill=110)
    shadow = shadow.filter(ImageFilter.GaussianBlur(max(1.0, side * 0.04)))
    shaded = np.asarray(backdrop, np.float32) * (1 - np.asarray(shadow, np.float32)[..., None] / 255 * 0.6)
    backdrop_with_shadow = Image.fromarray(np.clip(np.rint(shaded), 0, 255).astype(np.uint8), "RGB")
    image = backdrop_with_shadow.copy()
    image.paste(cut_out, (left, top), cut_out)
    mask = Image.new("L", (width, height), 0)
    mask.paste(cut_out.getchannel("A").point(lambda value: 255 if value >= 128 else 0), (left, top))
    attributes = {"colour": colour, "material": material, "lighting": lighting, "layout": layout,
                  "product": product, "seed": int(seed)}
    chosen = int(rng.integers(len(CAPTION_TEMPLATES))) if template is None else template
    return Scene(image, backdrop_with_shadow, mask, caption_for(attributes, chosen), attributes)


def sample_attributes(rng: np.random.Generator, exclude: set[tuple[str, str]] = frozenset()) -> dict:
    """Draw colour, material, lighting, layout and product uniformly; skip (colour, material) pairs in `exclude`."""
    while True:
        attributes = {
            "colour": str(rng.choice(list(COLOURS))),
            "material": str(rng.choice(MATERIALS)),
            "lighting": str(rng.choice(LIGHTING)),
            "layout": str(rng.choice(LAYOUTS)),
            "product": str(rng.choice(PRODUCTS)),
        }
        if (attributes["colour"], attributes["material"]) not in exclude:
            return attributes


def sample_scenes(
    n: int,
    seed: int = 0,
    size: int | tuple[int, int] = 512,
    exclude: set[tuple[str, str]] = frozenset(),
) -> list[Scene]:
    """`n` random scenes (uniform attributes, seeded); the demo catalogue and a training-data source."""
    if n < 0:
        raise InputError(f"n must be >= 0 scenes, got {n}")
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n):
        attributes = sample_attributes(rng, exclude)
        scenes.append(render_scene(size=size, seed=int(rng.integers(2**31)), **attributes))
    return scenes


def outpaint_mask(size: int | tuple[int, int], keep: tuple[float, float, float, float]) -> Image.Image:
    """The outpainting mask of a canvas (`size`): 255 outside `keep`, 0 inside.

    keep: the kept frame as fractions (left, top, right, bottom) of the canvas, e.g. (0.25, 0.0, 0.75, 1.0).
    """
    width, height = _size_pair(size)
    left, top, right, bottom = keep
    if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
        raise InputError(f"keep must be fractions 0 <= left < right <= 1 and 0 <= top < bottom <= 1, got {keep}")
    mask = Image.new("L", (width, height), 255)
    ImageDraw.Draw(mask).rectangle(
        [round(left * width), round(top * height), round(right * width) - 1, round(bottom * height) - 1], fill=0)
    return mask

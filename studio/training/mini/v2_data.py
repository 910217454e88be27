"""studio-mini v2 training data, drawn on the fly: renderer products and procedural cut-outs at 5-70 % of the frame,
anywhere, with or without a contact shadow, in four aspect-ratio buckets; and outpainting bands over rendered scenes.

Every example is a pure function of its seed. Product seeds stay below ``GATE_SEED_BASE``, where the gate's begin, so
no gate product instance is ever a training one. Real photos never enter training: this module reads no files.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from studio.sim.renderer import render_backdrop, render_product, sample_attributes
from studio.training.mini.recipe import HELD_OUT_PAIRS
from studio.training.mini.v2_captions import TRAIN_PRODUCT_NOUNS, training_caption

ASPECTS: dict[str, tuple[int, int]] = {"1:1": (1, 1), "4:5": (4, 5), "16:9": (16, 9), "9:16": (9, 16)}
# Share of batches per bucket: square is what most campaigns ask for.
ASPECT_SHARES: dict[str, float] = {"1:1": 0.4, "4:5": 0.2, "16:9": 0.2, "9:16": 0.2}
KIND_SHARES: dict[str, float] = {"renderer": 0.35, "procedural": 0.35, "outpaint": 0.3}
SCALE_RANGE = (0.05, 0.70)  # cut-out side / the frame's shorter side
GATE_SEED_BASE = 2**30  # training seeds are drawn below it, the gate's start at it


def aspect_buckets(side: int) -> dict[str, tuple[int, int]]:
    """(width, height) per aspect ratio at about side x side pixels, each a multiple of 8 (the pipeline's rule)."""
    buckets = {}
    for name, (w, h) in ASPECTS.items():
        ratio = w / h
        buckets[name] = (max(8, round(side * ratio ** 0.5 / 8) * 8), max(8, round(side / ratio ** 0.5 / 8) * 8))
    return buckets


def procedural_cutout(rng: np.random.Generator, side: int) -> Image.Image:
    """A random RGBA cut-out (side x side): one to three shapes (ellipse, rounded box, polygon, star) filled with a
    random colour and texture (flat, stripes, checks, noise, gradient, dots)."""
    s = side * 2  # drawn at 2x, then downsampled for anti-aliased edges
    alpha = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(alpha)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0.3, 0.7, size=2) * s
        rx, ry = rng.uniform(0.15, 0.48, size=2) * s
        box = [cx - rx, cy - ry, cx + rx, cy + ry]
        shape = int(rng.integers(4))
        if shape == 0:
            draw.ellipse(box, fill=255)
        elif shape == 1:
            draw.rounded_rectangle(box, radius=float(min(rx, ry) * rng.uniform(0, 0.6)), fill=255)
        else:
            points = int(rng.integers(3, 9)) * (2 if shape == 3 else 1)
            angles = np.sort(rng.uniform(0, 2 * np.pi, points)) if shape == 2 else np.linspace(0, 2 * np.pi, points,
                                                                                                    endpoint=False)
            radius = np.where(np.arange(points) % 2 == 1, 0.45, 1.0) if shape == 3 else rng.uniform(0.6, 1.0, points)
            draw.polygon([(cx + rx * r * np.cos(a), cy + ry * r * np.sin(a)) for a, r in zip(angles, radius)],
                         fill=255)
    colours = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    v, u = np.mgrid[0:side, 0:side].astype(np.float32) / side
    pattern = int(rng.integers(6))
    frequency = rng.uniform(3, 12)
    if pattern == 0:
        weight = np.zeros_like(u)
    elif pattern == 1:
        angle = rng.uniform(0, np.pi)
        weight = (np.sin((u * np.cos(angle) + v * np.sin(angle)) * frequency * np.pi) > 0).astype(np.float32)
    elif pattern == 2:
        weight = ((np.floor(u * frequency) + np.floor(v * frequency)) % 2).astype(np.float32)
    elif pattern == 3:
        cells = int(rng.integers(3, 9))
        coarse = Image.fromarray((rng.uniform(size=(cells, cells)) * 255).astype(np.uint8))
        weight = np.asarray(coarse.resize((side, side), Image.BICUBIC), np.float32) / 255
    elif pattern == 4:
        weight = np.clip(u * rng.uniform(-1, 1) + v * rng.uniform(-1, 1) + 0.5, 0, 1)
    else:
        weight = ((np.hypot((u * frequency) % 1 - 0.5, (v * frequency) % 1 - 0.5)) < 0.25).astype(np.float32)
    shade = 0.8 + 0.3 * (1 - u)[..., None]  # light from the left, as the renderer's products
    pixels = (colours[0] * (1 - weight[..., None]) + colours[1] * weight[..., None]) * shade
    cutout = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    cutout.putalpha(alpha.resize((side, side), Image.LANCZOS))
    return cutout


def place_cutout(backdrop: Image.Image, cutout: Image.Image, rng: np.random.Generator, scale: float,
                 shadow: bool) -> tuple[Image.Image, np.ndarray]:
    """Paste an RGBA cut-out scaled to `scale` x the frame's shorter side at a random position (wholly inside the
    frame), with an optional soft contact shadow under it. Returns (RGB image, product mask (H, W) bool)."""
    width, height = backdrop.size
    side = max(4, round(min(width, height) * scale))
    if cutout.size != (side, side):
        cutout = cutout.resize((side, side), Image.LANCZOS)
    alpha = np.asarray(cutout.getchannel("A"))
    rows = np.nonzero(alpha.max(1) >= 128)[0]
    bottom = int(rows[-1]) if len(rows) else side - 1  # the shadow sits under the lowest opaque row
    left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    image = backdrop
    if shadow:
        layer = Image.new("L", (width, height), 0)
        ImageDraw.Draw(layer).ellipse([left + side * 0.1, top + bottom - side * 0.06, left + side * 0.9,
                                       top + bottom + side * 0.06], fill=int(rng.integers(70, 140)))
        layer = layer.filter(ImageFilter.GaussianBlur(max(1.0, side * 0.04)))
        shaded = np.asarray(backdrop, np.float32) * (1 - np.asarray(layer, np.float32)[..., None] / 255 * 0.6)
        image = Image.fromarray(np.clip(np.rint(shaded), 0, 255).astype(np.uint8), "RGB")
    else:
        image = backdrop.copy()
    image.paste(cutout, (left, top), cutout)
    mask = np.zeros((height, width), bool)
    mask[top:top + side, left:left + side] = alpha >= 128
    return image, mask


def band_mask(width: int, height: int, rng: np.random.Generator, sides: int | None = None) -> np.ndarray:
    """An outpainting mask (H, W) bool, True = repaint: bands of 10-45 % of the frame on 1-4 random sides."""
    sides = int(rng.integers(1, 5)) if sides is None else sides
    mask = np.zeros((height, width), bool)
    for edge in rng.choice(4, size=sides, replace=False):
        share = rng.uniform(0.10, 0.45)
        if edge == 0:
            mask[:, :max(1, int(width * share))] = True
        elif edge == 1:
            mask[:, width - max(1, int(width * share)):] = True
        elif edge == 2:
            mask[:max(1, int(height * share))] = True
        else:
            mask[height - max(1, int(height * share)):] = True
    return mask


def sample_example(rng: np.random.Generator, width: int, height: int, kind: str | None = None,
                   caption_dropout: float = 0.1) -> dict:
    """One training example: image (H, W, 3) uint8, mask (H, W) bool (True = repaint), caption, kind and the
    scene's attributes. kind: "renderer", "procedural" or "outpaint" (None: drawn by KIND_SHARES)."""
    if kind is None:
        kinds = list(KIND_SHARES)
        kind = kinds[int(rng.choice(len(kinds), p=np.array(list(KIND_SHARES.values()))))]
    attributes = sample_attributes(rng, set(HELD_OUT_PAIRS))
    product_seed = int(rng.integers(GATE_SEED_BASE))
    backdrop = render_backdrop(attributes["colour"], attributes["material"], attributes["lighting"],
                               attributes["layout"], (width, height), product_seed)
    procedural = kind == "procedural" or (kind == "outpaint" and rng.uniform() < 0.5)
    scale = float(rng.uniform(*SCALE_RANGE))
    side = max(4, round(min(width, height) * scale))  # drawn at its final size: no resampling, and fast
    cutout = (procedural_cutout(rng, side) if procedural
              else render_product(attributes["product"], product_seed, max(8, side)))
    image, product = place_cutout(backdrop, cutout, rng, scale, shadow=bool(rng.uniform() < 0.5))
    mask = band_mask(width, height, rng) if kind == "outpaint" else ~product
    noun = (TRAIN_PRODUCT_NOUNS[int(rng.integers(len(TRAIN_PRODUCT_NOUNS)))] if procedural
            else attributes["product"])
    caption = training_caption(attributes, noun, rng, caption_dropout)
    return {"image": np.asarray(image), "mask": mask, "caption": caption, "kind": kind,
            "attributes": {**attributes, "seed": product_seed, "scale": scale}}


def _draw(shares: dict[str, float], rng: np.random.Generator) -> str:
    names = list(shares)
    weights = np.array(list(shares.values()))
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


class V2Batches(torch.utils.data.IterableDataset):
    """An endless, seeded stream of whole batches (one aspect bucket per batch), for a torch DataLoader with
    batch_size=None and any number of workers: batch i of worker w is a pure function of (seed, w, i).

    Each batch: pixels (B, 3, H, W) float32 in [-1, 1], masks (B, 1, H, W) float32 (1 = repaint), captions, bucket.
    """

    def __init__(self, side: int, batch_size: int, seed: int = 0, caption_dropout: float = 0.1, tokenizer=None):
        super().__init__()
        self.side, self.batch_size, self.seed, self.caption_dropout = side, batch_size, seed, caption_dropout
        self.tokenizer = tokenizer  # when given, batches also carry input_ids (tokenised in the worker)
        self.buckets = aspect_buckets(side)

    def batch(self, worker: int, index: int) -> dict:
        rng = np.random.default_rng([self.seed, worker, index])
        bucket = _draw(ASPECT_SHARES, rng)
        width, height = self.buckets[bucket]
        examples = [sample_example(rng, width, height, caption_dropout=self.caption_dropout)
                    for _ in range(self.batch_size)]
        images = np.stack([example["image"] for example in examples])
        masks = np.stack([example["mask"] for example in examples])
        captions = [example["caption"] for example in examples]
        batch = {"pixels": torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1,
                 "masks": torch.from_numpy(masks[:, None].astype(np.float32)), "captions": captions, "bucket": bucket}
        if self.tokenizer is not None:
            batch["input_ids"] = self.tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt",
                                                max_length=self.tokenizer.model_max_length).input_ids
        return batch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        index = 0
        while True:
            yield self.batch(worker, index)
            index += 1


def batch_stream(side: int, batch_size: int, seed: int, workers: int, caption_dropout: float = 0.1, tokenizer=None):
    """A torch DataLoader over V2Batches (`workers` processes; 0 = in this process)."""
    extra = {"persistent_workers": True, "prefetch_factor": 4} if workers > 0 else {}
    return torch.utils.data.DataLoader(V2Batches(side, batch_size, seed, caption_dropout, tokenizer), batch_size=None,
                                       num_workers=workers, pin_memory=torch.cuda.is_available(), **extra)

"""Brief -> prompt training pairs in the scene vocabulary, drawn from an interest -> scene prior.

The prior says which backdrops suit which interests (eco -> green wood, soft light; luxury -> black marble, dramatic
light; beach -> teal or blue, bright light, horizon). It is the embedded prompt model's teacher: `studio prompts
train` samples pairs from it and the LM learns to propose scenes like them, with variety. Prompts describe the
background only; the product is never named with a colour, so the generator is never asked to repaint it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prompts.brief import Audience, Brief, BrandRules, Placement, Product
from studio.core.vocabulary import CATEGORIES, COLOURS, INTEREST_TAGS, PRODUCTS


@dataclass(frozen=True)
class ScenePrior:
    """The backdrops an interest likes: each tuple is ordered from most to least preferred."""

    colours: tuple[str, ...]
    materials: tuple[str, ...]
    lighting: tuple[str, ...]
    layouts: tuple[str, ...]
    moods: tuple[str, ...]


INTEREST_SCENES: dict[str, ScenePrior] = {
    "outdoors": ScenePrior(("green", "brown", "blue"), ("wood", "plain"), ("bright", "soft"), ("horizon",),
                           ("forest", "trail", "fresh")),
    "luxury": ScenePrior(("black", "white", "purple"), ("marble",), ("dramatic",), ("studio",),
                         ("elegant", "opulent", "refined")),
    "tech": ScenePrior(("blue", "grey", "black"), ("plain", "stripes"), ("dramatic", "bright"), ("studio",),
                       ("futuristic", "sleek", "modern")),
    "fitness": ScenePrior(("orange", "red", "yellow"), ("plain", "stripes"), ("bright",), ("horizon", "studio"),
                          ("energetic", "dynamic", "bold")),
    "home": ScenePrior(("brown", "white", "yellow"), ("wood", "fabric"), ("soft",), ("tabletop",),
                       ("cosy", "warm", "homely")),
    "travel": ScenePrior(("blue", "teal", "orange"), ("plain", "bokeh"), ("bright",), ("horizon",),
                         ("sunset", "adventurous", "wanderlust")),
    "eco": ScenePrior(("green", "brown"), ("wood", "fabric"), ("soft",), ("tabletop",),
                      ("natural", "leafy", "organic")),
    "fashion": ScenePrior(("pink", "purple", "black"), ("fabric", "stripes"), ("dramatic", "soft"), ("studio",),
                          ("stylish", "editorial", "chic")),
    "coffee": ScenePrior(("brown", "black", "orange"), ("wood",), ("soft",), ("tabletop",),
                         ("cafe", "morning", "roasted")),
    "beach": ScenePrior(("teal", "blue", "yellow"), ("plain", "bokeh"), ("bright",), ("horizon",),
                        ("sunny", "seaside", "summery")),
    "nightlife": ScenePrior(("purple", "pink", "black"), ("bokeh",), ("dramatic",), ("studio",),
                            ("neon", "evening", "vibrant")),
    "minimal": ScenePrior(("white", "grey"), ("plain",), ("soft",), ("studio",),
                          ("clean", "simple", "airy")),
}

# Brand tones the embedded model understands, and the lighting each one pulls towards.
TONE_LIGHTING: dict[str, str] = {
    "neutral": "", "calm": "soft", "playful": "bright", "premium": "dramatic", "bold": "dramatic", "natural": "soft",
}
TONES: tuple[str, ...] = tuple(TONE_LIGHTING)

# Placement shapes (from the aspect ratio) and the layout each one pulls towards.
SHAPE_LAYOUT: dict[str, str] = {"square": "", "portrait": "studio", "landscape": "horizon"}
SHAPES: tuple[str, ...] = tuple(SHAPE_LAYOUT)

# Words the positive prompts are built from besides the vocabulary (the tokenizer must know all of them).
PROMPT_WORDS: tuple[str, ...] = (
    "backdrop", "background", "lighting", "light", "scene", "setting", "mood", "and", "with", "a", "an", "in",
    "professional", "product", "photo", "photography", "commercial", "shot", "high", "quality", "detailed",
)
# The negative prompt: always these, plus a tone-specific extra.
BASE_NEGATIVE: tuple[str, ...] = ("blurry", "text", "watermark", "logo", "distorted", "lowres")
TONE_NEGATIVE: dict[str, tuple[str, ...]] = {
    "neutral": ("clutter",), "calm": ("harsh", "clutter"), "playful": ("dull", "gloomy"),
    "premium": ("cheap", "clutter"), "bold": ("dull", "washed"), "natural": ("plastic", "artificial"),
}
PROMPT_TEMPLATES: tuple[str, ...] = (
    "{colour} {material} backdrop, {lighting} lighting, {layout} scene, {mood} mood",
    "{layout} setting with a {colour} {material} background, {lighting} light, {mood} and {mood2}",
    "{mood} {colour} {material} backdrop, {lighting} lighting, {layout} scene, professional product photo",
    "{colour} {material} background, {layout} shot, {lighting} light, {mood} {mood2} mood, high quality",
)


def negative_prompt(tone: str) -> str:
    """The negative prompt the prior writes for a brand tone."""
    return ", ".join(BASE_NEGATIVE + TONE_NEGATIVE[tone])


def known_tone(brief: Brief) -> str:
    """The brief's tone if the prior knows it, else "neutral"."""
    return brief.brand.tone if brief.brand.tone in TONES else "neutral"


def all_mood_words() -> tuple[str, ...]:
    """Every mood word in the prior, in a stable order."""
    return tuple(dict.fromkeys(word for prior in INTEREST_SCENES.values() for word in prior.moods))


def _pick(rng: np.random.Generator, options: tuple[str, ...], decay: float = 0.55) -> str:
    """Pick from an ordered tuple, preferring its head: weight decay**rank."""
    weights = decay ** np.arange(len(options))
    return options[int(rng.choice(len(options), p=weights / weights.sum()))]


def sample_brief(rng: np.random.Generator) -> Brief:
    """A random brief over the vocabulary: 1-3 interest tags, a product kind, maybe a product colour, tone, aspect."""
    n_tags = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
    tags = tuple(str(tag) for tag in rng.choice(INTEREST_TAGS, size=n_tags, replace=False))
    kind = str(rng.choice(PRODUCTS))
    attributes = {"colour": str(rng.choice(list(COLOURS)))} if rng.random() < 0.4 else {}
    aspect = str(rng.choice(["1:1", "4:5", "9:16", "16:9", "1.91:1"]))
    return Brief(
        audience=Audience(summary=f"people into {', '.join(tags)}", top_tags=tags),
        product=Product(title=kind, category=CATEGORIES[kind], attributes=attributes),
        brand=BrandRules(tone=str(rng.choice(TONES))),
        placement=Placement(aspect_ratio=aspect),
    )


def sample_prompt(brief: Brief, rng: np.random.Generator) -> tuple[str, str]:
    """One (positive, negative) scene prompt for `brief` drawn from the interest -> scene prior.

    The first known tag is the group's strongest interest, so it themes most prompts; a backdrop never takes the
    product's own colour (the product must stand out); tone and placement shape nudge lighting and layout.
    """
    tags = brief.audience.known_tags() or ("minimal",)
    theme = INTEREST_SCENES[_pick(rng, tags, decay=0.45)]
    accent = INTEREST_SCENES[str(rng.choice(tags))]  # a second interest can lend a material or a mood
    product_colour = brief.product.colour()
    colours = tuple(c for c in theme.colours if c != product_colour) or tuple(c for c in COLOURS if c != product_colour)
    colour = _pick(rng, colours)
    material = _pick(rng, theme.materials if rng.random() < 0.8 else accent.materials)
    tone = known_tone(brief)
    lighting = TONE_LIGHTING[tone] if TONE_LIGHTING[tone] and rng.random() < 0.5 else _pick(rng, theme.lighting)
    shape_layout = SHAPE_LAYOUT[brief.placement.shape()]
    layout = shape_layout if shape_layout and rng.random() < 0.5 else _pick(rng, theme.layouts)
    mood = _pick(rng, theme.moods, decay=0.8)
    mood2 = _pick(rng, tuple(m for m in theme.moods + accent.moods if m != mood), decay=0.8)
    template = PROMPT_TEMPLATES[int(rng.integers(len(PROMPT_TEMPLATES)))]
    positive = template.format(colour=colour, material=material, lighting=lighting, layout=layout,
                               mood=mood, mood2=mood2)
    return positive, negative_prompt(tone)


def make_pairs(n: int, seed: int = 0) -> list[tuple[Brief, str, str]]:
    """`n` (brief, positive, negative) training pairs, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        brief = sample_brief(rng)
        pairs.append((brief, *sample_prompt(brief, rng)))
    return pairs


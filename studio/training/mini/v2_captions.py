"""studio-mini v2 captions: prompts as marketers write them, mixing the scene vocabulary with words the renderer
does not know (fillers, articles, scene nouns, adjectives), so unknown words stop derailing the scene.

The training word pools here and the gate's pools (``v2_gate``) are disjoint by construction (a test checks it): the
gate's natural sentences and synonyms use only words no training caption ever holds.
"""

from __future__ import annotations

import numpy as np

from studio.core.vocabulary import COLOURS, LAYOUTS, LIGHTING, MATERIALS
from studio.sim.renderer import CAPTION_TEMPLATES
from studio.training.mini.recipe import null_captions, prompt_style_caption

# Words the renderer never draws; training captions sprinkle them around the vocabulary words.
TRAIN_PRODUCT_NOUNS: tuple[str, ...] = (
    "bottle", "box", "shoe", "mug", "bag", "jar", "candle", "perfume", "watch", "sneaker", "lamp", "vase", "cup",
    "can", "tube", "package", "headphones", "phone", "serum", "lotion", "backpack", "wallet", "speaker", "product",
    "item", "flask", "tin", "pouch", "bowl", "plant",
)
# Scene nouns by the layout they describe, so a caption never calls a table edge a "backdrop": a prompt that names
# a backdrop asks for the seamless sweep (the `studio` layout), one that names a table for the `tabletop` layout.
LAYOUT_SCENE_NOUNS: dict[str, tuple[str, ...]] = {
    "studio": ("backdrop", "background", "wall", "set", "space", "stage"),
    "tabletop": ("table", "counter", "shelf", "desk", "surface", "podium", "platform", "display", "countertop"),
    "horizon": ("floor", "room", "setting", "corner"),
}
TRAIN_SCENE_NOUNS: tuple[str, ...] = tuple(noun for nouns in LAYOUT_SCENE_NOUNS.values() for noun in nouns)
# ("scene" is not one: the sentences say "{layout} scene" for every layout)
TRAIN_ADJECTIVES: tuple[str, ...] = (
    "elegant", "modern", "clean", "cozy", "minimalist", "luxurious", "simple", "premium", "stylish", "fresh", "calm",
    "bold", "warm", "cool", "rustic", "sleek", "classic", "vibrant", "gentle", "natural", "beautiful", "crisp",
)
TRAIN_FILLERS: tuple[str, ...] = (
    "product photo of", "photo of", "an image of", "advert showing", "commercial shot of", "hero image of",
    "ecommerce picture of", "catalog photo of", "shot of", "please show", "high quality", "4k", "professional",
    "for our new campaign", "for instagram", "best seller", "limited edition", "new arrival", "award winning",
    "highly detailed", "sharp focus", "centered", "trending",
)
# Natural sentence shapes: {p} product noun, {c} colour, {m} material, {l} lighting, {y} layout, {n} scene noun,
# {a}/{b} adjectives, {f} filler phrase.
TRAIN_SENTENCES: tuple[str, ...] = (
    "{f} a {a} {p} on a {c} {m} {n}, {l} light",
    "a {p} standing on a {a} {c} {m} {n} with {l} lighting",
    "{c} {m} {n}, {a} {y} setup, {l} light, {f}",
    "our {p} on a {c} {m} {n} in a {b} {y} scene with {l} light",
    "{f} {p}, {c} {m}, {l}, {a}",
    "the {a} {p} placed on {c} {m} in {l} light, {b} mood",
    "show the {p} on a {c} {m} {n} with {a} {l} light, {f}",
    "{c} {m} {n} behind a {p}, {y}, {l} lighting, {b} and {a}",
    "a {b} {c} {n} made of {m}, {l} light, {y} shot",
)
# Caption styles and their shares: the renderer's grammar, the prompt model's style, natural sentences, and
# terse keyword prompts (the README's "a teal marble table, soft light" kind).
STYLE_SHARES: dict[str, float] = {"grammar": 0.15, "prompt_model": 0.2, "sentence": 0.45, "terse": 0.2}


def scene_noun(layout: str, rng: np.random.Generator) -> str:
    """A scene noun that describes `layout`."""
    nouns = LAYOUT_SCENE_NOUNS[layout]
    return nouns[int(rng.integers(len(nouns)))]


def terse_caption(attributes: dict, rng: np.random.Generator) -> str:
    """A short keyword prompt: colour and material, sometimes with a scene noun and the lighting."""
    parts = [f"{attributes['colour']} {attributes['material']}"]
    if rng.uniform() < 0.5:
        parts[0] = f"a {parts[0]} {scene_noun(attributes['layout'], rng)}"
    if rng.uniform() < 0.6:
        parts.append(f"{attributes['lighting']} light")
    return ", ".join(parts)


def sentence_caption(attributes: dict, product_noun: str, rng: np.random.Generator) -> str:
    """A marketer's sentence over the attributes, with training-pool filler words."""
    pick = lambda pool: pool[int(rng.integers(len(pool)))]
    template = pick(TRAIN_SENTENCES)
    adjective, adjective2 = (str(word) for word in rng.choice(TRAIN_ADJECTIVES, size=2, replace=False))
    text = template.format(p=product_noun, c=attributes["colour"], m=attributes["material"],
                           l=attributes["lighting"], y=attributes["layout"], n=scene_noun(attributes["layout"], rng),
                           a=adjective, b=adjective2, f=pick(TRAIN_FILLERS))
    return text.strip(" ,")


def training_caption(attributes: dict, product_noun: str, rng: np.random.Generator, dropout: float = 0.1) -> str:
    """A training caption for a scene's attributes in a random style; a `dropout` share becomes a null caption ("" or
    a negative prompt), which classifier-free guidance reads as "no condition"."""
    if rng.uniform() < dropout:
        nulls = null_captions()
        return nulls[int(rng.integers(len(nulls)))]
    styles, shares = list(STYLE_SHARES), np.array(list(STYLE_SHARES.values()))
    style = styles[int(rng.choice(len(styles), p=shares / shares.sum()))]
    if style == "grammar":
        fields = {**attributes, "product": product_noun}
        return CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))].format(**fields)
    if style == "prompt_model":
        return prompt_style_caption(attributes, rng)
    if style == "terse":
        return terse_caption(attributes, rng)
    return sentence_caption(attributes, product_noun, rng)


def training_words() -> set[str]:
    """Every lower-case word a v2 training caption can hold (for the gate's disjointness check)."""
    from prompts.data import BASE_NEGATIVE, PROMPT_TEMPLATES, PROMPT_WORDS, TONE_NEGATIVE, all_mood_words

    text = " ".join([
        *TRAIN_PRODUCT_NOUNS, *TRAIN_SCENE_NOUNS, *TRAIN_ADJECTIVES, *TRAIN_FILLERS, *TRAIN_SENTENCES,
        *CAPTION_TEMPLATES, *PROMPT_TEMPLATES, *PROMPT_WORDS, *all_mood_words(), *BASE_NEGATIVE,
        *(word for extra in TONE_NEGATIVE.values() for word in extra), *null_captions(),
        *COLOURS, *MATERIALS, *LIGHTING, *LAYOUTS, "light", "lighting",
    ])
    for mark in ",.{}!:;()":
        text = text.replace(mark, " ")
    return {word.lower() for word in text.split()}

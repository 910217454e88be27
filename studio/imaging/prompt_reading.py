"""What a closed-vocabulary model reads of a prompt (studio-mini).

studio-mini learned about a hundred words. A word it never saw reaches its text encoder as character pieces, which
derail the scene: "a teal marble table in a bright kitchen" paints noise, because "table" and "kitchen" arrive as
"tabl e" and "k i t che n". A model whose ``studio.json`` says ``"vocabulary": "closed"`` therefore reads each word
of a prompt as follows:

- a word its tokenizer holds whole is kept;
- a colour name of the xkcd colour survey (matplotlib's ``XKCD_COLORS``: 949 names people gave colours, e.g.
  "crimson", "navy", "mustard") becomes the vocabulary colour nearest to it in CIELAB, unless the prompt already
  names a vocabulary colour (an explicit colour wins; other colour names are then left out) or an earlier colour
  name was mapped ("crimson velvet" is red, not red and purple: the first colour name wins);
- any other word is left out.

A model whose words are open but whose colours are closed (``"vocabulary": "closed-colours"``: studio-mini v2, which
reads any word through CLIP's BPE but learned colours only from the vocabulary's names) keeps every word and maps
only the first colour name, by the same rule: ``read_colours``.

The reading goes into each creative's recipe (`prompt_read`, `prompt_replaced`, `prompt_dropped`), so a marketer
sees what the model was told.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from studio.core.vocabulary import COLOURS

_TOKEN = re.compile(r"[A-Za-z]+|[0-9]+|[^\sA-Za-z0-9]")
_PUNCTUATION_GAP = re.compile(r"\s+([,.;:!?])")
# xkcd names that are shades or qualities, not hues: "dark" is not a colour a backdrop can be painted.
_NOT_HUES = frozenset({"dark", "pale", "bland", "drab"})


@dataclass(frozen=True)
class PromptReading:
    """A prompt as typed, the text the model reads, and what changed on the way."""

    prompt: str
    text: str
    replaced: dict[str, str] = field(default_factory=dict)  # colour name -> vocabulary colour
    dropped: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return self.text != self.prompt

    def record(self) -> dict:
        """The recipe's fields (empty when the model reads the prompt as typed)."""
        if not self.changed:
            return {}
        return {"prompt_read": self.text, "prompt_replaced": dict(self.replaced), "prompt_dropped": list(self.dropped)}


def read_prompt(prompt: str, knows: Callable[[str], bool], keep_unknown: bool = False) -> PromptReading:
    """Read `prompt` for a model that knows a word when `knows(word)` (see the module docstring); `keep_unknown`
    keeps the words it neither knows nor maps instead of leaving them out."""
    tokens = _TOKEN.findall(prompt)
    names_a_colour = any(token.lower() in COLOURS and knows(token) for token in tokens)
    kept, replaced, dropped = [], {}, []
    for token in tokens:
        if knows(token):
            kept.append(token)
            continue
        colour = None if names_a_colour or replaced else colour_word(token)
        if colour is not None and knows(colour):
            kept.append(colour)
            replaced[token] = colour
        elif keep_unknown:
            kept.append(token)
        else:
            dropped.append(token)
    text = _PUNCTUATION_GAP.sub(r"\1", " ".join(kept)).strip()
    if not replaced and not dropped:
        text = prompt  # read as typed, spacing included
    return PromptReading(prompt, text, replaced, tuple(dropped))


def read_colours(prompt: str) -> PromptReading:
    """Read `prompt` for a model with closed colours and open words: only the first colour name changes, and only
    when the prompt names no vocabulary colour (see the module docstring)."""
    return read_prompt(prompt, lambda word: colour_word(word) is None, keep_unknown=True)


def colour_word(word: str) -> str | None:
    """The vocabulary colour nearest (CIELAB) to the xkcd colour named `word`, or None if it names no colour."""
    return _colour_names().get(word.lower())


@functools.lru_cache(maxsize=1)
def _colour_names() -> dict[str, str]:
    from matplotlib.colors import XKCD_COLORS, to_rgb

    names = list(COLOURS)
    palette = _lab(np.array([COLOURS[name] for name in names], dtype=float) / 255)
    table = {}
    for key, value in XKCD_COLORS.items():
        name = key.removeprefix("xkcd:")
        if " " in name or "/" in name or name in _NOT_HUES or name in COLOURS:
            continue
        distance = np.linalg.norm(palette - _lab(np.array(to_rgb(value))), axis=-1)
        table[name] = names[int(np.argmin(distance))]
    return table


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] (..., 3) -> CIELAB under D65."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)

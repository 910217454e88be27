"""Checks every backend's candidates before they reach the generator.

A prompt passes when it is real text, fits CLIP's 77-token window, describes the background only (never asks to
change, recolour or replace the product, never asks for written text), contains none of the brand's banned words,
does not echo the brief's free text (titles and summaries are data, not instructions) and is not a near-duplicate of
a prompt already accepted. Missing required brand words are appended to the prompt (policy "add"), or the prompt is
rejected (policy "reject").

CLIP token counting: with no CLIP tokenizer available offline, `clip_token_count` applies CLIP's pre-tokenisation
rule (lower-cased letter runs, single digits, punctuation runs) and counts a letter run as one token up to 8 ASCII
letters and one token per 4 letters beyond that, one token per non-ASCII character, one per punctuation character,
plus the start and end tokens. For English scene words this over-counts slightly, so a prompt it accepts fits. Pass
a real `CLIPTokenizer` as `ValidationConfig.clip_tokenizer` to count exactly.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Literal

from prompts.brief import Brief, Prompt
from studio.core.vocabulary import COLOURS, MATERIALS, PRODUCTS

CLIP_MAX_TOKENS = 77  # including CLIP's start and end tokens
_CLIP_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE)
_WORD = re.compile(r"[^\W\d_]+(?:'[a-z]+)?", re.IGNORECASE)
# A plausible word: lower case or capitalised letters (hyphen or apostrophe joins), maybe with trailing punctuation.
# Sampled junk ("proq9requiredingdsjW", "JSacodAnsou") fails it.
_WORD_SHAPE = re.compile(r"^[(\[]?(?:[^\W\d_][^\W\d_A-Z]{0,19}|[A-Z]{2,6})(?:[-'][^\W\d_]+)*[,.;:!?)\]]*$")

# Verbs that ask the generator to change the product rather than paint around it.
_ALTER = re.compile(
    r"\b(?:change[sd]?|changing|alter(?:s|ed|ing)?|re-?colou?r(?:s|ed|ing)?|repaint(?:s|ed|ing)?|replac(?:e|es|ed|ing)"
    r"|modif(?:y|ies|ied|ying)|edit(?:s|ed|ing)?|swap(?:s|ped|ping)?|transform(?:s|ed|ing)?|redesign(?:s|ed|ing)?"
    r"|reshap(?:e|es|ed|ing)|resiz(?:e|es|ed|ing)|distort(?:s|ing)?|dy(?:e|es|ed|eing)|tint(?:s|ed|ing)?"
    r"|morph(?:s|ed|ing)?|remov(?:e|es|ed|ing)|turn(?:s|ed|ing)?\s+(?:it|the\s+\w+)\s+into)\b",
    re.IGNORECASE,
)
# Requests for written words in the image: the creative's copy is the advertiser's, never the prompt model's.
_TEXT_REQUEST = re.compile(
    r"[\"“”‘’]|(?<!\w)'|'(?!\w)|\b(?:write|writes|writing|written|text|words?|slogan|caption|lettering|typography"
    r"|headline|says|saying|ignore|instructions?|prompt|system|assistant)\b",
    re.IGNORECASE,
)
_STUTTER = re.compile(r"\b(\w+)(?:\s+|\s+and\s+|\s*,\s*)\1\b", re.IGNORECASE)  # "leafy leafy", "chic and chic"
_PRODUCT_NOUNS = set(PRODUCTS) | {kind + "s" for kind in PRODUCTS} | {"product", "products", "item", "packaging"}
_SURFACE_ADJECTIVES = set(COLOURS) | set(MATERIALS) | {"golden", "silver", "gold", "colored", "coloured"}


def clip_token_count(text: str, tokenizer: Any = None) -> int:
    """Tokens CLIP's text encoder would see for `text`, start and end tokens included (see module docstring)."""
    if tokenizer is not None:
        return len(tokenizer(text, truncation=False)["input_ids"])
    count = 2
    for piece in _CLIP_PIECES.findall(text.lower()):
        if piece.isalpha():
            ascii_letters = piece.isascii()
            count += (1 + max(0, math.ceil((len(piece) - 8) / 4))) if ascii_letters else len(piece)
        else:
            count += len(piece)
    return count


def words(text: str) -> list[str]:
    """Lower-cased words of `text`."""
    return [w.lower() for w in _WORD.findall(text)]


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct-n diversity: unique word n-grams / all word n-grams across `texts` (0..1; 0 when there are none)."""
    grams = [tuple(ws[i:i + n]) for ws in map(words, texts) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@dataclass
class ValidationConfig:
    """How strict validation is. `max_similarity` is the word-set Jaccard similarity above which a candidate counts
    as a near-duplicate of one already accepted (the diversity floor)."""

    max_clip_tokens: int = CLIP_MAX_TOKENS
    min_words: int = 3
    max_similarity: float = 0.8
    required_words: Literal["add", "reject"] = "add"
    clip_tokenizer: Any = field(default=None, repr=False)


@dataclass
class ValidationResult:
    """Accepted prompts in candidate order, and (candidate text, reason) for each rejected one."""

    prompts: list[Prompt]
    rejected: list[tuple[str, str]]

    @property
    def n_candidates(self) -> int:
        return len(self.prompts) + len(self.rejected)


def _clean(text: str) -> str:
    """Drop control characters, list bullets and numbering; collapse whitespace."""
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in str(text))
    text = re.sub(r"^\s*(?:[-*•]+|\d+[.)]|(?:positive|prompt)\s*:)\s*", "", text, flags=re.IGNORECASE)
    return re.sub(r"\s+", " ", text).strip(" ,;")


def _has_phrase(text: str, phrase: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase.lower())}(?!\w)", text.lower()) is not None


def _echoes(text: str, brief: Brief, n: int = 3) -> bool:
    """True when `text` repeats n words in a row from the brief's free text (title, summary, attributes)."""
    prompt_words = words(text)
    grams = {tuple(prompt_words[i:i + n]) for i in range(len(prompt_words) - n + 1)}
    sources = [brief.product.title, brief.audience.summary, *brief.product.attributes.values()]
    for source in sources:
        source_words = words(source)
        if any(tuple(source_words[i:i + n]) in grams for i in range(len(source_words) - n + 1)):
            return True
    return False


def _colours_product(text: str, brief: Brief) -> bool:
    """True when a colour or material word sits right before a product noun ("red bottle"): that repaints it."""
    prompt_words = words(text)
    nouns = _PRODUCT_NOUNS | {brief.product.kind()}
    return any(a in _SURFACE_ADJECTIVES and b in nouns for a, b in zip(prompt_words, prompt_words[1:]))


def check_prompt(prompt: Prompt, brief: Brief, config: ValidationConfig | None = None) -> tuple[Prompt | None, str]:
    """Check one candidate against `brief`. Returns (the cleaned prompt, "") or (None, the reason it was rejected)."""
    config = config or ValidationConfig()
    positive, negative = _clean(prompt.positive), _clean(prompt.negative)
    prompt_words = words(positive)
    if len(prompt_words) < config.min_words:
        return None, f"fewer than {config.min_words} words"
    # 1. Background only, data stays data
    if _ALTER.search(positive) or _colours_product(positive, brief):
        return None, "asks to change the product"
    if _TEXT_REQUEST.search(positive):
        return None, "asks for written text or carries instructions"
    if _echoes(positive, brief):
        return None, "echoes the brief's free text"
    # 2. Real text, not sampled junk
    letters = sum(ch.isalpha() or ch.isspace() for ch in positive)
    if letters < 0.8 * len(positive) or "\ufffd" in positive or "\\" in positive:
        return None, "not text (symbols or undecodable bytes)"
    pieces = positive.split()
    if sum(bool(_WORD_SHAPE.match(piece)) for piece in pieces) < 0.8 * len(pieces):
        return None, "not text (not word-shaped)"
    if max(prompt_words.count(w) for w in set(prompt_words)) > 3 or _STUTTER.search(positive):
        return None, "repetitive"
    # 3. Brand rules
    for banned in brief.brand.banned_words:
        if _has_phrase(positive, banned):
            return None, f"contains banned word {banned!r}"
    missing = [word for word in brief.brand.required_words if not _has_phrase(positive, word)]
    if missing and config.required_words == "reject":
        return None, f"misses required words {missing}"
    if missing:
        positive = ", ".join([positive, *missing])
    negative_items = [item.strip() for item in negative.split(",") if item.strip()]
    negative_items = [item for item in negative_items
                      if not any(_has_phrase(item, word) for word in brief.brand.required_words)]
    # 4. CLIP's window: the positive must fit; the negative is trimmed to fit
    tokens = clip_token_count(positive, config.clip_tokenizer)
    if tokens > config.max_clip_tokens:
        return None, f"{tokens} CLIP tokens (at most {config.max_clip_tokens})"
    while negative_items and clip_token_count(", ".join(negative_items), config.clip_tokenizer) > config.max_clip_tokens:
        negative_items.pop()
    return Prompt(positive=positive, negative=", ".join(negative_items)), ""


def _similarity(a: str, b: str) -> float:
    set_a, set_b = set(words(a)), set(words(b))
    return len(set_a & set_b) / max(1, len(set_a | set_b))


def validate(candidates: list[Prompt], brief: Brief, config: ValidationConfig | None = None,
             accepted: list[Prompt] | None = None, limit: int | None = None) -> ValidationResult:
    """Check `candidates` one by one, dropping duplicates and near-duplicates of earlier accepted prompts.

    `accepted` are prompts already kept (from an earlier round), which new candidates must differ from; at most
    `limit` new prompts are accepted (the rest are rejected as "enough prompts").
    """
    config = config or ValidationConfig()
    kept = list(accepted or [])
    result = ValidationResult(prompts=[], rejected=[])
    for candidate in candidates:
        prompt, reason = check_prompt(candidate, brief, config)
        if prompt is not None:
            closest = max((_similarity(prompt.positive, other.positive) for other in kept), default=0.0)
            if closest >= 0.999:
                prompt, reason = None, "duplicate"
            elif closest > config.max_similarity:
                prompt, reason = None, f"near-duplicate (similarity {closest:.2f} > {config.max_similarity})"
            elif limit is not None and len(result.prompts) >= limit:
                prompt, reason = None, "enough prompts"
        if prompt is None:
            result.rejected.append((candidate.positive, reason))
        else:
            kept.append(prompt)
            result.prompts.append(prompt)
    return result

"""The prompt model's data: the brief it reads (audience group, product, brand rules, placement) and the Prompt it writes.

A brief is plain data. Every text in it (the product title, the group summary) is treated as data by every backend,
never as instructions. Briefs are checked when they are built, so a backend never sees an empty, huge or
non-UTF-8 one.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from studio.core.errors import InputError
from studio.core.vocabulary import CATEGORIES, COLOURS, INTEREST_TAGS, PRODUCTS

MAX_TEXT_CHARS = 1000  # one text field (title, summary, tone, an attribute)
MAX_ITEMS = 32  # tags, attributes, required or banned words
MAX_BRIEF_BYTES = 32_000  # a whole brief as JSON
_ASPECT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[:x/]\s*(\d+(?:\.\d+)?)\s*$")


def _text(value: Any, name: str, *, required: bool = False) -> str:
    """A clean text field: a str, valid UTF-8, at most MAX_TEXT_CHARS, stripped."""
    if value is None:
        value = ""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(f"brief field {name!r} is not valid UTF-8 text ({error.reason}); re-save it as UTF-8") from None
    if not isinstance(value, str):
        raise InputError(f"brief field {name!r} must be text, got {type(value).__name__}")
    try:
        value.encode("utf-8")  # lone surrogates (e.g. from surrogateescape) are not text
    except UnicodeEncodeError:
        raise InputError(f"brief field {name!r} is not valid UTF-8 text; re-save it as UTF-8") from None
    value = value.strip()
    if len(value) > MAX_TEXT_CHARS:
        raise InputError(f"brief field {name!r} has {len(value)} characters; keep it under {MAX_TEXT_CHARS}")
    if required and not value:
        raise InputError(f"brief field {name!r} is empty; give it a value")
    return value


def _words(values: Any, name: str) -> tuple[str, ...]:
    """A short list of non-empty text items (tags, required/banned words). Accepts a list or a comma string."""
    if values is None:
        return ()
    if isinstance(values, (str, bytes)):
        values = _text(values, name).split(",")
    if isinstance(values, dict):  # {tag: weight}: strongest first
        values = [key for key, _ in sorted(values.items(), key=lambda item: -float(item[1]))]
    if not isinstance(values, (list, tuple)):
        raise InputError(f"brief field {name!r} must be a list of words, got {type(values).__name__}")
    if len(values) > MAX_ITEMS:
        raise InputError(f"brief field {name!r} has {len(values)} items; keep it under {MAX_ITEMS}")
    items = []
    for value in values:
        if isinstance(value, (list, tuple)) and value:  # [tag, weight] pairs
            value = value[0]
        item = _text(value, name)
        if item:
            items.append(item)
    return tuple(dict.fromkeys(items))


def _mapping(values: Any, name: str) -> dict[str, str]:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InputError(f"brief field {name!r} must be an object of name: value, got {type(values).__name__}")
    if len(values) > MAX_ITEMS:
        raise InputError(f"brief field {name!r} has {len(values)} items; keep it under {MAX_ITEMS}")
    return {_text(key, name, required=True): _text(_as_text(value), name) for key, value in values.items()}


def _as_text(value: Any) -> Any:
    """Numbers and the audience module's {"value": "west", "share": 0.4} become text ("west (40%)")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, dict) and set(value) == {"value", "share"} and isinstance(value["share"], (int, float)):
        return f"{value['value']} ({value['share']:.0%})"
    return value


@dataclass(frozen=True)
class Audience:
    """An audience group, as the audience module's `GroupProfile.to_dict()` describes it.

    `top_tags` are interest tags, strongest first; unknown tags are kept (an LLM backend can use them) but only the
    vocabulary's INTEREST_TAGS steer the embedded model.
    """

    group_id: str = ""
    summary: str = ""
    top_tags: tuple[str, ...] = ()
    demographics: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> Audience:
        if not isinstance(data, dict):
            raise InputError(f"brief 'audience' must be an object like a group profile, got {type(data).__name__}")
        audience = cls(
            group_id=_text(str(data["group_id"]) if isinstance(data.get("group_id"), int) else data.get("group_id"),
                           "audience.group_id"),
            summary=_text(data.get("summary"), "audience.summary"),
            top_tags=tuple(tag.lower() for tag in _words(data.get("top_tags"), "audience.top_tags")),
            demographics=_mapping(data.get("demographics"), "audience.demographics"),
        )
        if not audience.summary and not audience.top_tags:
            raise InputError("brief 'audience' has neither a summary nor top_tags; give at least one interest tag")
        return audience

    def known_tags(self, limit: int = 3) -> tuple[str, ...]:
        """The strongest `limit` tags that are in the scene vocabulary (INTEREST_TAGS), in order."""
        return tuple(tag for tag in self.top_tags if tag in INTEREST_TAGS)[:limit]


@dataclass(frozen=True)
class Product:
    """The product: a title (free text, data only), a catalogue category and attributes (e.g. {"colour": "red"})."""

    title: str
    category: str = ""
    attributes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> Product:
        if isinstance(data, str):
            data = {"title": data}
        if not isinstance(data, dict):
            raise InputError(f"brief 'product' must be an object with a title, got {type(data).__name__}")
        product = cls(
            title=_text(data.get("title"), "product.title"),
            category=_text(data.get("category"), "product.category").lower(),
            attributes=_mapping(data.get("attributes"), "product.attributes"),
        )
        if not product.title and not product.category:
            raise InputError("brief 'product' has neither a title nor a category; give its title, e.g. 'bottle'")
        return product

    def kind(self) -> str:
        """The product kind in the vocabulary (PRODUCTS), from attributes, title words or category; else "product"."""
        declared = self.attributes.get("kind", "").lower()
        if declared in PRODUCTS:
            return declared
        for word in re.findall(r"[a-z]+", self.title.lower()):
            for kind in PRODUCTS:
                if word in (kind, kind + "s", kind + "es"):
                    return kind
        by_category = {category: kind for kind, category in CATEGORIES.items()}
        return by_category.get(self.category, "product")

    def colour(self) -> str:
        """The product's own colour if it is a vocabulary colour, else ""."""
        colour = self.attributes.get("colour", self.attributes.get("color", "")).lower()
        return colour if colour in COLOURS else ""


@dataclass(frozen=True)
class BrandRules:
    """Brand rules: words every prompt must contain, words none may contain, and a tone (e.g. "calm", "premium")."""

    required_words: tuple[str, ...] = ()
    banned_words: tuple[str, ...] = ()
    tone: str = "neutral"

    @classmethod
    def from_dict(cls, data: Any) -> BrandRules:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise InputError(f"brief 'brand' must be an object, got {type(data).__name__}")
        rules = cls(
            required_words=_words(data.get("required_words"), "brand.required_words"),
            banned_words=_words(data.get("banned_words"), "brand.banned_words"),
            tone=_text(data.get("tone"), "brand.tone").lower() or "neutral",
        )
        clash = {w.lower() for w in rules.required_words} & {w.lower() for w in rules.banned_words}
        if clash:
            raise InputError(f"brand words {sorted(clash)} are both required and banned; keep each in one list")
        return rules


@dataclass(frozen=True)
class Placement:
    """Where the creative is shown: its aspect ratio as "W:H" (e.g. "1:1", "9:16", "1.91:1")."""

    aspect_ratio: str = "1:1"

    @classmethod
    def from_dict(cls, data: Any) -> Placement:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise InputError('brief \'placement\' must be an object like {"aspect_ratio": "1:1"}')
        placement = cls(aspect_ratio=_text(data.get("aspect_ratio"), "placement.aspect_ratio") or "1:1")
        placement.ratio()  # check early
        return placement

    def ratio(self) -> float:
        """Width / height, e.g. 1.91 for "1.91:1"."""
        match = _ASPECT.match(self.aspect_ratio)
        if not match or float(match.group(2)) == 0 or float(match.group(1)) == 0:
            raise InputError(f"placement aspect_ratio {self.aspect_ratio!r} is not like '1:1', '9:16' or '1.91:1'")
        return float(match.group(1)) / float(match.group(2))

    def shape(self) -> str:
        """"square" (ratio within 0.8..1.25), "portrait" or "landscape"."""
        ratio = self.ratio()
        return "square" if 0.8 <= ratio <= 1.25 else ("portrait" if ratio < 0.8 else "landscape")


@dataclass(frozen=True)
class Brief:
    """A whole brief. Build one with `Brief.from_dict` / `from_json` / `load`, which check every field."""

    audience: Audience
    product: Product
    brand: BrandRules = field(default_factory=BrandRules)
    placement: Placement = field(default_factory=Placement)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for section, key in (("audience", "top_tags"), ("brand", "required_words"), ("brand", "banned_words")):
            data[section][key] = list(data[section][key])
        return data

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Any) -> Brief:
        """Build and check a brief from {"audience" (or "group"), "product", "brand"?, "placement"?}."""
        if not isinstance(data, dict) or not data:
            raise InputError("the brief is empty; give an object with 'audience' and 'product'")
        size = len(json.dumps(data, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))
        if size > MAX_BRIEF_BYTES:
            raise InputError(f"the brief is {size} bytes; keep it under {MAX_BRIEF_BYTES} (it is a brief, not a catalogue)")
        audience = data.get("audience", data.get("group"))
        if audience is None or "product" not in data:
            missing = [name for name, present in (("audience", audience is not None), ("product", "product" in data))
                       if not present]
            raise InputError(f"the brief is missing {' and '.join(repr(m) for m in missing)}; see prompts.brief.Brief")
        return cls(
            audience=Audience.from_dict(audience),
            product=Product.from_dict(data["product"]),
            brand=BrandRules.from_dict(data.get("brand")),
            placement=Placement.from_dict(data.get("placement")),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Brief:
        """Parse a brief from JSON text or UTF-8 bytes."""
        if isinstance(text, bytes):
            if len(text) > MAX_BRIEF_BYTES:
                raise InputError(f"the brief is {len(text)} bytes; keep it under {MAX_BRIEF_BYTES}")
            text = _text(text, "brief")
        if not text.strip():
            raise InputError("the brief is empty; give a JSON object with 'audience' and 'product'")
        if len(text) > MAX_BRIEF_BYTES:
            raise InputError(f"the brief is {len(text)} characters; keep it under {MAX_BRIEF_BYTES}")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"the brief is not valid JSON ({error.msg} at line {error.lineno}); fix the file") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> Brief:
        """Read a brief from a JSON file."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"brief file {str(path)!r} does not exist; give a JSON file with 'audience' and 'product'")
        try:
            return cls.from_json(path.read_bytes()[: MAX_BRIEF_BYTES + 1])
        except InputError as error:
            raise InputError(f"brief file {str(path)!r}: {error}") from None


@dataclass(frozen=True)
class Prompt:
    """One candidate scene prompt for the generator: what to paint around the product, and what to avoid."""

    positive: str
    negative: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"positive": self.positive, "negative": self.negative}


def group_profile_from_tags(tags: str | list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A minimal group-profile dict from interest tags ("eco,outdoors" or ["eco", "outdoors"])."""
    words = [w.strip().lower() for w in (re.split(r"[,\s]+", tags) if isinstance(tags, str) else tags) if w.strip()]
    if not words:
        raise InputError("no interest tags given; use e.g. 'eco,outdoors' or a group profile JSON file")
    return {"group_id": "-".join(words), "summary": "people into " + ", ".join(words), "top_tags": words,
            "demographics": {}}

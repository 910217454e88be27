"""How every sub-command prints its result: JSON for machines (``--json``), aligned ``key: value`` lines for people."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


def emit(result: Any, as_json: bool, lines: Iterable[str] | None = None) -> None:
    """Print `result` (JSON-able) as JSON, or `lines` for people (default for a dict: one ``key: value`` line per
    entry, floats to 4 decimals)."""
    if as_json:
        print(json.dumps(result, indent=2, default=str, ensure_ascii=False))
        return
    if lines is None:
        width = max((len(str(key)) for key in result), default=0)
        lines = (f"{key:>{width}}: {value:.4f}" if isinstance(value, float) else f"{key:>{width}}: {value}"
                 for key, value in result.items())
    for line in lines:
        print(line)


def printable(value: Any) -> str:
    """`value` as text with control characters escaped (``\\x1b``), so printing it cannot drive the terminal."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in str(value))

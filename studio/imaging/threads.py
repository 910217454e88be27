"""How many torch CPU threads a generation should use: one for small models, every core for large ones.

A small model (studio-mini: 20 MB, a 64 x 64 latent) does so little work per operation that threads spend their time
handing work to each other; on a busy 2-core machine one thread painted a 512 x 512 creative in 0.4 s where two took
1.5-7.3 s (``python benchmarks/threads.py``, docs/benchmarks.md). A large model (SD 1.5 and up) keeps every core busy.
Pixels can differ by 1-2 levels between thread counts (a different summation order), never between runs with the same
thread count.
"""

from __future__ import annotations

import os
from pathlib import Path

from studio.core.errors import InputError
from studio.imaging.provenance import WEIGHT_SUFFIXES

SMALL_MODEL_BYTES = 200 * 2**20


def cpu_threads(model: str | os.PathLike | None, requested: int | None = None) -> int:
    """`requested` if given (1 to the number of cores), else 1 for a local model folder whose weights are under
    200 MB, else every core. `model` None means the embedded default (small)."""
    cores = os.cpu_count() or 1
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or not 1 <= requested <= 4 * cores:
            raise InputError(f"threads must be a whole number from 1 to {4 * cores}, got {requested!r}")
        return requested
    if model is None:
        return 1
    folder = Path(model)
    if not folder.is_dir():
        return cores  # a hub id: a real model
    weights = sum(path.stat().st_size for path in folder.rglob("*") if path.suffix in WEIGHT_SUFFIXES)
    return 1 if weights < SMALL_MODEL_BYTES else cores

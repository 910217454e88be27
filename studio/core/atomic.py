"""Atomic writes: readers never see half a file or half a folder, and a crash loses nothing that was already there."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_file(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(temp_path)`` to write a hidden temporary sibling of `path`, then rename it onto `path`.

    The parent folder is created if missing. If `write` (or the rename) raises, the temporary file is removed
    and the exception propagates; `path` keeps whatever it held before. Returns `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid + thread id: two writers of the same file never share a temporary name
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def replace_folder(staging: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Move the fully written folder `staging` into place at `folder` (a sibling, so the rename is atomic).

    An existing `folder` is first renamed to the sibling ``.{name}.old`` and deleted after the swap, so a crash in
    between leaves the old or the new folder, never half of one. Returns `folder`.
    """
    staging, folder = Path(staging), Path(folder)
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(staging, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder

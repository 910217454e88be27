"""Atomic writes: readers never see half a file or half a folder, and a crash loses nothing that was already there."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from studio.core.errors import InputError


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


STAGING_PREFIX = ".studio-staging-"


def check_output_folder(folder: str | os.PathLike) -> Path:
    """Refuse, before any work starts, an output folder that is a file or sits where this process cannot write."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"output folder {folder} is a file; choose a folder")
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {folder}: {existing} is not writable; choose another output folder")
    return folder


@contextmanager
def staged_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty hidden sibling of `folder` to write into; on success it replaces `folder` atomically.

    If the body raises (or the process is interrupted), the staging folder is removed and `folder` keeps what it
    held. A process killed outright leaves ``.studio-staging-*`` behind; :func:`remove_stale_staging` clears it.
    """
    folder = Path(folder)
    staging = new_staging(folder.parent, folder.name)
    try:
        yield staging
        for path in staging.rglob("*"):  # mkdtemp makes private files; an artefact is for everyone to read
            path.chmod(0o755 if path.is_dir() else 0o644)
        staging.chmod(0o755)
        replace_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def new_staging(parent: str | os.PathLike, name: str) -> Path:
    """A new hidden staging folder in `parent` (``.studio-staging-{name}.{pid}.*``), after removing the ones that
    killed processes left there."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(parent)
    return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{name}.{os.getpid()}.", dir=parent))


def remove_stale_staging(parent: str | os.PathLike) -> list[Path]:
    """Remove staging folders in `parent` left by processes that no longer run; returns what was removed."""
    removed = []
    for path in Path(parent).glob(f"{STAGING_PREFIX}*"):
        parts = path.name.rsplit(".", 2)  # .studio-staging-{name}.{pid}.{random}
        pid = parts[-2] if len(parts) == 3 else ""
        if pid.isdigit() and process_alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (this one counts): its temporaries and staging folders are not stale yet."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

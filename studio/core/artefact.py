"""One format for every learned artefact the studio writes itself (bandit, audience clustering, reward model, …).

A folder holds ``config.json`` (the class that wrote it, the format version, its hyper-parameters and small state)
and, when there are arrays, ``model.safetensors``. Folders are written through :func:`staged_folder`, so a reader
sees the old artefact or the new one, never half of one. :func:`load_artefact` checks the class and the format version
before anything else is read, so a folder written by another class or by a newer studio is one clear error.

Models whose layout belongs to a library (diffusers pipelines, transformers causal LMs) keep that library's layout and
add a ``studio.json`` with the same two fields (see :func:`write_manifest` / :func:`check_manifest`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from studio.core.atomic import staged_folder
from studio.core.errors import InputError, ModelNotFoundError

CONFIG_NAME = "config.json"
# The manifest names of the studio's generator folders (a diffusers pipeline) and LoRA folders (diffusers LoRA weights).
PIPELINE_CLASS, LORA_CLASS, PIPELINE_FORMAT = "InpaintingPipeline", "InpaintingLoRA", 1
WEIGHTS_NAME = "model.safetensors"
MANIFEST_NAME = "studio.json"


class ArtefactError(InputError):
    """A model folder that exists but cannot be used: damaged, foreign, or written by a newer studio."""


def class_name(owner: type | str) -> str:
    return owner if isinstance(owner, str) else owner.__name__


def save_artefact(
    folder: str | os.PathLike,
    owner: type | str,
    format_version: int,
    config: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray] | None = None,
    write_more: Callable[[Path], None] | None = None,
) -> Path:
    """Write `config` (JSON-able) and `tensors` (numpy arrays) as one artefact folder, atomically; returns `folder`.

    `write_more(staging)` may add files of its own (a tokenizer, a sub-artefact) before the folder is swapped in.
    """
    header = {"class_name": class_name(owner), "format_version": int(format_version)}
    body = json.dumps({**header, **config}, indent=2, allow_nan=False)  # NaN in a config is a bug, not a value
    with staged_folder(folder) as staging:
        (staging / CONFIG_NAME).write_text(body + "\n")
        if tensors:
            from safetensors.numpy import save_file

            save_file({name: np.ascontiguousarray(array) for name, array in tensors.items()}, str(staging / WEIGHTS_NAME))
        if write_more is not None:
            write_more(staging)
    return Path(folder)


def check_replaceable(folder: str | os.PathLike, owner: type | str, what: str) -> None:
    """Refuse to save over a non-empty `folder` that holds anything but an artefact of `owner` (`what`: its name in
    words): saving replaces the whole folder, so nothing else in it may be lost."""
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    try:
        found = json.loads((folder / CONFIG_NAME).read_text()).get("class_name")
    except (OSError, ValueError, AttributeError):
        found = None
    if found != class_name(owner):
        raise InputError(f"{folder} holds something other than {what} and saving replaces the whole folder; "
                         "save to a new folder")


def read_config(folder: str | os.PathLike, owner: type | str, format_version: int, *, hint: str = "") -> dict:
    """The checked ``config.json`` of an artefact folder written by `owner` in a format up to `format_version`.

    `hint` says how to get a usable folder (it ends every error message).
    """
    folder, hint = Path(folder), _suffix(hint)
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise ModelNotFoundError(f"no {class_name(owner)} at {folder}: the folder does not exist{hint}")
    if not path.is_file():
        raise ModelNotFoundError(f"{folder} is not a {class_name(owner)} folder: it has no {CONFIG_NAME}{hint}")
    config = _read_json(path, hint)
    _check_header(config, path, owner, format_version, hint)
    return config


def load_artefact(
    folder: str | os.PathLike, owner: type | str, format_version: int, *, hint: str = ""
) -> tuple[dict, dict[str, np.ndarray]]:
    """(config, tensors) of an artefact folder; tensors is empty when the folder has no weights file."""
    config, hint = read_config(folder, owner, format_version, hint=hint), _suffix(hint)
    path = Path(folder) / WEIGHTS_NAME
    if not path.exists():
        return config, {}
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return config, load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ArtefactError(f"{path} is damaged ({_first_line(error)}){hint}") from error


def write_manifest(folder: str | os.PathLike, owner: type | str, format_version: int, **fields: Any) -> None:
    """Add ``studio.json`` to a folder whose layout belongs to another library (call inside a staged folder)."""
    header = {"class_name": class_name(owner), "format_version": int(format_version), **fields}
    (Path(folder) / MANIFEST_NAME).write_text(json.dumps(header, indent=2, allow_nan=False) + "\n")


def check_manifest(folder: str | os.PathLike, owner: type | str, format_version: int, *, hint: str = "") -> dict:
    """The ``studio.json`` of `folder`, checked like a config; {} when the folder has none (a library's own folder)."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return {}
    hint = _suffix(hint)
    manifest = _read_json(path, hint)
    _check_header(manifest, path, owner, format_version, hint)
    return manifest


def _check_header(config: dict, path: Path, owner: type | str, format_version: int, hint: str) -> None:
    expected = class_name(owner)
    found = config.get("class_name")
    if found != expected:
        raise ArtefactError(f"{path.parent} holds {_a(found or 'foreign')} folder, not {_a(expected)} folder{hint}")
    version = config.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ArtefactError(f"{path} has no valid format_version (got {version!r}){hint}")
    if version > format_version:
        raise ArtefactError(
            f"{path.parent} was written by a newer studio ({expected} format {version}; this one reads up to "
            f"{format_version}): upgrade creative-studio to load it"
        )


def _read_json(path: Path, hint: str) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ArtefactError(f"{path} is damaged ({_first_line(error)}){hint}") from error
    if not isinstance(config, dict):
        raise ArtefactError(f"{path} is damaged (a JSON {type(config).__name__}, expected an object){hint}")
    return config


def _a(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _suffix(hint: str) -> str:
    """'; hint' for the end of an error message ('' for none); idempotent."""
    return hint if not hint or hint.startswith("; ") else f"; {hint}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__

"""The model hub, seen from an offline-first studio: may it be reached right now, and where does a model come from?

:func:`resolve_model` is the one place that turns a model name (a folder, a shipped model, a hub id) into something
to load, and "not available locally" into one line that says how to get it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants, snapshot_download

from studio.core.artefact import ArtefactError
from studio.core.errors import InputError, ModelNotFoundError, StudioError

_TRUE = {"1", "true", "yes", "on"}
PROBE_TIMEOUT_S = 10.0


def offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set.

    The environment is read at call time as well as through huggingface_hub (which reads it once, at import), so
    setting the variable in a running process takes effect and a missing model fails fast instead of retrying.
    """
    flags = (os.environ.get(name, "") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(flag.strip().lower() in _TRUE for flag in flags)


@dataclass(frozen=True)
class ResolvedModel:
    """What to pass to a library's ``from_pretrained``.

    path_or_id: a folder (a local one, a shipped one, or a hub id's cached snapshot), or a hub id still to download.
    is_local: True for a folder: load it with ``local_files_only=True``, so the network is never touched.
    """

    path_or_id: str
    is_local: bool


def how_to_download(name: str) -> str:
    """The default end of a "not available" message for a hub id."""
    return f"download it first (`hf download {name}`, on a machine with internet if offline) or pass a local folder"


def resolve_model(
    name_or_path: str | os.PathLike | None,
    *,
    default: str | None = None,
    kind: str = "model",
    how_to_get: str | None = None,
    shipped: str | os.PathLike | None = None,
    needs: str | None = None,
    hub_ids: bool = True,
) -> ResolvedModel:
    """Find a model locally, or make sure it can be downloaded; never the network when offline.

    `name_or_path` (None or "" mean `default`): an existing folder (returned as is); a bare name of a folder in
    `shipped`; or, when `hub_ids`, a hub id ("name" or "owner/name"), returned as its cached snapshot folder when the
    local cache has it, as the id when it is not cached but the hub has it. `needs`: a file every folder must hold
    (``model_index.json``, ``config.json``). `kind` names the model in messages ("generator", "prompt model") and
    `how_to_get` ends them (default: the download command, or "check the path" for a folder). Anything unavailable
    raises one ModelNotFoundError line; a hub id that is not cached costs one short request online (no retries) and
    none offline.
    """
    name = str(name_or_path if name_or_path is not None and str(name_or_path).strip() else default or "").strip()
    if not name:
        raise InputError(f"the {kind} name is empty; give a folder or a hub id")
    how, check = how_to_get or how_to_download(name), how_to_get or "check the path"
    path = Path(name).expanduser()
    if shipped is not None and "/" not in name and "\\" not in name and (Path(shipped) / name).is_dir():
        path = Path(shipped) / name
    if path.is_dir():
        if needs and not (path / needs).is_file():
            raise ModelNotFoundError(f"{path} is not {_a(kind)} folder (no {needs} in it); {check}")
        return ResolvedModel(str(path), True)
    # A hub id is "name" or "owner/name"; anything else (or hub ids not wanted) is a folder that does not exist.
    if path.exists():
        raise ModelNotFoundError(f"{path} is a file, not {_a(kind)} folder; {check}")
    path_like = name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1
    if path_like or not hub_ids:
        raise ModelNotFoundError(f"{kind} folder {name!r} does not exist; {check}")
    try:
        snapshot = Path(snapshot_download(name, local_files_only=True))
    except ValueError:  # huggingface_hub's HFValidationError: not a valid repo id
        raise ModelNotFoundError(f"{kind} {name!r} is neither a folder nor a valid hub id; {how}") from None
    except OSError:  # LocalEntryNotFoundError: not in the local cache
        snapshot = None
    if snapshot is not None and (not needs or (snapshot / needs).is_file()):  # else a partial download: fetch it
        return ResolvedModel(str(snapshot), True)
    if offline():
        raise ModelNotFoundError(f"{kind} {name!r} is not available locally (offline mode); {how}")
    # One request without retries: a library's download of a missing model retries for ~25 s before it gives up.
    try:
        HfApi().model_info(name, timeout=PROBE_TIMEOUT_S)
    except Exception as error:  # noqa: BLE001 - not found, gated, no network: each means "cannot get it from here"
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ModelNotFoundError(f"{kind} {name!r} is not available locally and the hub did not give it "
                                 f"({detail}); {how}") from None
    return ResolvedModel(name, False)


def load_failed(kind: str, model: ResolvedModel, error: BaseException, how_to_get: str | None = None) -> StudioError:
    """The one-line error for a model :func:`resolve_model` found but its library could not read: a damaged or
    incomplete folder (ArtefactError), or a download that failed (ModelNotFoundError)."""
    text = str(error).strip()
    detail = text.splitlines()[0][:200] if text else type(error).__name__
    if model.is_local:
        how = how_to_get or "the folder is damaged or incomplete: save it again or download it again"
        return ArtefactError(f"{model.path_or_id} could not be loaded as {_a(kind)} ({detail}); {how}")
    return ModelNotFoundError(f"{kind} {model.path_or_id!r} could not be downloaded ({detail}); "
                              f"{how_to_get or how_to_download(model.path_or_id)}")


def _a(kind: str) -> str:
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"

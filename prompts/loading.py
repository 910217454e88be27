"""Load a prompt model by name, folder or hub id, with the backend its folder names.

This module sits above the backends (`prompts.mini`, `prompts.hf`), which know nothing of each other or of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prompts.backends import CausalLMBackend, resolve_prompt_model
from prompts.hf import HFPromptModel
from prompts.mini import MiniPromptModel
from studio.core.artefact import MANIFEST_NAME

BACKENDS: dict[str, type[CausalLMBackend]] = {cls.__name__: cls for cls in (MiniPromptModel, HFPromptModel)}
# Folders saved before studio.json named their backend in prompt_model.json; read, never written.
LEGACY_MARKER, LEGACY_BACKENDS = "prompt_model.json", {"prompts-mini": MiniPromptModel, "transformers": HFPromptModel}


def load_prompt_model(name_or_path: str | os.PathLike | None = None, **kwargs: Any) -> CausalLMBackend:
    """Load a prompt model: None or "prompts-mini" (shipped), a saved folder, or a transformers hub id.

    A folder saved by this package is read by the backend its ``studio.json`` names; anything else is read as a
    generic causal LM (`prompts.hf.HFPromptModel`). Raises ModelNotFoundError when it is not available locally, and
    ArtefactError (one line naming the folder) when it is damaged, of another kind, or from a newer studio.
    """
    source = resolve_prompt_model(name_or_path)
    backend: type[CausalLMBackend] = HFPromptModel
    if source.is_local:
        backend = _backend_of(Path(source.path_or_id)) or HFPromptModel
    return backend.from_pretrained(source.path_or_id, **kwargs)


def _backend_of(folder: Path) -> type[CausalLMBackend] | None:
    """The backend class a folder names, None when it names none it knows (from_pretrained then says what is wrong)."""
    for name, lookup, field in ((MANIFEST_NAME, BACKENDS, "class_name"), (LEGACY_MARKER, LEGACY_BACKENDS, "backend")):
        try:
            named = json.loads((folder / name).read_text()).get(field)
        except (OSError, ValueError, AttributeError):  # absent or damaged: check_manifest reports the damage
            continue
        return lookup.get(named) if isinstance(named, str) else None
    return None

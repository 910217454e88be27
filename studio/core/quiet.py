"""A normal run prints the studio's own lines only: no third-party advisories, no libraries' loading bars.

The studio shows its own tqdm bars for long work; the libraries' bars ("Loading pipeline components", "Loading
weights") and advisories (torchvision fallbacks, deprecations inside diffusers, transformers, gradio and pandas) say
nothing a user can act on, and they bury the one line that matters when something fails.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_LIBRARIES = ("diffusers", "transformers", "huggingface_hub", "accelerate", "peft", "gradio", "torch", "sklearn")


def quiet_libraries() -> None:
    """For entry points (the CLI, the UI): libraries log errors only and keep their deprecation warnings to themselves.

    Environment variables are set only where the user has not set them, and take effect for libraries imported after
    this call.
    """
    for name, value in {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
                        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}.items():
        os.environ.setdefault(name, value)
    pattern = rf"({'|'.join(_LIBRARIES)}|pandas)(\.|$)"
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=pattern)
    warnings.filterwarnings("ignore", message=".*torchvision.*")


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Turn off the loading bars of diffusers and transformers (those already imported) while a model loads."""
    switched = []
    for name in ("diffusers", "transformers"):
        if name in sys.modules:
            logging = __import__(f"{name}.utils.logging", fromlist=["logging"])
            if logging.is_progress_bar_enabled():
                logging.disable_progress_bar()
                switched.append(logging)
    try:
        yield
    finally:
        for logging in switched:
            logging.enable_progress_bar()

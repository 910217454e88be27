"""The model hub, seen from an offline-first studio: may it be reached right now?"""

from __future__ import annotations

import os

_TRUE = {"1", "true", "yes", "on"}


def offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set.

    The environment is read at call time as well as through huggingface_hub (which reads it once, at import), so
    setting the variable in a running process takes effect and a missing model fails fast instead of retrying.
    """
    from huggingface_hub import constants

    flags = (os.environ.get(name, "") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(flag.strip().lower() in _TRUE for flag in flags)

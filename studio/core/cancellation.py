"""Cancel flags for interactive front ends: one flag per session, so a Cancel click stops only its own generation.

A generation takes a flag from `start(session)` and passes it to the library as its `cancel` hook (a threading.Event,
which the engine checks after every denoising step); the Cancel button calls `cancel(session)`.
"""

from __future__ import annotations

import threading


class CancelFlags:
    """Thread-safe map from a session key (e.g. Gradio's session hash) to the cancel flag of its running job."""

    def __init__(self) -> None:
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        """A fresh, unset flag for a new job of `session`; it replaces the flag of any earlier job."""
        flag = threading.Event()
        with self._lock:
            self._flags[session] = flag
        return flag

    def cancel(self, session: str) -> bool:
        """Set the flag of `session`'s running job. Returns False when the session has no job running."""
        with self._lock:
            flag = self._flags.get(session)
        if flag is None:
            return False
        flag.set()
        return True

    def finish(self, session: str, flag: threading.Event) -> None:
        """Forget `flag` once its job has ended (a newer job's flag of the same session is kept)."""
        with self._lock:
            if self._flags.get(session) is flag:
                del self._flags[session]

    def running(self) -> int:
        """How many sessions have a job running."""
        with self._lock:
            return len(self._flags)

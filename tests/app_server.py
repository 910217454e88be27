"""Launch the Creative Studio UI (app.py) on a free local port in a background thread, for the UI tests."""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve_app(out_dir: Path, **options) -> Iterator[str]:
    """Serve `build_app(out_dir, **options)` on 127.0.0.1 and yield its URL; the server stops on exit."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # app.py lives at the repository root, beside the packages
    from app import build_app

    out_dir.mkdir(parents=True, exist_ok=True)
    app = build_app(out_dir, **options).queue()
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
               allowed_paths=[str(out_dir)])
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()

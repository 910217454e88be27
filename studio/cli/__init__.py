"""The `studio` console script.

Each area of the studio owns a module in `studio.cli` with a `register(subparsers)` function that adds its
subcommands and sets `func` on them. Heavy libraries (torch, diffusers) are imported inside the commands, so
`studio --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from studio import __version__
from studio.core.errors import StudioError
from studio.core.quiet import quiet_libraries

# Add a module here when an area gains commands.
COMMAND_MODULES: list[str] = [
    "studio.cli.batch",
    "studio.cli.campaign",
    "studio.cli.generate",
    "studio.cli.loop",
    "studio.cli.prompts",
    "studio.cli.reward",
    "studio.cli.serve",
    "studio.cli.simulate",
    "studio.cli.train",
]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and a hint (not the whole usage block) like every other studio error."""

    def error(self, message: str) -> NoReturn:
        print(f"studio: error: {message}; see '{self.prog} --help'", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="studio", description="Creative Studio: personalised ad creatives.")
    parser.add_argument("--version", action="version", version=f"studio {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # --help, --version or a usage error (already printed as one line)
        return int(exit.code or 0)
    quiet_libraries()
    try:
        with _terminate_as_interrupt():
            return int(args.func(args) or 0)
    except StudioError as error:
        return _fail(str(error), 2)
    except OSError as error:  # the machine said no (disk full, permission): one line, not a traceback
        where = f" ({error.filename})" if error.filename else ""
        return _fail(f"{error.strerror or error}{where}; free space or fix permissions and retry", 2)
    except MemoryError:
        return _fail("out of memory; use a smaller --size, --n or --impressions", 2)
    except KeyboardInterrupt:
        return _fail("interrupted; partial outputs were removed", 130, prefix="studio: ")


def _fail(message: str, code: int, prefix: str = "studio: error: ") -> int:
    print(prefix + " ".join(message.split()), file=sys.stderr)  # one line, whatever the message held
    return code


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every staged folder and half-written file is cleaned up on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


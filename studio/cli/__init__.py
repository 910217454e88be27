"""The `studio` console script.

Each area of the studio owns a module in `studio.cli` with a `register(subparsers)` function that adds its
subcommands and sets `func` on them. Heavy libraries (torch, diffusers) are imported inside the commands, so
`studio --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from studio import __version__
from studio.core.errors import StudioError

# Add a module here when an area gains commands.
COMMAND_MODULES: list[str] = [
    "studio.cli.campaign",
    "studio.cli.generate",
    "studio.cli.prompts",
    "studio.cli.reward",
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
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except StudioError as error:
        print(f"studio: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("studio: interrupted", file=sys.stderr)
        return 130


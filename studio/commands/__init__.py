"""Subcommands of the `studio` CLI, one module per area (see `studio.cli`)."""

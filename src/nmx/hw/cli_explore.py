"""CLI commands of nmx.hw (explore); `register` adds them to the top-level `nmx` app."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level `nmx` app (nothing yet)."""

"""CLI commands of nmx.hw (nonlinear); `register` adds them to the `nmx hw` group."""

from __future__ import annotations

import typer


def register(hw_app: typer.Typer) -> None:
    """Add this module's commands to `nmx hw` (nothing yet)."""

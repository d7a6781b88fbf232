"""What every verb shares: the consoles, and one way to turn an expected error into a
message and an exit code (1: the input is unusable, 2: the command or config is wrong)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from node.config import Config
    from pipeline.volume import Volume

console = Console()
# Errors are not wrapped: a file path split over two lines cannot be copied or grepped.
err = Console(stderr=True, soft_wrap=True)


@contextmanager
def exit_on(*errors: type[BaseException], code: int = 1, what: str = "error") -> Iterator[None]:
    """Print ``what: <message>`` and exit with ``code`` when one of ``errors`` is raised."""
    try:
        yield
    except errors as exc:
        err.print(f"[red]{what}:[/red] {exc}")
        raise typer.Exit(code) from exc


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as an error; the caller raises the returned exit."""
    err.print(f"[red]{message}[/red]")
    return typer.Exit(code)


def load_config_or_exit(path: Path | None) -> Config:
    from node.config import ConfigError, load_config

    with exit_on(ConfigError, code=2, what="config error"):
        return load_config(path)


def load_series_or_exit(folder: Path, series: str | None = None, what: str = "error") -> Volume:
    """Load a series for a command, or print why it is unusable and exit 1."""
    from pipeline.errors import SeriesLoadError
    from pipeline.series import load_series

    try:
        return load_series(folder, series_instance_uid=series)
    except SeriesLoadError as exc:
        err.print(f"[red]{what}: {type(exc).__name__}:[/red] {exc}")
        raise typer.Exit(1) from exc

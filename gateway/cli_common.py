"""What every CLI command module shares: output (JSON or tables), error mapping, the API client.

Command modules (``gateway/cli.py`` and one per domain) import from here, never from each other.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from gateway.client import AdminClient, StoredSession
from gateway.errors import TelgateError, describe
from gateway.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


def emit(as_json: bool, document: Any, human: Callable[[], None]) -> None:
    """Print ``document`` as JSON, or call ``human`` to print tables."""
    if as_json:
        click.echo(json.dumps(document, indent=2, default=str))
    else:
        human()


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a rich table."""
    grid = Table(title=title, title_justify="left")
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*["" if cell is None else str(cell) for cell in row])
    out.print(grid)


def short_time(iso: str | None) -> str:
    """An ISO 8601 time as a table cell: ``2026-03-04 12:00:10Z`` (UTC, whole seconds); "" for None."""
    if not iso:
        return ""
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def handle_errors(func: F) -> F:
    """Turn telgate errors into a message on stderr and the mapped exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TelgateError as exc:
            as_json = bool(kwargs.get("as_json"))
            if as_json:
                click.echo(json.dumps({"error": {"code": exc.code, "message": exc.message, "details": exc.details}}))
            else:
                err.print(f"[red]error:[/red] {exc.message}")
            sys.exit(describe(exc).exit_code)

    return wrapper  # type: ignore[return-value]


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
config_option = click.option(
    "--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), help="Settings file (TOML)."
)


def settings_from(config_file: Path | None, data: Path | None = None) -> Settings:
    """Load settings, with ``--data`` overriding the data directory."""
    overrides = {"server": {"data_dir": str(data)}} if data is not None else None
    return load_settings(config_file, overrides=overrides)


def api() -> AdminClient:
    """A client for the server the operator logged in to."""
    session = StoredSession.load()
    return AdminClient(session.url, session.token)

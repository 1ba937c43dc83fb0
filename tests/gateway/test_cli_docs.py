"""The CLI documents itself: every command's ``--help`` works and shows an example, every command path
is in docs/cli.md, and shell completion (click's built-in) produces a script."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from gateway.cli import main
from tests.conftest import cli_env
from tests.gateway.test_cli import TELGATE

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def command_paths(command: click.Command = main, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], bool]]:
    """Every command path of the click tree, and whether it is a leaf (a command rather than a group)."""
    yield path, not isinstance(command, click.Group)
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from command_paths(sub, (*path, name))


PATHS = list(command_paths())
LEAVES = [path for path, leaf in PATHS if leaf]


def test_the_tree_is_walked() -> None:
    assert ("access", "fetch") in LEAVES
    assert ("recordings", "get") in LEAVES
    assert ("ingest", "quarantine", "list") in LEAVES


@pytest.mark.parametrize("path", [path for path, _ in PATHS], ids=[" ".join(p) or "telgate" for p, _ in PATHS])
def test_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"], prog_name="telgate", terminal_width=120)
    assert result.exit_code == 0, result.output
    assert "Usage: telgate" in result.output
    if path in LEAVES:
        assert "Example" in result.output, f"`telgate {' '.join(path)} --help` shows no example"


@pytest.mark.parametrize("path", LEAVES, ids=[" ".join(p) for p in LEAVES])
def test_every_command_is_in_the_docs(path: tuple[str, ...]) -> None:
    assert f"telgate {' '.join(path)}" in DOCS.read_text(), f"`telgate {' '.join(path)}` is missing from docs/cli.md"


@pytest.mark.parametrize("path", LEAVES, ids=[" ".join(p) for p in LEAVES])
def test_every_api_command_takes_json(path: tuple[str, ...]) -> None:
    command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    options = {opt for param in command.params for opt in getattr(param, "opts", [])}
    assert "--json" in options or path == ("serve",), f"`telgate {' '.join(path)}` has no --json"


def test_shell_completion_script(tmp_path: Path) -> None:
    env = cli_env(tmp_path) | {"_TELGATE_COMPLETE": "bash_source"}
    result = subprocess.run([TELGATE], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "_telgate_completion" in result.stdout
    assert "complete " in result.stdout
    assert 'eval "$(_TELGATE_COMPLETE=bash_source telgate)"' in DOCS.read_text()

    # The script's protocol answers: completing `telgate acc` offers `access`.
    env = cli_env(tmp_path) | {"_TELGATE_COMPLETE": "bash_complete", "COMP_WORDS": "telgate acc", "COMP_CWORD": "1"}
    result = subprocess.run([TELGATE], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "plain,access" in result.stdout.splitlines()

"""``telgate recordings ...``, ``telgate keys ...`` and ``telgate vault ...``.

Rotation and verification run on the server; the CLI asks for NDJSON progress lines
(``Accept: application/x-ndjson``) and draws a progress bar on stderr, so ``--json`` output on stdout
stays one document. The ``--json`` shapes are documented in docs/cli.md.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from gateway.cli_common import api, emit, err, handle_errors, json_option, out, table
from gateway.client import AdminClient, ApiError
from gateway.errors import ERROR_TABLE, EXIT_BAD_INPUT, BackendUnavailableError

NDJSON = "application/x-ndjson"


def _api_error(payload: Any, status: int) -> ApiError:
    try:
        error = payload["error"]
        return ApiError(str(error["code"]), str(error["message"]), status, error.get("details"))
    except (KeyError, TypeError):
        return ApiError("internal", f"unexpected answer from the gateway (HTTP {status})", status)


def stream_request(client: AdminClient, method: str, path: str, on_progress: Callable[[int, int], None]) -> Any:
    """Send a request that answers with NDJSON progress lines; return the final ``result``."""
    url = client.url + path
    if not url.startswith(("http://", "https://")):
        raise BackendUnavailableError(f"server URL must start with http:// or https://: {client.url}")
    request = urllib.request.Request(url, data=b"", method=method)  # noqa: S310 - scheme checked above
    request.add_header("Accept", NDJSON)
    if client.token:
        request.add_header("Authorization", f"Bearer {client.token}")
    try:
        with urllib.request.urlopen(request, timeout=client.timeout) as response:  # noqa: S310
            for raw in response:
                if not raw.strip():
                    continue
                line = json.loads(raw)
                if "progress" in line:
                    on_progress(int(line["progress"]["done"]), int(line["progress"]["total"]))
                elif "result" in line:
                    return line["result"]
                elif "error" in line:
                    code = str(line["error"].get("code", "internal"))
                    raise _api_error(line, ERROR_TABLE.get(code, ERROR_TABLE["internal"]).http_status)
    except urllib.error.HTTPError as exc:
        try:
            payload = json.loads(exc.read())
        except ValueError:
            payload = None
        raise _api_error(payload, exc.code) from None
    except (urllib.error.URLError, OSError) as exc:
        raise BackendUnavailableError(f"cannot reach the gateway at {client.url}: {exc}") from exc
    except ValueError as exc:
        raise BackendUnavailableError("the gateway sent an unreadable progress line") from exc
    raise BackendUnavailableError("the gateway closed the connection before the work finished")


def run_with_progress(path: str, label: str, unit: str, show: bool) -> Any:
    """POST ``path`` and draw the server's progress (in ``rows`` or ``bytes``) on stderr when ``show``."""
    client = api()
    client.timeout = 600.0  # between progress lines; the work itself may take much longer
    if not show:
        return stream_request(client, "POST", path, lambda done, total: None)
    counter = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    columns = (TextColumn(label), BarColumn(), TaskProgressColumn(), counter, TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            if total > 0:
                progress.update(task, completed=done, total=total)
            else:  # nothing to do
                progress.update(task, completed=1, total=1)

        result = stream_request(client, "POST", path, update)
        final = progress.tasks[0].total or 1
        progress.update(task, completed=final, total=final)
        return result


# --- recordings ----------------------------------------------------------------------------------


@click.group()
def recordings() -> None:
    """Recordings' metadata (dpo, tech_manager, manager); never their content."""


@recordings.command("list")
@click.option("--tenant", help="Only this customer tenant.")
@click.option("--since", help="Received at or after: a date (2026-03-01, UTC) or an ISO time with offset.")
@click.option("--include-shredded", is_flag=True, help="Also list tombstones of shredded recordings.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True, help="At most this many.")
@json_option
@handle_errors
def recordings_list(tenant: str | None, since: str | None, include_shredded: bool, limit: int, as_json: bool) -> None:
    """List recordings' metadata, oldest first (the listing is audited).

    \b
    Example:
      telgate recordings list --tenant acme --since 2026-03-01 --json
    """
    query = {"tenant": tenant, "since": since, "limit": str(limit)}
    if include_shredded:
        query["include_shredded"] = "1"
    answer = api().request("GET", "/v1/admin/recordings", query={k: v for k, v in query.items() if v})
    emit(as_json, answer, lambda: _recordings_table(answer["recordings"]))


def _recordings_table(recordings: list[dict[str, Any]]) -> None:
    """A human table of recordings; ids are never shortened (the rest may be, narrow terminals)."""
    grid = Table(title="recordings", title_justify="left")
    grid.add_column("id", no_wrap=True, min_width=36)
    with_tombstones = any(r["shredded_at"] for r in recordings)
    columns = ("tenant", "call id", "bytes", "received (UTC)") + (("shredded",) if with_tombstones else ())
    for column in columns:
        grid.add_column(column, overflow="fold")
    for r in recordings:
        cells = [r["recording_id"], r["tenant"], r["call_id"], str(r["size"]), _short_time(r["received_at"])]
        if with_tombstones:
            cells.append(_short_time(r["shredded_at"]) if r["shredded_at"] else "")
        grid.add_row(*cells)
    out.print(grid)


def _short_time(iso: str) -> str:
    return str(iso)[:16].replace("T", " ")


# --- keys ----------------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """Master keys: list versions, rotate (rewrap every key row), retire an old version."""


@keys.command("list")
@json_option
@handle_errors
def keys_list(as_json: bool) -> None:
    """List master-key versions and how many key rows each wraps (dpo, tech_manager).

    \b
    Example:
      telgate keys list --json
    """
    answer = api().request("GET", "/v1/admin/keys")
    rows = [(v["version"], v["state"], v["rows"]) for v in answer["versions"]]
    emit(as_json, answer, lambda: table("master keys", ["version", "state", "key rows"], rows))


@keys.command("rotate")
@json_option
@handle_errors
def keys_rotate(as_json: bool) -> None:
    """Add a master-key version and rewrap every key row under it (dpo, tech_manager).

    Recordings are not rewritten. Exits 65 if some key rows could not be rewrapped (they are listed).
    Afterwards `telgate keys retire OLD` destroys the old version for good.

    \b
    Example:
      telgate keys rotate && telgate keys retire 1
    """
    report = run_with_progress("/v1/admin/keys/rotate", "rewrapping key rows", "rows", show=not as_json)

    def human() -> None:
        out.print(
            f"master key rotated to version {report['version']}: {report['rewrapped']} of {report['total']} "
            f"key rows rewrapped"
        )
        for recording_id in report["failed"]:
            err.print(f"[red]could not rewrap the key of {recording_id}[/red]")
        if not report["failed"]:
            out.print(f"retire the old version with: telgate keys retire {report['previous_version']}")

    emit(as_json, report, human)
    if report["failed"]:
        sys.exit(EXIT_BAD_INPUT)


@keys.command("retire")
@click.argument("version", type=click.IntRange(min=1))
@json_option
@handle_errors
def keys_retire(version: int, as_json: bool) -> None:
    """Destroy master-key version VERSION for good (dpo); refused while any key row still uses it.

    Once retired, old copies of the key store cannot unwrap anything wrapped under that version.

    \b
    Example:
      telgate keys retire 1
    """
    answer = api().request("POST", f"/v1/admin/keys/{version}/retire")
    emit(as_json, answer, lambda: out.print(f"master key version {version} destroyed"))


# --- vault ---------------------------------------------------------------------------------------


@click.group()
def vault() -> None:
    """The recording vault's integrity."""


@vault.command("verify")
@json_option
@handle_errors
def vault_verify(as_json: bool) -> None:
    """Check every recording's header and every chunk (dpo, tech_manager); exits 65 if any is damaged.

    \b
    Example:
      telgate vault verify --json
    """
    report = run_with_progress("/v1/admin/vault/verify", "verifying recordings", "bytes", show=not as_json)

    def human() -> None:
        if report["ok"]:
            out.print(f"vault intact: {report['checked']} recordings, {report['bytes_checked']} bytes verified")
            return
        err.print(f"[red]{len(report['damaged'])} of {report['checked']} recordings are damaged:[/red]")
        table("damaged recordings", ["id", "problem"], [(d["recording_id"], d["problem"]) for d in report["damaged"]])

    emit(as_json, report, human)
    if not report["ok"]:
        sys.exit(EXIT_BAD_INPUT)

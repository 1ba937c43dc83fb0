"""``telgate access ...`` (request, list, approve, deny, fetch) and ``telgate recordings get`` (break-glass).

Downloads stream into a private temporary file next to ``--out`` (created 0600), with a progress bar on
stderr; the SHA-256 of what arrived is checked against the gateway's, and only then is the file moved
to ``--out`` (never over an existing file without ``--force``). A failed transfer leaves no plaintext
behind. ``--json`` shapes are documented in docs/cli.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from gateway.cli_common import api, emit, err, handle_errors, json_option, out
from gateway.errors import BackendUnavailableError, BadRequestError

out_option = click.option(
    "--out",
    "out_file",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="File to write the recording to (created 0600).",
)
force_option = click.option("--force", is_flag=True, help="Replace FILE if it exists.")


def _check_destination(out_file: Path, force: bool) -> None:
    """Refuse before anything is asked of the gateway (a fetch spends the grant)."""
    if out_file.exists() and not force:
        raise BadRequestError(f"{out_file} exists; choose another --out or add --force to replace it")
    if not out_file.parent.is_dir():
        raise BadRequestError(f"directory {out_file.parent} does not exist")


def download_to_file(path: str, body: dict[str, Any], out_file: Path, force: bool, show: bool) -> dict[str, Any]:
    """POST ``path`` and stream the answer into ``out_file``; a summary of what was written."""
    _check_destination(out_file, force)
    client = api()
    client.timeout = 600.0  # between pieces; the whole transfer may take longer
    temp = out_file.parent / f".{out_file.name}.{secrets.token_hex(4)}.part"
    digest = hashlib.sha256()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    keep_temp = False
    try:
        with os.fdopen(fd, "wb") as sink:

            def write(piece: bytes) -> None:
                sink.write(piece)
                digest.update(piece)

            if show:
                columns = (
                    TextColumn("{task.description}"),
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    TimeRemainingColumn(),
                )
                progress = Progress(*columns, console=err)
                task = progress.add_task(f"downloading to {out_file.name}", total=None)

                def update(done: int, total: int | None) -> None:
                    if not progress.live.is_started:  # drawn once the gateway has accepted the request
                        progress.start()
                    progress.update(task, completed=done, total=total)

                try:
                    headers = client.download("POST", path, body, write, update)
                finally:
                    progress.stop()
            else:
                headers = client.download("POST", path, body, write)
            sink.flush()
            os.fsync(sink.fileno())
        expected = headers.get("x-telgate-sha256", "")
        if expected and expected != digest.hexdigest():
            raise BackendUnavailableError("what arrived does not match the recording's SHA-256; nothing was kept")
        if force:
            temp.replace(out_file)
        else:
            try:
                os.link(temp, out_file)  # never replaces: fails if FILE appeared meanwhile
            except FileExistsError:
                keep_temp = True  # the grant is spent: keep what arrived (0600) and say where
                raise BadRequestError(
                    f"{out_file} appeared during the download; the recording was kept in {temp}"
                ) from None
            temp.unlink()
    except BaseException:
        if not keep_temp:  # no partial or unverified plaintext is left behind
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
        raise
    return {
        "recording_id": headers.get("x-telgate-recording-id"),
        "content_type": headers.get("x-telgate-content-type"),
        "size": out_file.stat().st_size,
        "sha256": digest.hexdigest(),
        "out": str(out_file),
    }


# --- access --------------------------------------------------------------------------------------


@click.group()
def access() -> None:
    """Ask for, decide on and fetch access to one recording (four eyes, one-time passwords).

    \b
    Flow:
      manager:  telgate access request rec_... --reason "complaint INC0012345, quality check"
      DPO:      telgate access list --pending ; telgate access approve req_...
      manager:  telgate access list            # shows the one-time password once
      manager:  telgate access fetch req_... --out call.wav
    """


def _requests_table(requests: list[dict[str, Any]]) -> None:
    """A human table of requests; ids are never shortened, the reason folds on narrow terminals."""
    grid = Table(title="access requests", title_justify="left", show_lines=True)
    grid.add_column("request / recording", no_wrap=True)
    grid.add_column("status", no_wrap=True)
    grid.add_column("requester", no_wrap=True, max_width=16, overflow="ellipsis")
    grid.add_column("reason / decision (UTC)", overflow="fold", min_width=16)
    for r in requests:
        text = r["reason"]
        if r["decided_by"]:
            decided = "denied" if r["status"] == "denied" else "approved"
            text += f"\n{decided} by {r['decided_by']}"
            if r["status"] == "approved":
                text += f", valid until {_short_time(r['expires_at'])}"
            elif r["status"] == "expired":
                text += f", expired {_short_time(r['expires_at'])}"
            elif r["status"] == "used":
                text += f", used {_short_time(r['used_at'])}"
            if r["decision_reason"]:
                text += f": {r['decision_reason']}"
        grid.add_row(f"{r['request_id']}\n{r['recording_id']}", r["status"], r["requester"], text)
    out.print(grid)


def _short_time(iso: str | None) -> str:
    return str(iso or "")[:16].replace("T", " ")


@access.command("request")
@click.argument("recording")
@click.option("--reason", required=True, help="Why you need it (at least 10 characters; no phone numbers).")
@json_option
@handle_errors
def access_request(recording: str, reason: str, as_json: bool) -> None:
    """Ask for access to RECORDING (manager, tech_manager; a DPO may too, decided by another DPO).

    \b
    Example:
      telgate access request rec_3f9c1e0b7a5d4c2e9f8a6b4c2d0e1f3a --reason "complaint INC0012345: check the call"
    """
    created = api().request("POST", f"/v1/admin/recordings/{recording}/access-requests", {"reason": reason})
    emit(
        as_json,
        created,
        lambda: out.print(
            f"request {created['request_id']} filed for {recording}; a DPO decides. "
            "Check with `telgate access list`."
        ),
    )


@access.command("list")
@click.option("--pending", is_flag=True, help="Only requests waiting for a decision.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True, help="The newest N.")
@json_option
@handle_errors
def access_list(pending: bool, limit: int, as_json: bool) -> None:
    """List access requests: a DPO sees all, others their own.

    The first time you list an approved request of yours, its one-time password is shown (once: it is
    never stored in a readable form, and no one else ever sees it).

    \b
    Examples:
      telgate access list --pending        # a DPO's queue
      telgate access list --json           # a requester: status, and a new grant's password once
    """
    query = {"limit": str(limit)} | ({"pending": "1"} if pending else {})
    answer = api().request("GET", "/v1/admin/access-requests", query=query)

    def human() -> None:
        _requests_table(answer["requests"])
        for r in answer["requests"]:
            if r.get("password"):
                out.print(
                    f"\n[bold]Grant {r['request_id']}[/bold] for recording {r['recording_id']}, "
                    f"valid until {_short_time(r['expires_at'])} UTC.\n"
                    f"One-time password (shown only now, store it or fetch now): [bold]{r['password']}[/bold]\n"
                    f"Fetch once with: telgate access fetch {r['request_id']} --out FILE   (prompts for it)"
                )

    emit(as_json, answer, human)


@access.command("approve")
@click.argument("request_id", metavar="REQ")
@click.option("--note", help="An optional note for the audit trail (no phone numbers).")
@json_option
@handle_errors
def access_approve(request_id: str, note: str | None, as_json: bool) -> None:
    """Approve request REQ (dpo; never your own). The requester collects the password.

    \b
    Example:
      telgate access approve req_0123456789abcdef --note "checked with the team lead"
    """
    answer = api().request(
        "POST", f"/v1/admin/access-requests/{request_id}/approve", {"note": note} if note else {}
    )
    emit(
        as_json,
        answer,
        lambda: out.print(
            f"request {request_id} approved; {answer['requester']} sees the one-time password with "
            f"`telgate access list` (valid until {answer['expires_at']})"
        ),
    )


@access.command("deny")
@click.argument("request_id", metavar="REQ")
@click.option("--reason", required=True, help="Why (the requester sees it; no phone numbers).")
@json_option
@handle_errors
def access_deny(request_id: str, reason: str, as_json: bool) -> None:
    """Deny request REQ with a reason (dpo; never your own).

    \b
    Example:
      telgate access deny req_0123456789abcdef --reason "no complaint on file for this call"
    """
    answer = api().request("POST", f"/v1/admin/access-requests/{request_id}/deny", {"reason": reason})
    emit(as_json, answer, lambda: out.print(f"request {request_id} denied"))


@access.command("fetch")
@click.argument("request_id", metavar="REQ")
@click.option("--password", help="The grant's one-time password (else --password-stdin, else a prompt).")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@out_option
@force_option
@json_option
@handle_errors
def access_fetch(
    request_id: str, password: str | None, password_stdin: bool, out_file: Path, force: bool, as_json: bool
) -> None:
    """Download the recording of your approved request REQ, once (the grant is then spent).

    The grant is spent as soon as the transfer starts, even if it fails midway; then ask again.

    \b
    Examples:
      telgate access fetch req_0123456789abcdef --out call.wav          # prompts for the password
      telgate access fetch req_0123456789abcdef --password "$PW" --out call.wav --json
    """
    if password is None:
        password = sys.stdin.readline().rstrip("\r\n") if password_stdin else click.prompt(
            "One-time password", hide_input=True
        )
    _check_destination(out_file, force)
    summary = download_to_file(
        f"/v1/admin/access-requests/{request_id}/fetch", {"password": password}, out_file, force, show=not as_json
    )
    document = {"request_id": request_id, **summary}
    emit(
        as_json,
        document,
        lambda: out.print(
            f"{summary['recording_id']} written to {out_file} ({summary['size']} bytes, sha256 {summary['sha256']})"
        ),
    )


# --- break-glass (attached to the `recordings` group) ---------------------------------------------


@click.command("get")
@click.argument("recording")
@click.option("--reason", required=True, help="Why you break the glass (mandatory, at least 10 characters).")
@out_option
@force_option
@json_option
@handle_errors
def recordings_get(recording: str, reason: str, out_file: Path, force: bool, as_json: bool) -> None:
    """Break-glass: download RECORDING directly (dpo only), with a mandatory reason; audited as such.

    For emergencies and for the case where no second DPO can approve. Every use is in the audit trail
    as `recording.break_glass` with your reason.

    \b
    Example:
      telgate recordings get rec_3f9c1e0b7a5d4c2e9f8a6b4c2d0e1f3a --out call.wav \\
          --reason "police request ref 2026/0412, no second DPO reachable"
    """
    _check_destination(out_file, force)
    summary = download_to_file(
        f"/v1/admin/recordings/{recording}/break-glass", {"reason": reason}, out_file, force, show=not as_json
    )
    emit(
        as_json,
        summary,
        lambda: out.print(
            f"{summary['recording_id']} written to {out_file} ({summary['size']} bytes); "
            "this break-glass access is audited"
        ),
    )

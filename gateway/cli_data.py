"""``telgate cdr search``, ``telgate ingest status/flush`` and ``telgate ingest quarantine ...``.

Searches and replays are identifiable access, audited server-side."""

from __future__ import annotations

import click

from gateway.cli_common import api, emit, err, handle_errors, json_option, out, short_time, table
from gateway.errors import EXIT_BAD_INPUT, EXIT_UNAVAILABLE


@click.group()
def cdr() -> None:
    """Look up call-detail records (identifiable; every search is audited)."""


@cdr.command("search")
@click.option("--number", help="A phone number, national or international (e.g. 07700 900123).")
@click.option("--call-id", help="A call id (Asterisk uniqueid/linkedid, FreeSWITCH uuid, CUCM call id).")
@click.option("--since", help="Only calls from this date or time on (ISO 8601).")
@json_option
@handle_errors
def cdr_search(number: str | None, call_id: str | None, since: str | None, as_json: bool) -> None:
    """Find the CDRs of a number or a call (dpo, tech_manager).

    \b
    Examples:
      telgate cdr search --number "07700 900123" --since 2026-01-01
      telgate cdr search --call-id 1741097109.18 --json
    """
    if (number is None) == (call_id is None):
        raise click.UsageError("give exactly one of --number or --call-id")
    query = {"number": number, "call_id": call_id, "since": since}
    answer = api().request("GET", "/v1/admin/cdr/search", query={k: v for k, v in query.items() if v})
    rows = [
        (r["start_at"], r["tenant"], r["call_id"], r["caller"], r["callee"], r["disposition"], r["billsec_s"])
        for r in answer["cdrs"]
    ]
    emit(
        as_json,
        answer,
        lambda: table("CDRs", ["start", "tenant", "call", "caller", "callee", "outcome", "billsec"], rows),
    )


@click.group()
def ingest() -> None:
    """Operate the ingest pipeline."""


@ingest.command("status")
@json_option
@handle_errors
def ingest_status(as_json: bool) -> None:
    """What is staged and not yet in the lake, what is in quarantine, when each PBX last posted (dpo, tech_manager).

    Exits 69 when a staged record has waited more than twice ingest.flush_interval: the lake is not
    taking records (the flusher is failing or falling behind; its errors are in the server's log).

    \b
    Examples:
      telgate ingest status
      telgate ingest status --json
    """
    answer = api().request("GET", "/v1/admin/ingest/status")
    rows = [
        (kind, s["records"], s["payloads"], short_time(s["oldest_staged_at"]), _age(s["oldest_age_seconds"]))
        for kind, s in answer["staged"].items()
    ]

    pbxs = [
        (name, short_time(a["last_post_at"]), _age(a["last_post_age_seconds"]), a["posts"], a["accepted"],
         a["duplicates"], a["rejected"])
        for name, a in answer["pbxs"].items()
    ]  # fmt: skip

    def show() -> None:
        table("staged, not yet in the lake", ["kind", "records", "payloads", "oldest", "waiting"], rows)
        table("PBXs", ["pbx", "last post", "ago", "posts", "accepted", "duplicates", "rejected"], pbxs)
        quarantine = answer["quarantine"]
        out.print(
            f"backlog {answer['backlog']} of {answer['max_staged_records']} (503 above); "
            f"quarantine: {quarantine['pending']} pending, {quarantine['replayed']} replayed"
        )
        if answer["flush_overdue"]:
            err.print("[red]flush overdue:[/red] staged records have waited more than twice the flush interval")

    emit(as_json, answer, show)
    if answer["flush_overdue"]:
        raise SystemExit(EXIT_UNAVAILABLE)


def _age(seconds: float | None) -> str:
    """``12s``, ``3m05s``, ``5h12m``, ``2d03h``."""
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@ingest.command("flush")
@json_option
@handle_errors
def ingest_flush(as_json: bool) -> None:
    """Move every staged record to the lake now (dpo, tech_manager; audited).

    \b
    Example:
      telgate ingest flush      # before a planned shutdown, or to see a batch in the lake at once
    """
    answer = api().request("POST", "/v1/admin/ingest/flush")
    emit(
        as_json, answer, lambda: out.print(f"{answer['flushed']} records moved to the lake; {answer['backlog']} staged")
    )


@ingest.group("quarantine")
def quarantine() -> None:
    """Records the gateway rejected, kept sealed for replay."""


@quarantine.command("list")
@click.option("--pbx", help="Only this PBX's records.")
@click.option("--pending", is_flag=True, help="Only records not replayed yet.")
@json_option
@handle_errors
def quarantine_list(pbx: str | None, pending: bool, as_json: bool) -> None:
    """List quarantined records, oldest first (where from and why; never their content).

    \b
    Examples:
      telgate ingest quarantine list --json
      telgate ingest quarantine list --pbx pbx1 --pending
    """
    query = {"pbx": pbx, "pending": "true" if pending else None}
    answer = api().request("GET", "/v1/admin/ingest/quarantine", query={k: v for k, v in query.items() if v})
    rows = [
        (q["id"], short_time(q["received_at"]), q["pbx"], q["format"], q["line"], q["reason"],
         short_time(q["replayed_at"]))
        for q in answer["quarantine"]
    ]  # fmt: skip

    def show() -> None:
        table("quarantine", ["id", "received", "pbx", "format", "line", "reason", "replayed"], rows)
        if answer["total"] > len(rows):
            out.print(f"the first {len(rows)} of {answer['total']}")

    emit(as_json, answer, show)


@quarantine.command("replay")
@click.argument("quarantine_id", required=False)
@click.option("--pbx", help="Every pending record of this PBX instead of one record.")
@json_option
@handle_errors
def quarantine_replay(quarantine_id: str | None, pbx: str | None, as_json: bool) -> None:
    """Parse quarantined records again with their PBX's current settings; exits 65 if any still fails.

    \b
    Examples:
      telgate pbx list            # fix the PBX profile first, then:
      telgate ingest quarantine replay q_0123456789abcdef
      telgate ingest quarantine replay --pbx pbx1
    """
    if (quarantine_id is None) == (pbx is None):
        raise click.UsageError("give a quarantine id or --pbx, not both")
    if pbx is not None:
        _replay_pbx(pbx, as_json)
        return
    answer = api().request("POST", f"/v1/admin/ingest/quarantine/{quarantine_id}/replay")
    if answer["replayed"]:
        emit(as_json, answer, lambda: out.print(f"{quarantine_id} replayed: {answer['accepted']} accepted"))
        return
    emit(as_json, answer, lambda: err.print(f"[red]{quarantine_id} still does not parse:[/red] {answer['rejected']}"))
    raise SystemExit(EXIT_BAD_INPUT)


def _replay_pbx(pbx: str, as_json: bool) -> None:
    """Replay a PBX's pending records, a batch per request, following the server's cursor."""
    client = api()
    totals = {"pbx": pbx, "replayed": 0, "still_rejected": 0, "accepted": 0, "duplicates": 0}
    after: str | None = None
    while True:
        answer = client.request("POST", "/v1/admin/ingest/quarantine/replay", {"pbx": pbx, "after": after})
        for key in ("replayed", "still_rejected", "accepted", "duplicates"):
            totals[key] += answer[key]
        after = answer["next"]
        if after is None:
            break
    emit(as_json, totals, lambda: out.print(
        f"{pbx}: {totals['replayed']} replayed ({totals['accepted']} records accepted, {totals['duplicates']}"
        f" duplicates), {totals['still_rejected']} still rejected"
    ))  # fmt: skip
    if totals["still_rejected"]:
        raise SystemExit(EXIT_BAD_INPUT)

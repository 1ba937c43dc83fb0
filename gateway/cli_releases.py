"""``telgate release ...``: hand recordings to a customer over SFTP with a single-use credential.

The password is printed once, by ``create`` and ``reissue``; the server keeps only its argon2id hash.
The ``--json`` shapes are documented in docs/cli.md.
"""

from __future__ import annotations

from typing import Any

import click

from gateway.cli_common import api, emit, handle_errors, json_option, out, table


@click.group()
def release() -> None:
    """Release recordings to a customer over SFTP (dpo, tech_manager)."""


def _print_credential(answer: dict[str, Any], heading: str) -> None:
    out.print(heading)
    out.print(f"  host:       {answer['host']}")
    out.print(f"  port:       {answer['port']}")
    out.print(f"  username:   {answer['username']}")
    out.print(f"  password:   [bold]{answer['password']}[/bold]   (shown once: hand it over now)")
    out.print(f"  expires at: {answer['expires_at']}")
    out.print(f"  recordings: {len(answer['recordings'])}")
    out.print(f"\nThe customer runs: sftp -P {answer['port']} {answer['username']}@{answer['host']}")
    out.print(
        "One collection from one address: each recording is destroyed once downloaded in full; "
        "`telgate release reissue` gives a new credential for what is left."
    )


@release.command("create")
@click.option("--tenant", required=True, help="The customer tenant whose recordings are released.")
@click.option("--recording", "recordings", multiple=True, help="A recording id (repeat for more).")
@click.option("--since", help="Received at or after: a date (2026-03-01, UTC) or an ISO time with offset.")
@click.option("--until", help="Received before (exclusive): a date or an ISO time with offset.")
@click.option("--ttl", help="Lifetime of the credential, e.g. 72h or 7d (default release.default_ttl).")
@json_option
@handle_errors
def release_create(
    tenant: str, recordings: tuple[str, ...], since: str | None, until: str | None, ttl: str | None, as_json: bool
) -> None:
    """Release recordings of one tenant; prints the SFTP credential once.

    \b
    Examples:
      telgate release create --tenant acme --recording rec_3f9c... --recording rec_81ad...
      telgate release create --tenant acme --since 2026-03-01 --until 2026-03-08 --ttl 72h --json
    """
    if recordings and (since or until):
        raise click.UsageError("give either --recording ... or --since/--until, not both")
    if not recordings and not (since and until):
        raise click.UsageError("give --recording ID (repeatable), or both --since and --until")
    body: dict[str, Any] = {"tenant": tenant}
    if recordings:
        body["recordings"] = list(recordings)
    else:
        body["since"], body["until"] = since, until
    if ttl:
        body["ttl"] = ttl
    answer = api().request("POST", "/v1/admin/releases", body)
    emit(as_json, answer, lambda: _print_credential(answer, f"release {answer['release_id']} for {tenant}"))


@release.command("list")
@click.option("--tenant", help="Only this customer tenant.")
@json_option
@handle_errors
def release_list(tenant: str | None, as_json: bool) -> None:
    """List releases, newest first, with their state and what is left to collect.

    \b
    Example:
      telgate release list --tenant acme --json
    """
    answer = api().request("GET", "/v1/admin/releases", query={"tenant": tenant} if tenant else None)
    rows = [
        (
            r["release_id"],
            r["tenant"],
            r["state"],
            r["username"],
            f"{r['recordings_collected']}/{r['recordings_total']}",
            r["claimed_by"],
            r["expires_at"],
        )
        for r in answer["releases"]
    ]
    emit(
        as_json,
        answer,
        lambda: table("releases", ["release", "tenant", "state", "username", "collected", "address", "expires"], rows),
    )


@release.command("show")
@click.argument("release_id")
@json_option
@handle_errors
def release_show(release_id: str, as_json: bool) -> None:
    """Show one release and each recording's file name and collection.

    \b
    Example:
      telgate release show rls_5e0c2b7d9a41f3c8
    """
    answer = api().request("GET", f"/v1/admin/releases/{release_id}")
    rows = [
        (i["name"], i["recording_id"], i["size"], i["collected_at"], i["collected_by"]) for i in answer["recordings"]
    ]

    def human() -> None:
        out.print(
            f"release {answer['release_id']} ({answer['tenant']}): {answer['state']}, "
            f"username {answer['username']}, expires {answer['expires_at']}"
        )
        table("recordings", ["name", "recording", "bytes", "collected", "from"], rows)

    emit(as_json, answer, human)


@release.command("revoke")
@click.argument("release_id")
@json_option
@handle_errors
def release_revoke(release_id: str, as_json: bool) -> None:
    """Kill a release's credential now (recordings not yet collected stay in the vault).

    \b
    Example:
      telgate release revoke rls_5e0c2b7d9a41f3c8
    """
    answer = api().request("POST", f"/v1/admin/releases/{release_id}/revoke")
    emit(as_json, answer, lambda: out.print(f"release {release_id} revoked"))


@release.command("reissue")
@click.argument("release_id")
@click.option("--ttl", help="Lifetime of the new credential, e.g. 72h (default release.default_ttl).")
@json_option
@handle_errors
def release_reissue(release_id: str, ttl: str | None, as_json: bool) -> None:
    """A new credential for what a broken or expired collection left; the old credential dies.

    \b
    Example:
      telgate release reissue rls_5e0c2b7d9a41f3c8 --ttl 24h --json
    """
    answer = api().request("POST", f"/v1/admin/releases/{release_id}/reissue", {"ttl": ttl} if ttl else None)
    emit(as_json, answer, lambda: _print_credential(answer, f"release {release_id}: new credential"))

"""The ``telgate`` command line.

``init``, ``serve`` and ``settings`` work on the local node; every other command is a client of the
admin API, authenticated by the session that ``telgate login`` saved. Every command takes ``--json``
(one JSON document on stdout) and prints tables otherwise. Exit codes follow INTERFACE.md through
``gateway.errors.ERROR_TABLE``: 0 ok, 2 usage, 65 bad input, 66 not found, 69 unavailable,
77 permission denied, 78 config.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from gateway import cli_access, cli_data, cli_principals, cli_releases, cli_vault
from gateway.cli_common import (
    api,
    config_option,
    emit,
    err,
    handle_errors,
    json_option,
    out,
    settings_from,
    table,
)
from gateway.client import AdminClient, StoredSession
from gateway.rbac import OPERATOR_ROLES
from gateway.settings import describe_settings


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog="Start: `telgate init`, `telgate serve`, then `telgate login --url http://127.0.0.1:8080 --user dpo`.",
)
@click.version_option(package_name="telgate")
def main() -> None:
    """telgate: data-protection gateway for telephony call data."""
    os.umask(0o077)  # everything telgate creates (lake files included) is private to its user


# --- local node ----------------------------------------------------------------------------------


@main.command()
@click.option("--data", type=click.Path(path_type=Path, file_okay=False), help="Data directory (default ./var).")
@config_option
@json_option
@handle_errors
def init(data: Path | None, config_file: Path | None, as_json: bool) -> None:
    """Create data directories, keys and the first DPO (idempotent; never overwrites a key).

    \b
    Example:
      telgate init --data ./var
    """
    from gateway.wiring import FIRST_DPO, initialise

    settings = settings_from(config_file, data)
    report, password = initialise(settings)
    document = {
        "data_dir": str(settings.data_dir),
        "created": report.created,
        "first_dpo": {"name": FIRST_DPO, "password": password} if password else None,
    }

    def human() -> None:
        if not report.created:
            out.print(f"{settings.data_dir} is already initialised; nothing changed.")
        for item in report.created:
            out.print(f"created {item}")
        if password:
            out.print(
                f"\nFirst DPO operator: [bold]{FIRST_DPO}[/bold]\nOne-time password (shown once, store it now): "
                f"[bold]{password}[/bold]"
            )

    emit(as_json, document, human)


@main.command()
@config_option
@click.option("--data", type=click.Path(path_type=Path, file_okay=False), help="Data directory (default ./var).")
@handle_errors
def serve(config_file: Path | None, data: Path | None) -> None:
    """Run the HTTP ingest/admin API and the SFTP release server until SIGTERM or SIGINT.

    \b
    Example:
      telgate serve --config /etc/telgate/telgate.toml
    """
    # Before gateway.server is imported: importing it already allocates through Arrow's C++ default memory
    # pool, which reads this variable once, at its first use (see gateway.server.tune_memory).
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    from gateway.server import serve_forever

    serve_forever(settings_from(config_file, data))


@main.command("settings")
@config_option
@json_option
@handle_errors
def show_settings(config_file: Path | None, as_json: bool) -> None:
    """Show the effective settings of this node (secrets redacted).

    \b
    Example:
      telgate settings --config /etc/telgate/telgate.toml --json
    """
    rows = describe_settings(settings_from(config_file))
    emit(
        as_json,
        {name: value for name, value, _ in rows},
        lambda: table("settings", ["setting", "value", "help"], rows),
    )


# --- session -------------------------------------------------------------------------------------


@main.command()
@click.option("--url", required=True, help="Gateway URL, e.g. http://127.0.0.1:8080")
@click.option("--user", required=True, help="Operator name.")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@json_option
@handle_errors
def login(url: str, user: str, password_stdin: bool, as_json: bool) -> None:
    """Log in and save the session token (0600) in the user config directory.

    \b
    Example:
      echo "$PW" | telgate login --url http://127.0.0.1:8080 --user dpo --password-stdin
    """
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True)
    answer = AdminClient(url).request("POST", "/v1/auth/login", {"user": user, "password": password})
    path = StoredSession(url=url, user=user, token=str(answer["token"])).save()
    document = {"user": answer["user"], "role": answer["role"], "expires_at": answer["expires_at"]}
    emit(
        as_json,
        document,
        lambda: out.print(f"logged in as {user} ({answer['role']}); session saved in {path}"),
    )


@main.command()
@json_option
@handle_errors
def logout(as_json: bool) -> None:
    """End the session and forget the token.

    \b
    Example:
      telgate logout
    """
    api().request("POST", "/v1/auth/logout")
    StoredSession.forget()
    emit(as_json, {"status": "logged out"}, lambda: out.print("logged out"))


@main.command()
@json_option
@handle_errors
def whoami(as_json: bool) -> None:
    """Show the logged-in operator.

    \b
    Example:
      telgate whoami --json
    """
    me = api().request("GET", "/v1/admin/whoami")
    emit(as_json, me, lambda: out.print(f"{me['name']} ({me['role']})"))


# --- operators -----------------------------------------------------------------------------------


@main.group()
def operator() -> None:
    """Manage operators (the DPO adds and disables; the tech manager lists)."""


@operator.command("add")
@click.argument("name")
@click.option(
    "--role",
    required=True,
    type=click.Choice(sorted(role.value for role in OPERATOR_ROLES)),
    help="The operator's role.",
)
@json_option
@handle_errors
def operator_add(name: str, role: str, as_json: bool) -> None:
    """Add an operator; prints their password once.

    \b
    Example:
      telgate operator add alice --role manager --json
    """
    created = api().request("POST", "/v1/admin/operators", {"name": name, "role": role})
    emit(
        as_json,
        created,
        lambda: out.print(
            f"operator {name} ({role}) created\npassword (shown once): [bold]{created['password']}[/bold]"
        ),
    )


@operator.command("list")
@json_option
@handle_errors
def operator_list(as_json: bool) -> None:
    """List operators.

    \b
    Example:
      telgate operator list --json
    """
    answer = api().request("GET", "/v1/admin/operators")
    rows = [(o["name"], o["role"], "yes" if o["disabled"] else "", o["created_at"]) for o in answer["operators"]]
    emit(as_json, answer, lambda: table("operators", ["name", "role", "disabled", "created"], rows))


@operator.command("disable")
@click.argument("name")
@json_option
@handle_errors
def operator_disable(name: str, as_json: bool) -> None:
    """Disable an operator and end their sessions.

    \b
    Example:
      telgate operator disable alice
    """
    answer = api().request("POST", f"/v1/admin/operators/{name}/disable")
    emit(as_json, answer, lambda: out.print(f"operator {name} disabled"))


# --- audit ---------------------------------------------------------------------------------------


@main.group()
def audit() -> None:
    """Read and verify the tamper-evident audit trail."""


@audit.command("verify")
@json_option
@handle_errors
def audit_verify(as_json: bool) -> None:
    """Verify the hash chain; exits 65 and names the first bad entry when it is broken.

    \b
    Example:
      telgate audit verify --json
    """
    report = api().request("GET", "/v1/admin/audit/verify")

    def human() -> None:
        if report["ok"]:
            out.print(f"audit trail intact: {report['entries']} entries")
        else:
            err.print(f"[red]audit trail BROKEN at entry {report['first_bad_seq']}:[/red] {report['problem']}")

    emit(as_json, report, human)
    if not report["ok"]:
        sys.exit(65)


@audit.command("export")
@click.option("--since", help="ISO date or time, e.g. 2026-01-01 or 2026-01-01T00:00:00+00:00.")
@click.option("--out", "out_file", type=click.Path(path_type=Path, dir_okay=False), help="Write JSON to a file.")
@json_option
@handle_errors
def audit_export(since: str | None, out_file: Path | None, as_json: bool) -> None:
    """Export audit entries (JSON with --json or --out, a table otherwise).

    \b
    Examples:
      telgate audit export --since 2026-03-01
      telgate audit export --since 2026-03-01 --out audit-march.json
    """
    if since and len(since) == 10:
        since = f"{since}T00:00:00+00:00"
    answer = api().request("GET", "/v1/admin/audit", query={"since": since} if since else None)
    if out_file is not None:
        out_file.write_text(json.dumps(answer, indent=2))
        if not as_json:
            out.print(f"{len(answer['entries'])} entries written to {out_file}")
            return
    rows = [
        (
            e["seq"],
            e["at"],
            e["actor"],
            e["role"],
            e["action"],
            e["object"],
            e["outcome"],
            e["source"],
            e["reason"],
        )
        for e in answer["entries"]
    ]
    emit(
        as_json,
        answer,
        lambda: table("audit", ["seq", "at", "actor", "role", "action", "object", "outcome", "source", "reason"], rows),
    )


# Domain command groups live in their own modules.
main.add_command(cli_principals.customer)
main.add_command(cli_principals.pbx)
main.add_command(cli_vault.recordings)
cli_vault.recordings.add_command(cli_access.recordings_get)  # break-glass: `recordings get`
main.add_command(cli_vault.keys)
main.add_command(cli_vault.vault)
main.add_command(cli_data.cdr)
main.add_command(cli_data.ingest)
main.add_command(cli_releases.release)
main.add_command(cli_access.access)

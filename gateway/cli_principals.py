"""``telgate customer ...`` and ``telgate pbx ...``."""

from __future__ import annotations

import click

from gateway.cli_common import api, emit, handle_errors, json_option, out, short_time, table


@click.group()
def customer() -> None:
    """Manage customer tenants (dpo, tech_manager)."""


@customer.command("add")
@click.argument("tenant")
@click.option("--name", required=True, help="The customer's display name.")
@json_option
@handle_errors
def customer_add(tenant: str, name: str, as_json: bool) -> None:
    """Register a customer tenant.

    \b
    Example:
      telgate customer add acme --name "Acme Ltd"
    """
    created = api().request("POST", "/v1/admin/customers", {"tenant": tenant, "name": name})
    emit(as_json, created, lambda: out.print(f"customer {tenant} ({name}) added"))


@customer.command("list")
@json_option
@handle_errors
def customer_list(as_json: bool) -> None:
    """List customers.

    \b
    Example:
      telgate customer list --json
    """
    answer = api().request("GET", "/v1/admin/customers")
    rows = [(c["tenant"], c["name"], c["created_at"]) for c in answer["customers"]]
    emit(as_json, answer, lambda: table("customers", ["tenant", "name", "created"], rows))


@click.group()
def pbx() -> None:
    """Manage PBX principals (dpo, tech_manager)."""


@pbx.command("add")
@click.argument("name")
@click.option("--tenant", required=True, help="The customer tenant this PBX writes to.")
@click.option("--timezone", help="IANA zone of the PBX's local times (default from settings).")
@click.option("--country", help="ISO 3166 country for its numbers (default from settings, GB).")
@click.option("--csv-columns", default="auto", show_default=True, help="Asterisk Master.csv columns: auto or names.")
@json_option
@handle_errors
def pbx_add(name: str, tenant: str, timezone: str | None, country: str | None, csv_columns: str, as_json: bool) -> None:
    """Register a PBX; prints its token once.

    \b
    Example:
      telgate pbx add pbx1 --tenant acme --timezone Europe/London --country GB --json
    """
    body = {"name": name, "tenant": tenant, "csv_columns": csv_columns}
    if timezone:
        body["timezone"] = timezone
    if country:
        body["country"] = country
    created = api().request("POST", "/v1/admin/pbxs", body)
    emit(as_json, created, lambda: out.print(f"PBX {name} added\ntoken (shown once): [bold]{created['token']}[/bold]"))


@pbx.command("list")
@json_option
@handle_errors
def pbx_list(as_json: bool) -> None:
    """List PBXs.

    \b
    Example:
      telgate pbx list
    """
    answer = api().request("GET", "/v1/admin/pbxs")
    rows = [
        (p["name"], p["tenant"], p["timezone"], p["country"], p["csv_columns"], "yes" if p["revoked"] else "",
         short_time(p["activity"]["last_post_at"]) if p["activity"] else "never")
        for p in answer["pbxs"]
    ]  # fmt: skip
    columns = ["name", "tenant", "zone", "country", "csv", "revoked", "last post"]
    emit(as_json, answer, lambda: table("PBXs", columns, rows))


@pbx.command("revoke")
@click.argument("name")
@json_option
@handle_errors
def pbx_revoke(name: str, as_json: bool) -> None:
    """Revoke a PBX's token.

    \b
    Example:
      telgate pbx revoke pbx1
    """
    answer = api().request("POST", f"/v1/admin/pbxs/{name}/revoke")
    emit(as_json, answer, lambda: out.print(f"PBX {name} revoked"))

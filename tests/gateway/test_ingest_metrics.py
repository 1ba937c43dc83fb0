"""Ingest requests are counted and timed per route and status, whatever the answer."""

from __future__ import annotations

import re

import aiohttp

from gateway.server import RunningServer
from tests.conftest import auth
from tests.gateway.test_ingest_api import VECTORS, pbx_token


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


async def test_requests_are_counted_and_timed_per_route_and_status(
    http: aiohttp.ClientSession, node: RunningServer, dpo_token: str
) -> None:
    token = await pbx_token(http, node, dpo_token)
    body = (VECTORS / "freeswitch/a_leg.json").read_bytes()
    url = f"{node.url}/v1/cdr/freeswitch-json"
    statuses = []
    for headers in (auth(token), auth(token), auth("pbx_wrong"), {}):
        async with http.post(url, data=body, headers={**headers, "Content-Type": "application/json"}) as response:
            statuses.append(response.status)
    async with http.post(url, data=b"{}", headers={**auth(token), "Content-Type": "text/csv"}) as response:
        statuses.append(response.status)
    async with http.get(f"{node.url}/v1/no-such-thing") as response:
        statuses.append(response.status)
    assert statuses == [202, 202, 401, 401, 415, 404]
    async with http.get(f"{node.url}/metrics") as response:
        text = await response.text()
    route = "/v1/cdr/freeswitch-json"
    assert sample(text, "telgate_http_requests_total", route=route, status="202") == 2
    assert sample(text, "telgate_http_requests_total", route=route, status="401") == 2
    assert sample(text, "telgate_http_requests_total", route=route, status="415") == 1
    assert sample(text, "telgate_http_requests_total", route="unmatched", status="404") == 1
    assert sample(text, "telgate_http_request_seconds_count", route=route) == 5
    assert sample(text, "telgate_http_request_seconds_sum", route=route) > 0
    assert sample(text, "telgate_http_request_seconds_bucket", route=route, le="+Inf") == 5

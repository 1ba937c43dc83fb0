"""``telgate serve`` with HTTP worker processes: a real supervisor and its workers on one port.

Shown here: both workers take connections (SO_REUSEPORT), any worker answers admin and ingest
requests and the records land in the lake exactly once; a worker killed under load is started again
and nothing it acknowledged is lost; workers never import the lake's libraries; SIGTERM stops
everything cleanly and a SIGKILLed supervisor leaves no worker behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.settings import load_settings
from gateway.wiring import build_gateway
from tests.conftest import cli_env
from tests.gateway.test_cli import FAST_ENV, TELGATE, run
from tests.gateway.test_crash import admin_setup, cdr_body
from tests.gateway.test_ingest_metrics import sample

WORKERS = 2
pytestmark = pytest.mark.timeout(180)


class Node:
    """A ``telgate serve`` supervisor with HTTP workers, on ports the kernel picks."""

    def __init__(self, tmp_path: Path) -> None:
        self.env = cli_env(tmp_path / "cli") | FAST_ENV | {
            "TELGATE_SERVER_HTTP_PORT": "0",
            "TELGATE_SERVER_SFTP_PORT": "0",
            "TELGATE_SERVER_HTTP_WORKERS": str(WORKERS),
        }
        self.data = tmp_path / "var"
        initialised = run(["init", "--data", str(self.data), "--json"], self.env)
        assert initialised.returncode == 0, initialised.stderr
        self.password = json.loads(initialised.stdout)["first_dpo"]["password"]
        self.log = tmp_path / "serve.log"
        with self.log.open("wb") as log:  # the node's own log, shown when a stop goes wrong
            self.process = subprocess.Popen(
                [TELGATE, "serve", "--data", str(self.data)],
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # printed once every worker serves
        found = re.search(r"serving HTTP on (\S+) ", line)
        assert found, line
        self.url = found.group(1)

    def workers(self) -> list[int]:
        """Pids of the supervisor's HTTP workers (its children running ``spawn_main``)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == self.process.pid and b"spawn_main" in cmdline:
                pids.append(int(entry.name))
        return sorted(pids)

    def stop(self) -> int:
        """SIGTERM and the exit code; the node's log is printed when it did not stop cleanly in time."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.returncode != 0:
            print(f"telgate serve exited with {self.process.returncode} {time.monotonic() - started:.1f} s after "
                  f"the stop; its log:\n" + self.log.read_text(errors="replace")[-20_000:])  # fmt: skip
        return self.process.returncode


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    started = Node(tmp_path)
    try:
        yield started
    finally:
        started.stop()


def sockets_of(pid: int) -> int:
    """Open sockets of a process."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return count


def mapped_libraries(pid: int) -> str:
    """The process's memory map (which shared objects it loaded)."""
    return Path(f"/proc/{pid}/maps").read_text()


async def wait_for_workers(node: Node, count: int, other_than: set[int]) -> list[int]:
    """The worker pids once ``count`` are running and none is in ``other_than`` (bounded poll of /proc)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = node.workers()
        if len(pids) == count and not set(pids) & other_than:
            async with aiohttp.ClientSession() as http:  # and serving
                async with http.get(f"{node.url}/healthz") as response:
                    if response.status == 200:
                        return pids
        await asyncio.sleep(0.1)  # polling the kernel's process table: there is nothing to await
    raise AssertionError(f"workers did not come back: {node.workers()}")


def lake_legs(node: Node) -> list[str]:
    """Every CDR leg in the lake, after flushing what is staged (the node is stopped)."""
    settings = load_settings(environ=node.env, overrides={"server": {"data_dir": str(node.data)}})
    gateway = build_gateway(settings)
    try:
        gateway.flusher.flush_all()
        return [str(leg) for leg in gateway.lake.scan("cdr", columns=["call_id"]).column("call_id").to_pylist()]
    finally:
        gateway.close()


async def test_workers_share_the_port_and_every_record_lands_once(node: Node) -> None:
    pids = node.workers()
    assert len(pids) == WORKERS
    idle = {pid: sockets_of(pid) for pid in pids}
    token = await admin_setup(node.url, node.password)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def post(index: int) -> dict[str, int]:
            _leg, body = cdr_body(index)
            async with http.post(f"{node.url}/v1/cdr/freeswitch-json", data=body, headers=headers) as response:
                assert response.status == 202
                return dict(await response.json())

        answers = await asyncio.gather(*(post(index) for index in range(200)))
        assert sum(answer["accepted"] for answer in answers) == 200
        # 16 keep-alive connections are open now; the kernel spread them over both workers.
        assert all(sockets_of(pid) > idle[pid] for pid in pids), "every worker holds client connections"
        again = await asyncio.gather(*(post(index) for index in range(0, 200, 10)))
        assert all(answer == {"accepted": 0, "duplicates": 1, "rejected": []} for answer in again)
    # Whichever worker answers a scrape, it counts every worker's requests.
    for _ in range(8):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as scraper:
            async with scraper.get(f"{node.url}/metrics") as response:
                text = await response.text()
        assert sample(text, "telgate_http_requests_total", route="/v1/cdr/freeswitch-json", status="202") == 220
        assert 'telgate_ingest_staged_records{kind="cdr"}' in text
    for pid in pids:  # the lake's libraries stay out of the workers (the supervisor's first flush loads them)
        assert "pydantic_core" not in mapped_libraries(pid)
    assert node.stop() == 0
    assert not node.workers()
    legs = await asyncio.to_thread(lake_legs, node)
    assert sorted(legs) == sorted(cdr_body(index)[0] for index in range(200))
    assert "pydantic_core" in mapped_libraries(os.getpid())  # the check above sees the lake's libraries


async def test_a_killed_worker_is_replaced_and_loses_nothing_acknowledged(node: Node) -> None:
    token = await admin_setup(node.url, node.password)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    acked: set[str] = set()
    under_way = asyncio.Event()
    victim = node.workers()[0]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8, force_close=True)) as http:

        async def post(index: int) -> None:
            leg, body = cdr_body(index)
            while True:  # like a PBX: post again until acknowledged
                try:
                    async with http.post(f"{node.url}/v1/cdr/freeswitch-json", data=body, headers=headers) as response:
                        if response.status == 202:
                            answer = await response.json()
                            assert answer["accepted"] + answer["duplicates"] == 1
                            acked.add(leg)
                            if len(acked) == 40:
                                under_way.set()
                            return
                except (aiohttp.ClientError, ConnectionError):
                    pass  # the worker died mid-request: not acknowledged, post again

        first = asyncio.gather(*(post(index) for index in range(150)))
        await under_way.wait()  # load is running: kill the worker in the middle of it
        os.kill(victim, signal.SIGKILL)
        await first
        replaced = await wait_for_workers(node, WORKERS, {victim})
        await asyncio.gather(*(post(index) for index in range(150, 200)))
    assert len(replaced) == WORKERS
    assert node.stop() == 0
    legs = await asyncio.to_thread(lake_legs, node)
    assert sorted(legs) == sorted(acked)
    assert len(acked) == 200


async def test_sigterm_while_a_worker_starts_again_stops_cleanly(node: Node) -> None:
    """A stop that lands while a replacement worker is still starting ends that worker too."""
    before = node.workers()
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while not (fresh := set(node.workers()) - set(before)):  # spawned: not serving for a while yet
        assert time.monotonic() < deadline, "no replacement worker was spawned"
        await asyncio.sleep(0.01)  # polling the kernel's process table: there is nothing to await
    assert node.stop() == 0
    assert not [pid for pid in fresh | set(before) if running(pid)], "no orphaned worker"


async def test_a_killed_supervisor_takes_its_workers_along(node: Node) -> None:
    pids = node.workers()
    assert len(pids) == WORKERS
    exits = [pidfd_exit(pid) for pid in pids]
    node.process.send_signal(signal.SIGKILL)
    node.process.wait(timeout=30)
    # The kernel signals them (PR_SET_PDEATHSIG); they drain and exit.
    await asyncio.wait_for(asyncio.gather(*exits), timeout=30)
    assert not [pid for pid in pids if running(pid)], "no orphaned worker"


def pidfd_exit(pid: int) -> asyncio.Future[None]:
    """Resolves when process ``pid`` (not our child) exits: its pidfd becomes readable."""
    loop = asyncio.get_running_loop()
    fd = os.pidfd_open(pid)
    done: asyncio.Future[None] = loop.create_future()

    def exited() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        done.set_result(None)

    loop.add_reader(fd, exited)
    return done


def running(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

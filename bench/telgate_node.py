"""A real ``telgate serve`` for the benchmarks, and the helpers they share (ports, processes, sizes).

``TelgateNode`` runs ``telgate init`` and ``telgate serve`` in a work directory of its own, on free
loopback ports, then logs the first DPO in and creates a customer (``bench``) and a PBX
(``bench-pbx``, Europe/London, GB). Standard library only: ``bench/ingest.py`` and ``bench/vault.py``
share their names with the packages they measure, so they import this module before they drop their
own directory from ``sys.path``, and it must not import those packages itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

TICKS = os.sysconf("SC_CLK_TCK")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """Parse ``1GiB``, ``512MiB``, ``100MB`` or a plain byte count (an argparse type)."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if match is None or match.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Return once something listens on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)  # a benchmark's start-up, not a test: nothing to await
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def stop_process(process: subprocess.Popen[bytes], timeout: float, *, pipes: tuple[IO[bytes] | None, ...] = ()) -> None:
    """SIGTERM ``process`` and wait ``timeout`` seconds for it, then SIGKILL; close ``pipes`` afterwards."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pipe in pipes:
        if pipe is not None:
            pipe.close()


def cpu_ticks() -> list[int]:
    """The machine's CPU time so far (/proc/stat): user, nice, system, idle, iowait, irq, softirq, steal."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def steal_share(before: list[int], after: list[int]) -> float:
    """Share of the machine's CPU time the hypervisor gave to others (steal) between two ``cpu_ticks``.

    On a shared VM this moves every rate of a run (22 % of the time went to steal during one ingest
    run recorded in docs/BENCHMARKS.md), so the benchmarks print it next to their figures.
    """
    delta = [b - a for a, b in zip(before, after, strict=True)]
    return delta[7] / sum(delta) if sum(delta) else 0.0


def process_cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds a process has used so far (all its threads), plus its reaped children's
    when ``children``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICKS


class TelgateNode:
    """``telgate serve`` in a subprocess with a DPO session, a customer and a PBX; ``settings`` are more
    ``TELGATE_*`` variables (the caller's own ``TELGATE_*`` environment is left out)."""

    def __init__(self, workdir: Path, settings: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.data = workdir / "var"
        telgate = str(Path(sys.executable).with_name("telgate"))
        self.http_port, self.sftp_port = free_port(), free_port()
        self.env = (
            {k: v for k, v in os.environ.items() if not k.startswith("TELGATE_")}
            | {
                "TELGATE_SERVER_HTTP_PORT": str(self.http_port),
                "TELGATE_SERVER_SFTP_PORT": str(self.sftp_port),
                "TELGATE_CLI_CONFIG_DIR": str(workdir / "cli"),
            }
            | (settings or {})
        )
        init = subprocess.run(
            [telgate, "init", "--data", str(self.data), "--json"],
            env=self.env, capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        password = json.loads(init.stdout)["first_dpo"]["password"]
        self._log = open(workdir / "serve.log", "wb")  # closed in stop()
        self.process = subprocess.Popen(
            [telgate, "serve", "--data", str(self.data)], env=self.env, stdout=subprocess.PIPE, stderr=self._log
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline().decode()
        if "serving" not in ready:
            self.stop()
            raise RuntimeError(f"telgate serve did not start: {ready!r}; see {workdir / 'serve.log'}")
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.session = ""
        self.session = str(self.admin("POST", "/v1/auth/login", {"user": "dpo", "password": password})["token"])
        self.admin("POST", "/v1/admin/customers", {"tenant": "bench", "name": "Bench Ltd"})
        pbx = {"name": "bench-pbx", "tenant": "bench", "timezone": "Europe/London", "country": "GB"}
        self.pbx_token = str(self.admin("POST", "/v1/admin/pbxs", pbx)["token"])

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One admin API call, with the DPO's session once logged in."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        request.add_header("Content-Type", "application/json")
        if self.session:
            request.add_header("Authorization", f"Bearer {self.session}")
        with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310 - loopback http
            return dict(json.loads(response.read()))

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM the server and wait for it."""
        stop_process(self.process, 60, pipes=(self.process.stdout, self._log))

"""Ingest throughput: a real ``telgate serve`` against baselines measured in the same run.

Usage::

    .venv/bin/python bench/ingest.py [--cdr-seconds 15] [--connections 128] [--generator wrk|aiohttp]
                                     [--csv-lines 1000000] [--batch-lines 50000] [--concurrency 3]
                                     [--skip-cdr] [--skip-csv]

(a) FreeSWITCH JSON, one POST per CDR over many keep-alive connections. The same load generator
    (``wrk`` with a Lua script by default, or aiohttp client processes with ``--generator aiohttp``)
    drives first a no-op aiohttp server (a subprocess that reads the body and answers 202 with a tiny
    JSON body), then ``telgate serve``. Every post is a realistic mod_json_cdr document (about 2.2 KB)
    with a unique leg uuid, a caller or callee drawn from the Ofcom drama ranges 07700 900xxx and
    020 7946 0xxx, and an internal extension on the other side. A short warm-up run precedes each
    measured run (connections opened, the first subject tokens created). Reported: requests/s, p50 and
    p99 acknowledgement latency (closed loop: each connection sends its next post when the previous
    answer arrives), CPU seconds of the server and of the generator, and the ratio telgate / no-op.
(b) Asterisk Master.csv, 21-column profile, ``--csv-lines`` lines drawn from about 20,000 drama numbers,
    extensions, dispositions and unique uniqueid + sequence. Baseline: ``pyarrow.csv.read_csv`` of the
    file plus ``pyarrow.parquet.write_table(compression="zstd")``. Then the file is POSTed to telgate in
    ``--batch-lines`` batches, ``--concurrency`` at a time; timed until every batch has its 202 (every
    row durable in staging), then until ``POST /v1/admin/ingest/flush`` returns (every row in the lake).
    The lake is then opened read-only from this process to count the rows.
Memory: the gateway's VmRSS is sampled every 50 ms from /proc for the whole run; VmHWM at the end.
Steal: each measured run is printed with the share of the machine's CPU time that went to other guests
of the hypervisor meanwhile (``steal`` in /proc/stat), which moves rates on a shared VM.

Everything runs on loopback; the load generator and the gateway share the machine's cores, which the
report says. Work files live in a temp dir under ``bench/out/`` and are removed afterwards. Exit code 1
when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

# Imported while this directory is still on sys.path (standard library only, see its docstring).
from telgate_node import TICKS, TelgateNode, cpu_ticks, free_port, steal_share, stop_process, wait_for_port

# This script is itself named ``ingest.py``: drop its directory from sys.path so that ``import ingest``
# finds the package, not this file.
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != Path(__file__).resolve().parent]

SCRIPT = Path(__file__).resolve()
CSV_COLUMNS = (
    "accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel", "lastapp", "lastdata",
    "start", "answer", "end", "duration", "billsec", "disposition", "amaflags",
    "uniqueid", "userfield", "peeraccount", "linkedid", "sequence",
)  # fmt: skip
# Ofcom drama ranges (never allocated to real subscribers), national format: prefix + 3 digits.
DRAMA_PREFIXES = (
    "0113496", "0114496", "0115496", "0116496", "0117496", "0118496", "0121496", "0131496", "0141496",
    "0151496", "0161496", "0207946", "0191498", "0289018", "0292018", "0163296", "0770090", "0808157",
    "0306999", "0909879",
)  # fmt: skip


# ------------------------------------------------------------------------------------------ processes


def proc_status(pid: int, name: str) -> int:
    """A memory figure of a process from /proc (``VmRSS``, ``VmHWM``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(name)


def proc_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant (the supervisor and its HTTP workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by a process and its live descendants (all threads)."""
    total = 0.0
    for member in proc_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def proc_pss(pid: int) -> int:
    """Proportional set size in bytes: shared pages divided among the processes that map them."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise KeyError("Pss")


@dataclass
class TreeMemory:
    """One reading of a process tree: total RSS, total PSS, the largest process's RSS."""

    rss: int = 0
    pss: int = 0
    largest: int = 0
    processes: int = 0

    @classmethod
    def read(cls, pid: int) -> TreeMemory:
        """Read the tree of ``pid`` now (processes that vanish meanwhile are left out)."""
        reading = cls()
        for member in proc_tree(pid):
            try:
                rss, pss = proc_status(member, "VmRSS"), proc_pss(member)
            except (OSError, KeyError):
                continue
            reading.rss += rss
            reading.pss += pss
            reading.largest = max(reading.largest, rss)
            reading.processes += 1
        return reading

    def max(self, other: TreeMemory) -> TreeMemory:
        """Field-wise maximum."""
        return TreeMemory(
            max(self.rss, other.rss), max(self.pss, other.pss), max(self.largest, other.largest),
            max(self.processes, other.processes),
        )  # fmt: skip

    def describe(self) -> str:
        """Human-readable."""
        return (f"PSS {self.pss / 1e6:.0f} MB, RSS {self.rss / 1e6:.0f} MB over {self.processes} processes, "
                f"largest process {self.largest / 1e6:.0f} MB")  # fmt: skip


class GatewayProcess(TelgateNode):
    """``TelgateNode`` with the admin flush this benchmark times."""

    def flush(self) -> dict[str, Any]:
        """Flush everything staged to the lake (admin endpoint); its answer."""
        return self.admin("POST", "/v1/admin/ingest/flush")


class NoopServer:
    """The baseline: aiohttp server processes that read each body and answer 202 with tiny JSON.

    ``processes`` > 1 share the port with SO_REUSEPORT, as telgate's HTTP workers do; ``loop`` is
    asyncio (aiohttp's default) or uvloop (what ``telgate serve`` runs on).
    """

    def __init__(self, processes: int = 1, loop: str = "asyncio") -> None:
        self.port = free_port()
        self.label = f"no-op {processes}x{loop}"
        command = [sys.executable, str(SCRIPT), "noop-server", "--port", str(self.port), "--loop", loop]
        self.process = subprocess.Popen([*command, "--processes", str(processes)])  # starts the others itself
        wait_for_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM the servers and wait for them."""
        stop_process(self.process, 30)


def run_noop_server(port: int, loop: str, processes: int) -> None:
    """``noop-server``: what an aiohttp handler costs with no work at all (same aiohttp).

    With ``processes`` > 1 this process starts the others as its children (so that the benchmark's
    CPU accounting of the process tree sees them all) and stops them when it is stopped.
    """
    from aiohttp import web

    command = [sys.executable, str(SCRIPT), "noop-server", "--port", str(port), "--loop", loop, "--processes", "1"]
    others = [subprocess.Popen(command) for _ in range(processes - 1)]

    if loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"accepted": 1, "duplicates": 0, "rejected": []}, status=202)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/cdr/freeswitch-json", accept)
    try:  # run_app returns on SIGTERM
        web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=1024, reuse_port=True)
    finally:
        _stop_all(others)


def _stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=30)


class RssSampler:
    """Samples the memory of a process tree every 50 ms in a thread; remembers the peaks per phase."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.phase = "start"
        self.peaks: dict[str, TreeMemory] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            reading = TreeMemory.read(self.pid)
            if not reading.processes:
                return
            self.peaks[self.phase] = self.peaks.get(self.phase, TreeMemory()).max(reading)

    @property
    def peak(self) -> TreeMemory:
        """Highest readings sampled so far, over every phase."""
        peak = TreeMemory()
        for reading in self.peaks.values():
            peak = peak.max(reading)
        return peak

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------- (a) FreeSWITCH JSON

_FS_TEMPLATE = (
    '{"core-uuid":"%(core)s","switchname":"fs-bench","channel_data":{"state":"CS_REPORTING",'
    '"state_number":"11","flags":"0=1;1=1;3=1;38=1;39=1","caps":"1=1;2=1;3=1;4=1;5=1;6=1",'
    '"direction":"inbound"},"variables":{"direction":"inbound","uuid":"%(uuid)s","session_id":"%(seq)s",'
    '"sip_from_user":"%(from_enc)s","sip_from_uri":"%(from_enc)s%%40trunk.example.net",'
    '"sip_from_host":"trunk.example.net","channel_name":"sofia/external/%(from_enc)s%%40trunk.example.net",'
    '"sip_network_ip":"192.0.2.1","sip_received_ip":"192.0.2.1","sip_call_id":"%(uuid)s%%40192.0.2.1",'
    '"caller_id_name":"Caller%%20%(seq)s","caller_id_number":"%(from_enc)s","destination_number":"%(to)s",'
    '"accountcode":"acme","call_direction":"%(direction)s","start_epoch":"%(start)s",'
    '"start_uepoch":"%(start)s000000","answer_epoch":"%(answer)s","answer_uepoch":"%(answer)s000000",'
    '"end_epoch":"%(end)s","end_uepoch":"%(end)s000000","duration":"%(duration)s","mduration":"%(duration)s000",'
    '"billsec":"%(billsec)s","billmsec":"%(billsec)s000","hangup_cause":"%(cause)s","hangup_cause_q850":"16",'
    '"sip_hangup_disposition":"recv_bye","last_app":"bridge","last_arg":"user/%(to)s%%40pbx.example.net",'
    '"bridge_channel":"sofia/internal/%(to)s%%40192.0.2.10%%3A5060","read_codec":"PCMA","write_codec":"PCMA"},'
    '"app_log":{"applications":[{"app_name":"set","app_data":"call_direction=%(direction)s"},'
    '{"app_name":"bridge","app_data":"user/%(to)s@pbx.example.net"}]},"callflow":[{"dialplan":"XML",'
    '"profile_index":"1","extension":{"name":"inbound-did","number":"%(to)s","applications":[{"app_name":'
    '"bridge","app_data":"user/%(to)s@pbx.example.net"}]},"caller_profile":{"username":"","dialplan":"XML",'
    '"caller_id_name":"Caller %(seq)s","ani":"%(from)s","aniii":"","caller_id_number":"%(from)s",'
    '"network_addr":"192.0.2.1","rdnis":"","destination_number":"%(to)s","uuid":"%(uuid)s",'
    '"source":"mod_sofia","context":"public","chan_name":"sofia/external/%(from)s@trunk.example.net"},'
    '"times":{"created_time":"%(start)s000000","profile_created_time":"%(start)s000000","progress_time":"0",'
    '"progress_media_time":"0","answered_time":"%(answer)s000000","bridged_time":"%(answer)s010000",'
    '"hangup_time":"%(end)s000000","resurrect_time":"0","transfer_time":"0"}}]}'
)
_FS_KEYS = ("core", "uuid", "seq", "from_enc", "from", "to", "direction", "start", "answer", "end",
            "duration", "billsec", "cause")  # fmt: skip


def freeswitch_values(prefix: int, seq: int, rng: random.Random) -> dict[str, str]:
    """The varying fields of one FreeSWITCH leg: unique uuid, drama number on one side, extension on the other."""
    external = f"+447700900{rng.randrange(1000):03d}" if rng.random() < 0.5 else f"+442079460{rng.randrange(1000):03d}"
    extension = str(600 + rng.randrange(200))
    inbound = rng.random() < 0.7
    start = 1_741_000_000 + seq // 10
    billsec = rng.randrange(0, 600)
    return {
        "core": "0b9c8d7e-6f5a-4b3c-9d2e-1f0a9b8c7d6e",
        "uuid": f"{prefix:08x}-{rng.randrange(65536):04x}-4{rng.randrange(4096):03x}-{rng.randrange(32768, 49152):04x}-"
        f"{seq * 2654435761 % 2**48:012x}",
        "seq": str(seq),
        "from_enc": (external if inbound else extension).replace("+", "%2B"),
        "from": external if inbound else extension,
        "to": extension if inbound else external,
        "direction": "inbound" if inbound else "outbound",
        "start": str(start),
        "answer": str(start + 8),
        "end": str(start + 8 + billsec),
        "duration": str(8 + billsec),
        "billsec": str(billsec),
        "cause": "NORMAL_CLEARING",
    }


FS_EXTERNALS = [f"+447700900{n:03d}" for n in range(1000)] + [f"+442079460{n:03d}" for n in range(1000)]


async def _prime_subjects(url: str, token: str) -> int:
    """Post one CDR per drama number, so that the measured runs see callers the gateway has seen before."""
    import aiohttp

    rng = random.Random(0)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    bodies = []
    for seq, external in enumerate(FS_EXTERNALS):
        values = freeswitch_values(0xFFFF, seq, rng) | {"from": external, "from_enc": external.replace("+", "%2B")}
        values |= {"to": "601", "direction": "inbound"}
        bodies.append((_FS_TEMPLATE % values).encode())
    queue = list(reversed(bodies))
    accepted = 0
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal accepted
            while queue:
                body = queue.pop()
                async with session.post(url + "/v1/cdr/freeswitch-json", data=body, headers=headers) as response:
                    if response.status != 202:
                        raise RuntimeError(f"priming failed: {response.status} {await response.text()}")
                    accepted += int((await response.json())["accepted"])

        await asyncio.gather(*(worker() for _ in range(32)))
    return accepted


def freeswitch_body(prefix: int, seq: int, rng: random.Random) -> bytes:
    """One realistic mod_json_cdr post body."""
    return (_FS_TEMPLATE % freeswitch_values(prefix, seq, rng)).encode()


_WRK_LUA = r"""
local template = [==[%(template)s]==]
local prefix = 0
local counter = 0
local thread_id = 0
local nthreads = 0
local token = ""

function setup(thread)
  thread:set("thread_id", nthreads)
  nthreads = nthreads + 1
end

function init(args)
  prefix = tonumber(args[1])
  token = args[2]
  math.randomseed(prefix * 7919 + thread_id)
end

local function pick_external()
  if math.random() < 0.5 then
    return string.format("+447700900%%03d", math.random(0, 999))
  end
  return string.format("+442079460%%03d", math.random(0, 999))
end

function request()
  counter = counter + 1
  local seq = thread_id * 100000000 + counter
  local external = pick_external()
  local ext = tostring(600 + math.random(0, 199))
  local inbound = math.random() < 0.7
  local from, to, dir
  if inbound then from, to, dir = external, ext, "inbound" else from, to, dir = ext, external, "outbound" end
  local from_enc = string.gsub(from, "+", "%%%%2B")
  local start = 1741000000 + math.floor(counter / 10)
  local billsec = math.random(0, 599)
  -- looks random like a real leg uuid (an odd multiplier mod 2^48 keeps it unique per thread)
  local uuid = string.format("%%08x-%%04x-4%%03x-%%04x-%%012x", prefix, thread_id, math.random(0, 4095),
    math.random(32768, 49151), (counter * 2654435761) %% 281474976710656)
  local body = string.format(template, %(args)s)
  return wrk.format("POST", "/v1/cdr/freeswitch-json",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}, body)
end

function done(summary, latency, requests)
  io.write(string.format(
    "BENCHJSON {\"requests\":%%d,\"duration_us\":%%d,\"status_errors\":%%d,\"connect\":%%d,\"read\":%%d," ..
    "\"write\":%%d,\"timeout\":%%d,\"p50_us\":%%d,\"p90_us\":%%d,\"p99_us\":%%d,\"max_us\":%%d}\n",
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"""

_LUA_ARGS = {
    "core": '"0b9c8d7e-6f5a-4b3c-9d2e-1f0a9b8c7d6e"', "uuid": "uuid", "seq": "seq", "from_enc": "from_enc",
    "from": "from", "to": "to", "direction": "dir", "start": "start", "answer": "start + 8",
    "end": "start + 8 + billsec", "duration": "8 + billsec", "billsec": "billsec", "cause": '"NORMAL_CLEARING"',
}  # fmt: skip


def wrk_script(path: Path) -> None:
    """Write the wrk Lua script that builds a unique FreeSWITCH post per request."""
    import re

    order: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        order.append(match.group(1))
        return "%s"

    # ``%(name)s`` -> ``%s`` in argument order; ``%%`` stays ``%%`` (a literal % for Lua's string.format).
    template = re.sub(r"%\((\w+)\)s", placeholder, _FS_TEMPLATE)
    args = ", ".join(_LUA_ARGS[name] for name in order)
    path.write_text(_WRK_LUA % {"template": template, "args": args})


@dataclass
class LoadResult:
    """One load run against one target."""

    target: str
    generator: str
    connections: int
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_s: float
    generator_cpu_s: float
    steal: float = 0.0

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds


def run_wrk(
    target: str, url: str, token: str, *, connections: int, threads: int, seconds: float, prefix: int,
    script: Path, server_pid: int,
) -> LoadResult:  # fmt: skip
    """Drive ``url`` with wrk for ``seconds``; the figures from its ``done`` hook."""
    cpu_before = proc_cpu_seconds(server_pid)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s"]
    command += ["-s", str(script), url, "--", str(prefix), token]
    ticks = cpu_ticks()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = process.communicate(timeout=seconds + 120)
    steal = steal_share(ticks, cpu_ticks())
    server_cpu = proc_cpu_seconds(server_pid) - cpu_before
    line = next((x for x in stdout.decode().splitlines() if x.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {stdout.decode()} {stderr.decode()}")
    data = json.loads(line.removeprefix("BENCHJSON "))
    errors = sum(int(data[k]) for k in ("status_errors", "connect", "read", "write", "timeout"))
    return LoadResult(
        target, f"wrk -t{threads}", connections, int(data["requests"]), data["duration_us"] / 1e6, errors,
        data["p50_us"] / 1000, data["p90_us"] / 1000, data["p99_us"] / 1000, data["max_us"] / 1000,
        server_cpu, _children_cpu_delta(), steal,
    )  # fmt: skip


_children_cpu_seen = 0.0


def _children_cpu_delta() -> float:
    """CPU seconds used by children reaped since the last call (the load generator just finished)."""
    import resource

    global _children_cpu_seen
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    delta, _children_cpu_seen = total - _children_cpu_seen, total
    return delta


async def _aiohttp_load(url: str, token: str, connections: int, seconds: float, prefix: int) -> dict[str, Any]:
    import aiohttp

    rng = random.Random(prefix)
    latencies: list[float] = []
    errors = 0
    counter = 0
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors, counter
            while time.perf_counter() < deadline:
                counter += 1
                body = freeswitch_body(prefix, counter, rng)
                started = time.perf_counter()
                async with session.post(url + "/v1/cdr/freeswitch-json", data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 202:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "errors": errors, "seconds": elapsed}


def run_aiohttp_load(
    target: str, url: str, token: str, *, connections: int, processes: int, seconds: float, prefix: int,
    server_pid: int,
) -> LoadResult:  # fmt: skip
    """Drive ``url`` with ``processes`` aiohttp client processes sharing ``connections``."""
    cpu_before = proc_cpu_seconds(server_pid)
    per_process = max(1, connections // processes)
    ticks = cpu_ticks()
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(SCRIPT),
                "aiohttp-load",
                "--url",
                url,
                "--token",
                token,
                "--connections",
                str(per_process),
                "--seconds",
                str(seconds),
                "--prefix",
                str(prefix * 16 + i),
            ],
            stdout=subprocess.PIPE,
        )
        for i in range(processes)
    ]
    outputs = [json.loads(worker.communicate(timeout=seconds + 120)[0]) for worker in workers]
    steal = steal_share(ticks, cpu_ticks())
    server_cpu = proc_cpu_seconds(server_pid) - cpu_before
    latencies = sorted(x for out in outputs for x in out["latencies"])
    elapsed = max(out["seconds"] for out in outputs)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000 if latencies else 0.0

    return LoadResult(
        target, f"aiohttp x{processes}", per_process * processes, len(latencies), elapsed,
        sum(out["errors"] for out in outputs), pct(50), pct(90), pct(99), pct(100), server_cpu, _children_cpu_delta(),
        steal,
    )  # fmt: skip


def drive(args: argparse.Namespace, target: str, url: str, token: str, pid: int, script: Path) -> LoadResult:
    """A warm-up run, then the measured run, with the chosen generator."""
    results = []
    for prefix, seconds in ((args.prefix_base + 1, args.warmup_seconds), (args.prefix_base + 2, args.cdr_seconds)):
        if args.generator == "wrk":
            result = run_wrk(
                target, url, token, connections=args.connections, threads=args.wrk_threads, seconds=seconds,
                prefix=prefix, script=script, server_pid=pid,
            )  # fmt: skip
        else:
            result = run_aiohttp_load(
                target, url, token, connections=args.connections, processes=args.load_processes,
                seconds=seconds, prefix=prefix, server_pid=pid,
            )  # fmt: skip
        results.append(result)
    return results[-1]


# ------------------------------------------------------------------------------------ (b) Master.csv


def _csv_quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def make_master_csv(path: Path, lines: int, seed: int = 7) -> int:
    """Write a realistic 21-column Master.csv of ``lines`` lines; returns its size in bytes."""
    rng = random.Random(seed)
    numbers = [prefix + f"{i:03d}" for prefix in DRAMA_PREFIXES for i in range(1000)]
    names = ["Jane Roe", "John Doe", "Bob", "Alice Smith", "A N Other", "Reception", "Sales Desk"]
    dispositions = ["ANSWERED"] * 70 + ["NO ANSWER"] * 18 + ["BUSY"] * 7 + ["FAILED"] * 3 + ["CONGESTION"] * 2
    zone = ZoneInfo("Europe/London")
    moment = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)
    step = timedelta(days=14) / lines
    epoch = int(moment.timestamp())
    counter = 0
    out: list[str] = []
    with open(path, "w", encoding="utf-8", newline="") as sink:
        for n in range(lines):
            start = moment + step * n
            local = start.astimezone(zone)
            extension = str(600 + rng.randrange(200))
            number = rng.choice(numbers)
            kind = rng.random()
            disposition = rng.choice(dispositions)
            ring = rng.randrange(1, 30)
            talk = rng.randrange(5, 900) if disposition == "ANSWERED" else 0
            answer = local + timedelta(seconds=ring) if disposition == "ANSWERED" else None
            end = local + timedelta(seconds=ring + talk)
            counter += 1
            uniqueid = f"{epoch + int((step * n).total_seconds())}.{counter}"
            trunk = f"PJSIP/trunk-{rng.randrange(16**8):08x}"
            phone = f"PJSIP/{extension}-{rng.randrange(16**8):08x}"
            if kind < 0.6:  # inbound: a drama number calls an extension or a queue
                queue = rng.random() < 0.3
                src, dst, context = number, ("700" if queue else extension), "from-pstn"
                clid = f'"{rng.choice(names)}" <{number}>'
                channel, dstchannel = trunk, ("" if disposition != "ANSWERED" else phone)
                app, data = ("Queue", "support,t,,,300") if queue else ("Dial", f"PJSIP/{extension},30,tT")
            elif kind < 0.9:  # outbound: an extension dials a drama number through the trunk
                src, dst, context = extension, number, "from-internal"
                clid = f'"Ext {extension}" <{extension}>'
                channel, dstchannel = phone, trunk
                app, data = "Dial", f"PJSIP/{number}@trunk,60,T"
            else:  # internal
                other = str(600 + rng.randrange(200))
                src, dst, context = extension, other, "from-internal"
                clid = f'"Ext {extension}" <{extension}>'
                channel, dstchannel = phone, f"PJSIP/{other}-{rng.randrange(16**8):08x}"
                app, data = "Dial", f"PJSIP/{other},30,tT"
            fields = [
                _csv_quote(rng.choice(["", "", "acct01", "acct02"])),
                _csv_quote(src),
                _csv_quote(dst),
                _csv_quote(context),
                _csv_quote(clid),
                _csv_quote(channel),
                _csv_quote(dstchannel),
                _csv_quote(app),
                _csv_quote(data),
                _csv_quote(local.strftime("%Y-%m-%d %H:%M:%S")),
                _csv_quote(answer.strftime("%Y-%m-%d %H:%M:%S")) if answer else "",
                _csv_quote(end.strftime("%Y-%m-%d %H:%M:%S")),
                str(ring + talk),
                str(talk),
                _csv_quote(disposition),
                _csv_quote("DOCUMENTATION"),
                _csv_quote(uniqueid),
                _csv_quote(""),
                _csv_quote(""),
                _csv_quote(uniqueid),
                str(counter % 1000),
            ]
            out.append(",".join(fields))
            if len(out) >= 10_000:
                sink.write("\n".join(out) + "\n")
                out.clear()
        if out:
            sink.write("\n".join(out) + "\n")
    return path.stat().st_size


@dataclass
class PyarrowBaseline:
    """pyarrow's own CSV parse + zstd Parquet write of the same file."""

    read_seconds: float
    write_seconds: float
    rows: int
    steal: float = 0.0

    @property
    def seconds(self) -> float:
        """Parse plus write."""
        return self.read_seconds + self.write_seconds

    @property
    def rate(self) -> float:
        """Rows per second, parse plus write."""
        return self.rows / self.seconds


def pyarrow_baseline(path: Path, out: Path) -> PyarrowBaseline:
    """``pyarrow.csv.read_csv`` of ``path`` then ``pyarrow.parquet.write_table(..., zstd)`` (best of 2)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    best: PyarrowBaseline | None = None
    for _ in range(2):
        ticks = cpu_ticks()
        started = time.perf_counter()
        table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(column_names=list(CSV_COLUMNS)))
        parsed = time.perf_counter()
        pq.write_table(table, out, compression="zstd")
        written = time.perf_counter()
        run = PyarrowBaseline(parsed - started, written - parsed, table.num_rows, steal_share(ticks, cpu_ticks()))
        del table
        out.unlink()
        if best is None or run.seconds < best.seconds:
            best = run
    assert best is not None
    return best


@dataclass
class CsvResult:
    """Master.csv through telgate."""

    rows: int
    batches: int
    ack_seconds: float
    flush_seconds: float
    accepted: int
    duplicates: int
    rejected: int
    lake_rows: int
    server_cpu_s: float
    batch_seconds: list[float] = field(default_factory=list)
    steal: float = 0.0  # while the POSTs were answered

    @property
    def ack_rate(self) -> float:
        """Rows acknowledged (durable in staging) per second."""
        return self.rows / self.ack_seconds

    @property
    def lake_rate(self) -> float:
        """Rows per second until all are in the lake."""
        return self.rows / (self.ack_seconds + self.flush_seconds)


def read_batches(path: Path, batch_lines: int) -> list[bytes]:
    """The file cut into bodies of ``batch_lines`` whole lines."""
    batches: list[bytes] = []
    with open(path, "rb") as source:
        lines: list[bytes] = []
        for line in source:
            lines.append(line)
            if len(lines) == batch_lines:
                batches.append(b"".join(lines))
                lines = []
        if lines:
            batches.append(b"".join(lines))
    return batches


async def _post_batches(
    url: str, token: str, batches: list[bytes], concurrency: int
) -> tuple[list[dict[str, Any]], list[float]]:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/csv"}
    answers: list[dict[str, Any]] = [{} for _ in batches]
    timings: list[float] = [0.0 for _ in batches]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(batches)):
        queue.put_nowait(index)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                for _attempt in range(50):
                    started = time.perf_counter()
                    async with session.post(url + "/v1/cdr/asterisk-csv", data=batches[index], headers=headers) as r:
                        payload = await r.json()
                        if r.status == 503:  # backpressure: retry as a PBX would
                            await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                            continue
                        if r.status != 202:
                            raise RuntimeError(f"batch {index}: {r.status} {payload}")
                        answers[index] = payload
                        timings[index] = time.perf_counter() - started
                        break

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers, timings


def lake_row_count(data_dir: Path) -> int:
    """Master.csv rows in the lake's cdr table, read from this process (the server is stopped by then)."""
    from ingest.lake import IcebergLake, lake_locations

    catalog, warehouse = lake_locations(data_dir)
    with IcebergLake.open(catalog, warehouse) as lake:
        return int(lake.scan("cdr", "source_format == 'asterisk-csv'", ["dedupe_key"]).num_rows)


def run_csv(gateway: GatewayProcess, path: Path, args: argparse.Namespace, rows: int) -> CsvResult:
    """POST the file in batches, then flush; times for both."""
    batches = read_batches(path, args.batch_lines)
    cpu_before = proc_cpu_seconds(gateway.pid)
    ticks = cpu_ticks()
    started = time.perf_counter()
    answers, timings = asyncio.run(_post_batches(gateway.url, gateway.pbx_token, batches, args.concurrency))
    acked = time.perf_counter()
    steal = steal_share(ticks, cpu_ticks())
    flushed = gateway.flush()
    done = time.perf_counter()
    server_cpu = proc_cpu_seconds(gateway.pid) - cpu_before
    del flushed
    return CsvResult(
        rows=rows,
        batches=len(batches),
        ack_seconds=acked - started,
        flush_seconds=done - acked,
        accepted=sum(int(a["accepted"]) for a in answers),
        duplicates=sum(int(a["duplicates"]) for a in answers),
        rejected=sum(len(a["rejected"]) for a in answers),
        lake_rows=-1,
        server_cpu_s=server_cpu,
        batch_seconds=timings,
        steal=steal,
    )


# ------------------------------------------------------------------------------------------- report


def machine() -> str:
    """nproc, CPU model and memory of this machine."""
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), "unknown",
    )  # fmt: skip
    mem_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return f"{os.cpu_count()} CPUs ({model}), {mem_kib / 2**20:.1f} GiB RAM, Python {sys.version.split()[0]}"


def print_load(result: LoadResult) -> None:
    """One line per load run."""
    print(
        f"    {result.target:<8} {result.rate:9.0f} req/s  {result.requests:8d} posts in {result.seconds:5.1f} s  "
        f"errors {result.errors}  p50 {result.p50_ms:6.2f} ms  p90 {result.p90_ms:6.2f} ms  "
        f"p99 {result.p99_ms:6.2f} ms  max {result.max_ms:7.1f} ms  "
        f"CPU s: server {result.server_cpu_s:5.1f}, generator {result.generator_cpu_s:5.1f}; steal {result.steal:.0%}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print figures and ratios, exit 1 if a target is missed."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["noop-server"]:
        sub = argparse.ArgumentParser()
        sub.add_argument("--port", type=int, required=True)
        sub.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
        sub.add_argument("--processes", type=int, default=1)
        options = sub.parse_args(argv[1:])
        run_noop_server(options.port, options.loop, options.processes)
        return 0
    if argv[:1] == ["aiohttp-load"]:
        sub = argparse.ArgumentParser()
        for name in ("--url", "--token"):
            sub.add_argument(name, required=True)
        sub.add_argument("--connections", type=int, required=True)
        sub.add_argument("--seconds", type=float, required=True)
        sub.add_argument("--prefix", type=int, required=True)
        a = sub.parse_args(argv[1:])
        print(json.dumps(asyncio.run(_aiohttp_load(a.url, a.token, a.connections, a.seconds, a.prefix))))
        return 0

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cdr-seconds", type=float, default=15.0, help="measured load run per target (a)")
    parser.add_argument("--warmup-seconds", type=float, default=3.0, help="warm-up run before each measured run")
    parser.add_argument("--connections", type=int, default=128, help="keep-alive connections (a)")
    parser.add_argument("--generator", choices=("wrk", "aiohttp"), default="wrk" if shutil.which("wrk") else "aiohttp")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (a)")
    parser.add_argument("--load-processes", type=int, default=2, help="aiohttp client processes (a)")
    parser.add_argument("--csv-lines", type=int, default=1_000_000, help="Master.csv lines (b)")
    parser.add_argument("--batch-lines", type=int, default=50_000, help="lines per POST (b)")
    parser.add_argument("--concurrency", type=int, default=3, help="batches in flight at once (b)")
    parser.add_argument("--skip-cdr", action="store_true", help="skip (a)")
    parser.add_argument("--skip-csv", action="store_true", help="skip (b)")
    parser.add_argument("--min-cdr-rate", type=float, default=10_000.0)
    parser.add_argument("--min-cdr-ratio", type=float, default=0.5)
    parser.add_argument("--min-csv-rate", type=float, default=250_000.0)
    parser.add_argument("--min-csv-ratio", type=float, default=0.5)
    parser.add_argument("--max-rss-mb", type=float, default=400.0)
    parser.add_argument("--workers", type=int, default=0, help="server.http_workers of telgate serve")
    parser.add_argument(
        "--noop", default="1:asyncio", help="no-op baselines PROCESSES:LOOP[,...]; the ratio is to the first"
    )
    parser.add_argument("--prefix-base", type=int, default=int(time.time()) % 100_000 * 4, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, default=SCRIPT.parent / "out", help="work area")
    parser.add_argument("--csv-cache", type=Path, help="keep the generated Master.csv here and reuse it")
    args = parser.parse_args(argv)

    args.dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="ingest-bench-", dir=args.dir))
    print(f"machine: {machine()}; load average before the run: {os.getloadavg()[0]:.2f}")
    report = Report()
    try:
        csv_path = args.csv_cache or workdir / "Master.csv"
        if not args.skip_csv:
            if args.csv_cache and csv_path.exists() and _line_count(csv_path) == args.csv_lines:
                print(f"reusing {csv_path} ({args.csv_lines} lines)")
            else:
                started = time.perf_counter()
                make_master_csv(csv_path, args.csv_lines)
                print(f"generated {args.csv_lines} Master.csv lines in {time.perf_counter() - started:.1f} s")
            report.csv_bytes = csv_path.stat().st_size
            report.baseline = pyarrow_baseline(csv_path, workdir / "baseline.parquet")
        script = workdir / "freeswitch.lua"
        wrk_script(script)
        if not args.skip_cdr:
            for spec in args.noop.split(","):
                processes, loop = spec.split(":")
                noop = NoopServer(int(processes), loop)
                try:
                    report.noops.append(drive(args, noop.label, noop.url, "unused", noop.pid, script))
                finally:
                    noop.stop()
                    _children_cpu_delta()
        gateway = GatewayProcess(workdir, {"TELGATE_SERVER_HTTP_WORKERS": str(args.workers)})
        sampler = RssSampler(gateway.pid)
        report.idle = TreeMemory.read(gateway.pid)
        try:
            if not args.skip_cdr:
                sampler.phase = "cdr"
                started = time.perf_counter()
                primed = asyncio.run(_prime_subjects(gateway.url, gateway.pbx_token))
                print(f"primed {primed} subjects (one CDR per drama number) in {time.perf_counter() - started:.1f} s")
                report.telgate = drive(args, "telgate", gateway.url, gateway.pbx_token, gateway.pid, script)
            if not args.skip_csv:
                sampler.phase = "csv"
                report.csv = run_csv(gateway, csv_path, args, args.csv_lines)
            sampler.phase = "end"
            report.hwm = max(proc_status(member, "VmHWM") for member in proc_tree(gateway.pid))
        finally:
            sampler.stop()
            gateway.stop()
        report.rss_peaks = sampler.peaks
        if report.csv is not None:
            report.csv.lake_rows = lake_row_count(gateway.data)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report.print(args) else 1


def _line_count(path: Path) -> int:
    with open(path, "rb") as source:
        return sum(block.count(b"\n") for block in iter(lambda: source.read(1 << 20), b""))


@dataclass
class Report:
    """Everything measured in one run, printed with ratios and verdicts."""

    baseline: PyarrowBaseline | None = None
    csv: CsvResult | None = None
    csv_bytes: int = 0
    noops: list[LoadResult] = field(default_factory=list)
    telgate: LoadResult | None = None
    idle: TreeMemory = field(default_factory=TreeMemory)
    hwm: int = 0
    rss_peaks: dict[str, TreeMemory] = field(default_factory=dict)

    def print(self, args: argparse.Namespace) -> bool:
        """Print the figures; True when every target is met."""
        ok = True
        if self.noops and self.telgate is not None:
            ok &= self._print_cdr(args, self.noops, self.telgate)
        if self.baseline is not None and self.csv is not None:
            ok &= self._print_csv(args, self.baseline, self.csv)
        # The gateway's memory is that of all its processes: shared pages (the interpreter, libraries) are
        # counted once, divided among the processes mapping them (PSS); RSS summed counts them per process.
        peak = max((reading.pss for reading in self.rss_peaks.values()), default=0)
        rss_ok = peak / 1e6 < args.max_rss_mb
        print(f"gateway memory, all processes: idle {self.idle.describe()}")
        for phase, reading in self.rss_peaks.items():
            print(f"    peak during {phase} (sampled every 50 ms): {reading.describe()}")
        print(f"    largest VmHWM of one process {self.hwm / 1e6:.0f} MB; "
              f"peak PSS {peak / 1e6:.0f} MB (target < {args.max_rss_mb:.0f} MB: {_verdict(rss_ok)})")  # fmt: skip
        return ok and rss_ok

    @staticmethod
    def _print_cdr(args: argparse.Namespace, noops: list[LoadResult], telgate: LoadResult) -> bool:
        noop = noops[0]
        ratio = telgate.rate / noop.rate
        rate_ok = telgate.rate >= args.min_cdr_rate and telgate.errors == 0
        ratio_ok = ratio >= args.min_cdr_ratio
        print(f"(a) FreeSWITCH JSON, one POST per CDR, {args.connections} connections, generator "
              f"{telgate.generator} on the same {os.cpu_count()} cores as the servers:")  # fmt: skip
        for baseline in noops:
            print_load(baseline)
        print_load(telgate)
        print(f"    telgate {telgate.rate:.0f} CDR/s (target >= {args.min_cdr_rate:.0f}: {_verdict(rate_ok)}); "
              f"telgate/no-op {ratio:.2f} (target >= {args.min_cdr_ratio:.2f}: {_verdict(ratio_ok)}); "
              f"p50 {telgate.p50_ms:.1f} ms, p99 {telgate.p99_ms:.1f} ms acknowledgement latency")  # fmt: skip
        return rate_ok and ratio_ok

    def _print_csv(self, args: argparse.Namespace, baseline: PyarrowBaseline, csv: CsvResult) -> bool:
        ratio = csv.ack_rate / baseline.rate
        rate_ok = csv.ack_rate >= args.min_csv_rate
        ratio_ok = ratio >= args.min_csv_ratio
        complete = csv.accepted == csv.rows == csv.lake_rows
        print(f"(b) Master.csv, {csv.rows} lines ({self.csv_bytes / 1e6:.0f} MB), {csv.batches} POSTs of "
              f"{args.batch_lines} lines, {args.concurrency} in flight:")  # fmt: skip
        print(f"    pyarrow read_csv {baseline.read_seconds:.2f} s + write_table(zstd) {baseline.write_seconds:.2f} s "
              f"= {baseline.seconds:.2f} s -> {baseline.rate:,.0f} rows/s "
              f"(best of 2; steal {baseline.steal:.0%})")  # fmt: skip
        print(f"    telgate: every POST acknowledged after {csv.ack_seconds:.2f} s -> {csv.ack_rate:,.0f} rows/s "
              f"(slowest POST {max(csv.batch_seconds):.2f} s); flush to the lake +{csv.flush_seconds:.2f} s "
              f"-> {csv.lake_rate:,.0f} rows/s into the lake; server CPU {csv.server_cpu_s:.1f} s; "
              f"steal {csv.steal:.0%} until the last 202")  # fmt: skip
        print(f"    accepted {csv.accepted}, duplicates {csv.duplicates}, rejected {csv.rejected}, "
              f"Master.csv rows in the lake {csv.lake_rows} ({'ok' if complete else 'MISMATCH'})")  # fmt: skip
        print(f"    telgate {csv.ack_rate:,.0f} rows/s (target >= {args.min_csv_rate:,.0f}: {_verdict(rate_ok)}); "
              f"telgate/pyarrow {ratio:.2f} (target >= {args.min_csv_ratio:.2f}: {_verdict(ratio_ok)})")  # fmt: skip
        return rate_ok and ratio_ok and complete


def _verdict(ok: bool) -> str:
    return "ok" if ok else "NOT MET"


if __name__ == "__main__":
    sys.exit(main())

"""Vault throughput: a plain file copy against encrypt-and-store of the same bytes, in one run.

Usage::

    .venv/bin/python bench/vault.py --size 1GiB [--repeat 2] [--chunk-size 65536] [--min-ratio 0.35]

(a) plain copy: read the source in 1 MiB blocks, write a destination file, fsync it.
(b) encrypt-and-store: read the same source in 1 MiB blocks into ``EnvelopeWriter`` writing into
    ``LocalBlobStore.open_writer`` (temp file, fsync, link into place, directory fsync).
(c) HTTP upload: ``telgate init`` + ``telgate serve`` in a subprocess on loopback; the same source is
    PUT to ``/v1/recordings/{call_id}`` by an aiohttp client in this process (1 MiB blocks, with a
    Content-Length), timed until the 201 answer (the blob is fsynced and its key row committed by then).
(s) ``RecordingVault`` in this process: (b) plus the plaintext SHA-256 (on a second thread), the key wrap
    and the catalog row, fed 1 MiB pieces from the source.
(h) the same PUT to a bare aiohttp server that discards the body: what HTTP alone costs on this machine.
Memory: one ``--memory-size`` body (the source repeated) is PUT while the server's VmRSS is sampled
    every 20 ms from /proc; its VmHWM (kernel high-water mark since start) is reported too.

Both read a source that was just written and read once, so both read from the page cache and the
comparison measures the write path. The best of ``--repeat`` runs is reported; the exit code is 1 when
the ratio (b)/(a) is below ``--min-ratio``. Work files live in a temp dir under ``bench/out/`` (same
filesystem as the checkout) and are removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# Imported while this directory is still on sys.path (standard library only, see its docstring).
from telgate_node import (
    TelgateNode,
    cpu_ticks,
    free_port,
    parse_size,
    process_cpu_seconds,
    steal_share,
    stop_process,
)

# This script is itself named ``vault.py``: drop its directory from sys.path so that ``import vault``
# finds the package, not this file.
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != Path(__file__).resolve().parent]

from vault.blobs import LocalBlobStore  # noqa: E402
from vault.envelope import DEFAULT_CHUNK_SIZE, EnvelopeWriter, new_data_key  # noqa: E402

BLOCK = 1024 * 1024


@dataclass(frozen=True)
class Measurement:
    """One timed pass over the source."""

    name: str
    size: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        """Throughput in MB/s (10^6 bytes per second)."""
        return self.size / self.seconds / 1e6


def make_source(path: Path, size: int) -> None:
    """Write ``size`` random-looking bytes to ``path`` and read them once to warm the page cache."""
    pattern = os.urandom(16 * BLOCK)
    view = memoryview(pattern)
    with open(path, "wb", buffering=0) as out:
        remaining = size
        while remaining:
            step = min(remaining, len(pattern))
            out.write(view[:step])
            remaining -= step
        os.fsync(out.fileno())
    buffer = bytearray(BLOCK)
    with open(path, "rb", buffering=0) as src:
        while src.readinto(buffer):
            pass


def measure_plain_copy(source: Path, destination: Path) -> Measurement:
    """(a) Copy ``source`` to ``destination`` in 1 MiB blocks and fsync it."""
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    size = 0
    started = time.perf_counter()
    with open(source, "rb", buffering=0) as src, open(destination, "wb", buffering=0) as out:
        while n := src.readinto(buffer):
            out.write(view[:n])
            size += n
        os.fsync(out.fileno())
    return Measurement("plain copy + fsync", size, time.perf_counter() - started)


def measure_encrypt_and_store(source: Path, store: LocalBlobStore, blob_id: str, chunk_size: int) -> Measurement:
    """(b) Encrypt ``source`` through EnvelopeWriter into the blob store (committed with fsync)."""
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    started = time.perf_counter()
    data_key = new_data_key()
    with open(source, "rb", buffering=0) as src, store.open_writer(blob_id) as out:
        writer = EnvelopeWriter(out, data_key, blob_id, chunk_size)
        while n := src.readinto(buffer):
            writer.write(view[:n])
        size = writer.close()
    return Measurement("encrypt + store + fsync", size, time.perf_counter() - started)


def measure_vault_store(source: Path, workdir: Path, runs: int) -> list[Measurement]:
    """(s) ``RecordingVault`` without HTTP: SHA-256 + encrypt + store + fsync + key row, 1 MiB pieces."""
    from gateway.settings import load_settings
    from gateway.wiring import build_gateway, initialise

    settings = load_settings(
        environ={},
        overrides={"server": {"data_dir": str(workdir / "vault-store")}, "vault": {"max_recording_bytes": 2**40}},
    )
    initialise(settings)
    gateway = build_gateway(settings)
    measurements = []
    try:
        for run in range(runs):
            started = time.perf_counter()
            upload = gateway.vault.begin_upload(tenant="bench", pbx="bench", call_id=f"store-{run}", content_type="a/b")
            with open(source, "rb", buffering=0) as src:
                while block := src.read(BLOCK):
                    upload.write(block)
            result = upload.commit()
            measurements.append(
                Measurement("vault store (+SHA-256, row)", result.recording.size, time.perf_counter() - started)
            )
    finally:
        gateway.close()
    return measurements


class ServerProcess:
    """A server subprocess on loopback that takes ``PUT /v1/recordings/{call_id}``; the client side."""

    url: str
    pbx_token: str
    process: subprocess.Popen[bytes]
    _log: BinaryIO

    def status(self, field: str) -> int:
        """A memory figure of the server process from /proc (``VmRSS``, ``VmHWM``), in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far (all its threads)."""
        return process_cpu_seconds(self.process.pid)

    def upload(self, call_id: str, source: Path, times: int = 1) -> tuple[float, dict[str, object]]:
        """PUT ``source`` (``times`` over, as one body) with aiohttp; seconds taken and the server's answer."""
        import asyncio

        import aiohttp

        size = source.stat().st_size * times

        async def body() -> AsyncIterator[bytes]:
            for _ in range(times):
                # The load generator reads a page-cached file: microseconds per block, no thread needed.
                with open(source, "rb", buffering=0) as src:  # noqa: ASYNC230
                    while block := src.read(BLOCK):
                        yield block

        async def put() -> tuple[float, dict[str, object]]:
            timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                headers = {
                    "Authorization": f"Bearer {self.pbx_token}",
                    "Content-Type": "audio/wav",
                    "Content-Length": str(size),
                }
                started = time.perf_counter()
                async with session.put(f"{self.url}/v1/recordings/{call_id}", data=body(), headers=headers) as answer:
                    payload = await answer.json()
                    seconds = time.perf_counter() - started
                    if answer.status != 201:
                        raise RuntimeError(f"upload failed: {answer.status} {payload}")
                    return seconds, payload

        return asyncio.run(put())

    def stop(self) -> None:
        """SIGTERM the server and wait for it."""
        stop_process(self.process, 60, pipes=(self.process.stdout, self._log))


class GatewayProcess(TelgateNode, ServerProcess):
    """``telgate serve`` (``TelgateNode``) that takes recordings of any size."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, {"TELGATE_VAULT_MAX_RECORDING_BYTES": str(2**40)})


_DISCARD_SERVER = """
import asyncio, sys
from aiohttp import web

async def discard(request):
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
    return web.json_response({"size": size}, status=201)

async def main():
    app = web.Application()
    app.router.add_put("/v1/recordings/{call_id}", discard)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[1])).start()
    print("serving", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


class DiscardServer(ServerProcess):
    """A bare aiohttp server that reads and drops the body: the ceiling of HTTP on this machine."""

    def __init__(self, workdir: Path) -> None:
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.pbx_token = "unused"
        self._log = open(workdir / "discard.log", "wb")  # closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _DISCARD_SERVER, str(self.http_port)], stdout=subprocess.PIPE, stderr=self._log
        )
        assert self.process.stdout is not None
        if "serving" not in self.process.stdout.readline().decode():
            self.stop()
            raise RuntimeError("the discard server did not start")


def measure_http_upload(source: Path, gateway: ServerProcess, run: int, name: str) -> tuple[Measurement, float]:
    """PUT ``source`` to a server subprocess over loopback; the timing and the server's CPU seconds."""
    cpu_before = gateway.cpu_seconds()
    seconds, answer = gateway.upload(f"bench-{run}", source)
    if answer["size"] != source.stat().st_size:
        raise RuntimeError(f"server stored {answer['size']} bytes")
    return Measurement(name, int(source.stat().st_size), seconds), gateway.cpu_seconds() - cpu_before


@dataclass(frozen=True)
class MemoryReport:
    """The server's resident memory around one large upload, in bytes."""

    upload_size: int
    seconds: float
    baseline_rss: int  # VmRSS before the upload
    sampled_peak_rss: int  # highest VmRSS sampled every 20 ms during the upload
    peak_rss: int  # VmHWM after the upload (reset just before it when the kernel allows)
    hwm_reset: bool  # True: peak_rss covers the upload only; False: the whole process life
    lifetime_peak_rss: int  # VmHWM before the reset: start-up, imports, argon2 logins...


def measure_upload_memory(source: Path, gateway: GatewayProcess, times: int) -> MemoryReport:
    """Upload ``source`` ``times`` over as one body while sampling the server's RSS."""
    import threading

    lifetime_peak = gateway.status("VmHWM")
    try:  # "5" resets the peak-RSS counter (Linux >= 4.0), so VmHWM then covers the upload alone
        Path(f"/proc/{gateway.process.pid}/clear_refs").write_text("5")
        hwm_reset = gateway.status("VmHWM") <= gateway.status("VmRSS") + 2**20
    except OSError:
        hwm_reset = False
    baseline = gateway.status("VmRSS")
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.02):
            peak = max(peak, gateway.status("VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        seconds, _ = gateway.upload("bench-memory", source, times)
    finally:
        stop.set()
        sampler.join()
    return MemoryReport(
        source.stat().st_size * times, seconds, baseline, peak, gateway.status("VmHWM"), hwm_reset, lifetime_peak
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print MB/s for each path and the ratio (b)/(a)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=parse_size, default=parse_size("1GiB"), help="bytes to move (e.g. 1GiB)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each path; the best is reported")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="envelope chunk size")
    parser.add_argument("--min-ratio", type=float, default=0.35, help="exit 1 below this (b)/(a) ratio")
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent / "out", help="work area")
    parser.add_argument("--no-http", dest="http", action="store_false", help="skip (c) and the memory run")
    parser.add_argument("--memory-size", type=parse_size, default=parse_size("4GiB"),
                        help="body of the memory run, a multiple of --size (0 skips it)")  # fmt: skip
    parser.add_argument("--min-http", type=float, default=500.0, help="target MB/s of (c)")
    parser.add_argument("--max-rss-mb", type=float, default=200.0, help="target peak server RSS (MB)")
    args = parser.parse_args(argv)

    args.dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="vault-bench-", dir=args.dir))
    try:
        source = workdir / "source.bin"
        make_source(source, args.size)
        ticks = cpu_ticks()
        store = LocalBlobStore(workdir / "blobs")
        copies: list[Measurement] = []
        stores: list[Measurement] = []
        for run in range(args.repeat):
            destination = workdir / "copy.bin"
            copies.append(measure_plain_copy(source, destination))
            destination.unlink()
            blob_id = f"bench-{run}"
            stores.append(measure_encrypt_and_store(source, store, blob_id, args.chunk_size))
            store.delete(blob_id)
        vault_stores = measure_vault_store(source, workdir, args.repeat)
        uploads: list[tuple[Measurement, float]] = []
        ceilings: list[tuple[Measurement, float]] = []
        memory: MemoryReport | None = None
        if args.http:
            discard = DiscardServer(workdir)
            try:
                for run in range(args.repeat):
                    ceilings.append(measure_http_upload(source, discard, run, "HTTP PUT, body discarded"))
            finally:
                discard.stop()
            gateway = GatewayProcess(workdir)
            try:
                for run in range(args.repeat):
                    uploads.append(measure_http_upload(source, gateway, run, "HTTP PUT (telgate serve)"))
                if args.memory_size:
                    memory = measure_upload_memory(source, gateway, max(1, args.memory_size // args.size))
            finally:
                gateway.stop()
        steal = steal_share(ticks, cpu_ticks())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    copy = max(copies, key=lambda m: m.mb_per_s)
    encrypted = max(stores, key=lambda m: m.mb_per_s)
    print(f"size: {args.size} bytes ({args.size / 2**20:.0f} MiB), chunk size {args.chunk_size}, best of {args.repeat}")
    for label, runs in (("(a)", copies), ("(b)", stores)):
        best = max(runs, key=lambda m: m.mb_per_s)
        all_runs = ", ".join(f"{m.mb_per_s:.0f}" for m in runs)
        print(f"{label} {best.name:<26} {best.mb_per_s:8.0f} MB/s   (runs: {all_runs})")
    ok = True
    best_store = max(vault_stores, key=lambda m: m.mb_per_s)
    all_runs = ", ".join(f"{m.mb_per_s:.0f}" for m in vault_stores)
    print(f"(s) {best_store.name:<26} {best_store.mb_per_s:8.0f} MB/s   (runs: {all_runs})   RecordingVault, no HTTP")
    if ceilings:
        ceiling, cpu = max(ceilings, key=lambda m: m[0].mb_per_s)
        all_runs = ", ".join(f"{m.mb_per_s:.0f}" for m, _ in ceilings)
        print(
            f"(h) {ceiling.name:<26} {ceiling.mb_per_s:8.0f} MB/s   (runs: {all_runs})   bare aiohttp, no vault; "
            f"server CPU {cpu / (ceiling.size / 2**30):.2f} s/GiB"
        )
    if uploads:
        http, cpu = max(uploads, key=lambda m: m[0].mb_per_s)
        all_runs = ", ".join(f"{m.mb_per_s:.0f}" for m, _ in uploads)
        verdict = "ok" if http.mb_per_s >= args.min_http else "BELOW TARGET"
        ok &= http.mb_per_s >= args.min_http
        print(
            f"(c) {http.name:<26} {http.mb_per_s:8.0f} MB/s   (runs: {all_runs})   ratio (c)/(a) "
            f"{http.mb_per_s / copy.mb_per_s:.2f}   target >= {args.min_http:.0f} MB/s: {verdict}"
        )
        print(f"    server CPU {cpu / (http.size / 2**30):.2f} s/GiB (all threads: receive, SHA-256, AES-GCM, write)")
    if memory is not None:
        peak_mb = memory.peak_rss / 1e6
        verdict = "ok" if peak_mb < args.max_rss_mb else "ABOVE TARGET"
        ok &= peak_mb < args.max_rss_mb
        print(
            f"memory: {memory.upload_size / 2**30:.1f} GiB upload in {memory.seconds:.1f} s "
            f"({memory.upload_size / memory.seconds / 1e6:.0f} MB/s); "
            f"server RSS before {memory.baseline_rss / 1e6:.0f} MB, "
            f"sampled peak {memory.sampled_peak_rss / 1e6:.0f} MB, "
            f"VmHWM {'during the upload' if memory.hwm_reset else 'since start'} {peak_mb:.0f} MB "
            f"(+{(memory.peak_rss - memory.baseline_rss) / 1e6:.0f} MB over the idle server)   "
            f"target < {args.max_rss_mb:.0f} MB: {verdict}"
        )
        before = memory.lifetime_peak_rss / 1e6
        print(f"        server VmHWM before the upload (start-up, imports, argon2 logins): {before:.0f} MB")
    ratio = encrypted.mb_per_s / copy.mb_per_s
    verdict = "ok" if ratio >= args.min_ratio else "BELOW TARGET"
    print(f"ratio (b)/(a): {ratio:.2f}   target >= {args.min_ratio:.2f}: {verdict}")
    print(f"CPU steal (time the hypervisor gave to other guests) during the measurements: {steal:.0%}")
    ok &= ratio >= args.min_ratio
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

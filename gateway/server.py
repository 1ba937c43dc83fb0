"""``telgate serve``: the HTTP API, the SFTP release server and the lake flusher.

With ``server.http_workers`` > 0 (the default) this process is the supervisor: backends, SFTP listener
and flusher, then the HTTP worker processes (``gateway.workers``); shutdown stops the workers first
(each drains its requests), then SFTP, the flusher and the backends. With 0, one process does it all:
settings -> backends (``build_gateway``) -> HTTP site -> SFTP listener, and the reverse on SIGTERM or
SIGINT. ``RunningServer`` is that single-process node, which the tests run in-process on ephemeral ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from aiohttp import web

from gateway.api import create_app
from gateway.audit import Clock
from gateway.datadir import load_host_key
from gateway.settings import Settings
from gateway.wiring import Gateway, build_gateway
from gateway.workers import HttpWorkerPool, reserve_port
from vault.sftp import ReleaseGate, SftpServer

log = logging.getLogger("telgate.server")


@dataclass
class RunningServer:
    """A started node: its gateway, HTTP runner and SFTP server, with the real bound ports."""

    gateway: Gateway
    runner: web.AppRunner
    sftp: SftpServer
    http_port: int

    @property
    def sftp_port(self) -> int:
        """The SFTP server's bound port."""
        return self.sftp.bound_port

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        scheme = "https" if self.gateway.settings.server.tls_cert else "http"
        return f"{scheme}://{self.gateway.settings.server.http_host}:{self.http_port}"

    async def stop(self) -> None:
        """Stop SFTP, then HTTP, then close backends."""
        await asyncio.to_thread(self.sftp.stop)
        await self.runner.cleanup()
        self.gateway.close()


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The HTTPS context when a certificate is configured, else None (plain HTTP)."""
    if not settings.server.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.server.tls_cert, settings.server.tls_key or None)
    return context


async def start_server(
    settings: Settings, clock: Clock | None = None, gate: ReleaseGate[Any] | None = None
) -> RunningServer:
    """Open backends and start both listeners; ports 0 in settings pick free ports.

    The SFTP server asks ``gate`` (default: the gateway's ``SqlReleaseGate``) about every login and file.
    """
    gateway = await asyncio.to_thread(build_gateway, settings, clock)
    app = create_app(gateway)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(
        runner,
        settings.server.http_host,
        settings.server.http_port,
        ssl_context=tls_context(settings),
        backlog=1024,
    )
    await site.start()
    http_port = int(runner.addresses[0][1])
    sftp = SftpServer(
        settings.server.sftp_host,
        settings.server.sftp_port,
        load_host_key(gateway.layout),
        gate or gateway.release_gate,
    )
    await asyncio.to_thread(sftp.start)
    gateway.releases.public_port = sftp.bound_port
    return RunningServer(gateway, runner, sftp, http_port)


def tune_memory() -> None:
    """Make freed memory go back to the system, so that the gateway's resident size follows its working set.

    Measured on a 1,000,000-line Master.csv (20 posts of 50,000 lines): with Arrow's default allocator
    (mimalloc) and glibc's defaults the gateway peaked at ~670 MB although its live data stayed far
    smaller: mimalloc keeps the pages of each batch's Arrow buffers, and glibc's malloc keeps freed
    multi-megabyte blocks (bodies, payloads) in per-thread arenas once its adaptive mmap threshold has
    grown. Arrow on the system allocator, large blocks always mmap'd (returned on free), two arenas and
    a 1 MiB trim threshold gave ~430 MB at the same throughput. Operators can still choose: any of
    ``ARROW_DEFAULT_MEMORY_POOL`` or glibc's ``MALLOC_*`` variables set in the environment wins.

    The variable is set, not only pyarrow's default: Arrow's C++ code (CSV reader threads, compute
    kernels, the Parquet writer) allocates from the C++ default pool, which reads it once, at its first
    use. Left to mimalloc, those allocations kept ~65 MB more resident per process after five 50,000-line
    batches (254 MB instead of 319 MB in one process); spawned HTTP workers inherit the variable. Importing
    this module already uses that pool, so ``telgate serve`` sets the variable before it imports it.
    """
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
        pa.set_memory_pool(pa.system_memory_pool())
    if any(name.startswith("MALLOC_") for name in os.environ):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: nothing to tune
    for option, value in ((_M_MMAP_THRESHOLD, 256 * 1024), (_M_ARENA_MAX, 2), (_M_TRIM_THRESHOLD, 1024 * 1024)):
        libc.mallopt(option, value)


# glibc mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def configure_logging() -> None:
    """Log lines to stderr; paramiko's own tracebacks for clients that never speak SSH are silenced."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
    # paramiko logs a traceback for every client that connects without speaking SSH (scanners, probes);
    # telgate.sftp logs connections and failures itself, without the noise.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop where it is installed (a third less CPU per HTTP request here), else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def serve_forever(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down cleanly.

    ``server.http_workers`` > 0: this process is the supervisor (SFTP, flusher, lake maintenance) and
    that many worker processes serve HTTP on the shared port (``gateway.workers``); 0: one process does all.
    """
    tune_memory()  # first, before any thread: glibc's arena limit only binds arenas created later
    configure_logging()
    run_event_loop(_serve(settings))


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if settings.server.http_workers == 0:
        server = await start_server(settings)
        url = server.url
        stopping: list[Callable[[], Awaitable[None]]] = [server.stop]
        sftp_port = server.sftp_port
        workers = "in this process"
    else:
        node = await start_supervisor(settings)
        url, sftp_port = node.url, node.sftp.bound_port
        stopping = [node.stop]
        workers = f"{settings.server.http_workers} workers"
    log.info("HTTP API on %s (%s)", url, workers)
    log.info("SFTP on %s:%d", settings.server.sftp_host, sftp_port)
    print(f"telgate serving HTTP on {url} and SFTP on {settings.server.sftp_host}:{sftp_port}", flush=True)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        for step in stopping:
            await step()


@dataclass
class Supervisor:
    """The main process of a multi-process node: SFTP, flusher and the HTTP worker pool."""

    gateway: Gateway
    sftp: SftpServer
    workers: HttpWorkerPool
    flusher: asyncio.Task[None]
    reserved: socket.socket
    http_port: int

    @property
    def url(self) -> str:
        """Base URL of the HTTP API (served by the workers)."""
        scheme = "https" if self.gateway.settings.server.tls_cert else "http"
        return f"{scheme}://{self.gateway.settings.server.http_host}:{self.http_port}"

    async def stop(self) -> None:
        """Stop the workers (they drain), then SFTP and the flusher, then close backends."""
        await self.workers.stop()
        await asyncio.to_thread(self.sftp.stop)
        self.flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.flusher
        self.reserved.close()
        await asyncio.to_thread(self.gateway.close)


async def start_supervisor(settings: Settings, clock: Clock | None = None) -> Supervisor:
    """Open backends, start SFTP and the flusher, then the HTTP workers."""
    gateway = await asyncio.to_thread(build_gateway, settings, clock)
    reserved = reserve_port(settings.server.http_host, settings.server.http_port)
    http_port = int(reserved.getsockname()[1])
    sftp = SftpServer(
        settings.server.sftp_host, settings.server.sftp_port, load_host_key(gateway.layout), gateway.release_gate
    )
    await asyncio.to_thread(sftp.start)
    gateway.releases.public_port = sftp.bound_port
    flusher = asyncio.create_task(gateway.flusher.run(settings.lake), name="telgate-flusher")
    server = dataclasses.replace(settings.server, http_port=http_port, sftp_port=sftp.bound_port)
    workers = HttpWorkerPool(
        dataclasses.replace(settings, server=server), settings.server.http_workers, gateway.layout.metrics
    )
    node = Supervisor(gateway, sftp, workers, flusher, reserved, http_port)
    try:
        await workers.start()
    except BaseException:
        await node.stop()
        raise
    return node

"""HTTP worker processes of ``telgate serve``: several event loops on one port, for several cores.

One Python process tops out at one core (the GIL), and on a small node the HTTP layer, parsing and
pseudonymisation of CDRs need more than that. ``serve`` therefore runs as::

    supervisor (this node's main process)           HTTP workers (``server.http_workers`` processes)
      metadata migrations, lake flusher                aiohttp app: ingest, uploads, admin API
      lake maintenance, SFTP release server            each binds http_host:http_port with SO_REUSEPORT;
      reserves the HTTP port, starts and restarts      the kernel spreads connections between them
      the workers, stops them on SIGTERM

Workers are started with the ``spawn`` method: a fresh interpreter that imports only what serving
needs, so the lake's libraries (pyiceberg, SQLAlchemy) stay out of their memory unless an operator
searches the lake. Every piece of shared state is in the metadata store (staging, sessions, audit
chain, throttles), so any worker can answer any request; caches (PBX credentials, subject tokens) are
per process. A worker that dies is started again; a worker whose supervisor dies gets SIGTERM from the
kernel (``PR_SET_PDEATHSIG``), so a killed node leaves no orphans serving its port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
import warnings
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from gateway.settings import Settings

log = logging.getLogger("telgate.workers")

READY = "ready"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set in workers only: the supervisor serves no HTTP
START_TIMEOUT_SECONDS = 120.0  # a worker that is not serving by then is killed and the start fails
STOP_TIMEOUT_SECONDS = 30.0  # draining requests in flight; then SIGKILL
RESTART_BACKOFF_SECONDS = 1.0  # before starting again a worker that died young (a crash loop)
_YOUNG_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


class WorkerStartError(RuntimeError):
    """A worker process exited or timed out before it was serving."""


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, non-listening SO_REUSEPORT socket: fixes the port (0 picks one) while workers come and go.

    Only listening sockets take connections, so this one never does; it keeps a restarted worker's
    port from being taken by another program in between.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    reserved = socket.socket(family, kind, proto)
    try:
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind(address)
    except OSError:
        reserved.close()
        raise
    return reserved


@dataclasses.dataclass
class _Worker:
    index: int
    process: BaseProcess
    started_at: float


class HttpWorkerPool:
    """Starts ``count`` HTTP worker processes, restarts those that die, stops them all on request."""

    def __init__(self, settings: Settings, count: int, metrics_dir: Path) -> None:
        """``settings`` must name the real HTTP and SFTP ports (not 0): workers bind the same ones.

        ``metrics_dir`` holds the workers' Prometheus values (one file per process and metric type), so
        that ``/metrics``, whichever worker answers it, adds up every worker's counters, those of workers
        that died included; it is emptied when the pool starts (a node's counters start at zero).
        """
        self._settings = settings
        self._count = count
        self._metrics_dir = metrics_dir
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._starting: set[BaseProcess] = set()  # spawned, not yet serving: stop() must end these too
        self._stopping = False
        self._restarts: set[asyncio.Task[None]] = set()

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers."""
        return [w.process.pid for w in self._workers.values() if w.process.pid is not None]

    async def start(self) -> None:
        """Start every worker and return once all of them serve (``WorkerStartError`` otherwise)."""
        await asyncio.to_thread(_empty_metrics_dir, self._metrics_dir)
        await asyncio.gather(*(self._start_one(index) for index in range(self._count)))

    async def _start_one(self, index: int) -> None:
        parent_end, child_end = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_main,
            args=(self._settings, index, os.getpid(), child_end, str(self._metrics_dir)),
            name=f"telgate-http-{index}",
            daemon=False,
        )
        process.start()  # on the loop's thread: PDEATHSIG follows the thread that started the child
        child_end.close()
        self._starting.add(process)
        try:
            # The thread owns parent_end and closes it; if this task is cancelled (stop() during a
            # restart), stop() terminates the process and the thread returns within one poll.
            ready = await asyncio.to_thread(_wait_ready, parent_end, process)
        finally:
            self._starting.discard(process)
        if self._stopping:
            _kill(process)
            return
        if not ready:
            _kill(process)
            raise WorkerStartError(f"HTTP worker {index} did not start (exit code {process.exitcode})")
        worker = _Worker(index, process, time.monotonic())
        self._workers[index] = worker
        asyncio.get_running_loop().add_reader(process.sentinel, self._exited, worker)
        log.info("HTTP worker %d serving (pid %s)", index, process.pid)

    def _exited(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(worker.process.sentinel)
        worker.process.join(0)
        if self._stopping or self._workers.get(worker.index) is not worker:
            return
        del self._workers[worker.index]
        log.error("HTTP worker %d (pid %s) exited with %s; starting it again", worker.index, worker.process.pid,
                  worker.process.exitcode)  # fmt: skip
        young = time.monotonic() - worker.started_at < _YOUNG_SECONDS
        task = loop.create_task(self._restart(worker.index, RESTART_BACKOFF_SECONDS if young else 0.0))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart(self, index: int, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)  # a worker failing at start-up must not spin the CPU
        if self._stopping:
            return
        try:
            await self._start_one(index)
        except WorkerStartError:
            log.exception("HTTP worker %d failed to start again; retrying", index)
            task = asyncio.get_running_loop().create_task(self._restart(index, RESTART_BACKOFF_SECONDS))
            self._restarts.add(task)
            task.add_done_callback(self._restarts.discard)

    async def stop(self) -> None:
        """SIGTERM every worker (each drains its requests), then SIGKILL those still running."""
        self._stopping = True
        for task in list(self._restarts):
            task.cancel()
        loop = asyncio.get_running_loop()
        processes = [w.process for w in self._workers.values()] + list(self._starting)
        for worker in self._workers.values():
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(worker.process.sentinel)
        self._workers.clear()
        for process in processes:
            if process.is_alive():
                process.terminate()
        await asyncio.gather(*(asyncio.to_thread(_join_or_kill, process) for process in processes))


def _wait_ready(connection: Connection, process: BaseProcess) -> bool:
    """True once the worker says it serves; False if it exits or times out first. Closes ``connection``."""
    with connection:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if connection.poll(0.5):
                try:
                    return bool(connection.recv() == READY)
                except EOFError:
                    return False
            if not process.is_alive():
                return False
        return False


def _kill(process: BaseProcess) -> None:
    if process.is_alive():
        process.kill()
    process.join(STOP_TIMEOUT_SECONDS)


def _join_or_kill(process: BaseProcess) -> None:
    process.join(STOP_TIMEOUT_SECONDS)
    if process.is_alive():
        log.warning("HTTP worker pid %s did not stop in %.0f s; killing it", process.pid, STOP_TIMEOUT_SECONDS)
        _kill(process)


def _empty_metrics_dir(path: Path) -> None:
    """Create the metrics directory (and its parent, 0700), or empty it of an earlier run's values."""
    for directory in (path.parent, path):
        directory.mkdir(exist_ok=True, mode=0o700)
        directory.chmod(0o700)
    for stale in path.glob("*.db"):
        stale.unlink()


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGTERM when the supervisor dies (Linux); exit now if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        os._exit(0)


def worker_main(settings: Settings, index: int, parent_pid: int, ready: Connection, metrics_dir: str) -> None:
    """Entry point of one HTTP worker process: serve until SIGTERM, then drain and exit."""
    _die_with_parent(parent_pid)
    # prometheus_client picks its value store when it is first imported: it must see this first.
    too_late = "prometheus_client" in sys.modules
    os.environ[MULTIPROC_ENV] = metrics_dir
    from gateway.server import configure_logging, run_event_loop, tune_memory

    tune_memory()
    configure_logging()
    if too_late:
        log.warning("HTTP worker %d: prometheus_client was loaded before its start; /metrics counts this worker only",
                    index)  # fmt: skip
    # The supervisor has said it once for the node; N more copies on stderr would only be noise.
    warnings.filterwarnings("ignore", message="local keyring .* keeps master keys in a file on this host")
    run_event_loop(_serve(settings, index, ready))


async def _serve(settings: Settings, index: int, ready: Connection) -> None:
    from aiohttp import web

    from gateway.api import create_app
    from gateway.server import tls_context
    from gateway.wiring import build_gateway

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    gateway = await asyncio.to_thread(build_gateway, settings)
    try:
        gateway.releases.public_port = settings.server.sftp_port  # the supervisor's SFTP server
        runner = web.AppRunner(create_app(gateway, run_flusher=False), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(
                runner,
                settings.server.http_host,
                settings.server.http_port,
                ssl_context=tls_context(settings),
                backlog=1024,
                reuse_port=True,
            )
            await site.start()
            ready.send(READY)
            ready.close()
            await stop.wait()
            log.info("HTTP worker %d stopping", index)
        finally:
            await runner.cleanup()
    finally:
        await asyncio.to_thread(gateway.close)

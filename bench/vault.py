"""Vault throughput: a plain file copy against encrypt-and-store of the same bytes, in one run.

Usage::

    .venv/bin/python bench/vault.py --size 1GiB [--repeat 2] [--chunk-size 65536] [--min-ratio 0.35]

(a) plain copy: read the source in 1 MiB blocks, write a destination file, fsync it.
(b) encrypt-and-store: read the same source in 1 MiB blocks into ``EnvelopeWriter`` writing into
    ``LocalBlobStore.open_writer`` (temp file, fsync, link into place, directory fsync).
(c) HTTP upload: see ``measure_http_upload`` (added with the gateway).

Both read a source that was just written and read once, so both read from the page cache and the
comparison measures the write path. The best of ``--repeat`` runs is reported; the exit code is 1 when
the ratio (b)/(a) is below ``--min-ratio``. Work files live in a temp dir under ``bench/out/`` (same
filesystem as the checkout) and are removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# This script is itself named ``vault.py``: drop its directory from sys.path so that ``import vault``
# finds the package, not this file.
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != Path(__file__).resolve().parent]

from vault.blobs import LocalBlobStore  # noqa: E402
from vault.envelope import DEFAULT_CHUNK_SIZE, EnvelopeWriter, new_data_key  # noqa: E402

BLOCK = 1024 * 1024
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


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


def parse_size(text: str) -> int:
    """Parse ``1GiB``, ``512MiB``, ``100MB`` or a plain byte count."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if match is None or match.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


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


def measure_http_upload(source: Path, workdir: Path) -> Measurement | None:
    """(c) Placeholder: stream ``source`` through the gateway's HTTP PUT; the lead adds this with the gateway."""
    del source, workdir
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print MB/s for each path and the ratio (b)/(a)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=parse_size, default=parse_size("1GiB"), help="bytes to move (e.g. 1GiB)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each path; the best is reported")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="envelope chunk size")
    parser.add_argument("--min-ratio", type=float, default=0.35, help="exit 1 below this (b)/(a) ratio")
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent / "out", help="work area")
    args = parser.parse_args(argv)

    args.dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="vault-bench-", dir=args.dir))
    try:
        source = workdir / "source.bin"
        make_source(source, args.size)
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
        http = measure_http_upload(source, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    copy = max(copies, key=lambda m: m.mb_per_s)
    encrypted = max(stores, key=lambda m: m.mb_per_s)
    print(f"size: {args.size} bytes ({args.size / 2**20:.0f} MiB), chunk size {args.chunk_size}, best of {args.repeat}")
    for label, runs in (("(a)", copies), ("(b)", stores)):
        best = max(runs, key=lambda m: m.mb_per_s)
        all_runs = ", ".join(f"{m.mb_per_s:.0f}" for m in runs)
        print(f"{label} {best.name:<26} {best.mb_per_s:8.0f} MB/s   (runs: {all_runs})")
    if http is None:
        print("(c) HTTP upload                 not measured yet (measure_http_upload)")
    else:
        print(f"(c) {http.name:<26} {http.mb_per_s:8.0f} MB/s   ratio (c)/(a) {http.mb_per_s / copy.mb_per_s:.2f}")
    ratio = encrypted.mb_per_s / copy.mb_per_s
    verdict = "ok" if ratio >= args.min_ratio else "BELOW TARGET"
    print(f"ratio (b)/(a): {ratio:.2f}   target >= {args.min_ratio:.2f}: {verdict}")
    return 0 if ratio >= args.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())

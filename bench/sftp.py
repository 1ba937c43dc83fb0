"""SFTP download throughput: telgate's release server against OpenSSH's own sftp-server, in one run.

Usage::

    .venv/bin/python bench/sftp.py [--size 256MiB] [--repeat 2] [--files 500] [--file-size 1MB] [--min-ratio 0.7]

(t) telgate: ``telgate init`` + ``telgate serve`` in a subprocess on loopback (shipped settings:
    argon2id at full cost, default SFTP limits). The source file is uploaded through the real
    gateway (HTTP PUT, encrypted into the vault), released with the admin API, and downloaded with
    OpenSSH ``sftp -b`` and a password (askpass): decrypt-on-read, the customer's login and the
    shredding at CLOSE are all inside the timing. Every download collects (and destroys) one copy,
    so one copy is uploaded per timed download.
(o) OpenSSH: a private ``sshd -D -f CFG -p PORT`` on 127.0.0.1 (temporary host key, one authorized
    key, ``Subsystem sftp /usr/lib/openssh/sftp-server``) serving the same plaintext file; the same
    ``sftp -b`` client logs in with the key. Run as root it needs /run/sshd (created if missing).

Each pair runs with ``-c aes128-gcm@openssh.com`` and with the client's default cipher (each server
then negotiates its own preference: OpenSSH chacha20-poly1305, telgate aes128-ctr; shown in the
output). The runs interleave, (o) (t) then (t) (o) and so on, and the best of ``--repeat`` is
reported. Times are wall-clock of the whole ``sftp`` process (connect, key exchange, login, transfer,
close); the session set-up alone (a batch of just ``pwd``) is measured too and shown, so the transfer
rate can be read both ways. The servers' CPU time per GiB sent is measured from /proc (telgate: its
process, all threads; OpenSSH: the sshd listener plus its reaped children, sshd and sftp-server),
a figure that does not depend on what else the machine runs. The exit code is 1 when the ratio
(t)/(o) of whole-process MB/s is below ``--min-ratio`` for a cipher.

Many files: ``--files`` recordings of ``--file-size`` bytes, uploaded through the gateway, released
together, and collected in one session with ``get *``; the same files from sshd likewise. Files per
second are reported (telgate shreds each file as its CLOSE arrives).

Downloads land in a temp dir under ``bench/out/`` (same filesystem as the checkout), removed after.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import platform
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telgate_node import TelgateNode, cpu_ticks, free_port, parse_size, process_cpu_seconds, steal_share

BLOCK = 1024 * 1024
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
RUN_TIMEOUT = 170  # seconds: one sftp process


def wait_reaped(pid: int, timeout: float = 10.0) -> None:
    """Wait until ``pid`` has no child processes left, so their CPU time is in its counters."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + timeout
    while children.exists() and children.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.01)  # a benchmark, not a test: sshd reaps on SIGCHLD, at its own pace


def make_source(path: Path, size: int) -> None:
    """``size`` random bytes (incompressible, like audio), written and read once into the page cache."""
    pattern = os.urandom(16 * BLOCK)
    with open(path, "wb", buffering=0) as out:
        remaining = size
        while remaining:
            step = min(remaining, len(pattern))
            out.write(pattern[:step])
            remaining -= step
    with open(path, "rb", buffering=0) as src:
        while src.read(BLOCK):
            pass


@dataclass(frozen=True)
class Timing:
    """One timed sftp process."""

    server: str
    cipher: str
    size: int
    seconds: float
    server_cpu: float

    @property
    def mb_per_s(self) -> float:
        """Throughput over the whole process, MB/s (10^6 bytes per second)."""
        return self.size / self.seconds / 1e6


# --- the two servers ------------------------------------------------------------------------------


class Telgate(TelgateNode):
    """``telgate serve`` (``TelgateNode``) that takes recordings of any size and releases them over SFTP."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, {"TELGATE_VAULT_MAX_RECORDING_BYTES": str(2**40)})

    def upload(self, files: dict[str, Path], concurrency: int = 4) -> list[str]:
        """PUT each file (call id -> path) as a PBX; the recording ids, in order."""
        import aiohttp

        sizes = {call_id: path.stat().st_size for call_id, path in files.items()}

        async def put_all() -> list[str]:
            limit = asyncio.Semaphore(concurrency)
            timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
            async with aiohttp.ClientSession(timeout=timeout) as session:

                async def put(call_id: str, path: Path) -> str:
                    async def body() -> Any:
                        with open(path, "rb", buffering=0) as src:  # noqa: ASYNC230 - page-cached file
                            while block := src.read(BLOCK):
                                yield block

                    headers = {
                        "Authorization": f"Bearer {self.pbx_token}",
                        "Content-Type": "audio/wav",
                        "Content-Length": str(sizes[call_id]),
                    }
                    async with limit, session.put(
                        f"{self.url}/v1/recordings/{call_id}", data=body(), headers=headers
                    ) as answer:
                        payload = await answer.json()
                        if answer.status != 201:
                            raise RuntimeError(f"upload of {call_id} failed: {answer.status} {payload}")
                        return str(payload["recording_id"])

                return list(await asyncio.gather(*(put(call_id, path) for call_id, path in files.items())))

        return asyncio.run(put_all())

    def release(self, recording_ids: list[str]) -> dict[str, Any]:
        """A release of these recordings: the credential."""
        return self.admin("POST", "/v1/admin/releases", {"tenant": "bench", "recordings": recording_ids})


class OpenSshServer:
    """A private sshd on a loopback port, key authentication only, OpenSSH's sftp-server."""

    def __init__(self, workdir: Path) -> None:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not Path(sshd).exists() or not Path(SFTP_SERVER).exists():
            raise SystemExit("sshd or sftp-server missing: apt-get install openssh-server")
        keygen = shutil.which("ssh-keygen") or "ssh-keygen"
        self.dir = workdir / "sshd"
        self.dir.mkdir(mode=0o700)
        for name in ("host_key", "client_key"):
            subprocess.run(
                [keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / name)], check=True, timeout=30
            )
        (self.dir / "authorized_keys").write_text((self.dir / "client_key.pub").read_text())
        self.client_key = self.dir / "client_key"
        self.user = getpass.getuser()
        self.port = free_port()
        config = self.dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.dir / 'host_key'}",
                    f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    f"Subsystem sftp {SFTP_SERVER}",
                    "",
                ]
            )
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        self.process = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(config), "-p", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.process.stderr is not None
        deadline = time.monotonic() + 30
        seen = b""
        while b"Server listening" not in seen:
            left = deadline - time.monotonic()
            readable, _, _ = select.select([self.process.stderr], [], [], max(left, 0))
            line = self.process.stderr.readline() if readable else b""
            if not line:
                self.stop()
                raise RuntimeError(f"sshd did not start: {seen.decode(errors='replace')}")
            seen += line

    def stop(self) -> None:
        """Stop sshd."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()


# --- the client -----------------------------------------------------------------------------------


_COMMON = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]


def sftp_command(workdir: Path, batch: list[str], cipher: str | None, target: OpenSshServer | dict[str, Any]) -> tuple[
    list[str], dict[str, str]
]:
    """The ``sftp -b`` command line and environment for one session against either server."""
    sftp = shutil.which("sftp") or "sftp"
    batch_file = workdir / "batch.txt"
    batch_file.write_text("".join(f"{line}\n" for line in batch))
    cipher_args = ["-c", cipher] if cipher else []
    env = dict(os.environ)
    env.pop("DISPLAY", None)
    if isinstance(target, OpenSshServer):
        args = [sftp, "-b", str(batch_file), "-P", str(target.port), *cipher_args, *_COMMON]
        args += ["-i", str(target.client_key), "-o", "IdentitiesOnly=yes", "-o", "PasswordAuthentication=no"]
        return [*args, f"{target.user}@127.0.0.1"], env
    askpass = workdir / "askpass.sh"
    askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$BENCH_SFTP_PASSWORD"\n')
    askpass.chmod(0o700)
    env |= {"SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "BENCH_SFTP_PASSWORD": target["password"]}
    # BatchMode=no must come before -b, which adds BatchMode=yes (ssh keeps the first value).
    args = [sftp, "-o", "BatchMode=no", "-b", str(batch_file), "-P", str(target["port"]), *cipher_args, *_COMMON]
    args += ["-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no"]
    return [*args, "-o", "NumberOfPasswordPrompts=1", f"{target['username']}@127.0.0.1"], env


def run_sftp(workdir: Path, batch: list[str], cipher: str | None, target: OpenSshServer | dict[str, Any]) -> float:
    """Run one sftp session; its wall-clock seconds."""
    args, env = sftp_command(workdir, batch, cipher, target)
    started = time.perf_counter()
    result = subprocess.run(
        args, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"sftp failed ({result.returncode}): {result.stderr.strip()}")
    return seconds


def negotiated_cipher(workdir: Path, cipher: str | None, target: OpenSshServer | dict[str, Any]) -> str:
    """The cipher the client and this server agree on (from ``sftp -v``)."""
    args, env = sftp_command(workdir, ["pwd"], cipher, target)
    args = [args[0], "-v", *args[1:]]
    result = subprocess.run(
        args, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    match = re.search(r"server->client cipher: (\S+)", result.stderr)
    return match.group(1) if match else "?"


def same_bytes(first: Path, second: Path) -> bool:
    """Whether two files are identical (compared in 1 MiB blocks)."""
    if first.stat().st_size != second.stat().st_size:
        return False
    with open(first, "rb") as a, open(second, "rb") as b:
        while True:
            block = a.read(BLOCK)
            if block != b.read(BLOCK):
                return False
            if not block:
                return True


# --- the benchmark --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run both servers, print MB/s per cipher, the ratio, and files per second."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=parse_size, default=parse_size("256MiB"), help="the large recording")
    parser.add_argument("--repeat", type=int, default=3, help="timed downloads per server and cipher (best kept)")
    parser.add_argument("--files", type=int, default=500, help="recordings in the many-files run (0 skips it)")
    parser.add_argument("--file-size", type=parse_size, default=parse_size("1MB"), help="size of each of those")
    parser.add_argument("--min-ratio", type=float, default=0.7, help="exit 1 below this (t)/(o) MB/s ratio")
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent / "out", help="work area")
    args = parser.parse_args(argv)
    ciphers: list[str | None] = ["aes128-gcm@openssh.com", None]

    args.dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="sftp-bench-", dir=args.dir))
    began = time.perf_counter()
    ticks = cpu_ticks()
    telgate: Telgate | None = None
    sshd: OpenSshServer | None = None
    results: dict[str, Any] = {"ciphers": {}}
    try:
        source = workdir / "recording.bin"
        make_source(source, args.size)
        telgate = Telgate(workdir)
        sshd = OpenSshServer(workdir)
        copies = len(ciphers) * args.repeat
        upload_started = time.perf_counter()
        big_ids = telgate.upload({f"big-{n}": source for n in range(copies)}, concurrency=1)
        upload_seconds = time.perf_counter() - upload_started
        results["upload_mb_per_s"] = copies * args.size / upload_seconds / 1e6
        download = workdir / "download.bin"
        ok = True
        for cipher in ciphers:
            label = cipher or "default"
            setup_release = telgate.release([big_ids[0]])  # only logged into: nothing is read
            setups = {
                "openssh": min(run_sftp(workdir, ["pwd"], cipher, sshd) for _ in range(3)),
                "telgate": run_sftp(workdir, ["pwd"], cipher, setup_release),
            }
            runs: dict[str, list[Timing]] = {"openssh": [], "telgate": []}
            for repeat in range(args.repeat):
                order = ["openssh", "telgate"] if repeat % 2 == 0 else ["telgate", "openssh"]
                for server in order:
                    if server == "openssh":
                        target: OpenSshServer | dict[str, Any] = sshd
                        remote, pid, children = str(source), sshd.process.pid, True
                    else:
                        target = telgate.release([big_ids.pop(0)])
                        remote, pid, children = target["recordings"][0]["name"], telgate.process.pid, False
                    if children:
                        wait_reaped(pid)
                    cpu_before = process_cpu_seconds(pid, children=children)
                    seconds = run_sftp(workdir, [f"get {remote} {download}"], cipher, target)
                    if children:
                        wait_reaped(pid)
                    cpu = process_cpu_seconds(pid, children=children) - cpu_before
                    runs[server].append(Timing(server, label, args.size, seconds, cpu))
                    if not same_bytes(source, download):
                        raise RuntimeError(f"{server}'s copy differs from the source")
                    download.unlink()
            best = {server: max(timings, key=lambda t: t.mb_per_s) for server, timings in runs.items()}
            ratio = best["telgate"].mb_per_s / best["openssh"].mb_per_s
            transfer = {
                server: args.size / max(best[server].seconds - setups[server], 1e-9) / 1e6 for server in best
            }
            ok &= ratio >= args.min_ratio
            results["ciphers"][label] = {
                "negotiated": {
                    "openssh": negotiated_cipher(workdir, cipher, sshd),
                    "telgate": negotiated_cipher(workdir, cipher, setup_release),
                },
                "mb_per_s": {server: [round(t.mb_per_s, 1) for t in timings] for server, timings in runs.items()},
                "best_seconds": {server: round(t.seconds, 3) for server, t in best.items()},
                "session_setup_seconds": {server: round(s, 3) for server, s in setups.items()},
                "transfer_mb_per_s": {server: round(v, 1) for server, v in transfer.items()},
                "server_cpu_s_per_gib": {
                    server: round(min(t.server_cpu for t in timings) / (args.size / 2**30), 2)
                    for server, timings in runs.items()
                },
                "ratio": round(ratio, 3),
                "transfer_ratio": round(transfer["telgate"] / transfer["openssh"], 3),
            }
        if args.files:
            results["many_files"] = many_files(workdir, telgate, sshd, args.files, args.file_size)
    finally:
        if telgate is not None:
            telgate.stop()
        if sshd is not None:
            sshd.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    results["wall_seconds"] = round(time.perf_counter() - began, 1)
    results["cpu_steal"] = round(steal_share(ticks, cpu_ticks()), 3)
    report(args, results)
    return 0 if ok else 1


def many_files(workdir: Path, telgate: Telgate, sshd: OpenSshServer, count: int, size: int) -> dict[str, Any]:
    """``count`` recordings of ``size`` bytes in one session with ``get *``, from each server."""
    folder = workdir / "many"
    folder.mkdir()
    pattern = os.urandom(size + count)
    files = {}
    for n in range(count):
        path = folder / f"call-{n:04d}.wav"
        path.write_bytes(pattern[n : n + size])
        files[f"many-{n:04d}"] = path
    upload_started = time.perf_counter()
    ids = telgate.upload(files, concurrency=4)
    upload_seconds = time.perf_counter() - upload_started
    credential = telgate.release(ids)
    outcome: dict[str, Any] = {"count": count, "size": size, "upload_files_per_s": round(count / upload_seconds, 1)}
    for server, remote, target in (
        ("openssh", f"{folder}/*", sshd),
        ("telgate", "*", credential),
    ):
        landing = workdir / f"got-{server}"
        landing.mkdir()
        seconds = run_sftp(workdir, [f"get {remote} {landing}/"], None, target)
        got = sorted(landing.iterdir())
        if len(got) != count or sum(p.stat().st_size for p in got) != count * size:
            raise RuntimeError(f"{server}: {len(got)} files arrived, expected {count}")
        outcome[server] = {"seconds": round(seconds, 2), "files_per_s": round(count / seconds, 1)}
        shutil.rmtree(landing)
    left = telgate.admin("GET", f"/v1/admin/releases/{credential['release_id']}", {})
    outcome["telgate"]["collected"] = left["recordings_collected"]
    return outcome


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Print the figures, then one JSON line with everything."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10, check=False).stderr.strip()
    system = f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, {system}")
    print(f"client: {ssh_version}; large recording {args.size / 2**20:.0f} MiB, best of {args.repeat}")
    print(f"upload through the gateway (HTTP PUT, encrypt): {results['upload_mb_per_s']:.0f} MB/s")
    for label, figures in results["ciphers"].items():
        negotiated = figures["negotiated"]
        print(
            f"-c {label}: openssh ({negotiated['openssh']}) {max(figures['mb_per_s']['openssh']):.0f} MB/s, "
            f"telgate ({negotiated['telgate']}) {max(figures['mb_per_s']['telgate']):.0f} MB/s, "
            f"ratio {figures['ratio']:.2f} (target >= {args.min_ratio:.2f}: "
            f"{'ok' if figures['ratio'] >= args.min_ratio else 'BELOW TARGET'})"
        )
        setup = figures["session_setup_seconds"]
        transfer = figures["transfer_mb_per_s"]
        print(
            f"    session set-up: openssh {setup['openssh']:.2f} s, telgate {setup['telgate']:.2f} s (argon2id login); "
            f"transfer alone: openssh {transfer['openssh']:.0f} MB/s, telgate {transfer['telgate']:.0f} MB/s, "
            f"ratio {figures['transfer_ratio']:.2f}"
        )
        cpu = figures["server_cpu_s_per_gib"]
        print(f"    server CPU per GiB sent: openssh {cpu['openssh']:.2f} s, telgate {cpu['telgate']:.2f} s")
    many = results.get("many_files")
    if many:
        print(
            f"{many['count']} x {many['size'] / 1e6:.1f} MB in one session (get *): "
            f"openssh {many['openssh']['files_per_s']:.0f} files/s ({many['openssh']['seconds']:.1f} s), "
            f"telgate {many['telgate']['files_per_s']:.0f} files/s ({many['telgate']['seconds']:.1f} s, "
            f"{many['telgate']['collected']} collected and shredded)"
        )
    print(f"wall time {results['wall_seconds']:.0f} s; CPU steal (given to other guests) {results['cpu_steal']:.0%}")
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())

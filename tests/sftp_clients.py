"""Real SFTP clients driven non-interactively: OpenSSH sftp, curl (libssh2), lftp and paramiko.

A missing client skips its test with the apt package to install, except under
``TELGATE_REQUIRE_SFTP_CLIENTS=1`` (set by ``.ci/run``, which installs them): then it fails, so CI
never passes by skipping. Every subprocess runs with a timeout in its own session.

Source addresses: every client can bind its socket to a chosen loopback address (127.0.0.N), so
tests play customers on different machines.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paramiko
import pytest

REQUIRE_ENV = "TELGATE_REQUIRE_SFTP_CLIENTS"
CLIENT_TIMEOUT = 60
LOOPBACK = "127.0.0.1"


def clients_required() -> bool:
    """Whether a missing client must fail the test rather than skip it."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in {"1", "true", "yes"}


def missing(reason: str) -> None:
    """Fail under TELGATE_REQUIRE_SFTP_CLIENTS, else skip, saying what is missing."""
    if clients_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set)")
    pytest.skip(reason)


def require(binary: str, package: str) -> str:
    """The binary's path; a missing one skips (or fails, see module doc) naming the apt package."""
    path = shutil.which(binary)
    if path is None:
        missing(f"{binary} is not installed (apt-get install {package})")
    assert path is not None
    return path


def available(binary: str, package: str) -> bool:
    """For optional extra checks: False when missing, but a failure when clients are required."""
    if shutil.which(binary) is not None:
        return True
    if clients_required():
        pytest.fail(f"{binary} is not installed (apt-get install {package}; {REQUIRE_ENV} is set)")
    return False


def run(
    args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = CLIENT_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a client to completion with a timeout, no stdin, output captured."""
    return subprocess.run(
        args,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
        check=False,
        env=env,
        cwd=cwd,
    )


def _ssh_options(bind_address: str | None) -> list[str]:
    options = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
    options += ["-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no"]
    if bind_address:
        options += ["-o", f"BindAddress={bind_address}"]
    return options


def openssh_sftp(
    tmp_path: Path,
    port: int,
    commands: list[str],
    *,
    username: str,
    password: str,
    host: str = LOOPBACK,
    bind_address: str | None = None,
    options: tuple[str, ...] = (),
    timeout: float = CLIENT_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run OpenSSH sftp in batch mode, its password typed by an askpass script (no tty, no sshpass)."""
    sftp = require("sftp", "openssh-client")
    askpass = tmp_path / "askpass.sh"
    askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$TELGATE_TEST_SFTP_PASSWORD"\n')
    askpass.chmod(0o700)
    batch = tmp_path / "batch.txt"
    batch.write_text("".join(f"{line}\n" for line in commands))
    env = {
        **os.environ,
        "SSH_ASKPASS": str(askpass),
        "SSH_ASKPASS_REQUIRE": "force",
        "TELGATE_TEST_SFTP_PASSWORD": password,
    }
    env.pop("DISPLAY", None)
    # BatchMode=no must come before -b, which adds BatchMode=yes (ssh keeps the first value).
    args = [sftp, "-o", "BatchMode=no", "-b", str(batch), "-P", str(port), *options]
    args += [*_ssh_options(bind_address), "-o", "NumberOfPasswordPrompts=1", f"{username}@{host}"]
    return run(args, env=env, cwd=tmp_path, timeout=timeout)


def curl_sftp(
    port: int,
    name: str,
    out: Path,
    *,
    username: str,
    password: str,
    host: str = LOOPBACK,
    bind_address: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Download one file with curl (libssh2), host key unchecked: one login per call."""
    curl = require("curl", "curl")
    protocols = run([curl, "-V"]).stdout
    if "sftp" not in protocols.split("Protocols:", 1)[-1].split():
        missing("this curl was built without sftp (libssh2)")
    args = [curl, "-sS", "--insecure", "-u", f"{username}:{password}", "-o", str(out)]
    if bind_address:
        args += ["--interface", bind_address]
    return run([*args, f"sftp://{host}:{port}/{name}"])


def lftp_get(
    tmp_path: Path,
    port: int,
    names: list[str],
    *,
    username: str,
    password: str,
    host: str = LOOPBACK,
    bind_address: str | None = None,
    flush: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Download files with lftp's sftp (it drives ssh itself and types the password), then ``bye``.

    lftp closes a finished file lazily: ``get x; bye`` often hangs up before the CLOSE is sent. The
    server counts a clean goodbye as closing the handle; ``flush`` adds a round trip (``cls``) first.
    """
    lftp = require("lftp", "lftp")
    require("ssh", "openssh-client")
    connect = " ".join(["ssh", "-a", "-x", *_ssh_options(bind_address)])
    script = [
        "set sftp:auto-confirm yes",
        f'set sftp:connect-program "{connect}"',
        "set net:max-retries 1",
        "set cmd:fail-exit yes",
        *(f"get {name} -o {tmp_path / name}" for name in names),
        *(["cls"] if flush else []),
        "bye",
    ]
    env = {**os.environ, "HOME": str(tmp_path)}
    return run([lftp, "-u", f"{username},{password}", "-e", "; ".join(script), f"sftp://{host}:{port}"], env=env)


def connect_from(port: int, source: str | None = None, host: str = LOOPBACK, timeout: float = 10) -> socket.socket:
    """A TCP connection to the server, from ``source`` (a loopback address such as 127.0.0.7) if given."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if source is not None:
            sock.bind((source, 0))
        sock.connect((host, port))
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


def paramiko_transport(port: int, source: str | None = None, host: str = LOOPBACK) -> paramiko.Transport:
    """An unauthenticated paramiko transport whose socket comes from ``source``."""
    return paramiko.Transport(connect_from(port, source, host))


@contextmanager
def paramiko_sftp(
    port: int, username: str, password: str, *, source: str | None = None, host: str = LOOPBACK
) -> Iterator[paramiko.SFTPClient]:
    """A logged-in paramiko SFTP client (default window and prefetch), from ``source`` if given."""
    transport = paramiko_transport(port, source, host)
    try:
        transport.connect(username=username, password=password)
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        with client:
            yield client
    finally:
        transport.close()


def paramiko_login_failure(
    port: int, username: str, password: str, *, source: str | None = None, host: str = LOOPBACK
) -> paramiko.AuthenticationException:
    """The exception a refused paramiko login raises (the test fails if the login succeeds)."""
    transport = paramiko_transport(port, source, host)
    try:
        with pytest.raises(paramiko.AuthenticationException) as failure:
            transport.connect(username=username, password=password)
        return failure.value
    finally:
        transport.close()

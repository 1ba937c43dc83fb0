"""The release SFTP server against real clients: paramiko, OpenSSH sftp, curl (libssh2) and lftp.

Each test gets a fresh in-memory ``FakeReleaseGate`` and a server on 127.0.0.1 port 0. A client that
is not installed makes its tests skip with the apt package to install, or fail under
``TELGATE_REQUIRE_SFTP_CLIENTS=1`` (``tests/sftp_clients.py``).
"""

from __future__ import annotations

import logging
import os
import queue
import random
import socket
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paramiko
import pytest

from tests import sftp_clients as clients
from tests.sftp_clients import available, require
from vault.sftp import ReleasedFile, SftpServer, canonical_path, sftp_status

USERNAME = "rel-7f3a"
PASSWORD = "correct horse battery staple 9f8e"
BIG = "20250304T140509Z_1741097109.18.wav"
SMALL = "20250304T141002Z_1741097402.3.wav"
EMPTY = "20250304T141517Z_1741097717.9.wav"
CLIENT_TIMEOUT = 60


def _random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


RECORDINGS = {BIG: _random_bytes(1024 * 1024, 1), SMALL: _random_bytes(100 * 1024, 2), EMPTY: b""}


class CorruptRecordingError(Exception):
    """What a reader raises when a chunk fails authentication."""

    code = "vault.corrupt"


class RecordingGoneError(Exception):
    """What the gate raises for a recording that is no longer released."""

    code = "not_found"


@dataclass(frozen=True)
class FakeSession:
    """A session as the fake gate hands it out."""

    release_id: str
    username: str
    source_address: str


class FakeReader:
    """Plaintext from memory; optionally corrupt from some offset on."""

    def __init__(self, data: bytes, corrupt_from: int | None = None) -> None:
        self._data = data
        self._corrupt_from = corrupt_from
        self.closed = False

    @property
    def size(self) -> int:
        """Plaintext size."""
        return len(self._data)

    def read_at(self, offset: int, length: int) -> bytes:
        """The bytes at ``offset``, or a corruption error past ``corrupt_from``."""
        if self._corrupt_from is not None and offset + length > self._corrupt_from:
            raise CorruptRecordingError("chunk failed authentication")
        return self._data[offset : offset + length]

    def close(self) -> None:
        """Mark closed."""
        self.closed = True


class FakeReleaseGate:
    """An in-memory ReleaseGate: one credential, one release, recordings shredded on completion."""

    def __init__(self, recordings: dict[str, bytes], *, corrupt: frozenset[str] = frozenset()) -> None:
        self._lock = threading.Lock()
        self._recordings = dict(recordings)
        self._ids = {name: f"rec-{index}" for index, name in enumerate(recordings)}
        self._corrupt = corrupt
        self.auth_attempts: list[tuple[str, str]] = []
        self.completed: list[str] = []
        self.closed_sessions: queue.Queue[FakeSession] = queue.Queue()
        self.readers: list[FakeReader] = []

    def recording_id(self, name: str) -> str:
        """The id the fake gave a file name."""
        return self._ids[name]

    def authenticate(self, username: str, password: str, source_address: str) -> FakeSession | None:
        """Accept only the fixed credential."""
        with self._lock:
            self.auth_attempts.append((username, source_address))
        if username == USERNAME and password == PASSWORD:
            return FakeSession("release-1", username, source_address)
        return None

    def list_files(self, session: FakeSession) -> list[ReleasedFile]:
        """Every recording not yet collected."""
        mtime = datetime(2025, 3, 4, 14, 5, 9, tzinfo=UTC)
        with self._lock:
            return [ReleasedFile(name, self._ids[name], len(data), mtime) for name, data in self._recordings.items()]

    def open_file(self, session: FakeSession, recording_id: str) -> FakeReader:
        """A reader, unless the recording was already collected."""
        with self._lock:
            for name, data in self._recordings.items():
                if self._ids[name] == recording_id:
                    reader = FakeReader(data, 0 if name in self._corrupt else None)
                    self.readers.append(reader)
                    return reader
        raise RecordingGoneError(recording_id)

    def file_completed(self, session: FakeSession, recording_id: str) -> None:
        """Shred: the recording leaves the release."""
        with self._lock:
            self.completed.append(recording_id)
            for name, rid in self._ids.items():
                if rid == recording_id:
                    self._recordings.pop(name, None)

    def session_closed(self, session: FakeSession) -> None:
        """Hand the session to the test."""
        self.closed_sessions.put(session)

    def wait_closed(self, sessions: int = 1) -> None:
        """Block until ``sessions`` more connections have ended (their handles closed first)."""
        for _ in range(sessions):
            self.closed_sessions.get(timeout=10)

    def completed_names(self) -> list[str]:
        """File names completed, in order."""
        names = {rid: name for name, rid in self._ids.items()}
        with self._lock:
            return [names[rid] for rid in self.completed]


@pytest.fixture(scope="module")
def host_key() -> paramiko.PKey:
    """One host key for the module (ECDSA generates instantly)."""
    return paramiko.ECDSAKey.generate()


@pytest.fixture
def gate() -> FakeReleaseGate:
    """A fresh release of the three recordings."""
    return FakeReleaseGate(RECORDINGS)


@pytest.fixture
def server(host_key: paramiko.PKey, gate: FakeReleaseGate) -> Iterator[SftpServer]:
    """The server on an ephemeral loopback port."""
    with SftpServer("127.0.0.1", 0, host_key, gate) as running:
        yield running
    assert not [t for t in threading.enumerate() if t.name.startswith("telgate-sftp")]


@contextmanager
def paramiko_sftp(port: int, username: str = USERNAME, password: str = PASSWORD) -> Iterator[paramiko.SFTPClient]:
    """A paramiko SFTP client with its default window and prefetch settings."""
    transport = paramiko.Transport(("127.0.0.1", port))
    try:
        transport.connect(username=username, password=password)
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        with client:
            yield client
    finally:
        transport.close()


def _run(
    args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return clients.run(args, env=env, cwd=cwd, timeout=CLIENT_TIMEOUT)


def openssh_sftp(
    tmp_path: Path, port: int, commands: list[str], *, username: str = USERNAME, password: str = PASSWORD
) -> subprocess.CompletedProcess[str]:
    """Run OpenSSH sftp in batch mode with the fake gate's credential (or another)."""
    return clients.openssh_sftp(tmp_path, port, commands, username=username, password=password)


def curl_sftp(
    port: int, name: str, out: Path, *, username: str = USERNAME, password: str = PASSWORD
) -> subprocess.CompletedProcess[str]:
    """Download one file with curl (libssh2), host key unchecked."""
    return clients.curl_sftp(port, name, out, username=username, password=password)


def lftp_get(tmp_path: Path, port: int, names: list[str], *, flush: bool = False) -> subprocess.CompletedProcess[str]:
    """Download files with lftp's sftp, then ``bye`` (with a ``cls`` round trip first if ``flush``)."""
    return clients.lftp_get(tmp_path, port, names, username=USERNAME, password=PASSWORD, flush=flush)


# --- downloads by every client ---------------------------------------------------------------------


def test_paramiko_downloads_every_file_and_each_completes_once(
    server: SftpServer, gate: FakeReleaseGate, tmp_path: Path
) -> None:
    with paramiko_sftp(server.bound_port) as sftp:
        assert sorted(sftp.listdir(".")) == sorted(RECORDINGS)
        for name, data in RECORDINGS.items():
            sftp.get(name, str(tmp_path / name))
            assert (tmp_path / name).read_bytes() == data
        assert sorted(gate.completed_names()) == sorted(RECORDINGS)
        assert sftp.listdir("/") == []
        with pytest.raises(FileNotFoundError):
            sftp.open(BIG)
    session = gate.closed_sessions.get(timeout=10)
    assert session.username == USERNAME
    assert session.source_address == "127.0.0.1"
    assert all(reader.closed for reader in gate.readers)


def test_openssh_sftp_downloads_byte_identical(server: SftpServer, gate: FakeReleaseGate, tmp_path: Path) -> None:
    commands = ["ls -l", *(f"get {name} {tmp_path / name}" for name in RECORDINGS)]
    result = openssh_sftp(tmp_path, server.bound_port, commands)
    assert result.returncode == 0, result.stderr
    gate.wait_closed()
    for name, data in RECORDINGS.items():
        assert name in result.stdout
        assert (tmp_path / name).read_bytes() == data
    assert sorted(gate.completed_names()) == sorted(RECORDINGS)


def test_curl_downloads_byte_identical_logging_in_per_file(
    server: SftpServer, gate: FakeReleaseGate, tmp_path: Path
) -> None:
    for name, data in RECORDINGS.items():
        result = curl_sftp(server.bound_port, name, tmp_path / name)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / name).read_bytes() == data
    gate.wait_closed(len(RECORDINGS))
    assert sorted(gate.completed_names()) == sorted(RECORDINGS)


@pytest.mark.parametrize("flush", [False, True], ids=["get-bye", "get-cls-bye"])
def test_lftp_downloads_byte_identical(server: SftpServer, gate: FakeReleaseGate, tmp_path: Path, flush: bool) -> None:
    # Without the flush, lftp often says goodbye before sending the last CLOSE: the clean end closes it.
    names = [BIG, SMALL]
    result = lftp_get(tmp_path, server.bound_port, names, flush=flush)
    assert result.returncode == 0, result.stderr
    gate.wait_closed()
    for name in names:
        assert (tmp_path / name).read_bytes() == RECORDINGS[name]
    assert sorted(gate.completed_names()) == sorted(names)


# --- what completes a recording, and what does not ---------------------------------------------------


def test_partial_download_completes_nothing_until_the_rest_is_read(server: SftpServer, gate: FakeReleaseGate) -> None:
    data = RECORDINGS[SMALL]
    half = len(data) // 2
    with paramiko_sftp(server.bound_port) as sftp:
        with sftp.open(SMALL) as remote:
            assert remote.read(half) == data[:half]
        assert gate.completed == []
        assert SMALL in sftp.listdir()
        with sftp.open(SMALL) as remote:  # the same session resumes where it stopped
            remote.seek(half)
            assert remote.read() == data[half:]
        assert gate.completed_names() == [SMALL]
        assert SMALL not in sftp.listdir()


def test_reading_the_first_half_twice_completes_nothing(server: SftpServer, gate: FakeReleaseGate) -> None:
    data = RECORDINGS[SMALL]
    half = len(data) // 2
    with paramiko_sftp(server.bound_port) as sftp:
        for _ in range(2):
            with sftp.open(SMALL) as remote:
                assert remote.read(half) == data[:half]
        assert gate.completed == []


def test_every_byte_but_the_last_completes_nothing(server: SftpServer, gate: FakeReleaseGate) -> None:
    data = RECORDINGS[SMALL]
    with paramiko_sftp(server.bound_port) as sftp:
        with sftp.open(SMALL) as remote:
            assert remote.read(len(data) - 1) == data[:-1]
        assert gate.completed == []
        with sftp.open(SMALL) as remote:
            remote.seek(len(data) - 1)
            assert remote.read() == data[-1:]
        assert gate.completed_names() == [SMALL]


def test_concurrent_handles_complete_a_recording_once(server: SftpServer, gate: FakeReleaseGate) -> None:
    with paramiko_sftp(server.bound_port) as sftp:
        first, second = sftp.open(SMALL), sftp.open(SMALL)
        assert first.read() == second.read() == RECORDINGS[SMALL]
        first.close()
        second.close()
        empty_first, empty_second = sftp.open(EMPTY), sftp.open(EMPTY)
        empty_first.close()
        empty_second.close()
    assert sorted(gate.completed_names()) == sorted([SMALL, EMPTY])


def test_out_of_order_reads_across_handles_complete_once(server: SftpServer, gate: FakeReleaseGate) -> None:
    data = RECORDINGS[BIG]
    chunk = 32 * 1024
    ranges = [(offset, chunk) for offset in range(0, len(data), chunk)]
    random.Random(3).shuffle(ranges)
    first, second = ranges[: len(ranges) // 2], ranges[len(ranges) // 2 :]
    with paramiko_sftp(server.bound_port) as sftp:
        with sftp.open(BIG) as a, sftp.open(BIG) as b:
            for (offset, length), block in zip(first, a.readv(first), strict=True):
                assert block == data[offset : offset + length]
            for (offset, length), block in zip(second, b.readv(second), strict=True):
                assert block == data[offset : offset + length]
        assert gate.completed_names() == [BIG]


def test_an_empty_recording_is_complete_once_opened_and_closed(server: SftpServer, gate: FakeReleaseGate) -> None:
    with paramiko_sftp(server.bound_port) as sftp:
        remote = sftp.open(EMPTY)
        assert gate.completed == []
        assert remote.read() == b""
        remote.close()
        assert gate.completed_names() == [EMPTY]


def test_a_dropped_connection_completes_nothing(server: SftpServer, gate: FakeReleaseGate) -> None:
    transport = paramiko.Transport(("127.0.0.1", server.bound_port))
    transport.connect(username=USERNAME, password=PASSWORD)
    sftp = paramiko.SFTPClient.from_transport(transport)
    assert sftp is not None
    remote = sftp.open(SMALL)
    assert remote.read() == RECORDINGS[SMALL]  # every byte arrived, but the handle is never closed
    transport.close()
    gate.closed_sessions.get(timeout=10)
    assert gate.completed == []
    assert all(reader.closed for reader in gate.readers)


def _goodbye(transport: paramiko.Transport, sftp: paramiko.SFTPClient, how: str) -> None:
    """End the session the way a client does on ``bye``, without closing its open handles first."""
    channel = sftp.get_channel()
    assert channel is not None
    message = paramiko.Message()
    if how == "channel-eof":
        channel.shutdown_write()  # SSH_MSG_CHANNEL_EOF, then nothing
        return
    if how == "channel-close":  # SSH_MSG_CHANNEL_CLOSE without an EOF first (allowed by RFC 4254)
        message.add_byte(paramiko.common.cMSG_CHANNEL_CLOSE)
        message.add_int(channel.remote_chanid)
    else:  # SSH_MSG_DISCONNECT, SSH_DISCONNECT_BY_APPLICATION
        message.add_byte(paramiko.common.cMSG_DISCONNECT)
        message.add_int(11)
        message.add_string("bye")
        message.add_string("")
    transport._send_user_message(message)


@pytest.mark.parametrize("how", ["channel-eof", "channel-close", "ssh-disconnect"])
def test_a_clean_goodbye_closes_open_handles_and_completes_what_was_read(
    server: SftpServer, gate: FakeReleaseGate, how: str
) -> None:
    # lftp's "get x; bye": every byte read, the CLOSE never sent, then a clean end of the session.
    transport = paramiko.Transport(("127.0.0.1", server.bound_port))
    try:
        transport.connect(username=USERNAME, password=PASSWORD)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        whole, half = sftp.open(SMALL), sftp.open(BIG)
        assert whole.read() == RECORDINGS[SMALL]
        assert half.read(len(RECORDINGS[BIG]) // 2) == RECORDINGS[BIG][: len(RECORDINGS[BIG]) // 2]
        _goodbye(transport, sftp, how)
        if how == "channel-eof":  # the server answers by ending the subsystem: wait for its close
            channel = sftp.get_channel()
            assert channel is not None
            channel.settimeout(10)
            assert channel.recv(1) == b""
    finally:
        transport.close()
    gate.wait_closed()  # after the handles were closed
    assert gate.completed_names() == [SMALL]  # the half-read file completes nothing
    assert all(reader.closed for reader in gate.readers)


def test_a_corrupt_recording_fails_the_read_and_completes_nothing(host_key: paramiko.PKey, tmp_path: Path) -> None:
    gate = FakeReleaseGate(RECORDINGS, corrupt=frozenset({SMALL}))
    with SftpServer("127.0.0.1", 0, host_key, gate) as server, paramiko_sftp(server.bound_port) as sftp:
        with sftp.open(SMALL) as remote, pytest.raises(OSError, match="Failure"):
            remote.read()
        assert gate.completed == []


# --- refusals ------------------------------------------------------------------------------------

WRITES: dict[str, Callable[[paramiko.SFTPClient], object]] = {
    "put": lambda sftp: sftp.open("new.wav", "w"),
    "overwrite": lambda sftp: sftp.open(SMALL, "w"),
    "read-write": lambda sftp: sftp.open(SMALL, "r+"),
    "append": lambda sftp: sftp.open(SMALL, "a"),
    "mkdir": lambda sftp: sftp.mkdir("incoming"),
    "rmdir": lambda sftp: sftp.rmdir("/"),
    "remove": lambda sftp: sftp.remove(SMALL),
    "rename": lambda sftp: sftp.rename(SMALL, "other.wav"),
    "posix-rename": lambda sftp: sftp.posix_rename(SMALL, "other.wav"),
    "chmod": lambda sftp: sftp.chmod(SMALL, 0o777),
    "utime": lambda sftp: sftp.utime(SMALL, (0, 0)),
    "truncate": lambda sftp: sftp.truncate(SMALL, 0),
    "symlink": lambda sftp: sftp.symlink("/etc/passwd", "passwd"),
    "readlink": lambda sftp: sftp.readlink(SMALL),
}

ESCAPES = [
    "/etc/passwd",
    "../../etc/passwd",
    f"{SMALL}/../../../etc/passwd",
    "~/../etc/passwd",
    f"sub/{SMALL}",
    "passwd",  # the name the refused symlink would have had
]


def test_every_write_is_permission_denied(server: SftpServer, gate: FakeReleaseGate) -> None:
    with paramiko_sftp(server.bound_port) as sftp:
        for operation, attempt in WRITES.items():
            with pytest.raises(PermissionError):
                attempt(sftp)
            assert sorted(sftp.listdir()) == sorted(RECORDINGS), operation
        assert sftp.stat(SMALL).st_size == len(RECORDINGS[SMALL])
    assert gate.completed == []


def test_paths_never_leave_the_virtual_folder(server: SftpServer) -> None:
    with paramiko_sftp(server.bound_port) as sftp:
        for path in ESCAPES:
            with pytest.raises(FileNotFoundError):
                sftp.stat(path)
            with pytest.raises(FileNotFoundError):
                sftp.open(path)
        with pytest.raises(FileNotFoundError):
            sftp.listdir("/etc")
        for path in ["", ".", "/", "~", "..", "../../..", "/../..", "~/.."]:
            assert sftp.normalize(path) == "/"
        assert sftp.normalize(f"../{SMALL}") == f"/{SMALL}"
        root = sftp.stat("/")
        assert root.st_mode is not None
        assert stat.S_ISDIR(root.st_mode)
        assert stat.S_IMODE(root.st_mode) == 0o500
        listed = sftp.stat(f"/{SMALL}")
        assert listed.st_mode is not None
        assert stat.S_ISREG(listed.st_mode)
        assert stat.S_IMODE(listed.st_mode) == 0o400
        assert listed.st_mtime == int(datetime(2025, 3, 4, 14, 5, 9, tzinfo=UTC).timestamp())
        assert sftp.readlink("/") == "/"


def test_openssh_sftp_refusals(server: SftpServer, gate: FakeReleaseGate, tmp_path: Path) -> None:
    upload = tmp_path / "upload.wav"
    upload.write_bytes(b"RIFF")
    refused = [
        f"-put {upload} new.wav",
        "-mkdir incoming",
        f"-rm {SMALL}",
        f"-rename {SMALL} other.wav",
        f"-chmod 777 {SMALL}",
        "-ln -s /etc/passwd passwd",
    ]
    missing = ["../../etc/passwd", "/etc/passwd", "passwd"]
    commands = refused + [f"-get {path} {tmp_path / 'stolen'}" for path in missing]
    result = openssh_sftp(tmp_path, server.bound_port, commands)
    assert result.returncode == 0, result.stderr
    gate.wait_closed()
    errors = result.stderr.splitlines()
    assert sum("Permission denied" in line for line in errors) == len(refused), result.stderr
    assert sum("not found" in line for line in errors) == len(missing), result.stderr
    assert not (tmp_path / "stolen").exists()
    assert gate.completed == []


def test_curl_cannot_escape_the_folder(server: SftpServer, tmp_path: Path) -> None:
    for path in ["../../etc/passwd", "etc/passwd"]:
        result = curl_sftp(server.bound_port, path, tmp_path / "stolen")
        assert result.returncode == 78, result.stderr  # CURLE_REMOTE_FILE_NOT_FOUND
    assert not (tmp_path / "stolen").exists()


def test_shell_exec_pty_forwarding_and_other_subsystems_are_refused(server: SftpServer) -> None:
    transport = paramiko.Transport(("127.0.0.1", server.bound_port))
    try:
        transport.connect(username=USERNAME, password=PASSWORD)
        attempts: list[Callable[[paramiko.Channel], object]] = [
            lambda channel: channel.exec_command("cat /etc/passwd"),
            lambda channel: channel.invoke_shell(),
            lambda channel: channel.get_pty(),
            lambda channel: channel.invoke_subsystem("shell"),
        ]
        for attempt in attempts:
            channel = transport.open_session()
            with pytest.raises(paramiko.SSHException):
                attempt(channel)
            channel.close()
        with pytest.raises(paramiko.ChannelException):
            transport.open_channel("direct-tcpip", ("127.0.0.1", 22), ("127.0.0.1", 0))
        with pytest.raises(paramiko.SSHException):
            transport.request_port_forward("127.0.0.1", 0)
        sftp = paramiko.SFTPClient.from_transport(transport)  # the session still works afterwards
        assert sftp is not None
        assert sorted(sftp.listdir()) == sorted(RECORDINGS)
    finally:
        transport.close()


def test_openssh_exec_is_refused(server: SftpServer, tmp_path: Path) -> None:
    ssh = require("ssh", "openssh-client")
    askpass = tmp_path / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\necho '{PASSWORD}'\n")
    askpass.chmod(0o700)
    env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"}
    args = [ssh, "-p", str(server.bound_port), "-o", "StrictHostKeyChecking=no"]
    args += ["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "PubkeyAuthentication=no"]
    args += ["-T", f"{USERNAME}@127.0.0.1", "id"]
    result = _run(args, env=env)
    assert result.returncode != 0
    assert "uid=" not in result.stdout


# --- authentication -------------------------------------------------------------------------------


def _paramiko_login_failure(port: int, username: str, password: str) -> paramiko.AuthenticationException:
    transport = paramiko.Transport(("127.0.0.1", port))
    try:
        with pytest.raises(paramiko.AuthenticationException) as failure:
            transport.connect(username=username, password=password)
        return failure.value
    finally:
        transport.close()


def test_wrong_password_and_unknown_user_fail_identically(
    server: SftpServer, gate: FakeReleaseGate, tmp_path: Path
) -> None:
    wrong = _paramiko_login_failure(server.bound_port, USERNAME, "not the password")
    unknown = _paramiko_login_failure(server.bound_port, "rel-nobody", PASSWORD)
    assert type(wrong) is type(unknown)
    assert str(wrong) == str(unknown)
    assert [user for user, _ in gate.auth_attempts] == [USERNAME, "rel-nobody"]  # the gate decided both

    if available("sftp", "openssh-client"):
        wrong_cli = openssh_sftp(tmp_path, server.bound_port, ["ls"], password="not the password")
        unknown_cli = openssh_sftp(tmp_path, server.bound_port, ["ls"], username="rel-nobody")
        assert wrong_cli.returncode == unknown_cli.returncode == 255
        assert wrong_cli.stderr.replace(USERNAME, "<user>") == unknown_cli.stderr.replace("rel-nobody", "<user>")
    if available("curl", "curl"):
        wrong_curl = curl_sftp(server.bound_port, SMALL, tmp_path / "x", password="not the password")
        unknown_curl = curl_sftp(server.bound_port, SMALL, tmp_path / "x", username="rel-nobody")
        assert wrong_curl.returncode == unknown_curl.returncode == 67  # CURLE_LOGIN_DENIED
        assert wrong_curl.stderr == unknown_curl.stderr
    assert gate.completed == []


def test_failed_logins_are_logged_without_the_password(server: SftpServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _paramiko_login_failure(server.bound_port, USERNAME, "hunter2-wrong")
    with paramiko_sftp(server.bound_port) as sftp:
        sftp.listdir()
    assert "hunter2-wrong" not in caplog.text
    assert PASSWORD not in caplog.text
    failures = [r for r in caplog.records if r.name == "telgate.sftp" and "login failed" in r.getMessage()]
    assert len(failures) == 1
    assert USERNAME in failures[0].getMessage()
    assert "127.0.0.1" in failures[0].getMessage()


def test_too_many_failures_end_the_connection(host_key: paramiko.PKey, gate: FakeReleaseGate) -> None:
    with SftpServer("127.0.0.1", 0, host_key, gate, max_auth_attempts=2) as server:
        transport = paramiko.Transport(("127.0.0.1", server.bound_port))
        try:
            transport.start_client(timeout=10)
            for _ in range(2):
                with pytest.raises(paramiko.AuthenticationException):
                    transport.auth_password(USERNAME, "wrong")
            transport.join(timeout=10)  # the server hangs up after the second failure
            assert not transport.is_active()
        finally:
            transport.close()
    assert len(gate.auth_attempts) == 2


# --- transport policy and lifecycle ---------------------------------------------------------------


def test_ciphers_offer_gcm_and_ctr_but_not_cbc(server: SftpServer) -> None:
    for cipher in ["aes256-gcm@openssh.com", "aes128-gcm@openssh.com", "aes256-ctr", "aes128-ctr"]:
        transport = paramiko.Transport(("127.0.0.1", server.bound_port))
        try:
            transport.get_security_options().ciphers = (cipher,)
            transport.connect(username=USERNAME, password=PASSWORD)
            assert vars(transport)["remote_cipher"] == cipher  # not in the type stubs
        finally:
            transport.close()
    transport = paramiko.Transport(("127.0.0.1", server.bound_port))
    try:
        transport.get_security_options().ciphers = ("aes128-cbc",)
        with pytest.raises(paramiko.SSHException):
            transport.connect(username=USERNAME, password=PASSWORD)
    finally:
        transport.close()


def _wait_for_hangup(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (recv blocks, with a timeout)."""
    sock.settimeout(10)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def test_a_silent_client_is_dropped_after_the_login_grace(host_key: paramiko.PKey, gate: FakeReleaseGate) -> None:
    grace = timedelta(milliseconds=300)
    with (
        SftpServer("127.0.0.1", 0, host_key, gate, login_grace=grace) as server,
        socket.create_connection(("127.0.0.1", server.bound_port), timeout=10) as sock,
    ):
        assert _wait_for_hangup(sock).startswith(b"SSH-2.0-")
    assert gate.auth_attempts == []


def test_an_idle_session_is_closed(host_key: paramiko.PKey, gate: FakeReleaseGate) -> None:
    with SftpServer("127.0.0.1", 0, host_key, gate, idle_timeout=timedelta(milliseconds=200)) as server:
        transport = paramiko.Transport(("127.0.0.1", server.bound_port))
        try:
            transport.connect(username=USERNAME, password=PASSWORD)
            assert gate.closed_sessions.get(timeout=10).username == USERNAME
            transport.join(timeout=10)
            assert not transport.is_active()
        finally:
            transport.close()


def test_connections_beyond_the_limit_are_refused(host_key: paramiko.PKey, gate: FakeReleaseGate) -> None:
    with (
        SftpServer("127.0.0.1", 0, host_key, gate, max_connections=1) as server,
        paramiko_sftp(server.bound_port) as sftp,
    ):
        with socket.create_connection(("127.0.0.1", server.bound_port), timeout=10) as extra:
            assert _wait_for_hangup(extra) == b""
        assert sorted(sftp.listdir()) == sorted(RECORDINGS)


def test_open_handles_are_capped_per_connection(host_key: paramiko.PKey, gate: FakeReleaseGate) -> None:
    with (
        SftpServer("127.0.0.1", 0, host_key, gate, max_open_handles=2) as server,
        paramiko_sftp(server.bound_port) as sftp,
    ):
        first, second = sftp.open(BIG), sftp.open(SMALL)
        with pytest.raises(OSError, match="Failure"):
            sftp.open(BIG)
        first.close()
        sftp.open(BIG).close()
        second.close()
    assert gate.completed == []


def test_stop_closes_live_sessions_and_joins_every_thread(host_key: paramiko.PKey, gate: FakeReleaseGate) -> None:
    server = SftpServer("127.0.0.1", 0, host_key, gate)
    server.start()
    transport = paramiko.Transport(("127.0.0.1", server.bound_port))
    try:
        transport.connect(username=USERNAME, password=PASSWORD)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        remote = sftp.open(BIG)
        remote.read(1000)
        server.stop()
        assert gate.closed_sessions.get_nowait().username == USERNAME
        assert not [t for t in threading.enumerate() if t.name.startswith("telgate-sftp")]
        transport.join(timeout=10)
        assert not transport.is_active()
        assert gate.completed == []
    finally:
        transport.close()
    server.stop()  # idempotent


def test_bound_port_requires_a_started_server(host_key: paramiko.PKey, gate: FakeReleaseGate) -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = SftpServer("127.0.0.1", 0, host_key, gate).bound_port


# --- the pure parts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", "/"),
        (".", "/"),
        ("/", "/"),
        ("~", "/"),
        ("~/", "/"),
        ("..", "/"),
        ("/../../..", "/"),
        ("a.wav", "/a.wav"),
        ("./a.wav", "/a.wav"),
        ("~/a.wav", "/a.wav"),
        ("/x/../a.wav", "/a.wav"),
        ("../../etc/passwd", "/etc/passwd"),
        ("a//b/./c/..", "/a/b"),
        ("x/~", "/x/~"),
    ],
)
def test_canonical_path(path: str, expected: str) -> None:
    assert canonical_path(path) == expected


def test_error_codes_map_to_sftp_statuses() -> None:
    assert sftp_status(RecordingGoneError("x")) == paramiko.sftp.SFTP_NO_SUCH_FILE
    assert sftp_status(CorruptRecordingError("x")) == paramiko.sftp.SFTP_FAILURE
    assert sftp_status(ValueError("no code")) == paramiko.sftp.SFTP_FAILURE


def test_the_fake_gate_refuses_collected_recordings(gate: FakeReleaseGate) -> None:
    session = FakeSession("release-1", USERNAME, "127.0.0.1")
    gate.file_completed(session, gate.recording_id(SMALL))
    with pytest.raises(RecordingGoneError):
        gate.open_file(session, gate.recording_id(SMALL))

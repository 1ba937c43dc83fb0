"""The SFTP server that releases recordings to customers: transport only, decisions behind a port.

Data flow::

    customer --TCP--> SftpServer (accept thread) --> one connection thread per client
      paramiko.Transport: password auth only, AES-GCM then AES-CTR, SHA-2 MACs;
      no shell, exec, pty, X11, agent or port forwarding; only the "sftp" subsystem
        --> _ReleaseSubsystem (paramiko.SFTPServer; advertises limits@openssh.com only)
          --> _ReleaseFolder (SFTPServerInterface): a read-only, chrooted "/" holding exactly the
              session's released files as ReleaseGate.list_files reports them
            --> _RecordingHandle: reads at any offset through a small aligned block cache over
                ReleaseGate.open_file(...).read_at; every byte returned is recorded in the
                connection's ByteRanges for that recording

``ReleaseGate`` owns every decision: ``authenticate`` claims the credential, binds it to the source
address, scores failures and audits; it answers ``None`` for every kind of failure, and the server
turns all of them into the same SSH authentication failure. When the client closes a handle and the
connection has by then returned every byte of that recording at least once (across all its
handles), ``file_completed`` is called exactly once and the file leaves the listing. An empty
recording is complete once a handle on it is opened and closed. A partial download, or reading one
half twice, completes nothing.

What closes a handle "by the client": an SFTP CLOSE, and also a clean end of the session that the
client initiates (it sends channel EOF or CLOSE on the SFTP channel, or an SSH disconnect message),
which closes every handle it left open: lftp's ``get x; bye`` often hangs up before sending the
CLOSE of the last file. A dropped connection (socket error, reset, TCP close without an SSH
goodbye, idle timeout, server shutdown) closes its handles without completing anything.
Coverage lives in the connection, so a download resumed over a new connection starts from nothing.
``session_closed`` follows the end of every authenticated connection, after its handles are closed.

Every gate call runs on paramiko's threads and may block. Errors become SFTP status codes in one
place, ``SFTP_STATUS_BY_CODE``, keyed by the error's stable ``code`` attribute; anything without a
known code is a plain failure, its detail in the log only::

    SftpRefusedError (this module)      not_found -> no such file     forbidden -> permission denied
                                        unsupported -> op unsupported  anything else -> failure
    errors raised by the gate/readers   not_found, vault.blob_not_found, vault.recording_not_found,
                                        vault.recording_shredded -> no such file
                                        unauthenticated, rate_limited -> permission denied
                                        vault.corrupt and the rest -> failure

The vault cannot import ``gateway``, so the table is its own; for every code that
``gateway.errors.ERROR_TABLE`` also knows, the statuses agree (a test in tests/gateway checks it).

Passwords are never logged; usernames and source addresses are.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import select
import socket
import stat
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Concatenate, Final, ParamSpec, Protocol, TypeVar, cast

import paramiko
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    MSG_CHANNEL_CLOSE,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)
from paramiko.sftp import (
    CMD_DATA,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_INIT,
    CMD_READ,
    CMD_STATUS,
    CMD_VERSION,
    SFTP_BAD_MESSAGE,
    SFTP_DESC,
    SFTP_EOF,
    SFTP_FAILURE,
    SFTP_NO_SUCH_FILE,
    SFTP_OP_UNSUPPORTED,
    SFTP_PERMISSION_DENIED,
)

from vault.coverage import ByteRanges

logger = logging.getLogger("telgate.sftp")

# Clients negotiate the first of their own choices that we list, so this order matters only to
# clients that defer to the server; CTR stays because libssh2 (curl) has no AES-GCM.
PREFERRED_CIPHERS: Final = (
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
PREFERRED_MACS: Final = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)

# The single table from error code to SFTP status (draft-ietf-secsh-filexfer-02 numbers).
SFTP_STATUS_BY_CODE: Final[Mapping[str, int]] = {
    "not_found": SFTP_NO_SUCH_FILE,
    "forbidden": SFTP_PERMISSION_DENIED,
    "unauthenticated": SFTP_PERMISSION_DENIED,
    "rate_limited": SFTP_PERMISSION_DENIED,
    "unsupported": SFTP_OP_UNSUPPORTED,
    "is_a_directory": SFTP_FAILURE,
    "not_a_directory": SFTP_FAILURE,
    "too_many_handles": SFTP_FAILURE,
    "short_read": SFTP_FAILURE,
    "vault.blob_not_found": SFTP_NO_SUCH_FILE,
    "vault.recording_not_found": SFTP_NO_SUCH_FILE,
    "vault.recording_shredded": SFTP_NO_SUCH_FILE,
    "vault.corrupt": SFTP_FAILURE,
}


def sftp_status(exc: BaseException) -> int:
    """The SFTP status a failure shows to the client, looked up by the error's ``code``."""
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return SFTP_STATUS_BY_CODE.get(code, SFTP_FAILURE)
    return SFTP_FAILURE


class SftpRefusedError(Exception):
    """A request the virtual folder refuses; ``code`` picks the SFTP status from the table."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, slots=True)
class ReleasedFile:
    """One recording as the customer sees it: file name, plaintext size and modification time."""

    name: str
    recording_id: str
    size: int
    mtime: datetime


class ReleaseSession(Protocol):
    """What the gate hands back for an accepted login; opaque to the server beyond these fields."""

    @property
    def release_id(self) -> str:
        """The release this login belongs to."""

    @property
    def username(self) -> str:
        """The credential's username."""

    @property
    def source_address(self) -> str:
        """The client address the credential is bound to."""


class RecordingReader(Protocol):
    """Random access to one recording's verified plaintext."""

    @property
    def size(self) -> int:
        """Plaintext size in bytes."""

    def read_at(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` verified bytes from ``offset`` (less only at the end); raises on corruption."""

    def close(self) -> None:
        """Release whatever the reader holds."""


SessionT = TypeVar("SessionT", bound=ReleaseSession)


class ReleaseGate(Protocol[SessionT]):
    """The port behind which releases, credentials, recordings and auditing live.

    Generic in the gate's own session type: the server only ever hands back sessions that
    ``authenticate`` returned.
    """

    def authenticate(self, username: str, password: str, source_address: str) -> SessionT | None:
        """The session for a valid login, ``None`` for any failure whatsoever."""

    def list_files(self, session: SessionT) -> list[ReleasedFile]:
        """The recordings this session may still collect."""

    def open_file(self, session: SessionT, recording_id: str) -> RecordingReader:
        """A reader over one released recording's plaintext."""

    def file_completed(self, session: SessionT, recording_id: str) -> None:
        """Every byte was read and the handle closed: shred the recording and audit."""

    def session_closed(self, session: SessionT) -> None:
        """The client's connection has ended."""


@dataclass(frozen=True, slots=True)
class _Limits:
    """Per-connection settings shared by every connection of one server."""

    login_grace: timedelta
    idle_timeout: timedelta
    max_auth_attempts: int
    max_read_length: int
    read_block_size: int
    cached_blocks: int
    max_open_handles: int


def canonical_path(path: str) -> str:
    """Resolve ``path`` inside the chroot: "", ".", "~" are "/", ".." stops at "/", never escapes."""
    parts: list[str] = []
    for index, part in enumerate(path.split("/")):
        if part in ("", "."):
            continue
        if part == "~" and index == 0:
            parts.clear()
        elif part == "..":
            if parts:
                parts.pop()
        else:
            parts.append(part)
    return "/" + "/".join(parts)


def _client_address(peer: Any) -> str:
    """The peer's IP as text, with IPv4-mapped IPv6 shown as plain IPv4."""
    host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _file_attributes(released: ReleasedFile) -> paramiko.SFTPAttributes:
    attrs = paramiko.SFTPAttributes()
    attrs.filename = released.name
    attrs.st_mode = stat.S_IFREG | 0o400
    attrs.st_size = released.size
    attrs.st_uid = 0
    attrs.st_gid = 0
    attrs.st_mtime = attrs.st_atime = int(released.mtime.timestamp())
    return attrs


def _folder_attributes(files: Mapping[str, ReleasedFile]) -> paramiko.SFTPAttributes:
    attrs = paramiko.SFTPAttributes()
    attrs.filename = "/"
    attrs.st_mode = stat.S_IFDIR | 0o500
    attrs.st_size = 0
    attrs.st_uid = 0
    attrs.st_gid = 0
    newest = max((int(f.mtime.timestamp()) for f in files.values()), default=0)
    attrs.st_mtime = attrs.st_atime = newest
    return attrs


class _Connection(paramiko.ServerInterface):
    """One client connection: SSH policy, the authenticated session and its download coverage."""

    def __init__(self, gate: ReleaseGate[Any], peer: str, source_address: str, limits: _Limits) -> None:
        self.gate = gate
        self.peer = peer
        self.source_address = source_address
        self.limits = limits
        self.session: ReleaseSession | None = None
        self.settled = threading.Event()  # authenticated, gave up, or the transport ended
        self.ended = threading.Event()
        self.client_disconnected = threading.Event()  # the client sent SSH_MSG_DISCONNECT
        self.channels_closed_by_client: set[int] = set()  # channel ids the client sent CHANNEL_CLOSE for
        self.subsystems: list[_ReleaseSubsystem] = []
        self._auth_failures = 0
        self._lock = threading.Lock()
        self._files: dict[str, ReleasedFile] | None = None
        self._coverage: dict[str, ByteRanges] = {}
        self._completed: set[str] = set()
        self._open_handles = 0
        self._last_activity = time.monotonic()

    # --- SSH policy -------------------------------------------------------------------------

    def get_allowed_auths(self, username: str) -> str:
        return "password"

    def check_auth_none(self, username: str) -> int:
        return AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return AUTH_FAILED

    def check_auth_interactive(self, username: str, submethods: str) -> int:
        return AUTH_FAILED

    def check_auth_password(self, username: str, password: str | bytes) -> int:
        if isinstance(password, bytes):  # paramiko passes undecodable passwords through raw
            password = password.decode("utf-8", "replace")
        try:
            session = self.gate.authenticate(username, password, self.source_address)
        except Exception:
            logger.exception("login check failed for user %r from %s", username, self.peer)
            session = None
        if session is None:
            self._auth_failures += 1
            logger.warning("login failed for user %r from %s (attempt %d)", username, self.peer, self._auth_failures)
            if self._auth_failures >= self.limits.max_auth_attempts:
                self.settled.set()
            return AUTH_FAILED
        self.session = session
        self.touch()
        logger.info("login user %r from %s release %s", username, self.peer, session.release_id)
        self.settled.set()
        return AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            self.touch()
            return OPEN_SUCCEEDED
        logger.warning("refused %r channel from %s", kind, self.peer)
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        if name != "sftp" or self.session is None:
            logger.warning("refused subsystem %r from %s", name, self.peer)
            return False
        subsystem = _ReleaseSubsystem(channel, name, self)
        subsystem.daemon = True
        with self._lock:
            self.subsystems.append(subsystem)
        subsystem.start()
        return True

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        logger.warning("refused shell from %s", self.peer)
        return False

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        logger.warning("refused exec %r from %s", command[:80], self.peer)
        return False

    def check_channel_pty_request(
        self,
        channel: paramiko.Channel,
        term: bytes,
        width: int,
        height: int,
        pixelwidth: int,
        pixelheight: int,
        modes: bytes,
    ) -> bool:
        return False

    def check_channel_x11_request(
        self,
        channel: paramiko.Channel,
        single_connection: bool,
        auth_protocol: str,
        auth_cookie: bytes,
        screen_number: int,
    ) -> bool:
        return False

    def check_channel_forward_agent_request(self, channel: paramiko.Channel) -> bool:
        return False

    def check_channel_env_request(self, channel: paramiko.Channel, name: bytes, value: bytes) -> bool:
        return False

    def check_port_forward_request(self, address: str, port: int) -> int:
        logger.warning("refused port forwarding from %s", self.peer)
        return False

    def check_global_request(self, kind: str, msg: paramiko.Message) -> bool:
        return False

    def check_channel_direct_tcpip_request(
        self, chanid: int, origin: tuple[str, int], destination: tuple[str, int]
    ) -> int:
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    # --- the release view -------------------------------------------------------------------

    def touch(self) -> None:
        """Note client activity for the idle timeout."""
        self._last_activity = time.monotonic()

    def idle_seconds(self) -> float:
        """Seconds since the client last did anything."""
        return time.monotonic() - self._last_activity

    def require_session(self) -> ReleaseSession:
        """The authenticated session (subsystems only start after authentication)."""
        if self.session is None:
            raise SftpRefusedError("forbidden")
        return self.session

    def files(self, *, refresh: bool = False) -> dict[str, ReleasedFile]:
        """The session's released files by name, loaded on first use and on ``refresh``."""
        with self._lock:
            if self._files is not None and not refresh:
                return self._files
        listed = self.gate.list_files(self.require_session())
        files: dict[str, ReleasedFile] = {}
        for released in listed:
            name = released.name
            if name in ("", ".", "..", "~") or "/" in name or "\x00" in name or name in files:
                logger.error("skipping unservable file name %r in release listing", name)
                continue
            files[name] = released
        with self._lock:
            self._files = {n: f for n, f in files.items() if f.recording_id not in self._completed}
            return self._files

    def record_read(self, recording_id: str, offset: int, length: int) -> None:
        """Count ``length`` bytes from ``offset`` of a recording as delivered to the client."""
        with self._lock:
            ranges = self._coverage.get(recording_id)
            if ranges is None:
                ranges = self._coverage[recording_id] = ByteRanges()
            ranges.add(offset, length)

    def handle_opened(self) -> None:
        """Account for a new open handle, refusing past the per-connection limit."""
        with self._lock:
            if self._open_handles >= self.limits.max_open_handles:
                raise SftpRefusedError("too_many_handles")
            self._open_handles += 1

    def handle_forgotten(self) -> None:
        """Give back the slot of a handle that never opened."""
        with self._lock:
            self._open_handles -= 1

    def handle_closed(self, recording_id: str, size: int, *, by_client: bool) -> None:
        """Complete the recording if the client closed a handle and every byte has been returned."""
        with self._lock:
            self._open_handles -= 1
            if not by_client or recording_id in self._completed:
                return
            ranges = self._coverage.get(recording_id, ByteRanges())
            if not ranges.covered(size):
                return
            self._completed.add(recording_id)  # claimed here so that concurrent closes call once
        session = self.require_session()
        try:
            self.gate.file_completed(session, recording_id)
        except Exception:
            logger.exception(
                "completing recording %s failed for user %r from %s", recording_id, session.username, self.peer
            )
            with self._lock:
                self._completed.discard(recording_id)
            return
        logger.info("user %r from %s collected recording %s", session.username, self.peer, recording_id)
        with self._lock:
            self._coverage.pop(recording_id, None)
            if self._files is not None:
                self._files = {n: f for n, f in self._files.items() if f.recording_id != recording_id}


class _BlockCache:
    """Aligned blocks of one recording, least recently used evicted, so scattered reads decrypt once."""

    def __init__(self, reader: RecordingReader, size: int, block_size: int, capacity: int) -> None:
        self._reader = reader
        self._size = size
        self._block_size = block_size
        self._capacity = capacity
        self._blocks: OrderedDict[int, bytes] = OrderedDict()

    def _block(self, index: int) -> bytes:
        block = self._blocks.get(index)
        if block is not None:
            self._blocks.move_to_end(index)
            return block
        start = index * self._block_size
        wanted = min(self._block_size, self._size - start)
        block = self._reader.read_at(start, wanted)
        if len(block) != wanted:
            raise SftpRefusedError("short_read")
        self._blocks[index] = block
        if len(self._blocks) > self._capacity:
            self._blocks.popitem(last=False)
        return block

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``, which must lie within the recording."""
        size = self._block_size
        first, last = start // size, (end - 1) // size
        if first == last:
            base = first * size
            return self._block(first)[start - base : end - base]
        parts = []
        for index in range(first, last + 1):
            base = index * size
            block = self._block(index)
            parts.append(block[max(start - base, 0) : min(end - base, len(block))])
        return b"".join(parts)


class _RecordingHandle(paramiko.SFTPHandle):
    """An open released recording: reads at any offset, counted towards its coverage."""

    def __init__(self, folder: _ReleaseFolder, released: ReleasedFile, reader: RecordingReader, size: int) -> None:
        super().__init__(os.O_RDONLY)
        self._folder = folder
        self._connection = folder.connection
        self._released = released
        self._reader = reader
        self._size = size
        limits = self._connection.limits
        self._max_read = limits.max_read_length
        self._cache = _BlockCache(reader, size, limits.read_block_size, limits.cached_blocks)
        self._closed = False

    def read(self, offset: int, length: int) -> bytes | int:
        if offset >= self._size or length <= 0:
            return b""
        end = min(offset + min(length, self._max_read), self._size)
        try:
            data = self._cache.read(offset, end)
        except Exception as exc:
            logger.error(
                "reading recording %s at %d failed for %s: %r",
                self._released.recording_id,
                offset,
                self._connection.peer,
                exc,
            )
            return sftp_status(exc)
        self._connection.record_read(self._released.recording_id, offset, len(data))
        return data

    def write(self, offset: int, data: Any) -> int:
        return SFTP_PERMISSION_DENIED

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        return SFTP_PERMISSION_DENIED

    def stat(self) -> paramiko.SFTPAttributes:
        attrs = _file_attributes(self._released)
        attrs.st_size = self._size
        return attrs

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._reader.close()
        except Exception:
            logger.exception("closing reader for recording %s failed", self._released.recording_id)
        self._connection.handle_closed(self._released.recording_id, self._size, by_client=not self._folder.ending)


_P = ParamSpec("_P")
_R = TypeVar("_R")
_F = TypeVar("_F", bound="_ReleaseFolder")


def _as_sftp_status(
    method: Callable[Concatenate[_F, _P], _R],
) -> Callable[Concatenate[_F, _P], _R | int]:
    """Turn any exception from a folder operation into its SFTP status, logging the detail."""

    @functools.wraps(method)
    def wrapper(self: _F, /, *args: _P.args, **kwargs: _P.kwargs) -> _R | int:
        try:
            return method(self, *args, **kwargs)
        except SftpRefusedError as exc:
            logger.info("refused %s%r from %s: %s", method.__name__, args[:2], self.connection.peer, exc.code)
            return sftp_status(exc)
        except Exception:
            logger.exception("%s%r failed for %s", method.__name__, args[:2], self.connection.peer)
            return SFTP_FAILURE

    return wrapper


class _ReleaseFolder(paramiko.SFTPServerInterface):
    """The read-only, chrooted virtual folder "/" of one session's released recordings."""

    def __init__(self, server: paramiko.ServerInterface, *args: Any, **kwargs: Any) -> None:
        super().__init__(server, *args, **kwargs)
        if not isinstance(server, _Connection):
            raise TypeError("the release folder only serves telgate connections")
        self.connection = server
        self.ending = False
        self.ended_by_client = False  # set by the subsystem just before the session ends

    def session_ended(self) -> None:
        # paramiko calls this before closing the handles the client left open: those closes
        # complete recordings only when the client ended the session cleanly (lftp's "get; bye").
        self.ending = not self.ended_by_client

    def canonicalize(self, path: str) -> str:
        return canonical_path(path)

    def _lookup(self, path: str) -> ReleasedFile | None:
        """The file at ``path``, ``None`` for the folder itself; refuses anything else."""
        resolved = canonical_path(path)
        if resolved == "/":
            return None
        name = resolved[1:]
        released = self.connection.files().get(name)
        if released is None:
            raise SftpRefusedError("not_found")
        return released

    @_as_sftp_status
    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes]:
        if self._lookup(path) is not None:
            raise SftpRefusedError("not_a_directory")
        files = self.connection.files(refresh=True)
        return [_file_attributes(f) for f in sorted(files.values(), key=lambda f: f.name)]

    @_as_sftp_status
    def stat(self, path: str) -> paramiko.SFTPAttributes:
        released = self._lookup(path)
        if released is None:
            return _folder_attributes(self.connection.files())
        return _file_attributes(released)

    def lstat(self, path: str) -> paramiko.SFTPAttributes | int:
        return self.stat(path)

    @_as_sftp_status
    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> paramiko.SFTPHandle:
        writing = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_EXCL
        if flags & writing:
            raise SftpRefusedError("forbidden")
        released = self._lookup(path)
        if released is None:
            raise SftpRefusedError("is_a_directory")
        self.connection.handle_opened()
        try:
            reader = self.connection.gate.open_file(self.connection.require_session(), released.recording_id)
        except BaseException:
            self.connection.handle_forgotten()
            raise
        logger.info(
            "user %r from %s opened recording %s",
            self.connection.require_session().username,
            self.connection.peer,
            released.recording_id,
        )
        return _RecordingHandle(self, released, reader, reader.size)

    @_as_sftp_status
    def readlink(self, path: str) -> str:
        if self._lookup(path) is None:
            return "/"
        raise SftpRefusedError("forbidden")

    def remove(self, path: str) -> int:
        return self._refuse("remove", path)

    def rename(self, oldpath: str, newpath: str) -> int:
        return self._refuse("rename", oldpath)

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        return self._refuse("rename", oldpath)

    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        return self._refuse("mkdir", path)

    def rmdir(self, path: str) -> int:
        return self._refuse("rmdir", path)

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        return self._refuse("setstat", path)

    def symlink(self, target_path: str, path: str) -> int:
        return self._refuse("symlink", path)

    def _refuse(self, operation: str, path: str) -> int:
        logger.info("refused %s %r from %s: read-only", operation, path, self.connection.peer)
        return sftp_status(SftpRefusedError("forbidden"))


class _ParamikoSftpInternals(Protocol):
    """The undocumented paramiko.SFTPServer method this module delegates to (stable since 2003)."""

    def _process(self, t: int, request_number: int, msg: paramiko.Message) -> None: ...


class _ParamikoTransportInternals(Protocol):
    """The undocumented paramiko.Transport method this module extends (to note a client's goodbye)."""

    def _parse_disconnect(self, m: paramiko.Message) -> None: ...


def _sftp_packet(kind: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, kind) + body


def _sftp_string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack(">I", len(raw)) + raw


class _ReleaseSubsystem(paramiko.SFTPServer):
    """paramiko's SFTP subsystem, with reads sent without extra copies and only our extensions.

    It advertises limits@openssh.com (OpenSSH's client then asks for up to ``max_read_length`` per
    read instead of 32 KiB, the largest single throughput gain), refuses every other extension
    (notably paramiko's check-file, which would hash content without sending it) and caps request
    packets, since nothing here accepts writes.
    """

    def __init__(self, channel: paramiko.Channel, name: str, connection: _Connection) -> None:
        super().__init__(channel, name, connection, _ReleaseFolder)
        self._connection = connection
        self._channel = channel
        self._max_request = connection.limits.max_read_length + 1024
        self._at_eof = False  # the channel delivered everything it will (client EOF, close, or drop)

    def _process(self, t: int, request_number: int, msg: paramiko.Message) -> None:
        self._connection.touch()
        if t == CMD_READ:
            self._read(request_number, msg)
        elif t == CMD_EXTENDED:
            self._extended(request_number, msg)
        else:
            cast(_ParamikoSftpInternals, super())._process(t, request_number, msg)

    def _read(self, request_number: int, msg: paramiko.Message) -> None:
        handle = self.file_table.get(msg.get_binary())
        offset = msg.get_int64()
        length = msg.get_int()
        if handle is None:
            self._send_status(request_number, SFTP_BAD_MESSAGE, "Invalid handle")
            return
        data = handle.read(offset, length)
        if isinstance(data, int):
            self._send_status(request_number, data)
        elif not data:
            self._send_status(request_number, SFTP_EOF)
        else:
            header = struct.pack(">IBII", len(data) + 9, CMD_DATA, request_number, len(data))
            self._write_all(header + data)

    def _extended(self, request_number: int, msg: paramiko.Message) -> None:
        tag = msg.get_text()
        if tag != "limits@openssh.com":
            denied = tag == "posix-rename@openssh.com"
            self._send_status(request_number, SFTP_PERMISSION_DENIED if denied else SFTP_OP_UNSUPPORTED)
            return
        limits = self._connection.limits
        body = struct.pack(
            ">IQQQQ",
            request_number,
            self._max_request,  # largest request packet accepted
            limits.max_read_length,
            0,  # no writes
            limits.max_open_handles,
        )
        self._write_all(_sftp_packet(CMD_EXTENDED_REPLY, body))

    def _send_status(self, request_number: int, code: int, desc: str | None = None) -> None:
        text = desc if desc is not None else SFTP_DESC[code]
        body = struct.pack(">II", request_number, code) + _sftp_string(text) + _sftp_string("")
        self._write_all(_sftp_packet(CMD_STATUS, body))

    def _send_server_version(self) -> int:
        t, data = self._read_packet()
        if t != CMD_INIT or len(data) < 4:
            raise paramiko.SFTPError("Incompatible sftp protocol")
        (version,) = struct.unpack(">I", data[:4])
        body = struct.pack(">I", 3) + _sftp_string("limits@openssh.com") + _sftp_string("1")
        self._write_all(_sftp_packet(CMD_VERSION, body))
        return int(version)

    def _read_packet(self) -> tuple[int, bytes]:
        (size,) = struct.unpack(">I", self._read_all(4))
        if not 0 < size <= self._max_request:
            raise paramiko.SFTPError(f"refusing an SFTP packet of {size} bytes")
        data = self._read_all(size)
        return data[0], data[1:]

    def finish_subsystem(self) -> None:
        folder = self.server
        if isinstance(folder, _ReleaseFolder):
            folder.ended_by_client = self._ended_by_client()
            if folder.ended_by_client:
                logger.info("client %s ended its SFTP session cleanly", self._connection.peer)
        super().finish_subsystem()

    def _ended_by_client(self) -> bool:
        """Whether the session ended because the client said goodbye, not because the connection broke."""
        if not self._at_eof:
            return False  # the loop stopped on an error of ours or a malformed packet
        connection = self._connection
        return (
            bool(self._channel.eof_received)
            or self._channel.get_id() in connection.channels_closed_by_client
            or connection.client_disconnected.is_set()
        )

    def _read_all(self, n: int) -> bytes:
        parts = []
        while n > 0:
            chunk = self._channel.recv(n)
            if not chunk:
                self._at_eof = True
                raise EOFError
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    def _write_all(self, out: bytes) -> None:
        # paramiko's version re-slices the remaining bytes after every SSH packet: quadratic copying
        # for a 256 KiB reply. A memoryview slices for free and paramiko copies each piece once.
        view = memoryview(out)
        while view:
            sent = self._channel.send(cast(bytes, view))  # any buffer works: it is sliced, then copied
            if sent <= 0:
                raise EOFError
            view = view[sent:]


class _ReleaseTransport(paramiko.Transport):
    """A server transport that signals when its thread ends, however it ends."""

    def __init__(self, sock: socket.socket, connection: _Connection, *, window_size: int, max_packet_size: int):
        super().__init__(sock, default_window_size=window_size, default_max_packet_size=max_packet_size)
        self._telgate_connection = connection
        # paramiko dispatches channel messages through this (class-level) table; a per-instance copy
        # notes which channels the client itself closed before paramiko handles the close.
        handlers = dict(cast(Mapping[int, Callable[..., None]], vars(paramiko.Transport)["_channel_handler_table"]))
        close_channel = handlers[MSG_CHANNEL_CLOSE]

        def client_closed(channel: paramiko.Channel, message: paramiko.Message) -> None:
            connection.channels_closed_by_client.add(channel.get_id())
            close_channel(channel, message)

        handlers[MSG_CHANNEL_CLOSE] = client_closed
        self._channel_handler_table = handlers

    def _parse_disconnect(self, m: paramiko.Message) -> None:
        # Called by the transport thread on SSH_MSG_DISCONNECT, before it tears the channels down.
        self._telgate_connection.client_disconnected.set()
        cast(_ParamikoTransportInternals, super())._parse_disconnect(m)

    def run(self) -> None:
        try:
            super().run()
        finally:
            self._telgate_connection.ended.set()
            self._telgate_connection.settled.set()


class SftpServer:
    """Serves released recordings over SFTP on one listening socket, one transport per client.

    ``login_grace`` bounds the time from connect to a successful login, ``idle_timeout`` the time
    between requests; ``max_read_length`` is advertised through limits@openssh.com and caps each
    read; ``read_block_size`` x ``cached_blocks`` is the plaintext cached per open handle (at most
    ``max_open_handles`` per connection). ``window_size`` and ``max_packet_size`` only govern what the
    client sends us: download speed is set by the client's window and packet size.
    """

    def __init__(
        self,
        host: str,
        port: int,
        host_key: paramiko.PKey,
        gate: ReleaseGate[Any],
        *,
        banner_timeout: timedelta = timedelta(seconds=15),
        login_grace: timedelta = timedelta(seconds=30),
        idle_timeout: timedelta = timedelta(minutes=10),
        max_auth_attempts: int = 3,
        max_connections: int = 64,
        window_size: int = 2 * 1024 * 1024,
        max_packet_size: int = 32 * 1024,
        max_read_length: int = 256 * 1024,
        read_block_size: int = 1024 * 1024,
        cached_blocks: int = 2,
        max_open_handles: int = 16,
    ) -> None:
        self._host = host
        self._port = port
        self._host_key = host_key
        self._gate = gate
        self._banner_timeout = banner_timeout
        self._max_connections = max_connections
        self._window_size = window_size
        self._max_packet_size = max_packet_size
        self._limits = _Limits(
            login_grace=login_grace,
            idle_timeout=idle_timeout,
            max_auth_attempts=max_auth_attempts,
            max_read_length=max_read_length,
            read_block_size=read_block_size,
            cached_blocks=cached_blocks,
            max_open_handles=max_open_handles,
        )
        self._listener: socket.socket | None = None
        self._wake_reader: socket.socket | None = None
        self._wake_writer: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._live: dict[threading.Thread, tuple[_Connection, paramiko.Transport | None]] = {}
        self._stopping = threading.Event()

    @property
    def bound_port(self) -> int:
        """The port actually listened on (useful after binding port 0)."""
        if self._listener is None:
            raise RuntimeError("server not started")
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        """Bind and start accepting connections in a background thread."""
        if self._listener is not None:
            raise RuntimeError("server already started")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        self._listener = socket.create_server((self._host, self._port), family=family, backlog=64)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._stopping.clear()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="telgate-sftp-accept", daemon=True)
        self._accept_thread.start()
        logger.info("sftp listening on %s:%d", self._host, self.bound_port)

    def stop(self) -> None:
        """Stop accepting, close every live connection and wait for all their threads."""
        if self._listener is None:
            return
        self._stopping.set()
        assert self._wake_writer is not None
        self._wake_writer.send(b"x")
        if self._accept_thread is not None:
            self._accept_thread.join()
        with self._lock:
            live = list(self._live.items())
        for _thread, (connection, transport) in live:
            connection.settled.set()
            if transport is not None:
                transport.close()
        for thread, _ in live:
            thread.join()
        self._listener.close()
        for sock in (self._wake_reader, self._wake_writer):
            if sock is not None:
                sock.close()
        self._listener = self._wake_reader = self._wake_writer = None
        self._accept_thread = None
        logger.info("sftp server stopped")

    def __enter__(self) -> SftpServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        listener, wake = self._listener, self._wake_reader
        assert listener is not None
        assert wake is not None
        while not self._stopping.is_set():
            readable, _, _ = select.select([listener, wake], [], [])
            if wake in readable:
                return
            try:
                sock, peer = listener.accept()
            except OSError as exc:
                logger.warning("accept failed: %r", exc)
                continue
            peer_text = f"{peer[0]}:{peer[1]}"
            with self._lock:
                crowded = len(self._live) >= self._max_connections
            if crowded:
                logger.warning("refused connection from %s: %d connections live", peer_text, len(self._live))
                sock.close()
                continue
            connection = _Connection(self._gate, peer_text, _client_address(peer), self._limits)
            thread = threading.Thread(
                target=self._serve, args=(sock, connection), name=f"telgate-sftp-{peer_text}", daemon=True
            )
            with self._lock:
                self._live[thread] = (connection, None)
            thread.start()

    def _serve(self, sock: socket.socket, connection: _Connection) -> None:
        me = threading.current_thread()
        logger.info("connection from %s", connection.peer)
        transport: _ReleaseTransport | None = None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport = self._transport(sock, connection)
            with self._lock:
                self._live[me] = (connection, transport)
            if self._stopping.is_set():
                return
            transport.start_server(event=threading.Event(), server=connection)
            limits = connection.limits
            connection.settled.wait(limits.login_grace.total_seconds())
            if connection.session is None:
                if not connection.ended.is_set():
                    logger.warning("closing unauthenticated connection from %s", connection.peer)
                return
            idle_limit = limits.idle_timeout.total_seconds()
            while not connection.ended.wait(max(min(idle_limit / 4, 30.0), 0.05)):
                if connection.idle_seconds() > idle_limit:
                    logger.info("closing idle connection from %s", connection.peer)
                    break
        except Exception:
            logger.exception("connection from %s failed", connection.peer)
        finally:
            if transport is not None:
                transport.close()
            sock.close()
            with connection._lock:
                subsystems = list(connection.subsystems)
            for subsystem in subsystems:
                if subsystem.is_alive():
                    subsystem.join()
            if connection.session is not None:
                try:
                    self._gate.session_closed(connection.session)
                except Exception:
                    logger.exception("closing session failed for %s", connection.peer)
            logger.info("connection from %s closed", connection.peer)
            with self._lock:
                self._live.pop(me, None)

    def _transport(self, sock: socket.socket, connection: _Connection) -> _ReleaseTransport:
        transport = _ReleaseTransport(
            sock, connection, window_size=self._window_size, max_packet_size=self._max_packet_size
        )
        transport.banner_timeout = self._banner_timeout.total_seconds()
        transport.handshake_timeout = connection.limits.login_grace.total_seconds()
        transport.add_server_key(self._host_key)
        options = transport.get_security_options()
        supported = set(options.ciphers)
        options.ciphers = tuple(c for c in PREFERRED_CIPHERS if c in supported)
        supported_macs = set(options.digests)
        options.digests = tuple(m for m in PREFERRED_MACS if m in supported_macs)
        return transport

"""The recording envelope: one self-describing, chunked, authenticated file per recording.

Data flow::

    new_data_key() --> EnvelopeWriter(out, data_key, recording_id).write(...)...close()
                       header | chunk 0 | chunk 1 | ... | final chunk        (docs/vault-format.md)
    blob --> EnvelopeReader(src, data_key, recording_id) --> read_at / iter_chunks / verify

Layout (all integers big-endian; the exact specification is ``docs/vault-format.md``)::

    header  = magic "TGVAULT\\0" | version u16 = 1 | cipher u16 = 1 | chunk_size u32
              | id_len u16 | recording id (UTF-8) | salt (32) | header_mac (32)
    enc_key = HKDF-SHA256(data_key, salt, "telgate/vault/v1/chunk-encryption-key")
    mac_key = HKDF-SHA256(data_key, salt, "telgate/vault/v1/header-mac-key")
    header_mac = HMAC-SHA256(mac_key, header bytes before it)
    chunk i = AES-256-GCM(enc_key, nonce = i u64 | final u32, aad = header_mac | i u64 | final u8)

Every chunk but the last holds exactly ``chunk_size`` plaintext bytes; the last is flagged final and
holds 0 to ``chunk_size - 1`` bytes, so a recording of exactly N chunks ends with an empty final chunk.
The data key is never in the file: it is wrapped by a ``KeyProvider`` and kept in the key store.

Errors: ``CorruptRecordingError`` (no detail; the reason is logged) for anything that fails
authentication or parsing, ``UnsupportedVersionError`` for a version other than 1, ``ValueError`` /
``TypeError`` for misuse by the caller. Plaintext is released only after its GCM tag verified.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import BinaryIO, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes  # noqa: TID251
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: TID251
from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: TID251

from vault.errors import CorruptRecordingError, UnsupportedVersionError

__all__ = [
    "CIPHER_AES_256_GCM",
    "DATA_KEY_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_CHUNK_SIZE",
    "MAX_RECORDING_ID_BYTES",
    "EnvelopeReader",
    "EnvelopeWriter",
    "ciphertext_size",
    "decrypt_bytes",
    "encrypt_bytes",
    "header_size",
    "new_data_key",
]

_LOG = logging.getLogger(__name__)

MAGIC: Final = b"TGVAULT\x00"
FORMAT_VERSION: Final = 1
CIPHER_AES_256_GCM: Final = 1
DEFAULT_CHUNK_SIZE: Final = 64 * 1024
MAX_CHUNK_SIZE: Final = 16 * 1024 * 1024
MAX_RECORDING_ID_BYTES: Final = 1024
DATA_KEY_SIZE: Final = 32

SALT_SIZE: Final = 32
HEADER_MAC_SIZE: Final = 32
GCM_TAG_SIZE: Final = 16
ENC_KEY_INFO: Final = b"telgate/vault/v1/chunk-encryption-key"
MAC_KEY_INFO: Final = b"telgate/vault/v1/header-mac-key"

_PREFIX: Final = struct.Struct(">8sH")  # magic, format version
_FIXED: Final = struct.Struct(">HIH")  # cipher id, chunk size, recording-id length
_NONCE: Final = struct.Struct(">QI")  # chunk index, final flag
_AAD_SUFFIX: Final = struct.Struct(">QB")  # chunk index, final flag (after the header MAC)
_HEADER_OVERHEAD: Final = _PREFIX.size + _FIXED.size + SALT_SIZE + HEADER_MAC_SIZE
_WRITE_BATCH: Final = 1024 * 1024  # sealed bytes collected before a write to the output


def new_data_key() -> bytes:
    """Return a fresh random 256-bit data key; use one per recording, never twice."""
    return os.urandom(DATA_KEY_SIZE)


def header_size(recording_id: str) -> int:
    """Return the header length in bytes for a recording id."""
    return _HEADER_OVERHEAD + len(_encode_recording_id(recording_id))


def ciphertext_size(plaintext_size: int, recording_id: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Return the exact file size of an envelope holding ``plaintext_size`` bytes."""
    if plaintext_size < 0:
        raise ValueError("plaintext_size must be >= 0")
    _check_chunk_size(chunk_size)
    chunks = plaintext_size // chunk_size + 1  # the final chunk always exists and is never full
    return header_size(recording_id) + plaintext_size + chunks * GCM_TAG_SIZE


def encrypt_bytes(
    plaintext: bytes, data_key: bytes, recording_id: str, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> bytes:
    """Seal an in-memory plaintext into a complete envelope (small payloads and tests)."""
    out = io.BytesIO()
    writer = EnvelopeWriter(out, data_key, recording_id, chunk_size)
    writer.write(plaintext)
    writer.close()
    return out.getvalue()


def decrypt_bytes(envelope: bytes, data_key: bytes, recording_id: str | None = None) -> bytes:
    """Verify and open an in-memory envelope, returning the whole plaintext."""
    reader = EnvelopeReader(io.BytesIO(envelope), data_key, recording_id)
    return b"".join(reader.iter_chunks())


class EnvelopeWriter:
    """Streams plaintext into a sealed envelope, holding at most one chunk in memory."""

    def __init__(
        self, out: BinaryIO, data_key: bytes, recording_id: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> None:
        _check_data_key(data_key)
        _check_chunk_size(chunk_size)
        id_bytes = _encode_recording_id(recording_id)
        salt = self._new_salt()
        if len(salt) != SALT_SIZE:
            raise ValueError(f"salt must be {SALT_SIZE} bytes")
        enc_key, mac_key = _derive_keys(data_key, salt)
        unsigned = (
            _PREFIX.pack(MAGIC, FORMAT_VERSION)
            + _FIXED.pack(CIPHER_AES_256_GCM, chunk_size, len(id_bytes))
            + id_bytes
            + salt
        )
        self._header_mac = hmac.digest(mac_key, unsigned, hashlib.sha256)
        self._out = out
        self._aead = AESGCM(enc_key)
        self._chunk_size = chunk_size
        # Both buffers are allocated on first need and sized to it: a small payload (a sealed phone
        # number) must not pay for zeroing a chunk and a write batch it never fills.
        self._pending = bytearray()
        self._pending_view = memoryview(self._pending)
        self._pending_len = 0
        # Sealed chunks collect here and leave in one write per call (or per ~1 MiB): one system call
        # for 15 chunks of 64 KiB instead of one each. Ciphertext only; plaintext is in _pending.
        sealed_size = chunk_size + GCM_TAG_SIZE
        self._batch_size = max(1, _WRITE_BATCH // sealed_size) * sealed_size
        self._sealed = bytearray()
        self._sealed_view = memoryview(self._sealed)
        self._sealed_len = 0
        self._aad = bytearray(HEADER_MAC_SIZE + _AAD_SUFFIX.size)
        self._index = 0
        self._size = 0
        self._closed = False
        self._aad[:HEADER_MAC_SIZE] = self._header_mac
        self._write_all(unsigned + self._header_mac)

    def _new_salt(self) -> bytes:
        """Return the header salt; only test-vector generators override this."""
        return os.urandom(SALT_SIZE)

    @property
    def plaintext_size(self) -> int:
        """Plaintext bytes accepted so far."""
        return self._size

    @property
    def closed(self) -> bool:
        """True once ``close`` ran or the writer was abandoned."""
        return self._closed

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Accept plaintext of any length, sealing every chunk that fills; returns ``len(data)``."""
        return self.write_parts((data,))

    def write_parts(self, parts: Iterable[bytes | bytearray | memoryview]) -> int:
        """Accept consecutive pieces of plaintext as if joined; every chunk that fills is sealed, and
        the sealed chunks reach ``out`` before this returns (in as few writes as the batch allows)."""
        if self._closed:
            raise ValueError("write to a closed EnvelopeWriter")
        total = 0
        try:
            for part in parts:
                total += self._write(memoryview(part).cast("B"))
            self._flush_sealed()
        except BaseException:
            self.abandon()  # the output may hold a partial chunk: never let close() seal it
            raise
        self._size += total
        return total

    def _write(self, view: memoryview) -> int:
        total = len(view)
        chunk_size = self._chunk_size
        pos = 0
        if self._pending_len:
            take = min(chunk_size - self._pending_len, total)
            self._pending_view[self._pending_len : self._pending_len + take] = view[:take]
            self._pending_len += take
            pos = take
            if self._pending_len == chunk_size:
                self._seal(self._pending_view, final=False)
                self._pending_len = 0
        while total - pos >= chunk_size:  # full chunks straight from the caller's buffer, no copy
            self._seal(view[pos : pos + chunk_size], final=False)
            pos += chunk_size
        if pos < total:
            rest = total - pos
            if len(self._pending) < chunk_size:
                self._pending = bytearray(chunk_size)
                self._pending_view = memoryview(self._pending)
            self._pending_view[:rest] = view[pos:]
            self._pending_len = rest
        return total

    def close(self) -> int:
        """Seal the final chunk and return the plaintext size; does not close or fsync ``out``."""
        if self._closed:
            return self._size
        try:
            self._seal(self._pending_view[: self._pending_len], final=True)
            self._flush_sealed()
            self._out.flush()
        finally:
            self.abandon()  # closed either way; a failed final write leaves an unverifiable file
        return self._size

    def abandon(self) -> None:
        """Stop without a final chunk: the partial output can never verify as a recording."""
        self._closed = True
        self._pending_view[:] = bytes(len(self._pending))  # best-effort wipe of buffered plaintext
        self._pending_len = 0
        self._sealed_len = 0  # sealed but unwritten chunks are dropped: the output stays unverifiable

    def __enter__(self) -> EnvelopeWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()

    def _seal(self, plaintext: memoryview, *, final: bool) -> None:
        flag = 1 if final else 0
        index = self._index
        _AAD_SUFFIX.pack_into(self._aad, HEADER_MAC_SIZE, index, flag)
        start = self._sealed_len
        end = start + len(plaintext) + GCM_TAG_SIZE
        if end > len(self._sealed):  # nothing is pending in it here: the last seal flushed a full batch
            self._sealed = bytearray(end if final else self._batch_size)
            self._sealed_view = memoryview(self._sealed)
        self._aead.encrypt_into(_NONCE.pack(index, flag), plaintext, self._aad, self._sealed_view[start:end])
        self._sealed_len = end
        self._index = index + 1
        if end + self._chunk_size + GCM_TAG_SIZE > self._batch_size:
            self._flush_sealed()

    def _flush_sealed(self) -> None:
        if self._sealed_len:
            self._write_all(self._sealed_view[: self._sealed_len])
            self._sealed_len = 0

    def _write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = self._out.write(view)
            if written >= len(view):
                return
            if written <= 0:
                raise OSError("output stream accepted no bytes")
            view = view[written:]


class EnvelopeReader:
    """Verified random and sequential access to one envelope; never releases unverified plaintext.

    The header MAC and the final chunk are verified at construction, so ``plaintext_size`` is
    trustworthy and truncation is caught even by random access; the final chunk's plaintext is kept
    and the last ``cache_chunks`` other chunks are cached for small sequential reads (SFTP asks for
    32 KiB at a time). ``chunks_decrypted`` counts GCM openings (for tests and metrics). Concurrent
    calls on one reader are serialised by a lock. If construction raises, the caller still owns and
    closes ``src``; afterwards ``close()`` (or ``with``) closes it.
    """

    def __init__(
        self,
        src: BinaryIO,
        data_key: bytes,
        recording_id: str | None = None,
        *,
        cache_chunks: int = 2,
    ) -> None:
        _check_data_key(data_key)
        if cache_chunks < 0:
            raise ValueError("cache_chunks must be >= 0")
        self._src = src
        self._lock = threading.RLock()
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_chunks = cache_chunks
        self._closed = False
        self.chunks_decrypted = 0

        parsed = _parse_header(src, data_key)
        self._recording_id = parsed.recording_id
        self._chunk_size = parsed.chunk_size
        self._header_size = parsed.header_size
        self._header_mac = parsed.header_mac
        self._aead = AESGCM(parsed.enc_key)
        if recording_id is not None and recording_id != parsed.recording_id:
            raise _corrupt("recording id in header differs from the expected one", recording_id)

        file_size = src.seek(0, os.SEEK_END)
        body_size = file_size - self._header_size
        if body_size < GCM_TAG_SIZE:
            raise _corrupt("truncated: no room for a final chunk", self._recording_id)
        full_chunks, final_len = divmod(body_size - GCM_TAG_SIZE, self._chunk_size + GCM_TAG_SIZE)
        if final_len >= self._chunk_size:
            raise _corrupt("body length is not a valid chunk layout", self._recording_id)
        self._final_index = full_chunks
        self._final_len = final_len
        self._plaintext_size = full_chunks * self._chunk_size + final_len
        # Verifying the final chunk's flag and index catches truncation and extension up front; its
        # plaintext is kept, so the end of a sequential read does not decrypt it again.
        self._final_plaintext = self._decrypt_chunk(self._final_index)

    @property
    def recording_id(self) -> str:
        """The recording id authenticated by the header."""
        return self._recording_id

    @property
    def chunk_size(self) -> int:
        """Plaintext bytes per non-final chunk."""
        return self._chunk_size

    @property
    def plaintext_size(self) -> int:
        """Total plaintext length, authenticated by the final chunk."""
        return self._plaintext_size

    @property
    def size(self) -> int:
        """Alias of ``plaintext_size``, so the reader serves as the SFTP layer's ``RecordingReader``."""
        return self._plaintext_size

    @property
    def chunk_count(self) -> int:
        """Number of chunks including the final one (always >= 1)."""
        return self._final_index + 1

    def close(self) -> None:
        """Close ``src`` and drop cached plaintext: once constructed, the reader owns its source."""
        with self._lock:
            self._closed = True
            self._cache.clear()
            self._final_plaintext = b""
            self._src.close()

    def __enter__(self) -> EnvelopeReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def read_at(self, offset: int, length: int) -> bytes:
        """Return up to ``length`` verified bytes at ``offset``, decrypting only the chunks needed."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be >= 0")
        if self._closed:
            raise ValueError("read from a closed EnvelopeReader")
        end = min(offset + length, self._plaintext_size)
        if offset >= end:
            return b""
        chunk_size = self._chunk_size
        first, last = offset // chunk_size, (end - 1) // chunk_size
        if first == last:
            base = first * chunk_size
            return self._chunk(first)[offset - base : end - base]
        parts = []
        for index in range(first, last + 1):
            base = index * chunk_size
            plaintext = self._chunk(index)
            parts.append(plaintext[max(offset - base, 0) : min(end - base, chunk_size)])
        return b"".join(parts)

    def iter_chunks(self) -> Iterator[bytes]:
        """Yield every chunk's verified plaintext in order (an empty final chunk is not yielded)."""
        for index in range(self._final_index):
            yield self._decrypt_chunk(index)
        final = self._decrypt_chunk(self._final_index)  # re-read: the file may have changed since open
        if final:
            yield final

    def verify(self) -> None:
        """Authenticate every chunk, raising ``CorruptRecordingError`` at the first bad one."""
        for _ in self.iter_chunks():
            pass

    def _chunk(self, index: int) -> bytes:
        if index == self._final_index:
            return self._final_plaintext
        with self._lock:
            cached = self._cache.get(index)
            if cached is not None:
                self._cache.move_to_end(index)
                return cached
            plaintext = self._decrypt_chunk(index)
            if self._cache_chunks:
                self._cache[index] = plaintext
                while len(self._cache) > self._cache_chunks:
                    self._cache.popitem(last=False)
            return plaintext

    def _decrypt_chunk(self, index: int) -> bytes:
        """Read and authenticate chunk ``index``; the only place plaintext is produced."""
        if self._closed:
            raise ValueError("read from a closed EnvelopeReader")
        final = index == self._final_index
        flag = 1 if final else 0
        sealed_len = (self._final_len if final else self._chunk_size) + GCM_TAG_SIZE
        offset = self._header_size + index * (self._chunk_size + GCM_TAG_SIZE)
        with self._lock:
            self._src.seek(offset)
            sealed = _read_exact(self._src, sealed_len)
            self.chunks_decrypted += 1
        if len(sealed) != sealed_len:
            raise _corrupt(f"chunk {index} is short (file changed while open?)", self._recording_id)
        nonce = _NONCE.pack(index, flag)
        aad = self._header_mac + _AAD_SUFFIX.pack(index, flag)
        try:
            return self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise _corrupt(
                f"chunk {index} of {self._final_index + 1} failed authentication", self._recording_id
            ) from None


class _ParsedHeader:
    """Header fields after the MAC verified."""

    __slots__ = ("chunk_size", "enc_key", "header_mac", "header_size", "recording_id")

    def __init__(
        self, recording_id: str, chunk_size: int, header_size: int, header_mac: bytes, enc_key: bytes
    ) -> None:
        self.recording_id = recording_id
        self.chunk_size = chunk_size
        self.header_size = header_size
        self.header_mac = header_mac
        self.enc_key = enc_key


def _parse_header(src: BinaryIO, data_key: bytes) -> _ParsedHeader:
    src.seek(0)
    prefix = _read_exact(src, _PREFIX.size)
    if len(prefix) != _PREFIX.size:
        raise _corrupt("shorter than the header prefix")
    magic, version = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise _corrupt("bad magic")
    if version != FORMAT_VERSION:
        _LOG.warning("vault: refused envelope with format version %d", version)
        raise UnsupportedVersionError(
            f"vault file format version {version} is not supported (this build reads {FORMAT_VERSION})"
        )
    fixed = _read_exact(src, _FIXED.size)
    if len(fixed) != _FIXED.size:
        raise _corrupt("truncated header")
    cipher, chunk_size, id_len = _FIXED.unpack(fixed)
    if cipher != CIPHER_AES_256_GCM:
        raise _corrupt(f"unknown cipher id {cipher} for format version 1")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise _corrupt(f"chunk size {chunk_size} out of range")
    if not 1 <= id_len <= MAX_RECORDING_ID_BYTES:
        raise _corrupt(f"recording id length {id_len} out of range")
    rest_len = id_len + SALT_SIZE + HEADER_MAC_SIZE
    rest = _read_exact(src, rest_len)
    if len(rest) != rest_len:
        raise _corrupt("truncated header")
    id_bytes = rest[:id_len]
    salt = rest[id_len : id_len + SALT_SIZE]
    header_mac = rest[id_len + SALT_SIZE :]
    enc_key, mac_key = _derive_keys(data_key, salt)
    expected = hmac.digest(mac_key, prefix + fixed + id_bytes + salt, hashlib.sha256)
    if not hmac.compare_digest(expected, header_mac):
        raise _corrupt("header MAC mismatch: wrong data key or altered header")
    try:
        recording_id = id_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise _corrupt("recording id is not UTF-8") from None
    return _ParsedHeader(recording_id, chunk_size, _PREFIX.size + _FIXED.size + rest_len, header_mac, enc_key)


def _derive_keys(data_key: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """Return (chunk encryption key, header MAC key) for one file."""
    enc_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=ENC_KEY_INFO).derive(data_key)
    mac_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=MAC_KEY_INFO).derive(data_key)
    return enc_key, mac_key


def _read_exact(src: BinaryIO, length: int) -> bytes:
    """Read ``length`` bytes, fewer only at end of file."""
    data = src.read(length)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = src.read(length - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _check_data_key(data_key: bytes) -> None:
    if not isinstance(data_key, bytes | bytearray):
        raise TypeError("data_key must be bytes")
    if len(data_key) != DATA_KEY_SIZE:
        raise ValueError(f"data_key must be {DATA_KEY_SIZE} bytes")


def _check_chunk_size(chunk_size: int) -> None:
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}")


def _encode_recording_id(recording_id: str) -> bytes:
    if not isinstance(recording_id, str):
        raise TypeError("recording_id must be str")
    try:
        encoded = recording_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("recording_id must be encodable as UTF-8") from None
    if not 1 <= len(encoded) <= MAX_RECORDING_ID_BYTES:
        raise ValueError(f"recording_id must be 1 to {MAX_RECORDING_ID_BYTES} UTF-8 bytes")
    return encoded


def _corrupt(reason: str, recording_id: str | None = None) -> CorruptRecordingError:
    """Log why a recording was rejected and return the detail-free error for the caller."""
    _LOG.warning("vault: recording %s rejected: %s", recording_id or "<unknown>", reason)
    return CorruptRecordingError()

"""The envelope format: round trips, tamper detection, random access, saved vectors, spec conformance."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import pickle
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault.envelope import (
    DEFAULT_CHUNK_SIZE,
    MAGIC,
    EnvelopeReader,
    EnvelopeWriter,
    ciphertext_size,
    decrypt_bytes,
    encrypt_bytes,
    header_size,
    new_data_key,
)
from vault.errors import CorruptRecordingError, UnsupportedVersionError, VaultError

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "vault"
TAG = 16
RID = "rec-0001"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def _seal(
    plaintext: bytes,
    key: bytes = KEY,
    recording_id: str = RID,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    splits: list[int] | None = None,
) -> bytes:
    out = io.BytesIO()
    writer = EnvelopeWriter(out, key, recording_id, chunk_size)
    view = memoryview(plaintext)
    position = 0
    for cut in sorted(splits or []):
        writer.write(view[position:cut])
        position = cut
    writer.write(view[position:])
    assert writer.close() == len(plaintext)
    return out.getvalue()


def _open(envelope: bytes, key: bytes = KEY, recording_id: str | None = RID, **kwargs: int) -> EnvelopeReader:
    return EnvelopeReader(io.BytesIO(envelope), key, recording_id, **kwargs)


def _read_all(envelope: bytes, key: bytes = KEY, recording_id: str | None = RID) -> bytes:
    reader = _open(envelope, key, recording_id)
    reader.verify()
    return b"".join(reader.iter_chunks())


def _chunks(envelope: bytes, recording_id: str, chunk_size: int) -> tuple[bytes, list[bytes]]:
    """Split an envelope into its header and its sealed chunks."""
    start = header_size(recording_id)
    body = envelope[start:]
    stride = chunk_size + TAG
    pieces = [body[i : i + stride] for i in range(0, len(body), stride)]
    return envelope[:start], pieces


def _payload(size: int, seed: int = 0) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


# --- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 16, 64, DEFAULT_CHUNK_SIZE])
@pytest.mark.parametrize("shape", ["0", "1", "c-1", "c", "c+1", "2c", "5c+3"])
def test_round_trip_at_chunk_boundaries(chunk_size: int, shape: str) -> None:
    c = chunk_size
    size = {"0": 0, "1": 1, "c-1": c - 1, "c": c, "c+1": c + 1, "2c": 2 * c, "5c+3": 5 * c + 3}[shape]
    plaintext = _payload(size)
    envelope = _seal(plaintext, chunk_size=chunk_size)
    assert len(envelope) == ciphertext_size(size, RID, chunk_size)
    reader = _open(envelope)
    assert reader.plaintext_size == size
    assert reader.chunk_size == chunk_size
    assert reader.chunk_count == size // chunk_size + 1
    assert reader.recording_id == RID
    assert _read_all(envelope) == plaintext
    assert reader.read_at(0, size + 10) == plaintext


@settings(deadline=None, max_examples=60)
@given(
    plaintext=st.binary(max_size=600),
    chunk_size=st.integers(min_value=1, max_value=70),
    data=st.data(),
)
def test_round_trip_with_arbitrary_write_splits(plaintext: bytes, chunk_size: int, data: st.DataObject) -> None:
    splits = data.draw(st.lists(st.integers(min_value=0, max_value=len(plaintext)), max_size=12))
    envelope = _seal(plaintext, chunk_size=chunk_size, splits=splits)
    assert len(envelope) == ciphertext_size(len(plaintext), RID, chunk_size)
    assert _read_all(envelope) == plaintext
    assert decrypt_bytes(envelope, KEY, RID) == plaintext


def test_write_split_does_not_change_the_body_layout() -> None:
    plaintext = _payload(1000)
    one = _chunks(_seal(plaintext, chunk_size=64), RID, 64)[1]
    many = _chunks(_seal(plaintext, chunk_size=64, splits=list(range(0, 1000, 7))), RID, 64)[1]
    assert [len(c) for c in one] == [len(c) for c in many]


def test_writer_accepts_bytes_bytearray_and_memoryview() -> None:
    out = io.BytesIO()
    writer = EnvelopeWriter(out, KEY, RID, 4)
    assert writer.write(b"ab") == 2
    assert writer.write(bytearray(b"cdef")) == 4
    assert writer.write(memoryview(b"xxghixx")[2:5]) == 3
    assert writer.plaintext_size == 9
    writer.close()
    assert decrypt_bytes(out.getvalue(), KEY, RID) == b"abcdefghi"


def test_writer_emits_each_chunk_as_soon_as_it_fills() -> None:
    out = io.BytesIO()
    writer = EnvelopeWriter(out, KEY, RID, 8)
    head = header_size(RID)
    assert len(out.getvalue()) == head
    writer.write(b"1234567")
    assert len(out.getvalue()) == head  # 7 bytes pending, nothing sealed
    writer.write(b"8")
    assert len(out.getvalue()) == head + 8 + TAG
    writer.write(b"x" * 20)  # two more full chunks sealed, 4 pending
    assert len(out.getvalue()) == head + 3 * (8 + TAG)
    writer.close()
    assert len(out.getvalue()) == head + 3 * (8 + TAG) + 4 + TAG


def test_writer_close_is_idempotent_and_write_after_close_fails() -> None:
    out = io.BytesIO()
    writer = EnvelopeWriter(out, KEY, RID)
    writer.write(b"abc")
    assert writer.close() == 3
    assert writer.close() == 3
    assert writer.closed
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"more")


def test_writer_context_manager_abandons_on_error() -> None:
    out = io.BytesIO()

    def interrupted_upload() -> None:
        with EnvelopeWriter(out, KEY, RID, 16) as writer:
            writer.write(_payload(40))
            raise RuntimeError("upload interrupted")

    with pytest.raises(RuntimeError):
        interrupted_upload()
    with pytest.raises(CorruptRecordingError):
        _open(out.getvalue())  # no final chunk was written: never a valid recording


def test_writer_context_manager_closes_on_success() -> None:
    out = io.BytesIO()
    with EnvelopeWriter(out, KEY, RID, 16) as writer:
        writer.write(b"hello")
    assert decrypt_bytes(out.getvalue(), KEY, RID) == b"hello"


@pytest.mark.parametrize(
    ("key", "recording_id", "chunk_size", "error"),
    [
        (b"short", RID, 16, ValueError),
        (bytes(33), RID, 16, ValueError),
        ("k" * 32, RID, 16, TypeError),
        (KEY, "", 16, ValueError),
        (KEY, "x" * 1025, 16, ValueError),
        (KEY, "\ud800", 16, ValueError),
        (KEY, 42, 16, TypeError),
        (KEY, RID, 0, ValueError),
        (KEY, RID, 16 * 1024 * 1024 + 1, ValueError),
    ],
)
def test_writer_rejects_misuse(key: object, recording_id: object, chunk_size: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        EnvelopeWriter(io.BytesIO(), key, recording_id, chunk_size)  # type: ignore[arg-type]


def test_new_data_key_is_random_256_bits() -> None:
    keys = {new_data_key() for _ in range(16)}
    assert len(keys) == 16
    assert all(len(k) == 32 for k in keys)


def test_same_plaintext_and_key_give_different_files() -> None:
    assert _seal(b"same") != _seal(b"same")  # fresh salt per file


def test_data_key_is_not_in_the_file() -> None:
    envelope = _seal(_payload(300), chunk_size=16)
    assert KEY not in envelope


# --- tampering --------------------------------------------------------------------------------------


SMALL_CHUNK = 16
SMALL_PLAINTEXT = _payload(40, seed=7)  # chunks of 16, 16 and a final 8


@pytest.fixture(scope="module")
def small_envelope() -> bytes:
    return _seal(SMALL_PLAINTEXT, chunk_size=SMALL_CHUNK)


def _rejects(envelope: bytes, key: bytes = KEY, recording_id: str | None = RID) -> type[VaultError]:
    """Return the error class opening and fully verifying ``envelope`` raises; fail if it is accepted."""
    try:
        reader = _open(envelope, key, recording_id)
        reader.verify()
        for offset in range(0, reader.plaintext_size, 5):
            reader.read_at(offset, 7)
    except VaultError as exc:
        return type(exc)
    pytest.fail("tampered envelope was accepted")


def test_every_single_bit_flip_is_detected(small_envelope: bytes) -> None:
    version_bytes = {8, 9}
    for position in range(len(small_envelope)):
        for bit in range(8):
            tampered = bytearray(small_envelope)
            tampered[position] ^= 1 << bit
            error = _rejects(bytes(tampered))
            expected = UnsupportedVersionError if position in version_bytes else CorruptRecordingError
            assert error is expected, (position, bit)


def test_every_bit_flip_is_detected_without_an_expected_recording_id(small_envelope: bytes) -> None:
    head = header_size(RID)
    for position in range(10, head):  # the recording id and salt are authenticated by the header MAC
        tampered = bytearray(small_envelope)
        tampered[position] ^= 0x01
        assert _rejects(bytes(tampered), recording_id=None) is CorruptRecordingError, position


def test_truncation_at_every_length_is_detected(small_envelope: bytes) -> None:
    for length in range(len(small_envelope)):
        with pytest.raises(CorruptRecordingError):
            _open(small_envelope[:length])


def test_truncation_at_a_chunk_boundary_is_detected_before_any_read(small_envelope: bytes) -> None:
    header, chunks = _chunks(small_envelope, RID, SMALL_CHUNK)
    with pytest.raises(CorruptRecordingError):
        _open(header + chunks[0] + chunks[1])  # two full chunks, final chunk dropped


@pytest.mark.parametrize("extra", [b"\x00", b"\x00" * TAG, b"\x00" * (SMALL_CHUNK + TAG)])
def test_extension_is_detected(small_envelope: bytes, extra: bytes) -> None:
    with pytest.raises(CorruptRecordingError):
        _open(small_envelope + extra)


def test_appending_a_copy_of_a_chunk_is_detected(small_envelope: bytes) -> None:
    _, chunks = _chunks(small_envelope, RID, SMALL_CHUNK)
    for chunk in chunks:
        assert _rejects(small_envelope + chunk) is CorruptRecordingError


def test_reordered_chunks_are_detected(small_envelope: bytes) -> None:
    header, chunks = _chunks(small_envelope, RID, SMALL_CHUNK)
    swapped = header + chunks[1] + chunks[0] + chunks[2]
    reader = _open(swapped)  # the final chunk is intact, so opening succeeds ...
    with pytest.raises(CorruptRecordingError):
        reader.read_at(0, 1)  # ... but no plaintext of a misplaced chunk is released
    with pytest.raises(CorruptRecordingError):
        reader.verify()


def test_duplicated_chunks_are_detected(small_envelope: bytes) -> None:
    header, chunks = _chunks(small_envelope, RID, SMALL_CHUNK)
    assert _rejects(header + chunks[0] + chunks[0] + chunks[2]) is CorruptRecordingError
    assert _rejects(header + chunks[0] + chunks[0] + chunks[1] + chunks[2]) is CorruptRecordingError
    assert _rejects(header + chunks[0] + chunks[1] + chunks[2] + chunks[2]) is CorruptRecordingError


def test_dropping_a_middle_chunk_is_detected(small_envelope: bytes) -> None:
    header, chunks = _chunks(small_envelope, RID, SMALL_CHUNK)
    assert _rejects(header + chunks[0] + chunks[2]) is CorruptRecordingError


@pytest.mark.parametrize("other_key", [KEY, OTHER_KEY], ids=["same-key", "other-key"])
def test_splicing_from_another_recording_is_detected(small_envelope: bytes, other_key: bytes) -> None:
    other = _seal(SMALL_PLAINTEXT, key=other_key, chunk_size=SMALL_CHUNK)  # same id, size and plaintext
    header, chunks = _chunks(small_envelope, RID, SMALL_CHUNK)
    other_header, other_chunks = _chunks(other, RID, SMALL_CHUNK)
    for index in range(len(chunks)):
        spliced = chunks.copy()
        spliced[index] = other_chunks[index]
        assert _rejects(header + b"".join(spliced)) is CorruptRecordingError, index
    assert _rejects(other_header + b"".join(chunks)) is CorruptRecordingError


def test_wrong_data_key_is_rejected_at_open(small_envelope: bytes) -> None:
    with pytest.raises(CorruptRecordingError):
        _open(small_envelope, key=OTHER_KEY)


def test_recording_id_mismatch_is_rejected(small_envelope: bytes) -> None:
    with pytest.raises(CorruptRecordingError):
        _open(small_envelope, recording_id="rec-0002")
    assert _open(small_envelope, recording_id=None).recording_id == RID


@pytest.mark.parametrize("version", [0, 2, 0xFFFF])
def test_unknown_or_downgraded_version_is_refused_before_anything_else(small_envelope: bytes, version: int) -> None:
    tampered = bytearray(small_envelope)
    tampered[8:10] = struct.pack(">H", version)
    with pytest.raises(UnsupportedVersionError) as info:
        _open(bytes(tampered), key=OTHER_KEY)
    assert info.value.code == "vault.unsupported_version"
    garbage = MAGIC + struct.pack(">H", version)  # nothing after the version: still "unsupported"
    with pytest.raises(UnsupportedVersionError):
        _open(garbage)


@pytest.mark.parametrize("content", [b"", b"TGVAULT", b"NOTVAULT" + bytes(200), b"\x00" * 300])
def test_non_envelopes_are_corrupt(content: bytes) -> None:
    with pytest.raises(CorruptRecordingError):
        _open(content)


def test_corrupt_error_carries_no_detail_but_the_log_does(
    small_envelope: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    tampered = bytearray(small_envelope)
    tampered[-1] ^= 1
    with caplog.at_level(logging.WARNING, logger="vault.envelope"), pytest.raises(CorruptRecordingError) as info:
        _open(bytes(tampered))
    assert str(info.value) == "recording failed authentication"
    assert info.value.code == "vault.corrupt"
    assert info.value.__cause__ is None
    assert "chunk 2" in caplog.text
    assert "rec-0001" in caplog.text
    assert isinstance(pickle.loads(pickle.dumps(info.value)), CorruptRecordingError)  # noqa: S301


def test_streaming_releases_only_verified_chunks(small_envelope: bytes) -> None:
    header, chunks = _chunks(small_envelope, RID, SMALL_CHUNK)
    tampered = bytearray(chunks[1])
    tampered[0] ^= 1
    reader = _open(header + chunks[0] + bytes(tampered) + chunks[2])
    released: list[bytes] = []
    with pytest.raises(CorruptRecordingError):
        released.extend(reader.iter_chunks())
    assert released == [SMALL_PLAINTEXT[:16]]
    assert reader.read_at(0, 16) == SMALL_PLAINTEXT[:16]  # untouched chunks stay readable
    with pytest.raises(CorruptRecordingError):
        reader.read_at(15, 2)


# --- random access ----------------------------------------------------------------------------------


@settings(deadline=None, max_examples=80)
@given(
    size=st.integers(min_value=0, max_value=400),
    chunk_size=st.integers(min_value=1, max_value=50),
    offset=st.integers(min_value=0, max_value=450),
    length=st.integers(min_value=0, max_value=450),
)
def test_read_at_returns_the_slice_and_decrypts_only_needed_chunks(
    size: int, chunk_size: int, offset: int, length: int
) -> None:
    plaintext = _payload(size, seed=3)
    reader = _open(_seal(plaintext, chunk_size=chunk_size), cache_chunks=0)
    before = reader.chunks_decrypted
    assert reader.read_at(offset, length) == plaintext[offset : offset + length]
    end = min(offset + length, size)
    touched = set() if offset >= end else set(range(offset // chunk_size, (end - 1) // chunk_size + 1))
    touched.discard(size // chunk_size)  # the final chunk was verified and kept at open
    assert reader.chunks_decrypted - before == len(touched)


def test_read_at_edges() -> None:
    plaintext = _payload(100)
    reader = _open(_seal(plaintext, chunk_size=32))
    assert reader.read_at(100, 10) == b""
    assert reader.read_at(1000, 10) == b""
    assert reader.read_at(10, 0) == b""
    assert reader.read_at(90, 50) == plaintext[90:]
    with pytest.raises(ValueError, match=">= 0"):
        reader.read_at(-1, 10)
    with pytest.raises(ValueError, match=">= 0"):
        reader.read_at(0, -1)
    assert _open(_seal(b"")).read_at(0, 10) == b""


def test_sequential_sftp_sized_reads_decrypt_each_chunk_once() -> None:
    plaintext = _payload(10 * DEFAULT_CHUNK_SIZE + 123)
    reader = _open(_seal(plaintext))
    assert reader.chunks_decrypted == 1  # the final chunk, verified at open
    pieces = []
    offset = 0
    while piece := reader.read_at(offset, 32 * 1024):
        pieces.append(piece)
        offset += len(piece)
    assert b"".join(pieces) == plaintext
    assert reader.chunks_decrypted == 11  # ten full chunks once each; the final chunk was kept at open


def test_open_verifies_only_the_header_and_final_chunk() -> None:
    reader = _open(_seal(_payload(5 * DEFAULT_CHUNK_SIZE)))
    assert reader.chunks_decrypted == 1
    assert reader.plaintext_size == 5 * DEFAULT_CHUNK_SIZE


def test_verify_checks_every_chunk() -> None:
    reader = _open(_seal(_payload(1000), chunk_size=100), cache_chunks=0)
    before = reader.chunks_decrypted
    reader.verify()
    assert reader.chunks_decrypted - before == 11


# --- saved vectors and the written specification ----------------------------------------------------


def _vectors() -> list[dict[str, object]]:
    loaded: list[dict[str, object]] = json.loads((VECTORS / "vectors.json").read_text(encoding="utf-8"))
    return loaded


class _FixedSaltWriter(EnvelopeWriter):
    salt = b""

    def _new_salt(self) -> bytes:
        return self.salt


@pytest.mark.parametrize("vector", _vectors(), ids=lambda v: str(v["name"]))
def test_saved_vectors_decrypt_forever(vector: dict[str, object]) -> None:
    envelope = (VECTORS / str(vector["file"])).read_bytes()
    assert hashlib.sha256(envelope).hexdigest() == vector["envelope_sha256"]
    key = bytes.fromhex(str(vector["data_key_hex"]))
    expected = bytes.fromhex(str(vector["plaintext_hex"]))
    reader = EnvelopeReader(io.BytesIO(envelope), key, str(vector["recording_id"]))
    reader.verify()
    assert reader.plaintext_size == len(expected)
    assert reader.chunk_size == vector["chunk_size"]
    assert b"".join(reader.iter_chunks()) == expected
    assert reader.read_at(1, 3) == expected[1:4]


@pytest.mark.parametrize("vector", _vectors(), ids=lambda v: str(v["name"]))
def test_writer_still_produces_the_saved_vectors(vector: dict[str, object]) -> None:
    writer_class = type("_W", (_FixedSaltWriter,), {"salt": bytes.fromhex(str(vector["salt_hex"]))})
    out = io.BytesIO()
    writer = writer_class(
        out, bytes.fromhex(str(vector["data_key_hex"])), str(vector["recording_id"]), vector["chunk_size"]
    )
    writer.write(bytes.fromhex(str(vector["plaintext_hex"])))
    writer.close()
    assert out.getvalue() == (VECTORS / str(vector["file"])).read_bytes()


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """RFC 5869 with the standard library only: an independent check of docs/vault-format.md."""
    prk = hmac.digest(salt, ikm, hashlib.sha256)
    return hmac.digest(prk, info + b"\x01", hashlib.sha256)


def test_file_matches_the_written_specification() -> None:
    plaintext = _payload(50)
    recording_id = "anruf-☎"
    envelope = _seal(plaintext, recording_id=recording_id, chunk_size=20)
    magic, version, cipher, chunk_size, id_len = struct.unpack(">8sHHIH", envelope[:18])
    assert (magic, version, cipher, chunk_size) == (b"TGVAULT\x00", 1, 1, 20)
    id_bytes = envelope[18 : 18 + id_len]
    assert id_bytes.decode("utf-8") == recording_id
    salt = envelope[18 + id_len : 50 + id_len]
    header_mac = envelope[50 + id_len : 82 + id_len]
    mac_key = _hkdf_sha256(KEY, salt, b"telgate/vault/v1/header-mac-key")
    assert hmac.digest(mac_key, envelope[: 50 + id_len], hashlib.sha256) == header_mac
    enc_key = _hkdf_sha256(KEY, salt, b"telgate/vault/v1/chunk-encryption-key")
    assert enc_key != mac_key
    body = envelope[82 + id_len :]
    assert len(body) == (20 + TAG) * 2 + (10 + TAG)  # 20 + 20 + final 10


def test_exact_multiple_of_chunk_size_ends_with_an_empty_final_chunk() -> None:
    envelope = _seal(_payload(64), chunk_size=32)
    _, chunks = _chunks(envelope, RID, 32)
    assert [len(c) for c in chunks] == [32 + TAG, 32 + TAG, TAG]
    reader = _open(envelope)
    assert reader.chunk_count == 3
    assert len(list(reader.iter_chunks())) == 2  # the empty final chunk is verified, not yielded


def test_reader_close_closes_the_source() -> None:
    src = io.BytesIO(_seal(b"abc"))
    with EnvelopeReader(src, KEY, RID) as reader:
        assert reader.size == reader.plaintext_size == 3
        assert reader.read_at(0, 3) == b"abc"
    assert src.closed
    with pytest.raises(ValueError, match="closed"):
        reader.read_at(2, 1)  # the final chunk's kept plaintext is gone too


def test_encrypt_bytes_round_trip() -> None:
    assert decrypt_bytes(encrypt_bytes(b"payload", KEY, RID, 3), KEY, RID) == b"payload"


class _FailingOutput(io.BytesIO):
    def __init__(self, fail_after: int) -> None:
        super().__init__()
        self.fail_after = fail_after

    def write(self, data: object) -> int:
        if self.tell() + len(memoryview(data)) > self.fail_after:  # type: ignore[arg-type]
            raise OSError(28, "No space left on device")
        return super().write(data)  # type: ignore[arg-type]


def test_failed_write_abandons_the_writer() -> None:
    out = _FailingOutput(fail_after=header_size(RID) + 16 + TAG)
    writer = EnvelopeWriter(out, KEY, RID, 16)
    with pytest.raises(OSError, match="No space"):
        writer.write(_payload(64))
    assert writer.closed
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"x")
    assert writer.close() == 0  # nothing sealed as final
    with pytest.raises(CorruptRecordingError):
        _open(out.getvalue())

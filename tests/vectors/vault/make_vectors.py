"""Generate the saved vault envelopes in this directory (run once; the files must decrypt forever).

Usage: ``.venv/bin/python tests/vectors/vault/make_vectors.py``

Keys and salts are derived from fixed labels so a rerun reproduces the files byte for byte;
``tests/vault/test_envelope.py`` checks both that the saved files decrypt to the expected plaintext and
that today's writer, given the same key and salt, still produces identical bytes. Never regenerate
these files to make a failing test pass: a difference means the format changed.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from vault.envelope import EnvelopeWriter

HERE = Path(__file__).resolve().parent


def _derived(label: str) -> bytes:
    return hashlib.sha256(f"telgate test vector: {label}".encode()).digest()


def _plaintext(name: str, size: int) -> bytes:
    stream = b""
    counter = 0
    while len(stream) < size:
        stream += hashlib.sha256(f"{name}:{counter}".encode()).digest()
        counter += 1
    return stream[:size]


VECTORS = [
    # name, recording id, chunk size, plaintext size
    ("empty", "rec-empty-0001", 65536, 0),
    ("one-byte", "rec-one-byte-0001", 65536, 1),
    ("three-chunks", "rec-three-chunks-0001", 16, 40),  # 16 + 16 + final 8
    ("exact-chunks", "rec-exact-chunks-0001", 16, 32),  # 16 + 16 + empty final
    ("unicode-id", "anruf-zürich-☎-0001", 7, 20),  # 7 + 7 + final 6
]


class FixedSaltWriter(EnvelopeWriter):
    """EnvelopeWriter with a caller-chosen salt, for reproducible test vectors only."""

    salt = b""

    def _new_salt(self) -> bytes:
        return self.salt


def seal(data_key: bytes, salt: bytes, recording_id: str, chunk_size: int, plaintext: bytes) -> bytes:
    """Seal ``plaintext`` with a fixed salt and return the envelope bytes."""
    writer_class = type("_Writer", (FixedSaltWriter,), {"salt": salt})
    out = io.BytesIO()
    writer = writer_class(out, data_key, recording_id, chunk_size)
    # uneven write calls on purpose: the output must not depend on how the plaintext was split
    for start in range(0, len(plaintext), 5):
        writer.write(plaintext[start : start + 5])
    writer.close()
    return out.getvalue()


def main() -> None:
    """Write every vector's envelope and the manifest ``vectors.json``."""
    manifest = []
    for name, recording_id, chunk_size, size in VECTORS:
        data_key = _derived(f"{name} data key")
        salt = _derived(f"{name} salt")
        plaintext = _plaintext(name, size)
        envelope = seal(data_key, salt, recording_id, chunk_size, plaintext)
        file_name = f"{name}.tgv"
        (HERE / file_name).write_bytes(envelope)
        manifest.append(
            {
                "name": name,
                "file": file_name,
                "recording_id": recording_id,
                "chunk_size": chunk_size,
                "data_key_hex": data_key.hex(),
                "salt_hex": salt.hex(),
                "plaintext_hex": plaintext.hex(),
                "envelope_sha256": hashlib.sha256(envelope).hexdigest(),
            }
        )
    (HERE / "vectors.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()

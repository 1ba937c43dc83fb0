"""Tests of the ingest package; shared helpers: vector paths, a PBX context, an in-memory token store."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

from ingest.context import PbxContext

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "ingest"
LONDON = ZoneInfo("Europe/London")


def vector(relative: str) -> bytes:
    """The bytes of a sample file under tests/vectors/ingest."""
    return (VECTORS / relative).read_bytes()


def make_ctx(**overrides: object) -> PbxContext:
    """A UK PBX in London time; keyword arguments override fields."""
    fields: dict[str, object] = {
        "name": "pbx-london-1",
        "tenant": "acme",
        "timezone": LONDON,
        "country": "GB",
    }
    fields.update(overrides)
    return PbxContext(**fields)  # type: ignore[arg-type]


class MemorySubjectTokens:
    """In-memory SubjectTokens: a stable letters-and-counter token per (tenant, number)."""

    def __init__(self) -> None:
        self.tokens: dict[tuple[str, str], str] = {}
        self.calls = 0

    def token_for(self, tenant: str, e164: str) -> str:
        """Return the token of ``e164`` for ``tenant``, creating it if new."""
        self.calls += 1
        key = (tenant, e164)
        if key not in self.tokens:
            self.tokens[key] = f"sub_tok{len(self.tokens) + 1:04d}x"
        return self.tokens[key]

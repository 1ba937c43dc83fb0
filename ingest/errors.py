"""Errors raised while turning a PBX request body into records.

The tree (each class has a stable ``code``; ``gateway/errors.py`` maps codes to HTTP statuses)::

    IngestError                     "ingest.error"                   base, never raised itself
    ├── UnparseableBodyError        "ingest.unparseable"             the whole body is unusable  -> 400
    ├── UnsupportedMediaTypeError   "ingest.unsupported_media_type"  wrong Content-Type          -> 415
    └── RecordRejected              "ingest.record_rejected"         one record is unusable; parsers
                                                                     catch it, report a ``Reject`` and
                                                                     carry on with the next record

Messages never contain values from the body (numbers, names): they name the field and the problem.
``Reject.raw`` holds the record exactly as sent, which *is* identifiable: it is kept out of ``repr``
and must be handled like a raw CDR (never logged, never written to the lake).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class IngestError(Exception):
    """Base of every error the ingest package raises on bad input."""

    code: str = "ingest.error"


class UnparseableBodyError(IngestError):
    """The request body as a whole is not the announced format (HTTP 400)."""

    code = "ingest.unparseable"


class UnsupportedMediaTypeError(IngestError):
    """The Content-Type cannot carry the announced format (HTTP 415)."""

    code = "ingest.unsupported_media_type"


class RecordRejected(IngestError):  # noqa: N818 - named in the ingest contract; caught inside parsers
    """One record is unusable; the parser turns it into a ``Reject`` and goes on."""

    code = "ingest.record_rejected"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Reject:
    """A record that could not be parsed: where it was, why, and its raw bytes (hidden from repr)."""

    line: int | None  # 1-based line of the body; None for one-document-per-body formats
    reason: str  # never contains a value from the record
    raw: bytes = field(repr=False)
    code: str = RecordRejected.code

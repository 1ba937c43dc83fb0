"""Parsers of every PBX format, by the format name used in the ingest endpoint's URL.

Every parser has the same signature ``(body, content_type, ctx) -> ParseResult`` and raises only
``ingest.errors`` subclasses: ``UnsupportedMediaTypeError`` (415), ``UnparseableBodyError`` (400);
per-record problems come back as ``ParseResult.rejects``. ``FORMAT_TABLES`` says which lake table
(``cdr`` or ``acd_event``) a format's records go to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Literal

from ingest.context import ParseResult, PbxContext
from ingest.formats.asterisk_csv import parse_asterisk_csv
from ingest.formats.cucm import parse_cucm
from ingest.formats.freeswitch import parse_freeswitch_json, parse_freeswitch_xml
from ingest.formats.jsonl import parse_jsonl
from ingest.formats.queue_log import parse_queue_log
from ingest.records import RawAcdEvent, RawCdr

Parser = Callable[[bytes, str, PbxContext], ParseResult[RawCdr] | ParseResult[RawAcdEvent]]

PARSERS: Mapping[str, Parser] = MappingProxyType(
    {
        "asterisk-csv": parse_asterisk_csv,
        "freeswitch-json": parse_freeswitch_json,
        "freeswitch-xml": parse_freeswitch_xml,
        "cucm": parse_cucm,
        "json": parse_jsonl,
        "queue-log": parse_queue_log,
    }
)

FORMAT_TABLES: Mapping[str, Literal["cdr", "acd_event"]] = MappingProxyType(
    {
        "asterisk-csv": "cdr",
        "freeswitch-json": "cdr",
        "freeswitch-xml": "cdr",
        "cucm": "cdr",
        "json": "cdr",
        "queue-log": "acd_event",
    }
)

__all__ = ["FORMAT_TABLES", "PARSERS", "Parser"]

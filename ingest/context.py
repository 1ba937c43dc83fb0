"""What a parser needs to know about the PBX that sent a body, and what every parser returns."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from zoneinfo import ZoneInfo

import phonenumbers

from ingest.errors import Reject
from ingest.records import RawAcdEvent, RawCdr

_COLUMN_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class PbxContext:
    """Per-PBX settings that turn its local conventions (time zone, numbering) into normal form."""

    name: str  # the PBX's name in telgate's configuration; part of every dedupe key
    tenant: str  # the business customer the PBX belongs to; subject tokens are per tenant
    timezone: ZoneInfo  # zone of the local times the PBX writes (Asterisk CSV, res_config_curl store)
    country: str  # ISO 3166 alpha-2 region for national numbers, e.g. "GB"
    csv_columns: tuple[str, ...] | None = None  # Asterisk CSV column profile; None = by field count
    extension_max_digits: int = 6  # digit strings up to this length are internal extensions
    dial_prefixes: tuple[str, ...] = ()  # outside-line prefixes (e.g. "9") tried off dialled numbers

    def __post_init__(self) -> None:
        if not self.name or not self.tenant:
            raise ValueError("PbxContext needs a name and a tenant")
        if not isinstance(self.timezone, ZoneInfo):
            raise TypeError("PbxContext.timezone must be a zoneinfo.ZoneInfo")
        if self.country not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"PbxContext.country {self.country!r} is not an ISO 3166 alpha-2 region")
        if not 1 <= self.extension_max_digits <= 6:
            # 7+ digit runs are treated as phone numbers everywhere (party fields and free-text scrub).
            raise ValueError("PbxContext.extension_max_digits must be between 1 and 6")
        if any(not prefix.isdigit() for prefix in self.dial_prefixes):
            raise ValueError("PbxContext.dial_prefixes must be digit strings")
        if self.csv_columns is not None:
            names = self.csv_columns
            if len(set(names)) != len(names):
                raise ValueError("PbxContext.csv_columns has duplicate names")
            if any(not _COLUMN_NAME.fullmatch(n) for n in names):
                raise ValueError("PbxContext.csv_columns names must be lower-case identifiers")
            if "start" not in names:
                raise ValueError("PbxContext.csv_columns must include 'start'")


RecordT = TypeVar("RecordT", RawCdr, RawAcdEvent)


@dataclass(slots=True)
class ParseResult(Generic[RecordT]):
    """The records parsed from one body, and the records that were rejected (with why and where)."""

    records: list[RecordT] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

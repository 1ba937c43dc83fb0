"""Pseudonymisation: ``RawCdr`` / ``RawAcdEvent`` -> ``CdrRecord`` / ``AcdEventRecord`` (lake rows).

Every field of a raw record has an action in ``CDR_POLICY`` / ``ACD_POLICY``:

    KEEP      copied as is: ids the PBX generates, times, counts, enums. Safety net for malformed input:
              a string id that *as a whole* reads as a possible phone number becomes ``[redacted]``
              (uniqueids, UUIDs and pkids never do).
    TOKENISE  a party: SUBJECT -> its subject token (``SubjectTokens.token_for``); EXTENSION -> the
              extension as written (scrubbed, defensively); WITHHELD / NONE / REDACTED -> null.
    SCRUB     free text: every digit run that could be a phone number (7+ digits, optional ``+``,
              single separators ``space - . ( )``) becomes the subject token of that number when it
              is a *valid* number for the PBX's country, else ``[redacted]``. Shorter runs (extensions,
              timeouts) stay. Protected, never scrubbed: UUIDs, ISO date-times, Asterisk uniqueids
              (``1741097109.18``), IPv4 addresses, and channel unique suffixes (``PJSIP/x-0000001a``).
              Consequence: a 9-10 digit run written as ``<digits>.<digits>`` reads as a uniqueid and
              is kept; free text is expected to write numbers with spaces, dashes or nothing.
    DROP      removed (names).

``extra`` holds per-format fields; each is scrubbed unless ``EXTRA_POLICY`` drops it; its keys are
scrubbed too. queue_log ``data`` pieces are scrubbed, except that the pieces known to hold a number
(ENTERQUEUE caller, transfer target) are tokenised like a party and the caller name is redacted.

Names never reach a raw record (parsers drop them), and tokens are looked up once per number per call.
"""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar, overload, runtime_checkable
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc

from ingest.columns import DistinctCache, as_array, constant, map_distinct
from ingest.context import PbxContext
from ingest.formats.asterisk_csv import FORMAT as CSV_FORMAT
from ingest.formats.asterisk_csv import ColumnarCdrs
from ingest.normalise import MIN_NUMBER_DIGITS, digit_count_of, numbering_plan, parse_party, to_e164
from ingest.ports import SubjectTokens
from ingest.records import (
    CDR_SCHEMA,
    AcdEventRecord,
    CdrRecord,
    Party,
    PartyKind,
    RawAcdEvent,
    RawCdr,
    records_to_table,
)

REDACTED = "[redacted]"


class Action(enum.StrEnum):
    """What pseudonymisation does to one field."""

    KEEP = "keep"
    TOKENISE = "tokenise"
    SCRUB = "scrub"
    DROP = "drop"


CDR_POLICY: Mapping[str, Action] = {
    "source_format": Action.KEEP,
    "dedupe_key": Action.KEEP,  # a SHA-256 digest
    "call_id": Action.KEEP,  # PBX-generated id (uniqueid, uuid, pkid)
    "linked_id": Action.KEEP,
    "sequence": Action.KEEP,
    "start_at": Action.KEEP,
    "answer_at": Action.KEEP,
    "end_at": Action.KEEP,
    "duration_s": Action.KEEP,
    "billsec_s": Action.KEEP,
    "disposition": Action.KEEP,
    "hangup_cause": Action.KEEP,
    "direction": Action.KEEP,
    "caller": Action.TOKENISE,
    "callee": Action.TOKENISE,
    "account_code": Action.SCRUB,  # some dialplans put the caller's number here
    "context": Action.SCRUB,
    "src_channel": Action.SCRUB,  # "PJSIP/trunk-0000001a", "SIP/07700900123-00000012"
    "dst_channel": Action.SCRUB,
    "last_app": Action.SCRUB,
    "last_data": Action.SCRUB,  # "PJSIP/601,30,tT", "PJSIP/07700900123@trunk"
    "extra": Action.SCRUB,
}

ACD_POLICY: Mapping[str, Action] = {
    "source_format": Action.KEEP,
    "dedupe_key": Action.KEEP,
    "event_at": Action.KEEP,
    "call_id": Action.KEEP,
    "queue": Action.SCRUB,
    "agent": Action.SCRUB,  # "Local/07700900123@from-queue/n" for a remote agent on a mobile
    "event": Action.SCRUB,  # custom event names are free text
    "caller": Action.TOKENISE,
    "position": Action.KEEP,
    "original_position": Action.KEEP,
    "wait_s": Action.KEEP,
    "hold_s": Action.KEEP,
    "talk_s": Action.KEEP,
    "ring_ms": Action.KEEP,
    "agent_call_id": Action.KEEP,
    "data": Action.SCRUB,
}

# Extra fields are scrubbed unless listed here.
EXTRA_POLICY: Mapping[str, Action] = {
    "caller_id_name": Action.DROP,
    "callee_id_name": Action.DROP,
    "effective_caller_id_name": Action.DROP,
    "origination_caller_id_name": Action.DROP,
    "clid": Action.DROP,
    "clid_name": Action.DROP,
    "cnam": Action.DROP,
    "callingPartyUnicodeLoginUserID": Action.DROP,
    "finalCalledPartyUnicodeLoginUserID": Action.DROP,
}


@runtime_checkable
class BatchSubjectTokens(Protocol):
    """A ``SubjectTokens`` that can also look many numbers up in one call (the SQL implementation)."""

    def tokens_for(self, tenant: str, numbers: Iterable[str]) -> dict[str, str]:
        """Tokens of ``numbers`` for ``tenant``, creating the missing ones together."""
        ...


_K = TypeVar("_K")
_V = TypeVar("_V")


class _Role(enum.Enum):
    NUMBER = "number"
    NAME = "name"


# queue_log data pieces with a known meaning; the rest are scrubbed.
_DATA_ROLES: Mapping[str, Mapping[int, _Role]] = {
    "ENTERQUEUE": {1: _Role.NUMBER, 3: _Role.NAME},
    "BLINDTRANSFER": {0: _Role.NUMBER},
    "TRANSFER": {0: _Role.NUMBER},
}

_UNIQUEID = r"\d{9,10}\.\d{1,9}"  # Asterisk uniqueid: epoch seconds "." channel counter
_PROTECTED = re.compile(
    r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"  # UUID
    r"|\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?"  # ISO date-time
    rf"|(?<![\d.]){_UNIQUEID}(?![\d]|\.\d)"  # Asterisk uniqueid
    r"|(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d]|\.\d)"  # IPv4
)
# A channel name's unique suffix: TECH/resource-0000001a (optionally ;1 / ;2 for Local channels).
_CHANNEL_SUFFIX = re.compile(r"[A-Za-z][A-Za-z0-9_]*/[^\s,|/]*?(-[0-9A-Fa-f]{8})(?=;\d|[\s,|)@]|$)")
_NUMBER_RUN = re.compile(r"(?<!\d)\+?\d(?:[ \-.()]{0,2}\d)*")
_SEPARATORS = re.compile(r"[ \-.()]")
_WHOLE_NUMBER = re.compile(r"\+?\d+")
_ASCII_LETTER = re.compile(r"[A-Za-z]")
_WHOLE_UNIQUEID = re.compile(_UNIQUEID)


def _protected_spans(text: str) -> list[tuple[int, int]]:
    spans = [m.span() for m in _PROTECTED.finditer(text)]
    spans += [m.span(1) for m in _CHANNEL_SUFFIX.finditer(text)]
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


class _BoundedCache(Generic[_K, _V]):
    """A bounded map for caches: two generations of plain dicts, no lock, at most ``2 * size`` entries.

    ``get`` moves an entry of the old generation into the new one; when the new generation is full it
    becomes the old one (dropping the previous old one). Each step is one atomic dict operation, so
    concurrent threads at worst lose an entry (a cache miss); the hit path costs a dict lookup.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._young: dict[_K, _V] = {}
        self._old: dict[_K, _V] = {}

    def get(self, key: _K) -> _V | None:
        value = self._young.get(key)
        if value is None:
            value = self._old.get(key)
            if value is not None:
                self.put(key, value)
        return value

    def put(self, key: _K, value: _V) -> None:
        young = self._young
        young[key] = value
        if len(young) > self._size:
            self._old, self._young = young, {}


# A scrubbed text as a template: the text itself when nothing in it becomes a token, else literal pieces
# alternating with the E.164 numbers whose tokens go between them. Templates depend on the text and
# the PBX's numbering only, so they are shared between requests; the tokens are filled in per request
# (after an erasure the number gets a new token, never the old one from a cache).
_Template = str | tuple[str, ...]
_SCRUB_TEMPLATES: _BoundedCache[tuple[str, tuple[str, ...], str], _Template] = _BoundedCache(32_768)
# ``extra_json`` of whole ``extra`` maps whose scrubbing involves no token, per numbering (see ``extra_json``).
_PLAIN_EXTRA_JSON: _BoundedCache[tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]], str] = _BoundedCache(4096)
_NOTHING_KEPT = ""  # cached for an ``extra`` that the policy drops entirely (extra_json answers None)
_SCRUB_CACHE_MAX_TEXT = 256


def _scrub_template(text: str, ctx: PbxContext) -> _Template:
    """What SCRUB makes of ``text``, with the numbers to tokenise left open (see ``Pseudonymiser.scrub``)."""
    pieces: list[str] = []
    literal: list[str] = []

    def scrub_segment(segment: str) -> None:
        position = 0
        for match in _NUMBER_RUN.finditer(segment):
            literal.append(segment[position : match.start()])
            position = match.end()
            run = match.group(0)
            if digit_count_of(run) < MIN_NUMBER_DIGITS:
                literal.append(run)
                continue
            e164 = to_e164(_SEPARATORS.sub("", run), ctx, require_valid=True)
            if e164 is None:
                literal.append(REDACTED)
                continue
            pieces.extend(("".join(literal), e164))
            literal.clear()
        literal.append(segment[position:])

    position = 0
    for start, end in _protected_spans(text):
        scrub_segment(text[position:start])
        literal.append(text[start:end])
        position = end
    scrub_segment(text[position:])
    if not pieces:
        return "".join(literal)
    pieces.append("".join(literal))
    return tuple(pieces)


@functools.lru_cache(maxsize=4096)
def _extra_json_text(items: tuple[tuple[str, str], ...]) -> str:
    """JSON of scrubbed extras (most CDRs of a PBX repeat the same handful of outcome fields)."""
    return json.dumps(dict(items), ensure_ascii=False, sort_keys=True, separators=(",", ":"))


class Pseudonymiser:
    """Applies the policy for one PBX, remembering the token of each number it has already seen."""

    def __init__(self, ctx: PbxContext, tokens: SubjectTokens) -> None:
        self._ctx = ctx
        self._tokens = tokens
        self._memo: dict[str, str] = {}

    def token(self, e164: str) -> str:
        """Subject token of an E.164 number (looked up once per Pseudonymiser)."""
        token = self._memo.get(e164)
        if token is None:
            token = self._tokens.token_for(self._ctx.tenant, e164)
            self._memo[e164] = token
        return token

    def prefetch(self, numbers: Iterable[str]) -> None:
        """Look the tokens of many E.164 numbers up at once (one transaction for all the new ones)."""
        wanted = {number for number in numbers if number not in self._memo}
        if not wanted:
            return
        batch_lookup = getattr(self._tokens, "tokens_for", None)  # BatchSubjectTokens (isinstance is slow)
        if batch_lookup is not None:
            self._memo.update(batch_lookup(self._ctx.tenant, wanted))
        else:
            for number in wanted:
                self.token(number)

    def party(self, party: Party) -> str | None:
        """TOKENISE: a subject's token, an extension as written (scrubbed), else None."""
        if party.kind is PartyKind.SUBJECT and party.value:
            return self.token(party.value)
        if party.kind is PartyKind.EXTENSION and party.value:
            return self.scrub(party.value)
        return None

    @overload
    def identifier(self, text: str) -> str: ...
    @overload
    def identifier(self, text: None) -> None: ...
    def identifier(self, text: str | None) -> str | None:
        """KEEP for string ids: as is, unless the whole value reads as a phone number."""
        if text is None or digit_count_of(text) < MIN_NUMBER_DIGITS or _ASCII_LETTER.search(text):
            return text  # a letter survives the compaction below, so the value cannot be a whole number
        stripped = text.strip()
        if _WHOLE_UNIQUEID.fullmatch(stripped):
            # An Asterisk uniqueid, protected as in SCRUB: without the dot its digits are a valid
            # number in some numbering plans (DE, AT, IT, IN, AU...), and the id must stay joinable.
            return text
        compact = _SEPARATORS.sub("", stripped)
        if _WHOLE_NUMBER.fullmatch(compact) and to_e164(compact, self._ctx) is not None:
            return REDACTED
        return text

    @overload
    def scrub(self, text: str) -> str: ...
    @overload
    def scrub(self, text: None) -> None: ...
    def scrub(self, text: str | None) -> str | None:
        """SCRUB: replace every phone-number-like digit run by its token or ``[redacted]``."""
        if text is None:
            return text
        template = self._template(text)
        if isinstance(template, str):
            return template
        return self._filled(template)

    def _template(self, text: str) -> _Template:
        """The SCRUB template of ``text`` (the text itself when no token goes in), cached per numbering."""
        if len(text) < MIN_NUMBER_DIGITS or digit_count_of(text) < MIN_NUMBER_DIGITS:
            return text
        cache_key = (self._ctx.country, self._ctx.dial_prefixes, text)
        template = _SCRUB_TEMPLATES.get(cache_key)
        if template is None:
            template = _scrub_template(text, self._ctx)
            if len(text) <= _SCRUB_CACHE_MAX_TEXT:
                _SCRUB_TEMPLATES.put(cache_key, template)
        return template

    def _filled(self, template: _Template) -> str:
        """A template with this request's tokens in it."""
        if isinstance(template, str):
            return template
        return "".join(piece if index % 2 == 0 else self.token(piece) for index, piece in enumerate(template))

    def extra_json(self, extra: Mapping[str, str]) -> str | None:
        """Scrubbed ``extra`` as a JSON object (keys sorted), or None when nothing is left.

        When no key or value needs a token the answer depends on ``extra`` and the numbering only, and
        is remembered (most CDRs of a PBX repeat the same handful of outcome fields); answers with
        tokens are computed every time (after an erasure a number gets a new token).
        """
        items = tuple(extra.items())
        cache_key = (self._ctx.country, self._ctx.dial_prefixes, items)
        cached = _PLAIN_EXTRA_JSON.get(cache_key)
        if cached is not None:
            return cached or None
        kept: dict[str, str] = {}
        plain = True
        for key, value in items:
            if EXTRA_POLICY.get(key, Action.SCRUB) is Action.DROP:
                continue
            key_template = self._template(key)
            value_template = self._template(value)
            if not (isinstance(key_template, str) and isinstance(value_template, str)):
                plain = False
            kept[self._filled(key_template)] = self._filled(value_template)
        text = _extra_json_text(tuple(kept.items())) if kept else None
        if plain and sum(len(key) + len(value) for key, value in items) <= _SCRUB_CACHE_MAX_TEXT * 4:
            _PLAIN_EXTRA_JSON.put(cache_key, text or _NOTHING_KEPT)
        return text

    def data_piece(self, event: str, index: int, piece: str) -> str:
        """One queue_log data piece: tokenised, redacted or scrubbed by its role in ``event``."""
        role = _DATA_ROLES.get(event, {}).get(index)
        if role is _Role.NAME:
            return REDACTED if piece.strip() else piece
        if role is _Role.NUMBER:
            party = parse_party(piece, self._ctx)
            if party.kind is PartyKind.SUBJECT:
                return self.party(party) or REDACTED
            if party.kind is PartyKind.REDACTED:
                return REDACTED
        return self.scrub(piece)

    def cdr(self, raw: RawCdr, ingested_at: datetime) -> CdrRecord:
        """Pseudonymise one RawCdr into a lake row."""
        return CdrRecord(
            tenant=self._ctx.tenant,
            pbx=self._ctx.name,
            source_format=raw.source_format,
            dedupe_key=raw.dedupe_key,
            call_id=self.identifier(raw.call_id),
            linked_id=self.identifier(raw.linked_id),
            sequence=raw.sequence,
            start_at=raw.start_at,
            answer_at=raw.answer_at,
            end_at=raw.end_at,
            duration_s=raw.duration_s,
            billsec_s=raw.billsec_s,
            disposition=raw.disposition.value,
            hangup_cause=raw.hangup_cause,
            direction=raw.direction.value,
            caller=self.party(raw.caller),
            caller_kind=raw.caller.kind.value,
            callee=self.party(raw.callee),
            callee_kind=raw.callee.kind.value,
            account_code=self.scrub(raw.account_code),
            context=self.scrub(raw.context),
            src_channel=self.scrub(raw.src_channel),
            dst_channel=self.scrub(raw.dst_channel),
            last_app=self.scrub(raw.last_app),
            last_data=self.scrub(raw.last_data),
            extra_json=self.extra_json(raw.extra),
            ingested_at=_utc(ingested_at),
        )

    def acd(self, raw: RawAcdEvent, ingested_at: datetime) -> AcdEventRecord:
        """Pseudonymise one RawAcdEvent into a lake row."""
        return AcdEventRecord(
            tenant=self._ctx.tenant,
            pbx=self._ctx.name,
            source_format=raw.source_format,
            dedupe_key=raw.dedupe_key,
            event_at=raw.event_at,
            call_id=self.identifier(raw.call_id),
            queue=self.scrub(raw.queue),
            agent=self.scrub(raw.agent),
            event=self.scrub(raw.event),
            caller=self.party(raw.caller),
            caller_kind=raw.caller.kind.value,
            position=raw.position,
            original_position=raw.original_position,
            wait_s=raw.wait_s,
            hold_s=raw.hold_s,
            talk_s=raw.talk_s,
            ring_ms=raw.ring_ms,
            agent_call_id=self.identifier(raw.agent_call_id),
            data=[self.data_piece(raw.event, i, piece) for i, piece in enumerate(raw.data)],
            ingested_at=_utc(ingested_at),
        )


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("ingested_at must be timezone-aware")
    return at.astimezone(UTC)


def scrub_text(text: str, ctx: PbxContext, tokens: SubjectTokens) -> str:
    """SCRUB one free-text value for ``ctx``'s PBX (see the module docstring)."""
    return Pseudonymiser(ctx, tokens).scrub(text)


def pseudonymise_cdr(raw: RawCdr, ctx: PbxContext, tokens: SubjectTokens, ingested_at: datetime) -> CdrRecord:
    """Turn one identifiable RawCdr into the pseudonymised CdrRecord the lake stores."""
    return Pseudonymiser(ctx, tokens).cdr(raw, ingested_at)


def pseudonymise_acd(raw: RawAcdEvent, ctx: PbxContext, tokens: SubjectTokens, ingested_at: datetime) -> AcdEventRecord:
    """Turn one identifiable RawAcdEvent into the pseudonymised AcdEventRecord the lake stores."""
    return Pseudonymiser(ctx, tokens).acd(raw, ingested_at)


@overload
def pseudonymise_all(
    records: Sequence[RawCdr], ctx: PbxContext, tokens: SubjectTokens, ingested_at: datetime
) -> list[CdrRecord]: ...
@overload
def pseudonymise_all(
    records: Sequence[RawAcdEvent], ctx: PbxContext, tokens: SubjectTokens, ingested_at: datetime
) -> list[AcdEventRecord]: ...
def pseudonymise_all(
    records: Sequence[RawCdr] | Sequence[RawAcdEvent],
    ctx: PbxContext,
    tokens: SubjectTokens,
    ingested_at: datetime,
) -> list[CdrRecord] | list[AcdEventRecord]:
    """Pseudonymise a parsed batch, looking each number's token up once for the whole batch."""
    pseudonymiser = Pseudonymiser(ctx, tokens)
    pseudonymiser.prefetch(
        party.value
        for raw in records
        for party in ((raw.caller, raw.callee) if isinstance(raw, RawCdr) else (raw.caller,))
        if party.kind is PartyKind.SUBJECT and party.value
    )
    cdrs: list[CdrRecord] = []
    events: list[AcdEventRecord] = []
    for raw in records:
        if isinstance(raw, RawCdr):
            cdrs.append(pseudonymiser.cdr(raw, ingested_at))
        else:
            events.append(pseudonymiser.acd(raw, ingested_at))
    return cdrs if cdrs or not events else events


# ----------------------------------------------------------------------------------------- column-wise

# A value ``identifier`` could replace: after ``str.strip()`` only separators, digits and one leading "+".
_WHOLE_NUMBER_LIKE = r"^[\t\n\x0b\x0c\r\x1c-\x1f ]*[ \-.()]*\+?[ \-.()]*[0-9][0-9 \-.()]*[\t\n\x0b\x0c\r\x1c-\x1f ]*$"
_NOT_DIGITS = r"[\t\n\x0b\x0c\r\x1c-\x1f \-.()]"
# A value SCRUB could change: seven digits joined by at most two separators each (one ``_NUMBER_RUN``).
_SCRUB_CANDIDATE = r"[0-9](?:[ \-.()]{0,2}[0-9]){6}"
# A whole value ``TECH/resource-XXXXXXXX`` whose resource has no "-" (nor what ends a channel name):
# ``_CHANNEL_SUFFIX`` then protects exactly the last nine characters, so only the rest can hold a number.
_WHOLE_CHANNEL = r"^([A-Za-z][A-Za-z0-9_]*/[^\t\n\x0b\x0c\r\x1c-\x1f ,|/\-]*)-[0-9A-Fa-f]{8}$"
_SCRUBBED_CDR_COLUMNS = ("account_code", "context", "src_channel", "dst_channel", "last_app", "last_data")


def pseudonymise_csv_columns(
    columnar: ColumnarCdrs,
    ctx: PbxContext,
    tokens: SubjectTokens,
    ingested_at: datetime,
    pseudonymiser: Pseudonymiser | None = None,
) -> pa.Table:
    """A Master.csv body parsed column-wise, pseudonymised: its rows in ``CDR_SCHEMA``, in line order.

    Exactly ``records_to_table(pseudonymise_all(parse_asterisk_csv(body).records))``, computed column-wise.
    The pieces of one request may share a ``pseudonymiser`` (its tokens are looked up once per request).
    """
    table = pseudonymise_cdr_columns(
        columnar.table, columnar.extra_names, ctx, tokens, ingested_at, CSV_FORMAT, pseudonymiser
    )
    if not columnar.records:
        return table
    records = pseudonymise_all([record for _, record in columnar.records], ctx, tokens, ingested_at)
    lines = pa.concat_arrays([columnar.lines, pa.array([line for line, _ in columnar.records], pa.int64())])
    table = pa.concat_tables([table, records_to_table(records, CDR_SCHEMA)])
    return table.take(pc.sort_indices(lines))


def pseudonymise_cdr_columns(
    raw: pa.Table,
    extra_names: Sequence[str],
    ctx: PbxContext,
    tokens: SubjectTokens,
    ingested_at: datetime,
    source_format: str,
    pseudonymiser: Pseudonymiser | None = None,
) -> pa.Table:
    """The column-wise ``Pseudonymiser.cdr``: identifiable CDR columns -> a table in ``CDR_SCHEMA``.

    ``raw`` holds ASCII ``RawCdr`` columns as ``ingest.formats.asterisk_csv.ColumnarCdrs`` describes.
    Vectorised checks find the values the policy leaves as they are (no phone-number-like digit run,
    ids that cannot be a possible number); the rest go through ``Pseudonymiser`` once per distinct
    value, so the result is the same as record by record.
    """
    pseudonymiser = pseudonymiser or Pseudonymiser(ctx, tokens)
    length = raw.num_rows
    subjects: set[str] = set()
    for party in ("caller", "callee"):
        is_subject = pc.equal(raw.column(f"{party}_kind"), PartyKind.SUBJECT.value)
        subjects.update(v for v in pc.unique(raw.column(f"{party}_value").filter(is_subject)).to_pylist() if v)
    pseudonymiser.prefetch(subjects)

    out: dict[str, pa.Array] = {
        "tenant": constant(ctx.tenant, length, pa.string()),
        "pbx": constant(ctx.name, length, pa.string()),
        "source_format": constant(source_format, length, pa.string()),
        "dedupe_key": as_array(raw.column("dedupe_key")),
        "call_id": _identifier_column(raw.column("call_id"), pseudonymiser, ctx),
    }
    linked_id = as_array(raw.column("linked_id"))
    same = linked_id.equals(as_array(raw.column("call_id")))  # Asterisk: linkedid is the first leg's uniqueid
    out["linked_id"] = out["call_id"] if same else _identifier_column(linked_id, pseudonymiser, ctx)
    for name in ("sequence", "start_at", "answer_at", "end_at", "duration_s", "billsec_s", "disposition"):
        out[name] = as_array(raw.column(name))
    out["hangup_cause"] = pa.nulls(length, pa.int32())
    out["direction"] = as_array(raw.column("direction"))
    for party in ("caller", "callee"):
        kind = as_array(raw.column(f"{party}_kind"))
        out[party] = _party_column(kind, raw.column(f"{party}_value"), pseudonymiser)
        out[f"{party}_kind"] = kind
    out.update(_scrub_columns({name: raw.column(name) for name in _SCRUBBED_CDR_COLUMNS}, pseudonymiser, ctx))
    out["extra_json"] = _extra_json_column([raw.column(f"extra.{n}") for n in extra_names], extra_names, pseudonymiser)
    out["ingested_at"] = constant(_utc(ingested_at), length, CDR_SCHEMA.field("ingested_at").type)
    return pa.Table.from_arrays(
        [out[name].cast(f.type) for name, f in zip(CDR_SCHEMA.names, CDR_SCHEMA, strict=True)], schema=CDR_SCHEMA
    )


def _party_column(kind: pa.Array, value: pa.ChunkedArray | pa.Array, pseudonymiser: Pseudonymiser) -> pa.Array:
    """TOKENISE over a column: subject -> token, extension -> scrubbed text, anything else -> null."""
    is_subject = pc.equal(kind, PartyKind.SUBJECT.value)
    is_extension = pc.equal(kind, PartyKind.EXTENSION.value)
    kept = pc.if_else(pc.or_(is_subject, is_extension), value, pa.scalar(None, pa.string()))
    kept = map_distinct(kept, pseudonymiser.token, pa.string(), where=pc.and_(is_subject, pc.is_valid(kept)))
    needs_scrub = pc.and_(is_extension, _may_scrub(kept))
    return map_distinct(kept, pseudonymiser.scrub, pa.string(), where=pc.fill_null(needs_scrub, False))


def _may_scrub(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """False where SCRUB certainly returns the value unchanged (ASCII, no seven-digit run); nulls stay null.

    A value that is a whole channel name (``PJSIP/682-81e74ef5``) is judged without its unique suffix,
    which SCRUB protects: random hex suffixes would otherwise send most channel names to the policy.
    """
    array = as_array(column)
    candidate = pc.match_substring_regex(array, _SCRUB_CANDIDATE)
    where = pc.fill_null(candidate, False)
    if pc.any(where).as_py():
        unprotected = pc.replace_substring_regex(array.filter(where), _WHOLE_CHANNEL, r"\1")
        candidate = pc.replace_with_mask(candidate, where, pc.match_substring_regex(unprotected, _SCRUB_CANDIDATE))
    return pc.or_(pc.invert(pc.string_is_ascii(array)), candidate)


def _scrub_columns(
    columns: Mapping[str, pa.ChunkedArray | pa.Array], pseudonymiser: Pseudonymiser, ctx: PbxContext
) -> dict[str, pa.Array]:
    """SCRUB over columns: ``Pseudonymiser.scrub`` of every value, computed column-wise.

    Only values SCRUB could change are looked at (those of all the columns together). Their templates
    (``_scrub_template``: text and numbering only) come from an Arrow-side cache, and the tokens of
    templates with one number are filled in column-wise, per request as ``Pseudonymiser.scrub`` does;
    values with several numbers (or a NUL, which the cache's encoding uses) go through
    ``Pseudonymiser.scrub`` once per value.
    """
    arrays = {name: as_array(column) for name, column in columns.items()}
    wheres = {name: pc.fill_null(_may_scrub(array), False) for name, array in arrays.items()}
    picked = [array.filter(wheres[name]) for name, array in arrays.items()]
    if not sum(len(values) for values in picked):
        return arrays
    values = pa.concat_arrays(picked)
    simple = pc.and_(pc.string_is_ascii(values), pc.invert(pc.match_substring(values, "\x00")))
    cache = _template_cache(ctx.country, ctx.dial_prefixes)
    templates = cache.map(pc.if_else(simple, values, pa.scalar(None, pa.string())))
    pieces = pc.split_pattern(templates, "\x00")
    count = pc.fill_null(pc.list_value_length(pieces), 0)
    scrubbed = pc.list_element(pc.if_else(pc.equal(count, 1), pieces, pa.scalar(None, pieces.type)), 0)
    one_number = pc.equal(count, 3)
    if pc.any(one_number).as_py():
        trio = pieces.filter(one_number)
        numbers = pc.list_element(trio, 1)
        distinct = pc.unique(numbers)
        listed = distinct.to_pylist()
        pseudonymiser.prefetch(listed)
        tokens = pa.array([pseudonymiser.token(number) for number in listed], pa.string())
        token = tokens.take(pc.index_in(numbers, value_set=distinct))
        filled = pc.binary_join_element_wise(pc.list_element(trio, 0), token, pc.list_element(trio, 2), "")
        scrubbed = pc.replace_with_mask(scrubbed, one_number, filled)
    others = pc.invert(pc.or_(pc.equal(count, 1), one_number))
    if pc.any(others).as_py():
        by_policy = map_distinct(values, pseudonymiser.scrub, pa.string(), where=others)
        scrubbed = pc.if_else(others, by_policy, scrubbed)
    out: dict[str, pa.Array] = {}
    offset = 0
    for (name, array), part in zip(arrays.items(), picked, strict=True):
        out[name] = pc.replace_with_mask(array, wheres[name], scrubbed.slice(offset, len(part))) if len(part) else array
        offset += len(part)
    return out


@functools.lru_cache(maxsize=64)
def _template_cache(country: str, dial_prefixes: tuple[str, ...]) -> DistinctCache:
    """SCRUB templates per text for a numbering (``_scrub_template`` reads only these two), NUL-joined."""
    ctx = PbxContext(
        name="numbering", tenant="numbering", timezone=ZoneInfo("UTC"), country=country, dial_prefixes=dial_prefixes
    )

    def encoded(text: str) -> str:
        template = _scrub_template(text, ctx)
        return template if isinstance(template, str) else "\x00".join(template)

    return DistinctCache(encoded, pa.string())


def _identifier_column(column: pa.ChunkedArray | pa.Array, pseudonymiser: Pseudonymiser, ctx: PbxContext) -> pa.Array:
    """KEEP-for-ids over a column, asking ``phonenumbers`` only about values that could be a number."""
    array = as_array(column)
    whole = pc.match_substring_regex(array, _WHOLE_NUMBER_LIKE)
    compact = pc.replace_substring_regex(array, _NOT_DIGITS, "")
    certain = pc.and_(pc.string_is_ascii(array), pc.or_(pc.invert(whole), impossible_numbers(compact, ctx)))
    return map_distinct(array, pseudonymiser.identifier, pa.string(), where=pc.fill_null(pc.invert(certain), False))


def impossible_numbers(digits: pa.Array, ctx: PbxContext) -> pa.Array:
    """Where ``to_e164`` certainly answers None: the column-wise ``normalise._impossible_length``.

    True for strings of fewer than seven characters, and for ASCII digit strings that (per the PBX's
    numbering plan) carry no international prefix or calling code and whose length, with or without
    the national prefix, is not a possible length. False (unknown) for everything else.
    """
    length = pc.utf8_length(digits)
    too_short = pc.less(length, MIN_NUMBER_DIGITS)
    plan = numbering_plan(ctx.country)
    if plan is None or ctx.dial_prefixes:
        return pc.fill_null(too_short, False)
    national = pc.and_(
        pc.match_substring_regex(digits, r"^[0-9]+$"), pc.invert(pc.starts_with(digits, plan.country_code))
    )
    if plan.idd is not None:
        national = pc.and_(national, pc.invert(pc.match_substring_regex(digits, f"^(?:{plan.idd.pattern})")))
    stripped = length
    for prefix in reversed(plan.national_prefixes):
        stripped = pc.if_else(pc.starts_with(digits, prefix), pc.subtract(length, len(prefix)), stripped)
    possible = pa.array(sorted(plan.possible_lengths), pa.int32())
    impossible_length = pc.invert(pc.or_(pc.is_in(length, possible), pc.is_in(pc.cast(stripped, pa.int32()), possible)))
    return pc.fill_null(pc.or_(too_short, pc.and_(national, impossible_length)), False)


def _extra_json_column(columns: list[pa.ChunkedArray], names: Sequence[str], pseudonymiser: Pseudonymiser) -> pa.Array:
    """``extra_json`` of every row, computed once per distinct combination of extra values."""
    length = len(columns[0]) if columns else 0
    if not columns:
        return pa.nulls(length, pa.string())
    encoded = [as_array(column).dictionary_encode() for column in columns]
    dictionaries = [e.dictionary.to_pylist() for e in encoded]
    code = pc.cast(encoded[0].indices, pa.int64())
    for e in encoded[1:]:
        code = pc.add(pc.multiply(code, len(e.dictionary)), pc.cast(e.indices, pa.int64()))

    def extra_json(combined: int) -> str | None:
        values: list[str] = []
        for dictionary in reversed(dictionaries):
            combined, index = divmod(combined, len(dictionary))
            values.append(dictionary[index])
        values.reverse()
        return pseudonymiser.extra_json({n: v for n, v in zip(names, values, strict=True) if v})

    sizes = 1
    for dictionary in dictionaries:
        sizes *= max(1, len(dictionary))
    if sizes >= 2**62:  # too many combinations to number: one call per row
        rows = zip(*(as_array(c).to_pylist() for c in columns), strict=True)
        return pa.array(
            [pseudonymiser.extra_json({n: v for n, v in zip(names, r, strict=True) if v}) for r in rows], pa.string()
        )
    return map_distinct(code, extra_json, pa.string())

"""Asterisk ``cdr_csv`` Master.csv lines -> ``RawCdr``.

No header line; columns in Asterisk's fixed order, the optional tail depending on ``cdr.conf``.
Column profile: ``PbxContext.csv_columns`` when set (any known or custom names; unknown names land in
``extra``), otherwise chosen by the line's field count:

    16  base
    17  base + uniqueid                                   (loguniqueid)
    18  base + uniqueid, userfield                        (loguniqueid, loguserfield)
    19  base + peeraccount, linkedid, sequence            (newcdrcolumns)
    20  base + uniqueid, peeraccount, linkedid, sequence  (loguniqueid, newcdrcolumns) -- the more common
        of the two 20-field layouts; a PBX logging userfield without uniqueid must set csv_columns
    21  base + uniqueid, userfield, peeraccount, linkedid, sequence

Times are local to the PBX (``ctx.timezone``; set it to UTC for ``usegmtime=yes``); a bare epoch is
accepted too (cdr_custom). Each line is decoded and parsed on its own: a bad line is a ``Reject``
with its 1-based line number, blank lines are skipped, CRLF is fine. A quoted field with an embedded
newline (Asterisk does not escape it) splits the record and both halves are rejected.

Dedupe key: ``dedupe_key(pbx, uniqueid, sequence, start as written)`` when the line has a uniqueid and
a sequence (together they identify one CDR); otherwise ``dedupe_key(pbx, raw line bytes)``. A uniqueid
alone is not enough: forked CDRs of one channel share it (and often the start second), so keying on
it would silently drop real records. Either way, the same record also written to ``<accountcode>.csv``
and ingested twice gets the same key.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ingest.columns import DistinctCache, as_array, constant, empty_to_null, false_mask, map_distinct, strip
from ingest.context import ParseResult, PbxContext
from ingest.errors import RecordRejected, Reject
from ingest.normalise import (
    clid_number,
    decode_line,
    dedupe_key,
    disposition_from_text,
    infer_direction,
    localise,
    parse_count,
    parse_party,
    parse_pbx_time,
    require_media_type,
    split_lines,
)
from ingest.records import Disposition, Party, PartyKind, RawCdr

FORMAT = "asterisk-csv"

BASE_COLUMNS: tuple[str, ...] = (
    "accountcode",
    "src",
    "dst",
    "dcontext",
    "clid",
    "channel",
    "dstchannel",
    "lastapp",
    "lastdata",
    "start",
    "answer",
    "end",
    "duration",
    "billsec",
    "disposition",
    "amaflags",
)
_NEW_COLUMNS = ("peeraccount", "linkedid", "sequence")

PROFILES_BY_FIELD_COUNT: dict[int, tuple[str, ...]] = {
    16: BASE_COLUMNS,
    17: (*BASE_COLUMNS, "uniqueid"),
    18: (*BASE_COLUMNS, "uniqueid", "userfield"),
    19: (*BASE_COLUMNS, *_NEW_COLUMNS),
    20: (*BASE_COLUMNS, "uniqueid", *_NEW_COLUMNS),
    21: (*BASE_COLUMNS, "uniqueid", "userfield", *_NEW_COLUMNS),
}

# Columns that have a place of their own in RawCdr; every other non-empty column goes to ``extra``.
_MAPPED = (frozenset(BASE_COLUMNS) - {"amaflags"}) | {"uniqueid", "linkedid", "sequence"}

ACCEPTED_MEDIA_TYPES = frozenset(
    {"", "text/csv", "text/plain", "application/csv", "text/x-csv", "application/octet-stream"}
)


def parse_asterisk_csv(body: bytes, content_type: str, ctx: PbxContext) -> ParseResult[RawCdr]:
    """Parse a Master.csv body (one CDR per line) into RawCdr records and per-line rejects."""
    require_media_type(content_type, ACCEPTED_MEDIA_TYPES, FORMAT)
    result: ParseResult[RawCdr] = ParseResult()
    for line_number, raw in split_lines(body):
        try:
            result.records.append(parse_line(raw, ctx))
        except RecordRejected as exc:
            result.rejects.append(Reject(line_number, exc.reason, raw))
    return result


def _columns_for(field_count: int, ctx: PbxContext) -> tuple[str, ...]:
    if ctx.csv_columns is not None:
        if field_count != len(ctx.csv_columns):
            raise RecordRejected(f"expected {len(ctx.csv_columns)} fields (PBX column profile), got {field_count}")
        return ctx.csv_columns
    columns = PROFILES_BY_FIELD_COUNT.get(field_count)
    if columns is None:
        raise RecordRejected(f"expected 16 to 21 fields, got {field_count}")
    return columns


def _seconds_between(first: datetime | None, last: datetime | None) -> int:
    """Whole seconds from ``first`` to ``last`` (0 when either is unknown or the order is reversed)."""
    if first is None or last is None or last < first:
        return 0
    return int((last - first).total_seconds())


def _split_fields(text: str) -> list[str]:
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error:
        raise RecordRejected("malformed CSV quoting") from None
    if len(rows) != 1:
        raise RecordRejected("malformed CSV line")
    return rows[0]


def parse_line(raw: bytes, ctx: PbxContext) -> RawCdr:
    """Parse one Master.csv line (without its line break) or raise RecordRejected."""
    text = decode_line(raw)
    values = _split_fields(text)
    columns = _columns_for(len(values), ctx)
    row = dict(zip(columns, values, strict=True))

    def text_of(name: str) -> str | None:
        value = row.get(name, "").strip()
        return value or None

    def time_of(name: str) -> datetime | None:
        try:
            return parse_pbx_time(row.get(name, ""), ctx.timezone)
        except ValueError:
            raise RecordRejected(f"{name}: not a valid time") from None

    start_at = time_of("start")
    if start_at is None:
        raise RecordRejected("start: missing")
    answer_at = time_of("answer")
    end_at = time_of("end")

    if "duration" in row:
        duration_s = parse_count(row["duration"], "duration")
    else:
        duration_s = _seconds_between(start_at, end_at)
    if "billsec" in row:
        billsec_s = parse_count(row["billsec"], "billsec")
    else:
        billsec_s = _seconds_between(answer_at, end_at)

    sequence_text = text_of("sequence")
    sequence = parse_count(sequence_text, "sequence") if sequence_text is not None else None
    uniqueid = text_of("uniqueid")

    if uniqueid is not None and sequence_text is not None:
        key = dedupe_key(ctx.name, uniqueid, sequence_text, row["start"].strip())
    else:
        key = dedupe_key(ctx.name, raw)

    if "disposition" in row:
        disposition = disposition_from_text(row["disposition"])
    else:
        disposition = Disposition.ANSWERED if answer_at is not None else Disposition.UNKNOWN

    caller = parse_party(text_of("src") or clid_number(text_of("clid")), ctx)
    callee = parse_party(text_of("dst"), ctx)
    extra = {name: value.strip() for name, value in row.items() if name not in _MAPPED and value.strip()}

    return RawCdr(
        source_format=FORMAT,
        dedupe_key=key,
        call_id=uniqueid or key,
        linked_id=text_of("linkedid"),
        sequence=sequence,
        start_at=start_at,
        answer_at=answer_at,
        end_at=end_at,
        duration_s=duration_s,
        billsec_s=billsec_s,
        disposition=disposition,
        hangup_cause=None,
        direction=infer_direction(caller, callee),
        caller=caller,
        callee=callee,
        account_code=text_of("accountcode"),
        context=text_of("dcontext"),
        src_channel=text_of("channel"),
        dst_channel=text_of("dstchannel"),
        last_app=text_of("lastapp"),
        last_data=text_of("lastdata"),
        extra=extra,
    )


# ----------------------------------------------------------------------------------------- column-wise

# Bodies at least this large (a Master.csv batch, not a handful of lines) are parsed column-wise.
COLUMNAR_MIN_BYTES = 256 * 1024
# One Master.csv line in the quoting that Python's csv module (strict) and Arrow's CSV reader read the
# same way: unquoted fields without quotes, quoted fields with "" for a quote, ending at a comma.
_CSV_LINE = r'^(?:[^",]*|"(?:[^"]|"")*")(?:,(?:[^",]*|"(?:[^"]|"")*"))*$'
_QUOTED = r'"(?:[^"]|"")*"'
_BLANK = " \t\n\r\x0b\x0c"  # what bytes.strip() removes: split_lines skips lines made of these
_LOCAL_FORMAT = "%Y-%m-%d %H:%M:%S"
_LOCAL_SHAPE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$"
_COUNT = r"^[0-9]{1,12}$"  # what parse_count accepts from ASCII text
_MAX_COLUMNS = 256
_TS = pa.timestamp("us", tz="UTC")
_UTF8_BOM = b"\xef\xbb\xbf"


@dataclass
class ColumnarCdrs:
    """A Master.csv body parsed column-wise: identifiable ``RawCdr`` columns, and what needed a closer look.

    ``table`` columns: the ``RawCdr`` fields, with each party as ``<party>_kind`` / ``<party>_value``
    and each extra field as ``extra.<name>`` ("" when absent); ``lines`` holds each row's 1-based line.
    ``records`` and ``rejects`` are the lines that went through ``parse_line`` one by one (unusual
    quoting, non-ASCII text, times in other shapes or near a clock change, bad values).
    """

    table: pa.Table
    lines: pa.Array
    extra_names: tuple[str, ...]
    records: list[tuple[int, RawCdr]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def parse_asterisk_csv_columns(body: bytes, content_type: str, ctx: PbxContext) -> ColumnarCdrs | None:
    """Parse a large Master.csv body column-wise; None when it should go line by line instead.

    Gives exactly what ``parse_asterisk_csv`` gives (same records, keys and rejects, in line order once
    merged by line number). Lines Arrow's reader and this module's line parser could read differently,
    and lines with non-ASCII bytes, are handed to ``parse_line``; a body whose lines do not all share
    one column profile, or with CR line ends or a BOM, is left to the line-by-line parser altogether
    (returns None).
    """
    require_media_type(content_type, ACCEPTED_MEDIA_TYPES, FORMAT)
    if len(body) < COLUMNAR_MIN_BYTES or b"\r" in body or body.startswith(_UTF8_BOM):
        return None
    raw_lines = pc.list_flatten(pc.split_pattern(pa.array([body], pa.binary()), b"\n"))
    # Lines with any non-ASCII byte (names with accents, or not UTF-8 at all) go to the line parser; the
    # string kernels below only ever see ASCII.
    if body.isascii():  # the usual case: one pass over the bytes instead of one per line
        ascii_only = constant(True, len(raw_lines), pa.bool_())
        text = raw_lines.view(pa.string())
    else:
        ascii_only = pc.string_is_ascii(raw_lines.view(pa.string()))
        text = pc.if_else(ascii_only, raw_lines.view(pa.string()), "")
    blank = _blank_lines(text, ascii_only)
    plain = pc.and_(ascii_only, pc.match_substring_regex(text, _CSV_LINE))
    eligible = pc.and_not(plain, blank)
    odd_lines = pc.indices_nonzero(pc.and_not(pc.invert(plain), blank)).to_pylist()
    rows = pc.indices_nonzero(eligible)
    if len(rows) == 0:
        return None
    if len(rows) == len(text) - 1 and bool(blank[len(text) - 1].as_py()):
        table = _read_csv(body)  # every line but the empty one after the final newline
    else:
        table = _read_csv(b"\n".join(raw_lines.take(rows).to_pylist()) + b"\n")
    if table is None:
        # Lines of another field count (a truncated line, a second profile): those go line by line.
        fields = pc.add(pc.count_substring(pc.replace_substring_regex(text, _QUOTED, ""), ","), 1)
        same = pc.equal(fields, fields[rows[0].as_py()])
        odd_lines = sorted(odd_lines + pc.indices_nonzero(pc.and_not(eligible, same)).to_pylist())
        rows = pc.indices_nonzero(pc.and_(eligible, same))
        table = _read_csv(b"\n".join(raw_lines.take(rows).to_pylist()) + b"\n")
    if table is None or table.num_rows != len(rows):
        return None
    columns = _profile_of(table.num_columns, ctx)
    if columns is None:
        return None
    table = table.rename_columns(list(columns))
    # Usually every line but the empty one after the final newline: a slice, not a copy.
    row_lines = raw_lines.slice(0, len(rows)) if rows[-1].as_py() == len(rows) - 1 else raw_lines.take(rows)
    parsed = _cdr_columns(table, columns, row_lines, ctx)
    if parsed is None:
        return None
    raw_table, fallback = parsed
    lines = pc.add(pc.cast(rows, pa.int64()), 1)
    if pc.any(fallback).as_py():
        kept = pc.invert(fallback)
        result = ColumnarCdrs(table=raw_table.filter(kept), lines=lines.filter(kept), extra_names=_extra_names(columns))
        fallback_lines = zip(lines.filter(fallback).to_pylist(), row_lines.filter(fallback).to_pylist(), strict=True)
    else:
        result = ColumnarCdrs(table=raw_table, lines=lines, extra_names=_extra_names(columns))
        fallback_lines = zip([], [], strict=True)
    by_line = sorted(
        [(int(n), raw) for n, raw in fallback_lines] + [(index + 1, raw_lines[index].as_py()) for index in odd_lines]
    )
    for line_number, raw in by_line:
        try:
            result.records.append((line_number, parse_line(raw, ctx)))
        except RecordRejected as exc:
            result.rejects.append(Reject(line_number, exc.reason, raw))
    return result


def _blank_lines(text: pa.Array, ascii_only: pa.Array) -> pa.Array:
    """ASCII lines made of ``_BLANK`` characters only (``split_lines`` skips them); only lines that start
    with one (or are empty) are trimmed to find out."""
    first = pc.utf8_slice_codeunits(text, 0, 1)
    maybe = pc.and_(ascii_only, pc.is_in(first, value_set=pa.array(["", *_BLANK], pa.string())))
    blank = false_mask(len(text))
    if pc.any(maybe).as_py():
        trimmed = pc.utf8_trim(text.filter(maybe), characters=_BLANK)
        blank = pc.replace_with_mask(blank, maybe, pc.equal(pc.utf8_length(trimmed), 0))
    return blank


def _extra_names(columns: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(name for name in columns if name not in _MAPPED)


def _read_csv(data: bytes) -> pa.Table | None:
    """Every field as a string ("" when empty); None when a line's field count differs from the first's."""
    invalid: list[object] = []

    def on_invalid(row: object) -> str:
        invalid.append(row)
        return "skip"

    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(autogenerate_column_names=True),
        parse_options=pacsv.ParseOptions(newlines_in_values=False, invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={f"f{i}": pa.string() for i in range(_MAX_COLUMNS)},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    if invalid or table.num_columns > _MAX_COLUMNS:
        return None
    return table


def _profile_of(field_count: int, ctx: PbxContext) -> tuple[str, ...] | None:
    if ctx.csv_columns is not None:
        columns: tuple[str, ...] | None = ctx.csv_columns if field_count == len(ctx.csv_columns) else None
    else:
        columns = PROFILES_BY_FIELD_COUNT.get(field_count)
    if columns is None or not set(BASE_COLUMNS) <= set(columns):
        return None  # the line parser explains the field count, or handles a profile without base fields
    return columns


def _cdr_columns(
    table: pa.Table, columns: tuple[str, ...], raw_lines: pa.Array, ctx: PbxContext
) -> tuple[pa.Table, pa.Array] | None:
    """The RawCdr columns of ``table`` and the mask of rows that must be parsed one by one."""
    length = table.num_rows
    fallback = false_mask(length)

    def text_of(name: str) -> pa.Array:
        return empty_to_null(strip(table.column(name))) if name in columns else pa.nulls(length, pa.string())

    start_text = strip(table.column("start"))
    start_at, ok = _utc_times(start_text, ctx)
    ok = pc.and_(ok, pc.is_valid(start_at))  # a missing start is a reject: parse_line words it
    fallback = pc.or_(fallback, pc.invert(ok))  # an epoch, other shapes: parse_line decides
    answer_at, ok = _utc_times(strip(table.column("answer")), ctx)
    fallback = pc.or_(fallback, pc.invert(ok))
    end_at, ok = _utc_times(strip(table.column("end")), ctx)
    fallback = pc.or_(fallback, pc.invert(ok))
    counts = {}
    for name in ("duration", "billsec"):
        value = strip(table.column(name))
        ok = pc.match_substring_regex(value, _COUNT)
        fallback = pc.or_(fallback, pc.invert(ok))
        counts[name] = pc.cast(pc.if_else(ok, value, "0"), pa.int64())
    sequence_text = text_of("sequence")
    sequence_ok = pc.fill_null(pc.match_substring_regex(sequence_text, _COUNT), True)
    fallback = pc.or_(fallback, pc.invert(sequence_ok))
    sequence = pc.cast(pc.if_else(sequence_ok, sequence_text, pa.scalar(None, pa.string())), pa.int64())
    uniqueid = text_of("uniqueid")

    keys = _dedupe_keys(ctx.name, uniqueid, sequence_text, start_text, raw_lines)
    caller_text = strip(table.column("src"))
    no_src = pc.equal(pc.utf8_length(caller_text), 0)
    if pc.any(no_src).as_py():
        clid = empty_to_null(strip(table.column("clid")))
        from_clid = map_distinct(pc.if_else(no_src, clid, pa.scalar(None, pa.string())), clid_number, pa.string())
        caller_text = pc.if_else(no_src, from_clid, caller_text)
    caller_kind, caller_value = _parties(empty_to_null(caller_text), ctx)
    callee_kind, callee_value = _parties(text_of("dst"), ctx)
    pair = pc.binary_join_element_wise(caller_kind, callee_kind, "|")
    direction = map_distinct(pair, _direction_of_kinds, pa.string())

    out: dict[str, pa.Array] = {
        "dedupe_key": keys,
        "call_id": pc.coalesce(uniqueid, keys),
        "linked_id": text_of("linkedid"),
        "sequence": sequence,
        "start_at": start_at,
        "answer_at": answer_at,
        "end_at": end_at,
        "duration_s": counts["duration"],
        "billsec_s": counts["billsec"],
        "disposition": map_distinct(table.column("disposition"), lambda t: disposition_from_text(t).value, pa.string()),
        "direction": direction,
        "caller_kind": caller_kind,
        "caller_value": caller_value,
        "callee_kind": callee_kind,
        "callee_value": callee_value,
        "account_code": text_of("accountcode"),
        "context": text_of("dcontext"),
        "src_channel": text_of("channel"),
        "dst_channel": text_of("dstchannel"),
        "last_app": text_of("lastapp"),
        "last_data": text_of("lastdata"),
    }
    for name in columns:
        if name not in _MAPPED:
            out[f"extra.{name}"] = strip(table.column(name))
    return pa.table(out), as_array(fallback)


def _utc_times(text: pa.Array, ctx: PbxContext) -> tuple[pa.Array, pa.Array]:
    """UTC times of ``YYYY-MM-DD HH:MM:SS`` local times, and where that was certain (empty -> null, ok).

    A value in exactly that shape is read by Arrow and checked by writing it back; the zone offset is
    taken per distinct local hour from ``localise`` (PEP 495 fold=0, as the line parser), and an hour
    whose offset changes within it (a clock change) is left to the line parser, as is any other shape.
    """
    empty = pc.equal(pc.utf8_length(text), 0)
    local = pc.strptime(text, format=_LOCAL_FORMAT, unit="s", error_is_null=True)
    # Arrow's strptime also takes "2025-3-4" and rolls "02-30" or ":60" over; the line parser rejects
    # both, so only the exact shape with the same day and second read back counts as certain.
    canonical = pc.match_substring_regex(text, _LOCAL_SHAPE)
    shaped = pc.if_else(canonical, text, pa.scalar(None, pa.string()))
    for part, start in ((pc.day, 8), (pc.second, 17)):
        written = pc.cast(pc.utf8_slice_codeunits(shaped, start, start + 2), pa.int64())
        canonical = pc.and_(canonical, pc.equal(part(local), written))
    canonical = pc.fill_null(canonical, False)
    seconds = pc.cast(local, pa.int64())
    canonical = pc.and_(canonical, pc.fill_null(pc.greater_equal(seconds, 0), False))
    seconds = pc.if_else(canonical, seconds, pa.scalar(None, pa.int64()))
    hours = pc.divide(seconds, 3600)
    offsets = map_distinct(hours, lambda hour: _hour_offset(hour, ctx.timezone), pa.int64())
    ok = pc.or_(empty, pc.fill_null(pc.is_valid(offsets), False))
    micros = pc.multiply(pc.subtract(seconds, offsets), 1_000_000)
    return pc.cast(micros, pa.int64()).cast(_TS), ok


def _hour_offset(hour: int, tz: ZoneInfo) -> int | None:
    """Seconds to subtract from local times in this local hour to get UTC; None if not one value."""
    first = datetime(1970, 1, 1) + timedelta(hours=hour)  # noqa: DTZ001 - a wall-clock time, zone applied below
    last = first + timedelta(seconds=3599)
    try:
        offsets = {
            int((moment - localise(moment.year, moment.month, moment.day, moment.hour, moment.minute,
                                   moment.second, 0, tz).replace(tzinfo=None)).total_seconds())
            for moment in (first, last)
        }  # fmt: skip
    except (ValueError, OverflowError):
        return None
    return offsets.pop() if len(offsets) == 1 else None


def _dedupe_keys(
    pbx: str, uniqueid: pa.Array, sequence_text: pa.Array, start_text: pa.Array, raw_lines: pa.Array
) -> pa.Array:
    """``dedupe_key`` of every row, exactly as ``parse_line`` computes it.

    The length-prefixed message after the PBX name is assembled by Arrow; Python only hashes it.
    """
    name = pbx.encode("utf-8", "surrogatepass")
    prefix = len(name).to_bytes(8, "big") + name
    by_id = pc.and_(pc.is_valid(uniqueid), pc.is_valid(sequence_text))
    parts = []
    for part in (uniqueid, sequence_text, start_text):
        binary = pc.cast(pc.fill_null(part, ""), pa.binary())
        parts += [map_distinct(pc.binary_length(binary), _length_prefix, pa.binary()), binary]
    messages = pc.binary_join_element_wise(*parts, b"")
    if not pc.all(by_id).as_py():
        line_prefix = map_distinct(pc.binary_length(raw_lines), _length_prefix, pa.binary())
        messages = pc.if_else(by_id, messages, pc.binary_join_element_wise(line_prefix, raw_lines, b""))
    sha256 = hashlib.sha256
    return pa.array([sha256(prefix + message).hexdigest() for message in messages.to_pylist()], pa.string())


def _length_prefix(length: int) -> bytes:
    return length.to_bytes(8, "big")


def _parties(text: pa.Array, ctx: PbxContext) -> tuple[pa.Array, pa.Array]:
    """(kind, value) columns of ``parse_party`` over a column (null -> none)."""
    parties = _party_cache(ctx.country, ctx.dial_prefixes, ctx.extension_max_digits).map(text)
    pieces = pc.split_pattern(parties, "\x00", max_splits=1)
    kinds = pc.fill_null(pc.list_element(pieces, 0), PartyKind.NONE.value)
    values = empty_to_null(pc.list_element(pieces, 1))
    return as_array(kinds), as_array(values)


@functools.lru_cache(maxsize=64)
def _party_cache(country: str, dial_prefixes: tuple[str, ...], extension_max_digits: int) -> DistinctCache:
    """``kind NUL value`` of ``parse_party(text)`` in a PBX of this numbering, remembered per text."""
    ctx = _numbering_context(country, dial_prefixes, extension_max_digits)

    def party_pair(text: str) -> str:
        party = parse_party(text, ctx)
        return f"{party.kind.value}\x00{party.value or ''}"

    return DistinctCache(party_pair, pa.string())


@functools.lru_cache(maxsize=64)
def _numbering_context(country: str, dial_prefixes: tuple[str, ...], extension_max_digits: int) -> PbxContext:
    """A context that carries only what ``parse_party`` reads (the PBX's numbering)."""
    return PbxContext(
        name="numbering", tenant="numbering", timezone=ZoneInfo("UTC"), country=country,
        dial_prefixes=dial_prefixes, extension_max_digits=extension_max_digits,
    )  # fmt: skip


_KINDS = {kind.value: kind for kind in PartyKind}


def _direction_of_kinds(pair: str) -> str:
    caller, callee = pair.split("|")
    return infer_direction(Party(_KINDS[caller], None), Party(_KINDS[callee], None)).value

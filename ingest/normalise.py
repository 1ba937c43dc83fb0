"""Normal form for the values every PBX writes differently: numbers, times, outcomes, directions.

Numbers (``parse_party``)
    * empty -> ``NONE``; "anonymous", "Restricted", "unknown", "withheld", "private", ... -> ``WITHHELD``.
    * ``sip:``/``sips:``/``tel:`` URIs are reduced to their user part first.
    * digit strings (visual separators ``space - . ( )`` ignored) of at most
      ``ctx.extension_max_digits`` digits and no ``+`` -> ``EXTENSION``, text kept as written.
    * longer digit strings are parsed with ``phonenumbers`` in the PBX's country (``+``, ``00`` and
      national forms all work); a number whose length is possible for its country -> ``SUBJECT`` with
      its E.164 form. ``ctx.dial_prefixes`` (outside-line prefixes such as "9") are tried off the front
      when the number as written is not possible.
    * other short names without spaces ("s", "*97", "601#", "alice") -> ``EXTENSION``.
    * anything else, including a 7+ digit string that is not a possible number -> ``REDACTED``: it may
      be personal data we cannot normalise, so the value is dropped rather than stored as written.

Times
    * PBX local times (``YYYY-MM-DD HH:MM:SS[.ffffff]``) are resolved in the PBX's zone with PEP 495
      ``fold=0``: a time in the spring-forward gap (which no clock showed) is read with the offset in
      force before the gap, i.e. shifted forward by the gap's length (01:30 in a 01:00->02:00 gap
      becomes 02:30 local); a time in the autumn overlap (shown twice) is the first occurrence
      (the daylight-saving one). Both rules are deterministic; durations are taken from the PBX's own
      duration fields, never recomputed from such times when the PBX sent them.
    * epoch seconds are UTC; 0 means "never happened" (``None``).

Outcomes: Asterisk disposition text, Q.850 cause codes and FreeSWITCH hangup cause names map onto
``Disposition`` (see ``disposition_from_cause``).

Dedupe keys: ``dedupe_key(*parts)`` is the SHA-256 hex digest over the parts, each as its UTF-8
bytes preceded by its length as an 8-byte big-endian integer, so that no two part lists collide.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import phonenumbers

from ingest.context import PbxContext
from ingest.errors import RecordRejected, UnsupportedMediaTypeError
from ingest.records import Direction, Disposition, Party, PartyKind

# --------------------------------------------------------------------------------------------- numbers

NONE_PARTY = Party(PartyKind.NONE, None)
WITHHELD_PARTY = Party(PartyKind.WITHHELD, None)
REDACTED_PARTY = Party(PartyKind.REDACTED, None)

WITHHELD_WORDS = frozenset(
    {
        "anonymous",
        "restricted",
        "withheld",
        "private",
        "unavailable",
        "unknown",
        "blocked",
        "no caller id",
        "out of area",
        "outofarea",
        "not available",
        "<unknown>",
    }
)

MIN_NUMBER_DIGITS = 7  # digit runs this long are treated as phone numbers everywhere

_URI_SCHEME = re.compile(r"^(?:sips?|tel):", re.IGNORECASE)
_SEPARATORS = re.compile(r"[\s\-.()]")
_DIGIT_STRING = re.compile(r"\+?\d+")
_EXTENSION_TEXT = re.compile(r"[A-Za-z0-9_*#.\-]{1,40}")
_CLID_NUMBER = re.compile(r"<([^<>]*)>\s*$")


def _uri_user(text: str) -> tuple[str, bool]:
    """Reduce ``<sip:user@host;p>`` / ``tel:+44...`` to its user part; say whether it was a URI."""
    value = text.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    if not _URI_SCHEME.match(value):
        return value, False
    value = value.split(":", 1)[1]
    for sep in ("@", ";", "?"):
        value = value.split(sep, 1)[0]
    return value.strip(), True


def to_e164(digits: str, ctx: PbxContext, *, require_valid: bool = False) -> str | None:
    """E.164 form of a digit string (optional leading ``+``) in the PBX's country, or None.

    ``require_valid=False`` accepts any number whose length is possible for its country (not
    "local only"); ``True`` needs ``phonenumbers.is_valid_number`` (an allocated range).
    Results are cached per (digits, country, dial prefixes); a digit string whose length cannot be
    possible in the country (Asterisk uniqueids, long ids) is answered without ``phonenumbers``.
    """
    return _e164(digits, ctx.country, ctx.dial_prefixes, require_valid)


def _e164(digits: str, country: str, dial_prefixes: tuple[str, ...], require_valid: bool) -> str | None:
    candidates = [digits]
    if not digits.startswith("+"):
        candidates += [digits[len(p) :] for p in dial_prefixes if digits.startswith(p)]
    if all(_impossible_length(candidate, country) for candidate in candidates):
        return None  # unique ids would only evict useful entries from the cache
    return _e164_cached(digits, country, dial_prefixes, require_valid)


@functools.lru_cache(maxsize=65_536)
def _e164_cached(digits: str, country: str, dial_prefixes: tuple[str, ...], require_valid: bool) -> str | None:
    candidates = [digits]
    if not digits.startswith("+"):
        candidates += [digits[len(p) :] for p in dial_prefixes if digits.startswith(p)]
    for candidate in candidates:
        if len(candidate.lstrip("+")) < MIN_NUMBER_DIGITS:
            continue
        number = _parsed(candidate, country)
        if number is None:
            continue
        if require_valid:
            ok = phonenumbers.is_valid_number(number)
        else:
            ok = phonenumbers.is_possible_number_with_reason(number) == phonenumbers.ValidationResult.IS_POSSIBLE
        if ok:
            return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
    return None


@functools.lru_cache(maxsize=32_768)
def _parsed(candidate: str, country: str) -> phonenumbers.PhoneNumber | None:
    """``phonenumbers.parse`` once per string: a party (possible?) and free text (valid?) often share it."""
    try:
        return phonenumbers.parse(candidate, country)
    except phonenumbers.NumberParseException:
        return None


@dataclass(frozen=True, slots=True)
class NumberingPlan:
    """What ``phonenumbers.parse`` does to a national-format digit string of one region, by length."""

    idd: re.Pattern[str] | None  # the region's international prefix (a match means "not national")
    country_code: str
    national_prefixes: tuple[str, ...]  # literal national prefixes, tried in order (regex alternation)
    possible_lengths: frozenset[int]  # national significant number lengths that can be possible or valid


@functools.cache
def numbering_plan(country: str) -> NumberingPlan | None:
    """The plan of ``country``, or None when its national prefix rule is not a plain list of digits."""
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(country, None)
    if metadata is None or metadata.national_prefix_transform_rule or metadata.country_code is None:
        return None
    prefix_rule = metadata.national_prefix_for_parsing
    if prefix_rule and not re.fullmatch(r"\d+(?:\|\d+)*", prefix_rule):
        return None
    # Possibility is judged with the main region of the calling code, validity with the region the
    # number belongs to: take every region of the calling code, so that the set is never too small.
    lengths: set[int] = set()
    for region in phonenumbers.region_codes_for_country_code(metadata.country_code):
        shared = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(metadata.country_code, region)
        if shared is None or shared.general_desc is None:
            return None
        lengths.update(shared.general_desc.possible_length)
    return NumberingPlan(
        idd=re.compile(metadata.international_prefix) if metadata.international_prefix else None,
        country_code=str(metadata.country_code),
        national_prefixes=tuple(prefix_rule.split("|")) if prefix_rule else (),
        possible_lengths=frozenset(lengths),
    )


def _impossible_length(candidate: str, country: str) -> bool:
    """True only when ``phonenumbers`` would certainly not find a possible number in ``candidate``.

    For an ASCII digit string that carries no international prefix and does not start with the
    country's calling code, ``phonenumbers.parse`` keeps the default country and at most strips one
    literal national prefix, so the national significant number is the string itself or the string
    less that prefix; when neither length is a possible length of the country, neither is valid.
    Anything else (``+``, IDD, calling code, regex or transforming prefix rules) answers False.
    """
    if len(candidate) < MIN_NUMBER_DIGITS:
        return True  # to_e164 skips candidates this short without asking phonenumbers
    if not (candidate.isascii() and candidate.isdigit()):
        return False
    plan = numbering_plan(country)
    if plan is None or candidate.startswith(plan.country_code):
        return False
    if plan.idd is not None and plan.idd.match(candidate):
        return False
    lengths = {len(candidate)}
    for prefix in plan.national_prefixes:
        if candidate.startswith(prefix):
            lengths.add(len(candidate) - len(prefix))
            break
    return not lengths & plan.possible_lengths


def parse_party(text: str | None, ctx: PbxContext) -> Party:
    """Classify a caller/callee field as extension, subject (E.164), withheld, none or redacted."""
    if text is None:
        return NONE_PARTY
    if len(text) > _PARTY_CACHE_MAX_TEXT:
        return _parse_party(text, ctx.country, ctx.dial_prefixes, ctx.extension_max_digits)
    return _parse_party_cached(text, ctx.country, ctx.dial_prefixes, ctx.extension_max_digits)


_PARTY_CACHE_MAX_TEXT = 80  # longer values are parsed every time instead of filling the cache


def _parse_party(text: str, country: str, dial_prefixes: tuple[str, ...], extension_max_digits: int) -> Party:
    value = text.strip()
    if not value:
        return NONE_PARTY
    if value.lower() in WITHHELD_WORDS:
        return WITHHELD_PARTY
    user, was_uri = _uri_user(value)
    if not user:
        return NONE_PARTY
    if user.lower() in WITHHELD_WORDS:
        return WITHHELD_PARTY
    compact = _SEPARATORS.sub("", user)
    if compact.startswith("\\+"):  # CUCM can write an escaped plus
        compact = compact[1:]
    if _DIGIT_STRING.fullmatch(compact):
        digit_count = len(compact) - compact.startswith("+")
        if not compact.startswith("+") and digit_count <= extension_max_digits:
            return Party(PartyKind.EXTENSION, user)
        e164 = _e164(compact, country, dial_prefixes, False)
        return Party(PartyKind.SUBJECT, e164) if e164 else REDACTED_PARTY
    if not was_uri and _EXTENSION_TEXT.fullmatch(user) and digit_count_of(user) < MIN_NUMBER_DIGITS:
        return Party(PartyKind.EXTENSION, user)
    return REDACTED_PARTY


_parse_party_cached = functools.lru_cache(maxsize=65_536)(_parse_party)

_ASCII_DIGITS = b"0123456789"


def digit_count_of(text: str) -> int:
    """Number of decimal digits in ``text``, any script (fullwidth digits are still a phone number)."""
    if text.isascii():
        raw = text.encode("ascii")
        return len(raw) - len(raw.translate(None, _ASCII_DIGITS))
    return sum(map(str.isdecimal, text))


def clid_number(clid: str | None) -> str | None:
    """The number of an Asterisk ``"Name" <number>`` caller ID; the name is dropped, never returned."""
    if not clid:
        return None
    match = _CLID_NUMBER.search(clid)
    if match:
        return match.group(1).strip() or None
    text = clid.strip()
    # A bare clid is either a number or a name; only a number-looking value is returned.
    return text if _DIGIT_STRING.fullmatch(_SEPARATORS.sub("", text)) else None


# ----------------------------------------------------------------------------------------------- times

_LOCAL_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?")
_EPOCH = re.compile(r"(\d{1,12})(?:\.(\d{1,9}))?")
_MAX_EPOCH = 253402300799  # 9999-12-31T23:59:59Z
_EPOCH_START = datetime(1970, 1, 1, tzinfo=UTC)


def localise(
    year: int, month: int, day: int, hour: int, minute: int, second: int, microsecond: int, tz: ZoneInfo
) -> datetime:
    """UTC instant of a wall-clock time in ``tz``: gap times shift forward, overlaps take fold=0."""
    local = datetime(year, month, day, hour, minute, second, microsecond, tzinfo=tz, fold=0)
    return local.astimezone(UTC)


def parse_local_time(text: str, tz: ZoneInfo) -> datetime:
    """Parse ``YYYY-MM-DD HH:MM:SS[.ffffff]`` written in ``tz`` into a UTC datetime (ValueError if bad)."""
    value = text.strip()
    match = _LOCAL_TIME.fullmatch(value)
    if not match:
        raise ValueError("not a local time")
    y, mo, d, h, mi, s, frac = match.groups()
    micro = int((frac or "0").ljust(6, "0"))
    try:
        return localise(int(y), int(mo), int(d), int(h), int(mi), int(s), micro, tz)
    except (ValueError, OverflowError):
        raise ValueError("not a valid local time") from None


def epoch_to_utc(value: str | int) -> datetime | None:
    """UTC datetime of epoch seconds (fraction allowed); 0 -> None; ValueError if not an epoch."""
    text = str(value).strip()
    if text.isascii() and text.isdigit() and len(text) <= 12:  # the common shape, no regex
        whole = int(text)
        if whole == 0:
            return None
        if whole > _MAX_EPOCH:
            raise ValueError("epoch seconds out of range")
        return _EPOCH_START + timedelta(seconds=whole)
    match = _EPOCH.fullmatch(text)
    if not match:
        raise ValueError("not epoch seconds")
    seconds = int(match.group(1))
    micro = int((match.group(2) or "0")[:6].ljust(6, "0"))
    if seconds == 0 and micro == 0:
        return None
    if seconds > _MAX_EPOCH:
        raise ValueError("epoch seconds out of range")
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds, microseconds=micro)


def epoch_us_to_utc(value: str) -> datetime | None:
    """UTC datetime of epoch microseconds (FreeSWITCH ``*_uepoch``, callflow times); 0 -> None."""
    text = value.strip()
    if not text.isdigit() or len(text) > 18:
        raise ValueError("not epoch microseconds")
    micros = int(text)
    if micros == 0:
        return None
    if micros // 1_000_000 > _MAX_EPOCH:
        raise ValueError("epoch microseconds out of range")
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


def parse_pbx_time(text: str, tz: ZoneInfo) -> datetime | None:
    """A time field as Asterisk-style PBXs write it: empty -> None, epoch seconds (UTC) or local time."""
    value = text.strip()
    if not value:
        return None
    if _EPOCH.fullmatch(value):
        return epoch_to_utc(value)
    return parse_local_time(value, tz)


# -------------------------------------------------------------------------------------------- outcomes

_DISPOSITION_TEXT = {
    "ANSWERED": Disposition.ANSWERED,
    "ANSWER": Disposition.ANSWERED,
    "NO ANSWER": Disposition.NO_ANSWER,
    "NOANSWER": Disposition.NO_ANSWER,
    "BUSY": Disposition.BUSY,
    "FAILED": Disposition.FAILED,
    "CONGESTION": Disposition.CONGESTION,
    "CANCEL": Disposition.CANCEL,
    "CANCELLED": Disposition.CANCEL,
    "CANCELED": Disposition.CANCEL,
    "UNKNOWN": Disposition.UNKNOWN,
}


def disposition_from_text(text: str | None) -> Disposition:
    """Asterisk disposition text ("ANSWERED", "NO ANSWER", ...) -> Disposition; unknown -> UNKNOWN."""
    if not text:
        return Disposition.UNKNOWN
    key = " ".join(text.strip().upper().replace("_", " ").split())
    return _DISPOSITION_TEXT.get(key, Disposition.UNKNOWN)


# FreeSWITCH switch_call_cause_t: Q.850 codes below 128, FreeSWITCH's own codes above.
FREESWITCH_CAUSES: dict[str, int] = {
    "NONE": 0,
    "UNSPECIFIED": 0,
    "UNALLOCATED_NUMBER": 1,
    "NO_ROUTE_TRANSIT_NET": 2,
    "NO_ROUTE_DESTINATION": 3,
    "CHANNEL_UNACCEPTABLE": 6,
    "CALL_AWARDED_DELIVERED": 7,
    "NORMAL_CLEARING": 16,
    "USER_BUSY": 17,
    "NO_USER_RESPONSE": 18,
    "NO_ANSWER": 19,
    "SUBSCRIBER_ABSENT": 20,
    "CALL_REJECTED": 21,
    "NUMBER_CHANGED": 22,
    "REDIRECTION_TO_NEW_DESTINATION": 23,
    "EXCHANGE_ROUTING_ERROR": 25,
    "DESTINATION_OUT_OF_ORDER": 27,
    "INVALID_NUMBER_FORMAT": 28,
    "FACILITY_REJECTED": 29,
    "RESPONSE_TO_STATUS_ENQUIRY": 30,
    "NORMAL_UNSPECIFIED": 31,
    "NORMAL_CIRCUIT_CONGESTION": 34,
    "NETWORK_OUT_OF_ORDER": 38,
    "NORMAL_TEMPORARY_FAILURE": 41,
    "SWITCH_CONGESTION": 42,
    "ACCESS_INFO_DISCARDED": 43,
    "REQUESTED_CHAN_UNAVAIL": 44,
    "PRE_EMPTED": 45,
    "FACILITY_NOT_SUBSCRIBED": 50,
    "OUTGOING_CALL_BARRED": 52,
    "INCOMING_CALL_BARRED": 54,
    "BEARERCAPABILITY_NOTAUTH": 57,
    "BEARERCAPABILITY_NOTAVAIL": 58,
    "SERVICE_UNAVAILABLE": 63,
    "BEARERCAPABILITY_NOTIMPL": 65,
    "CHAN_NOT_IMPLEMENTED": 66,
    "FACILITY_NOT_IMPLEMENTED": 69,
    "SERVICE_NOT_IMPLEMENTED": 79,
    "INVALID_CALL_REFERENCE": 81,
    "INCOMPATIBLE_DESTINATION": 88,
    "INVALID_MSG_UNSPECIFIED": 95,
    "MANDATORY_IE_MISSING": 96,
    "MESSAGE_TYPE_NONEXIST": 97,
    "WRONG_MESSAGE": 98,
    "IE_NONEXIST": 99,
    "INVALID_IE_CONTENTS": 100,
    "WRONG_CALL_STATE": 101,
    "RECOVERY_ON_TIMER_EXPIRE": 102,
    "MANDATORY_IE_LENGTH_ERROR": 103,
    "PROTOCOL_ERROR": 111,
    "INTERWORKING": 127,
    "SUCCESS": 142,
    "ORIGINATOR_CANCEL": 487,
    "CRASH": 500,
    "SYSTEM_SHUTDOWN": 501,
    "LOSE_RACE": 502,
    "MANAGER_REQUEST": 503,
    "BLIND_TRANSFER": 600,
    "ATTENDED_TRANSFER": 601,
    "ALLOTTED_TIMEOUT": 602,
    "USER_CHALLENGE": 603,
    "MEDIA_TIMEOUT": 604,
    "PICKED_OFF": 605,
    "USER_NOT_REGISTERED": 606,
    "PROGRESS_TIMEOUT": 607,
    "INVALID_GATEWAY": 608,
    "GATEWAY_DOWN": 609,
    "INVALID_URL": 610,
    "INVALID_PROFILE": 611,
    "NO_PICKUP": 612,
    "SRTP_READ_ERROR": 613,
}

# Outcome of a call that was never answered, by cause. Everything not listed is FAILED.
_UNANSWERED_OUTCOME: dict[int, Disposition] = {
    16: Disposition.NO_ANSWER,  # normal clearing before answer: the caller gave up or the callee never took it
    18: Disposition.NO_ANSWER,  # no user responding
    19: Disposition.NO_ANSWER,  # no answer from user (user alerted)
    31: Disposition.NO_ANSWER,  # normal, unspecified
    17: Disposition.BUSY,  # user busy
    21: Disposition.BUSY,  # call rejected (SIP 603 Decline); Asterisk also reports BUSY
    34: Disposition.CONGESTION,  # no circuit/channel available
    42: Disposition.CONGESTION,  # switching equipment congestion
    487: Disposition.CANCEL,  # FreeSWITCH ORIGINATOR_CANCEL (SIP 487 Request Terminated)
    502: Disposition.CANCEL,  # FreeSWITCH LOSE_RACE: another leg of a ring group answered
    605: Disposition.CANCEL,  # FreeSWITCH PICKED_OFF: picked up at another phone
    602: Disposition.NO_ANSWER,  # FreeSWITCH ALLOTTED_TIMEOUT (ring timeout)
    607: Disposition.NO_ANSWER,  # FreeSWITCH PROGRESS_TIMEOUT
    612: Disposition.NO_ANSWER,  # FreeSWITCH NO_PICKUP
}


def cause_from_name(name: str | None) -> int | None:
    """FreeSWITCH hangup cause name (or a numeric string) -> cause code; None if unknown/empty."""
    if not name:
        return None
    text = name.strip().upper()
    if text.isdigit() and len(text) <= 9:
        return int(text)
    return FREESWITCH_CAUSES.get(text)


def disposition_from_cause(cause: int | None, *, answered: bool) -> Disposition:
    """Disposition of a call from its Q.850/FreeSWITCH cause: answered calls are always ANSWERED.

    Unanswered: 16/18/19/31 and ring timeouts -> NO_ANSWER; 17 and 21 (rejected) -> BUSY;
    34/42 -> CONGESTION; 487 ORIGINATOR_CANCEL, 502 LOSE_RACE, 605 PICKED_OFF -> CANCEL;
    no cause (None or 0) -> UNKNOWN; any other cause -> FAILED.
    """
    if answered:
        return Disposition.ANSWERED
    if not cause:
        return Disposition.UNKNOWN
    return _UNANSWERED_OUTCOME.get(cause, Disposition.FAILED)


# ------------------------------------------------------------------------------------------ directions

_DIRECTION_TEXT = {
    "inbound": Direction.INBOUND,
    "incoming": Direction.INBOUND,
    "outbound": Direction.OUTBOUND,
    "outgoing": Direction.OUTBOUND,
    "internal": Direction.INTERNAL,
    "local": Direction.INTERNAL,
    "unknown": Direction.UNKNOWN,
}
_EXTERNAL_CALLERS = frozenset({PartyKind.SUBJECT, PartyKind.WITHHELD, PartyKind.REDACTED})
_EXTERNAL_CALLEES = frozenset({PartyKind.SUBJECT, PartyKind.REDACTED})


def direction_from_text(text: str | None) -> Direction | None:
    """A call direction written by the PBX ("inbound", "outbound", "local", ...), None if absent/unknown."""
    if not text:
        return None
    return _DIRECTION_TEXT.get(text.strip().lower())


def infer_direction(caller: Party, callee: Party) -> Direction:
    """Direction from the parties: ext->ext internal, ext->external outbound, external->ext inbound."""
    if caller.kind is PartyKind.EXTENSION:
        if callee.kind is PartyKind.EXTENSION:
            return Direction.INTERNAL
        if callee.kind in _EXTERNAL_CALLEES:
            return Direction.OUTBOUND
    elif caller.kind in _EXTERNAL_CALLERS and callee.kind is PartyKind.EXTENSION:
        return Direction.INBOUND
    return Direction.UNKNOWN


# ------------------------------------------------------------------------------------------ dedupe keys


def dedupe_key(*parts: str | bytes) -> str:
    """SHA-256 hex over length-prefixed parts (str as UTF-8): the idempotency key of a record."""
    chunks: list[bytes] = []
    for part in parts:
        data = part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part
        chunks += (len(data).to_bytes(8, "big"), data)
    return hashlib.sha256(b"".join(chunks)).hexdigest()


# ----------------------------------------------------------------------------------------------- bodies

_UTF8_BOM = b"\xef\xbb\xbf"


def media_type(content_type: str | None) -> str:
    """The bare, lower-case media type of a Content-Type header ("" when absent)."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def require_media_type(content_type: str | None, allowed: frozenset[str], format_name: str) -> str:
    """Return the media type, or raise UnsupportedMediaTypeError if ``format_name`` cannot come in it."""
    kind = media_type(content_type)
    if kind not in allowed:
        accepted = ", ".join(sorted(a for a in allowed if a))
        raise UnsupportedMediaTypeError(f"{format_name} bodies must be sent as one of: {accepted}")
    return kind


def split_lines(body: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, line bytes without CR/LF) for every non-blank line of ``body``."""
    if body.startswith(_UTF8_BOM):
        body = body[len(_UTF8_BOM) :]
    for number, line in enumerate(body.split(b"\n"), start=1):
        if line.endswith(b"\r"):
            line = line[:-1]
        if line.strip():
            yield number, line


def decode_line(raw: bytes) -> str:
    """Decode one line as UTF-8, or reject that line (never the whole body)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RecordRejected("line is not valid UTF-8") from None


def parse_count(text: str, field_name: str) -> int:
    """A non-negative integer field (seconds, positions) or a reject naming the field."""
    value = text.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise RecordRejected(f"{field_name}: not a non-negative integer")
    return int(value)


INT32_MAX = 2**31 - 1


def optional_count(text: str | None, maximum: int = INT32_MAX) -> int | None:
    """A non-negative integer up to ``maximum`` if ``text`` is one, else None (lenient typed extras)."""
    if text is None:
        return None
    value = text.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        return None
    number = int(value)
    return number if number <= maximum else None

"""Shortcuts of ``Pseudonymiser`` give what the policy gave without them.

References below are the policy as it was before the shortcuts: ``identifier`` without its letter
check, ``extra_json`` scrubbing every key and value on every call (no whole-``extra`` cache).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import policy
from ingest.normalise import MIN_NUMBER_DIGITS, digit_count_of, to_e164
from ingest.policy import EXTRA_POLICY, REDACTED, Action, Pseudonymiser
from tests.ingest import MemorySubjectTokens, make_ctx

CTX = make_ctx(dial_prefixes=("9",))
EXAMPLES = settings(
    max_examples=int(os.environ.get("INGEST_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# digits of several scripts, separators, letters, plus signs and drama numbers
pieces = st.sampled_from(
    [
        *("0", "7", "9", "+", " ", "-", ".", "(", ")", "\t", "a", "F", "x", "é", "٣", "７", "_", "/", "@", ":", "%"),
        *("07700 900123", "+44 20 7946 0321", "020 7946 0123", "sofia/external/", "2025-03-04 14:05:09"),
    ]
)
texts = st.lists(pieces, max_size=10).map("".join)


def reference_identifier(text: str) -> str:
    """KEEP for string ids, as the policy wrote it before the letter shortcut."""
    if digit_count_of(text) < MIN_NUMBER_DIGITS:
        return text
    compact = policy._SEPARATORS.sub("", text.strip())
    if policy._WHOLE_NUMBER.fullmatch(compact) and to_e164(compact, CTX) is not None:
        return REDACTED
    return text


def reference_extra_json(pseudonymiser: Pseudonymiser, extra: dict[str, str]) -> str | None:
    """``extra_json`` without the cache: every key and value scrubbed."""
    kept = {
        pseudonymiser.scrub(key): pseudonymiser.scrub(value)
        for key, value in extra.items()
        if EXTRA_POLICY.get(key, Action.SCRUB) is not Action.DROP
    }
    return policy._extra_json_text(tuple(kept.items())) if kept else None


@EXAMPLES
@given(texts)
def test_identifier_equals_the_reference(text: str) -> None:
    assert Pseudonymiser(CTX, MemorySubjectTokens()).identifier(text) == reference_identifier(text)


@EXAMPLES
@given(texts)
def test_scrub_is_the_same_from_the_cache(text: str) -> None:
    tokens = MemorySubjectTokens()
    first = Pseudonymiser(CTX, tokens).scrub(text)
    assert Pseudonymiser(CTX, tokens).scrub(text) == first
    assert policy.scrub_text(text, CTX, tokens) == first


extras = st.dictionaries(
    st.sampled_from(["hangup_cause", "clid", "cnam", "bridge_uuid", "last_bridge_to"]) | texts, texts, max_size=5
)


@EXAMPLES
@given(extras)
def test_extra_json_equals_the_reference_on_every_call(extra: dict[str, str]) -> None:
    tokens = MemorySubjectTokens()
    expected = reference_extra_json(Pseudonymiser(CTX, tokens), extra)
    for _ in range(3):  # the first call may fill the cache, the next ones may read it
        assert Pseudonymiser(CTX, tokens).extra_json(extra) == expected


def test_extra_json_with_a_number_takes_the_current_token() -> None:
    extra = {"last_bridge_to": "sofia/gateway/trunk/02079460123", "hangup_cause": "NORMAL_CLEARING"}
    tokens = MemorySubjectTokens()
    first = Pseudonymiser(CTX, tokens).extra_json(extra)
    assert first is not None
    assert "sub_tok0001x" in first
    tokens.tokens[("acme", "+442079460123")] = "sub_new"  # erased and seen again: a new token
    second = Pseudonymiser(CTX, tokens).extra_json(extra)
    assert second is not None
    assert "sub_new" in second
    assert "sub_tok0001x" not in second


def test_extra_json_of_dropped_fields_is_none_from_the_cache() -> None:
    pseudonymiser = Pseudonymiser(CTX, MemorySubjectTokens())
    assert pseudonymiser.extra_json({"clid": "Jane"}) is None
    assert pseudonymiser.extra_json({"clid": "Jane"}) is None
    assert pseudonymiser.extra_json({}) is None


def test_bounded_cache_keeps_at_most_two_generations() -> None:
    cache: policy._BoundedCache[int, int] = policy._BoundedCache(4)
    for n in range(20):
        cache.put(n, n * 10)
        assert cache.get(n) == n * 10
    assert len(cache._young) + len(cache._old) <= 2 * 5
    assert cache.get(0) is None
    assert cache.get(19) == 190

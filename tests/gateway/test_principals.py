"""A PBX's Asterisk CSV profile is validated against the parser's own column names."""

from __future__ import annotations

import pytest

from gateway.errors import BadRequestError
from gateway.principals import ASTERISK_COLUMNS, parse_csv_columns
from ingest.formats.asterisk_csv import PROFILES_BY_FIELD_COUNT


@pytest.mark.parametrize("spec", [None, "", "auto", " AUTO "])
def test_auto_profile(spec: str | None) -> None:
    assert parse_csv_columns(spec) is None


def test_every_parser_profile_is_accepted() -> None:
    for profile in PROFILES_BY_FIELD_COUNT.values():
        assert parse_csv_columns(",".join(profile)) == profile
    assert len(ASTERISK_COLUMNS) == 21


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("accountcode,src,bogus", "unknown"),
        (",".join(reversed(PROFILES_BY_FIELD_COUNT[16])), "first 16 columns"),
    ],
)
def test_bad_profiles_are_refused(spec: str, message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        parse_csv_columns(spec)

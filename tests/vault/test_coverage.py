"""ByteRanges against a bytearray oracle, plus the shapes SFTP clients actually produce."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault.coverage import ByteRanges

SIZE = 512

ranges_strategy = st.lists(
    st.tuples(st.integers(min_value=0, max_value=SIZE + 16), st.integers(min_value=0, max_value=SIZE // 2)),
    max_size=60,
)


def _oracle_intervals(seen: bytearray) -> list[tuple[int, int]]:
    intervals: list[tuple[int, int]] = []
    start = None
    for index, flag in enumerate([*seen, 0]):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            intervals.append((start, index))
            start = None
    return intervals


@settings(max_examples=300, deadline=None)
@given(ranges=ranges_strategy, size=st.integers(min_value=0, max_value=SIZE))
def test_matches_a_bytearray_oracle(ranges: list[tuple[int, int]], size: int) -> None:
    covered = ByteRanges()
    seen = bytearray(SIZE + 16 + SIZE // 2)
    for offset, length in ranges:
        covered.add(offset, length)
        seen[offset : offset + length] = b"\x01" * length
        assert list(covered) == _oracle_intervals(seen)
        assert covered.total == sum(seen)
        assert covered.covered(size) == all(seen[:size])


@settings(max_examples=100, deadline=None)
@given(ranges=ranges_strategy, seed=st.randoms(use_true_random=False))
def test_order_of_reads_does_not_matter(ranges: list[tuple[int, int]], seed: random.Random) -> None:
    forward, shuffled = ByteRanges(), ByteRanges()
    for offset, length in ranges:
        forward.add(offset, length)
    reordered = list(ranges)
    seed.shuffle(reordered)
    for offset, length in reordered:
        shuffled.add(offset, length)
    assert list(forward) == list(shuffled)


def test_thousands_of_out_of_order_32k_reads_cover_the_file_only_when_all_arrive() -> None:
    chunk, count = 32 * 1024, 4096  # a 128 MiB recording
    size = chunk * count - 100  # the last read is short
    offsets = list(range(0, size, chunk))
    random.Random(7).shuffle(offsets)
    covered = ByteRanges()
    missing = offsets.pop(len(offsets) // 2)
    for offset in offsets:
        covered.add(offset, min(chunk, size - offset))
    assert not covered.covered(size)
    assert len(covered) == 2
    covered.add(missing, min(chunk, size - missing))
    assert covered.covered(size)
    assert list(covered) == [(0, size)]


def test_reading_the_first_half_twice_does_not_cover_the_file() -> None:
    covered = ByteRanges()
    covered.add(0, 50)
    covered.add(0, 50)
    assert covered.total == 50
    assert not covered.covered(100)
    covered.add(50, 50)
    assert covered.covered(100)


def test_adjacent_reads_merge_and_empty_reads_change_nothing() -> None:
    covered = ByteRanges()
    covered.add(10, 0)
    assert list(covered) == []
    covered.add(0, 10)
    covered.add(20, 10)
    covered.add(10, 10)
    assert list(covered) == [(0, 30)]


def test_an_empty_file_is_always_covered() -> None:
    assert ByteRanges().covered(0)
    assert not ByteRanges().covered(1)


@pytest.mark.parametrize(("offset", "length"), [(-1, 5), (0, -1)])
def test_negative_ranges_are_refused(offset: int, length: int) -> None:
    with pytest.raises(ValueError, match="negative"):
        ByteRanges().add(offset, length)


def test_negative_size_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        ByteRanges().covered(-1)

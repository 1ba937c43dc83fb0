"""Which bytes of a recording a client has actually been sent.

The SFTP server records every successful read as ``add(offset, length)`` and asks ``covered(size)``
when a handle closes: a recording is released for destruction only once every byte from 0 to its
size has been returned at least once. Ranges are kept as a sorted list of disjoint, non-touching
half-open intervals, so thousands of 32 KiB reads arriving out of order merge into one interval as
soon as the gaps fill, and each ``add`` costs a binary search plus a splice of the merged span.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator


class ByteRanges:
    """A set of byte offsets stored as merged ``[start, end)`` intervals."""

    __slots__ = ("_ends", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, offset: int, length: int) -> None:
        """Mark ``length`` bytes from ``offset`` as seen, merging overlapping or adjacent intervals."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        if length == 0:
            return
        start, end = offset, offset + length
        # Intervals i..j-1 overlap or touch [start, end): their end >= start and their start <= end.
        i = bisect_left(self._ends, start)
        j = bisect_right(self._starts, end)
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def covered(self, size: int) -> bool:
        """Whether every byte in ``[0, size)`` has been added; an empty range is always covered."""
        if size < 0:
            raise ValueError("size must not be negative")
        if size == 0:
            return True
        return bool(self._starts) and self._starts[0] == 0 and self._ends[0] >= size

    @property
    def total(self) -> int:
        """How many distinct bytes have been added."""
        return sum(end - start for start, end in zip(self._starts, self._ends, strict=True))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """The merged intervals as ``(start, end)`` pairs, in order."""
        return iter(list(zip(self._starts, self._ends, strict=True)))

    def __len__(self) -> int:
        """How many disjoint intervals are held."""
        return len(self._starts)

    def __repr__(self) -> str:
        return f"ByteRanges({list(self)!r})"

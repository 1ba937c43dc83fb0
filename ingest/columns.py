"""Arrow helpers for the column-wise ingest paths (a large Master.csv body parsed as one Arrow table).

The column-wise paths compute exactly what the record-by-record code computes: vectorised Arrow kernels
do the work where their result is provably the same, and the record-by-record functions are called once
per *distinct* value for everything else (``map_distinct``). Rows that need the full per-record code
are sent there by the callers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc

Column: TypeAlias = Any  # a pyarrow Array or ChunkedArray (pyarrow ships no type information)

# What ``str.strip()`` removes from ASCII text (the column-wise paths only take ASCII rows).
ASCII_STRIP = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"


def as_array(column: Column) -> pa.Array:
    """One contiguous array."""
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def strip(column: Column) -> pa.Array:
    """``str.strip()`` of every value of an ASCII string column."""
    return as_array(pc.utf8_trim(column, characters=ASCII_STRIP))


def empty_to_null(column: Column) -> pa.Array:
    """Empty strings become nulls (``text or None``)."""
    array = as_array(column)
    return pc.if_else(pc.equal(pc.utf8_length(array), 0), pa.scalar(None, array.type), array)


def map_distinct(
    column: Column, function: Callable[[Any], Any], out_type: pa.DataType, where: Column | None = None
) -> pa.Array:
    """``function`` of each value, called once per distinct value; nulls stay null.

    With ``where`` (a boolean mask without nulls), only those rows are mapped and the others keep their
    value (``out_type`` must then be the column's type).
    """
    array = as_array(column)
    if where is None:
        encoded = array.dictionary_encode()
        mapped = pa.array([function(value) for value in encoded.dictionary.to_pylist()], out_type)
        return mapped.take(encoded.indices)
    where = as_array(where)
    rows = pc.indices_nonzero(where)
    if len(rows) == 0:
        return array
    encoded = array.take(rows).dictionary_encode()
    mapped = pa.array([function(value) for value in encoded.dictionary.to_pylist()], out_type)
    return pc.replace_with_mask(array, where, mapped.take(encoded.indices))


def false_mask(length: int) -> pa.Array:
    """A boolean array of ``length`` False values."""
    return constant(False, length, pa.bool_())


def constant(value: Any, length: int, type_: pa.DataType) -> pa.Array:
    """``length`` copies of ``value`` (None gives nulls)."""
    nulls = pa.nulls(length, type_)
    return nulls if value is None else nulls.fill_null(pa.scalar(value, type_))


class DistinctCache:
    """``function`` of string values, remembered across calls as Arrow arrays, so that a lookup is one kernel.

    For a pure function of a string (a party's parse in one numbering plan): the values of a column
    already seen are looked up with ``index_in``, and only the new distinct values are passed to
    ``function``. Holds about ``max_entries`` values (then starts again from the last column's values).
    Thread-safe: a call works on a snapshot and publishes the grown arrays under a lock.
    """

    def __init__(self, function: Callable[[Any], Any], out_type: pa.DataType, max_entries: int = 65_536) -> None:
        self._function = function
        self._out_type = out_type
        self._max_entries = max_entries
        self._keys = pa.array([], pa.string())
        self._values = pa.array([], out_type)
        self._lock = threading.Lock()

    def map(self, column: Column) -> pa.Array:
        """``function`` of every value of a string column (nulls stay null), as ``map_distinct`` would give."""
        array = as_array(column)
        with self._lock:
            keys, values = self._keys, self._values
        index = pc.index_in(array, value_set=keys)
        missing = pc.and_(pc.is_null(index), pc.is_valid(array))
        if pc.any(missing).as_py():
            fresh = pc.unique(array.filter(missing))
            mapped = pa.array([self._function(value) for value in fresh.to_pylist()], self._out_type)
            if len(keys) + len(fresh) > self._max_entries:  # start over from this column's values
                seen = pc.unique(array.filter(pc.is_valid(index)))
                keys, values = seen, values.take(pc.index_in(seen, value_set=keys))
                index = None
            else:  # the new values go after the old ones: only they need looking up again
                fresh_index = pc.add(pc.cast(pc.index_in(array, value_set=fresh), pa.int64()), len(keys))
                index = pc.coalesce(pc.cast(index, pa.int64()), fresh_index)
            keys, values = pa.concat_arrays([keys, fresh]), pa.concat_arrays([values, mapped])
            with self._lock:
                self._keys, self._values = keys, values
            if index is None:
                index = pc.index_in(array, value_set=keys)
        return values.take(index)

"""Arrow helpers for the column-wise ingest paths (a large Master.csv body parsed as one Arrow table).

The column-wise paths compute exactly what the record-by-record code computes: vectorised Arrow kernels
do the work where their result is provably the same, and the record-by-record functions are called once
per *distinct* value for everything else (``map_distinct``). Rows that need the full per-record code
are sent there by the callers.
"""

from __future__ import annotations

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

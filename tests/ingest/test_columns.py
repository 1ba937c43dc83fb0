"""Arrow helpers of the column-wise paths: they must give what a per-value call gives."""

from __future__ import annotations

import random

import pyarrow as pa

from ingest.columns import DistinctCache, map_distinct


def shout(value: str) -> str:
    return value.upper() + "!"


def test_distinct_cache_equals_map_distinct_across_calls() -> None:
    rng = random.Random(3)
    calls: list[str] = []

    def counted(value: str) -> str:
        calls.append(value)
        return shout(value)

    cache = DistinctCache(counted, pa.string(), max_entries=50)
    for _ in range(30):
        values = [rng.choice([None, "", "a", "b", *(f"v{n}" for n in range(60))]) for _ in range(rng.randint(0, 200))]
        column = pa.array(values, pa.string())
        assert cache.map(column).to_pylist() == map_distinct(column, shout, pa.string()).to_pylist()
        chunked = pa.chunked_array([column, column], pa.string())
        assert cache.map(chunked).to_pylist() == [None if v is None else shout(v) for v in values * 2]
    assert len(calls) < 30 * 62  # seen values are not asked again (unless the cache started over)


def test_distinct_cache_calls_once_per_new_value() -> None:
    calls: list[str] = []
    cache = DistinctCache(lambda value: calls.append(value) or len(value), pa.int64())
    assert cache.map(pa.array(["aa", "b", "aa", None], pa.string())).to_pylist() == [2, 1, 2, None]
    assert cache.map(pa.array(["b", "ccc", "aa"], pa.string())).to_pylist() == [1, 3, 2]
    assert calls == ["aa", "b", "ccc"]

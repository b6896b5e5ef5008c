"""Tier 1: the uncompressed page cache, an LRU of pages keyed by (file id, page index).

`Tier` is an LRU (OrderedDict) with a per-file index of page numbers, so dropping one
file, or a range of it, costs time proportional to that file's pages, not the cache.
The cache layer (cache.py) uses one Tier for tier 1 and one for the pages evicted from
it that wait for compression.

Pure core: must not import pyfuse3, trio or psutil. Not thread-safe (trio thread only).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Generic, TypeVar

V = TypeVar("V")
Key = tuple[int, int]


class Tier(Generic[V]):
    """An LRU of values by (fid, index) with a per-file index."""

    def __init__(self) -> None:
        self.items: OrderedDict[Key, V] = OrderedDict()
        self.by_file: dict[int, set[int]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def get(self, key: Key) -> V | None:
        """The value, marked most recently used; None on a miss."""
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def peek(self, key: Key) -> V | None:
        return self.items.get(key)

    def put(self, key: Key, value: V) -> None:
        """Insert or replace as most recently used."""
        items = self.items
        if key in items:
            items.move_to_end(key)
        else:
            self.by_file.setdefault(key[0], set()).add(key[1])
        items[key] = value

    def pop(self, key: Key) -> V | None:
        value = self.items.pop(key, None)
        if value is not None:
            self._unindex(key)
        return value

    def pop_oldest(self) -> tuple[Key, V]:
        key, value = self.items.popitem(last=False)
        self._unindex(key)
        return key, value

    def oldest(self, n: int) -> list[tuple[Key, V]]:
        """Up to n least recently used items, without removing them."""
        out: list[tuple[Key, V]] = []
        for item in self.items.items():
            if len(out) >= n:
                break
            out.append(item)
        return out

    def _unindex(self, key: Key) -> None:
        pages = self.by_file[key[0]]
        pages.discard(key[1])
        if not pages:
            del self.by_file[key[0]]

    def pages_of(self, fid: int) -> set[int]:
        return self.by_file.get(fid, set())

    def drop(self, fid: int, indexes: Iterable[int]) -> int:
        """Remove the given pages of one file; returns how many were present."""
        n = 0
        for index in list(indexes):
            if self.items.pop((fid, index), None) is not None:
                self._unindex((fid, index))
                n += 1
        return n

    def drop_file(self, fid: int) -> int:
        return self.drop(fid, self.pages_of(fid))

    def clear(self) -> int:
        n = len(self.items)
        self.items.clear()
        self.by_file.clear()
        return n

"""Unit tests of tier 1's building block, `Tier` (pure core: no FUSE, no trio)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from zcachefs.pagecache import Key, Tier


class NoIterOrderedDict(OrderedDict[Any, Any]):
    """Fails the test if anything walks the whole mapping."""

    def __iter__(self) -> Any:
        raise AssertionError("iterated the whole LRU")

    def keys(self) -> Any:
        raise AssertionError("iterated the whole LRU")

    def items(self) -> Any:
        raise AssertionError("iterated the whole LRU")

    def values(self) -> Any:
        raise AssertionError("iterated the whole LRU")


class NoIterDict(dict[Any, Any]):
    def __iter__(self) -> Any:
        raise AssertionError("iterated every file")

    def keys(self) -> Any:
        raise AssertionError("iterated every file")

    def items(self) -> Any:
        raise AssertionError("iterated every file")

    def values(self) -> Any:
        raise AssertionError("iterated every file")


class Untouchable(set[int]):
    """The page set of a file that an operation on another file must not read."""

    def __iter__(self) -> Any:
        raise AssertionError("read the pages of another file")


def filled(n_files: int = 3, pages: int = 5) -> Tier[bytes]:
    tier: Tier[bytes] = Tier()
    for index in range(pages):
        for fid in range(1, n_files + 1):
            tier.put((fid, index), b"%d:%d" % (fid, index))
    return tier


def test_lru_order_and_get_refreshes() -> None:
    tier: Tier[str] = Tier()
    for i in range(4):
        tier.put((1, i), f"p{i}")
    assert tier.get((1, 0)) == "p0"  # now most recently used
    assert tier.peek((1, 1)) == "p1"  # peek does not refresh
    assert [k for k, _ in tier.oldest(10)] == [(1, 1), (1, 2), (1, 3), (1, 0)]
    assert tier.pop_oldest() == ((1, 1), "p1")
    assert tier.pages_of(1) == {0, 2, 3}


def test_put_replaces_and_refreshes() -> None:
    tier: Tier[str] = Tier()
    tier.put((1, 0), "old")
    tier.put((1, 1), "b")
    tier.put((1, 0), "new")
    assert len(tier) == 2
    assert tier.peek((1, 0)) == "new"
    assert tier.oldest(1) == [((1, 1), "b")]
    assert tier.pages_of(1) == {0, 1}


def test_miss_and_pop() -> None:
    tier: Tier[str] = Tier()
    assert tier.get((1, 0)) is None and tier.peek((1, 0)) is None
    assert tier.pop((1, 0)) is None
    tier.put((1, 0), "a")
    assert tier.pop((1, 0)) == "a"
    assert len(tier) == 0 and tier.by_file == {}
    with pytest.raises(KeyError):
        tier.pop_oldest()


def test_oldest_does_not_remove() -> None:
    tier = filled(1, 5)
    assert [k for k, _ in tier.oldest(3)] == [(1, 0), (1, 1), (1, 2)]
    assert tier.oldest(0) == []
    assert len(tier) == 5


def test_drop_pages_counts_present_only() -> None:
    tier = filled(2, 5)
    assert tier.drop(1, [0, 2, 4, 7, 9]) == 3
    assert tier.pages_of(1) == {1, 3}
    assert tier.pages_of(2) == {0, 1, 2, 3, 4}
    assert tier.drop(3, [0]) == 0


def test_drop_file_and_clear() -> None:
    tier = filled(3, 4)
    assert tier.drop_file(2) == 4
    assert tier.pages_of(2) == set() and 2 not in tier.by_file
    assert all(key[0] != 2 for key in tier.items)
    assert tier.drop_file(2) == 0
    assert tier.clear() == 8
    assert len(tier) == 0 and tier.by_file == {}


def test_drop_costs_only_the_files_pages() -> None:
    """Dropping a file or pages of it neither walks the LRU nor reads other files."""
    tier = filled(3, 50)
    tier.items = NoIterOrderedDict(tier.items)
    for fid in (1, 3):
        tier.by_file[fid] = Untouchable(tier.by_file[fid])
    tier.by_file = NoIterDict(tier.by_file)
    assert tier.drop(2, range(10, 20)) == 10
    assert tier.drop_file(2) == 40
    assert len(tier) == 100
    assert 2 not in tier.by_file


class TierMachine(RuleBasedStateMachine):
    """Tier against a list-based LRU model."""

    def __init__(self) -> None:
        super().__init__()
        self.tier: Tier[int] = Tier()
        self.model: list[tuple[Key, int]] = []  # oldest first
        self.n = 0

    def _find(self, key: Key) -> int | None:
        for i, (k, _) in enumerate(self.model):
            if k == key:
                return i
        return None

    keys = st.tuples(st.integers(1, 3), st.integers(0, 6))

    @rule(key=keys)
    def put(self, key: Key) -> None:
        self.n += 1
        self.tier.put(key, self.n)
        i = self._find(key)
        if i is not None:
            del self.model[i]
        self.model.append((key, self.n))

    @rule(key=keys)
    def get(self, key: Key) -> None:
        i = self._find(key)
        got = self.tier.get(key)
        if i is None:
            assert got is None
        else:
            item = self.model.pop(i)
            assert got == item[1]
            self.model.append(item)

    @rule(key=keys)
    def pop(self, key: Key) -> None:
        i = self._find(key)
        got = self.tier.pop(key)
        assert got == (None if i is None else self.model.pop(i)[1])

    @rule()
    def pop_oldest(self) -> None:
        if self.model:
            assert self.tier.pop_oldest() == self.model.pop(0)

    @rule(fid=st.integers(1, 3), indexes=st.lists(st.integers(0, 8), max_size=5))
    def drop(self, fid: int, indexes: list[int]) -> None:
        before = len(self.model)
        self.model = [(k, v) for k, v in self.model if not (k[0] == fid and k[1] in indexes)]
        assert self.tier.drop(fid, indexes) == before - len(self.model)

    @rule(fid=st.integers(1, 3))
    def drop_file(self, fid: int) -> None:
        before = len(self.model)
        self.model = [(k, v) for k, v in self.model if k[0] != fid]
        assert self.tier.drop_file(fid) == before - len(self.model)

    @invariant()
    def same_as_model(self) -> None:
        assert list(self.tier.items.items()) == self.model
        index: dict[int, set[int]] = {}
        for (fid, i), _ in self.model:
            index.setdefault(fid, set()).add(i)
        assert self.tier.by_file == index
        assert len(self.tier) == len(self.model)


TestTier = TierMachine.TestCase
TestTier.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)

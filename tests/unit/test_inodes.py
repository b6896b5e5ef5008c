"""Unit tests of the node id table (pure core)."""

from __future__ import annotations

from zcachefs.backing import Ref
from zcachefs.inodes import ROOT_NODEID, InodeTable


def table() -> InodeTable:
    return InodeTable(Ref(3, b"", -1), root_dev=10, root_ino=2, root_mode=0o40755)


def held(fd: int, gen: int = 0) -> Ref:
    return Ref(fd, b"h%d" % gen, -1)


def by_handle(gen: int = 0) -> Ref:
    return Ref(-1, b"h%d" % gen, 4)


def test_backing_ino_is_node_id_and_hard_links_share_it() -> None:
    t = table()
    a, extra = t.remember(held(5), dev=10, ino=1234, mode=0o100644)
    assert a.nodeid == 1234 and extra is None
    b, extra = t.remember(held(6), dev=10, ino=1234, mode=0o100644)
    assert b is a and extra == 6 and a.nlookup == 2
    c, extra = t.remember(by_handle(), dev=10, ino=1234, mode=0o100644)
    assert c is a and extra is None and a.nlookup == 3


def test_forget_releases_fd_only_at_zero() -> None:
    t = table()
    t.remember(held(5), 10, 99, 0)
    t.remember(held(6), 10, 99, 0)
    assert t.forget(99, 1) is None
    assert t.forget(99, 1) == 5
    assert t.get(99) is None
    n, extra = t.remember(by_handle(), 10, 99, 0)  # the number may come back after forget
    assert n.nodeid == 99 and extra is None
    assert t.forget(99, 1) is None  # nothing held for a handle


def test_other_devices_and_clashes_get_synthetic_ids() -> None:
    t = table()
    a, _ = t.remember(held(5), 10, 77, 0)
    b, _ = t.remember(held(6), 11, 77, 0)  # same ino on a submount
    c, _ = t.remember(held(7), 11, 1, 0)
    assert a.nodeid == 77
    assert b.nodeid >= 1 << 63 and c.nodeid >= 1 << 63 and b.nodeid != c.nodeid
    assert len({a.nodeid, b.nodeid, c.nodeid, ROOT_NODEID}) == 4


def test_root_is_never_forgotten() -> None:
    t = table()
    assert t.forget(ROOT_NODEID, 100) is None
    assert t[ROOT_NODEID] is t.root
    r, extra = t.remember(Ref(9, b"", -1), 10, 2, 0o40755)  # the root's backing inode
    assert r is t.root and extra == 9


def test_reused_inode_number_never_shares_the_old_node() -> None:
    t = table()
    old, _ = t.remember(by_handle(gen=1), 10, 500, 0)
    new, _ = t.remember(by_handle(gen=2), 10, 500, 0)  # deleted, number reused
    assert new is not old and new.nodeid != old.nodeid and new.nodeid >= 1 << 63
    assert t.forget(old.nodeid, 1) is None
    again, _ = t.remember(by_handle(gen=2), 10, 500, 0)
    assert again is new and new.nlookup == 2

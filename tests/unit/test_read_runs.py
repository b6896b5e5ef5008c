"""backing.read_runs: the pages of each run, byte-exact, from a reused per-thread buffer."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from zcachefs import backing

PS = 4096


def _file(tmp_path: Path, size: int) -> tuple[int, bytes]:
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY), data


def test_pages_of_each_run_are_exact_and_outlive_the_next_read(tmp_path: Path) -> None:
    fd, data = _file(tmp_path, 10 * PS + 100)  # the last page is short
    try:
        first, _ = backing.read_runs(fd, [(0, 2 * PS), (5 * PS, 3 * PS)], PS, True)
        # A second, larger read reuses (and grows past) the same buffer: the pages of
        # the first must not change.
        second, _ = backing.read_runs(fd, [(8 * PS, 4 * PS)], PS, True)
        big, _ = backing.read_runs(fd, [(0, len(data) + PS)], PS, False)
    finally:
        os.close(fd)
    assert [type(p) for run in first for p in run] == [bytes] * 5
    assert b"".join(first[0]) == data[:2 * PS]
    assert b"".join(first[1]) == data[5 * PS:8 * PS]
    assert [len(p) for p in second[0]] == [PS, PS, 100]  # short at the end of the file
    assert b"".join(second[0]) == data[8 * PS:]
    assert b"".join(big[0]) == data


def test_threads_do_not_share_a_buffer(tmp_path: Path) -> None:
    fd, data = _file(tmp_path, 64 * PS)
    errors: list[str] = []

    def reader(start: int) -> None:
        for _ in range(200):
            (pages,), _ = backing.read_runs(fd, [(start * PS, 8 * PS)], PS, True)
            if b"".join(pages) != data[start * PS:(start + 8) * PS]:
                errors.append(f"run at page {start} came back wrong")
                return

    threads = [threading.Thread(target=reader, args=(s,)) for s in (0, 8, 16, 24)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.close(fd)
    assert errors == []

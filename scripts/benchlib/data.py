"""The bench's data on disk: a copy of the user's files (--data), the file that fits in
the budget (equal slices of every data file), the pristine copy that undoes the
read/write workload, and the SHA-256 check at the end. Plain file I/O, one caller at a
time."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

MiB = 1 << 20


def copy_user_data(src: Path, dest: Path, size: int, log: Callable[[str], None],
                   manifest_path: Path) -> dict[str, Any]:
    """Copy regular files of at least 64 KiB from the user's directory (sorted, until
    `size` bytes): the benchmark writes into its copy, never into the user's data."""
    with contextlib.suppress(OSError, ValueError):
        old = json.loads(manifest_path.read_text())
        if old.get("source") == str(src) and old.get("requested_size") == size and all(
                (dest / f["name"]).stat().st_size == f["size"] for f in old["files"]):
            log(f"data: reusing the copy of {src} in {dest}")
            return old
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    files, total = [], 0
    for root, dirs, names in os.walk(src):
        dirs.sort()
        for name in sorted(names):
            p = Path(root, name)
            try:
                if not p.is_file() or p.is_symlink() or p.stat().st_size < 65536:
                    continue
            except OSError:
                continue
            rel = str(p.relative_to(src))
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256()
            with open(p, "rb") as fi, open(dest / rel, "wb") as fo:
                while block := fi.read(MiB):
                    h.update(block)
                    fo.write(block)
            n = (dest / rel).stat().st_size
            kind = p.suffix.lstrip(".").lower() or "noext"
            files.append({"name": rel, "kind": kind, "size": n, "sha256": h.hexdigest()})
            total += n
            if total >= size:
                break
        if total >= size:
            break
    if not files:
        raise SystemExit(f"bench: no file of at least 64 KiB in {src}")
    manifest = {"source": str(src), "requested_size": size, "size": total, "files": files}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    log(f"data: copied {len(files)} files, {total / MiB:.0f} MiB from {src}")
    return manifest


def build_fit(data: Path, files: list[dict[str, Any]], fit_size: int, out: Path) -> int:
    """A file of ~fit_size bytes made of equal page-aligned slices of every data file
    (the same mix as the whole set); rebuilt only when its recipe changes."""
    per = max(4096, fit_size // len(files) // 4096 * 4096)
    recipe = hashlib.sha256(json.dumps([per, [f["sha256"] for f in files]]).encode()).hexdigest()
    stamp = out.with_suffix(".recipe")
    if out.exists() and stamp.exists() and stamp.read_text() == recipe:
        return out.stat().st_size
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fo:
        for f in files:
            with open(data / f["name"], "rb") as fi:
                fo.write(fi.read(per))
    stamp.write_text(recipe)
    return out.stat().st_size


def sync_pristine(data: Path, pristine: Path, files: list[dict[str, Any]]) -> None:
    """A copy of the data to restore what the read/write workload overwrites."""
    for f in files:
        src, dst = data / f["name"], pristine / f["name"]
        if dst.exists() and dst.stat().st_size == f["size"]:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def verify(data: Path, files: list[dict[str, Any]]) -> list[str]:
    """Files whose SHA-256 no longer matches the manifest."""
    bad = []
    for f in files:
        h = hashlib.sha256()
        with open(data / f["name"], "rb") as fi:
            while block := fi.read(4 * MiB):
                h.update(block)
        if h.hexdigest() != f["sha256"]:
            bad.append(f["name"])
    return bad

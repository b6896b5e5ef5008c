#!/usr/bin/env python3
"""Deterministic, realistic data for the seed-replay benchmark (issue 5).

`gen_data.py OUTDIR --size 1.5G --seed 5 [--dataset mix|logs10]` writes a directory of
equally sized files. The default data set, `mix`, has eight kinds (logs, JSON lines,
prose, source code, binaries, SQLite databases, incompressible bytes and a disk image
made mostly of zero-filled pages). With them goes a MANIFEST.json with every file's
kind, size and SHA-256. The same seed and size give the same bytes on any machine with
the same SQLite library (its version is in the file header); each file has its own RNG,
so a file can be regenerated alone.

`--dataset logs10` is the second data set: log-like text in which 10% of the 64 KiB
chunks are random bytes (exactly one chunk in every ten, at a seeded place), i.e. the
case where most of the data compresses well and a tenth does not at all.
`write_lookup_db` and `write_logs` make the real-application benchmark's SQLite
database and log directory.

Why equal sizes: fio picks a file per I/O without weighing it by its size, so equal
files make a random read uniform over the bytes of the whole set.

The mix is tuned so that the overall LZ4 ratio on 4 KiB pages (each page compressed
alone, as zcachefs does) is near 2, and `--ratios` prints it per codec and per kind.
Zero-filled pages are written as data (not holes), so the plain directory has to read
them from the disk too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sqlite3
import struct
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

GENERATOR_VERSION = 1
PAGE = 4096
FILE_TARGET = 32 << 20  # bytes per file; at least MIN_FILES files
MIN_FILES = 16

# Share of the bytes per kind (sums to 1). Chosen so the whole set compresses ~2:1 with
# LZ4 on 4 KiB pages (measured by --ratios: logs ~3.3, json ~3.2, source ~2.6,
# text ~1.6, sqlite ~2.4, binary ~1.4, random 1.0, image ~8 because of its zero pages).
MIX: dict[str, float] = {
    "log": 0.18,
    "json": 0.12,
    "text": 0.14,
    "source": 0.12,
    "binary": 0.12,
    "sqlite": 0.10,
    "random": 0.14,
    "image": 0.08,
}
# The data sets `plan` knows: name -> share of the bytes per kind.
DATASETS: dict[str, dict[str, float]] = {"mix": MIX, "logs10": {"logs10": 1.0}}
EXT = {"logs10": "log", "log": "log", "json": "jsonl", "text": "txt", "source": "py",
       "binary": "bin", "sqlite": "sqlite", "random": "dat", "image": "img"}

_SYLLABLES = [
    "ka", "ri", "to", "ne", "ma", "su", "lo", "ve", "an", "en", "in", "on", "er", "al", "or",
    "is", "it", "at", "es", "de", "re", "co", "pro", "ex", "com", "ter", "tion", "ment", "ing",
    "ly", "ous", "able", "ful", "ness", "ish", "per", "sub", "pre", "dis", "ver",
]


def _vocabulary(rnd: random.Random, n: int) -> list[str]:
    words = set()
    while len(words) < n:
        words.add("".join(rnd.choice(_SYLLABLES) for _ in range(rnd.choice((1, 2, 2, 3, 3, 4)))))
    return sorted(words)


def _zipf_weights(n: int, s: float = 1.1) -> list[float]:
    acc, out = 0.0, []
    for i in range(1, n + 1):
        acc += 1.0 / i**s
        out.append(acc)
    return out


# -- one generator per kind: yields chunks of bytes forever ---------------------------

def gen_log(rnd: random.Random) -> Iterator[bytes]:
    levels = ("INFO", "INFO", "INFO", "INFO", "INFO", "DEBUG", "DEBUG", "WARN", "ERROR")
    comps = ("http", "http", "http", "db", "cache", "auth", "worker", "scheduler")
    paths = ("/api/v1/items/{}", "/api/v1/users/{}/orders", "/static/js/app.{}.js",
             "/healthz", "/api/v2/search?q=item{}&page=2", "/login", "/api/v1/carts/{}")
    msgs = ("query took {}ms rows={}", "connection {} returned to pool", "cache miss key=item:{}",
            "token refreshed for user {}", "job {} finished in {}ms", "retrying upstream {} "
            "after timeout", "slow request {} ms", "evicted {} entries")
    clients = [f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}"
               for _ in range(40)]
    t = 1_773_480_000.0 + rnd.randrange(86400 * 30)
    while True:
        out = []
        for _ in range(2000):
            t += rnd.expovariate(400.0)
            sec = int(t)
            stamp = (f"2026-03-{14 + sec // 86400 % 15:02d}T{sec // 3600 % 24:02d}:"
                     f"{sec // 60 % 60:02d}:{sec % 60:02d}.{int(t * 1000) % 1000:03d}Z")
            level = rnd.choice(levels)
            comp = rnd.choice(comps)
            if comp == "http":
                path = rnd.choice(paths).format(int(rnd.paretovariate(1.2)) % 5000)
                out.append(f"{stamp} {level:<5} [{comp}-{rnd.randrange(4)}] "
                           f"{rnd.choice(('GET', 'GET', 'GET', 'POST', 'PUT'))} {path} "
                           f"{rnd.choice((200, 200, 200, 200, 304, 404, 500))} "
                           f"{int(rnd.expovariate(0.1))}ms ip={rnd.choice(clients)} "
                           f"ua=\"Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0\"\n")
            else:
                msg = rnd.choice(msgs).format(rnd.randrange(100), rnd.randrange(100))
                out.append(f"{stamp} {level:<5} [{comp}-{rnd.randrange(4)}] {msg}\n")
        yield "".join(out).encode()


def gen_json(rnd: random.Random) -> Iterator[bytes]:
    words = _vocabulary(rnd, 3000)
    cum = _zipf_weights(len(words))
    tags = words[:40]
    countries = ("DE", "FR", "US", "GB", "JP", "BR", "IN", "NL", "SE", "CA")
    ident = rnd.randrange(1_000_000)
    while True:
        out = []
        for _ in range(1000):
            ident += rnd.randrange(1, 4)
            first, last = rnd.choices(words, cum_weights=cum, k=2)
            note = " ".join(rnd.choices(words[:200], cum_weights=cum[:200],
                                        k=rnd.randrange(0, 6)))
            out.append(
                f'{{"id": {ident}, "name": "{first.title()} {last.title()}", '
                f'"email": "{first}.{last}@example.com", '
                f'"plan": "{rnd.choice(("free", "pro"))}", '
                f'"country": "{rnd.choice(countries)}", "active": '
                f'{"true" if rnd.random() < 0.8 else "false"}, '
                f'"score": {rnd.randrange(100)}.{rnd.choice((0, 5))}, '
                f'"visits": {rnd.randrange(50)}, '
                f'"tags": {json.dumps(rnd.sample(tags, rnd.randrange(0, 5)))}, '
                f'"created": "2025-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d}T'
                f'{rnd.randrange(24):02d}:{rnd.randrange(60):02d}:{rnd.randrange(60):02d}Z", '
                f'"note": "{note}", "meta": {{"source": "import", "schema": "customer.v2", '
                f'"region": "eu-central-1", "flags": {{"beta": false, "newsletter": true}}}}}}\n')
        yield "".join(out).encode()


def gen_text(rnd: random.Random) -> Iterator[bytes]:
    words = _vocabulary(rnd, 20_000)
    cum = _zipf_weights(len(words), 1.0)
    while True:
        paras = []
        for _ in range(40):
            sentences = []
            for _ in range(rnd.randrange(3, 9)):
                ws = rnd.choices(words, cum_weights=cum, k=rnd.randrange(6, 24))
                ws[0] = ws[0].capitalize()
                sentences.append(" ".join(ws) + rnd.choice((".", ".", ".", "?", "!")))
            paras.append(" ".join(sentences))
        yield ("\n\n".join(paras) + "\n\n").encode()


def gen_source(rnd: random.Random) -> Iterator[bytes]:
    words = _vocabulary(rnd, 400)
    cum = _zipf_weights(len(words))
    types = ("int", "str", "bytes", "float", "list[int]", "dict[str, int]", "None")

    def word() -> str:
        return rnd.choices(words, cum_weights=cum)[0]

    while True:
        out = []
        for _ in range(60):
            cls = word().title() + word().title()
            out.append(f"\n\nclass {cls}:\n    \"\"\"{' '.join(rnd.sample(words, 8))}.\"\"\"\n")
            for _ in range(rnd.randrange(2, 7)):
                name = "_".join(word() for _ in range(rnd.randrange(1, 3)))
                args = [word() for _ in range(rnd.randrange(0, 4))]
                sig = ", ".join(["self", *(f"{a}: {rnd.choice(types)}" for a in args)])
                out.append(f"\n    def {name}({sig}) -> {rnd.choice(types)}:\n")
                for _ in range(rnd.randrange(2, 9)):
                    a, b = word(), word()
                    line = rnd.choice((
                        f"        {a} = self.{b}.get({rnd.randrange(10)!r}, None)\n",
                        f"        if {a} is None:\n            return {rnd.randrange(3)}\n",
                        f"        for {a} in range(len(self.{b})):\n            self.{b}[{a}] "
                        f"+= {rnd.randrange(1, 3)}\n",
                        f"        log.debug(\"{a} %s {b} %d\", {a}, len(self.{b}))\n",
                        f"        # {' '.join(rnd.sample(words, 6))}\n",
                        f"        self.{a} = {b}\n",
                        f"        if not isinstance({a}, {rnd.choice(types[:4])}):\n"
                        f"            raise TypeError(f\"{a} must be {{type({a})}}\")\n",
                    ))
                    out.append(line)
                out.append(f"        return self.{word()}\n")
        yield "".join(out).encode()


def gen_binary(rnd: random.Random) -> Iterator[bytes]:
    # Machine-code-like text sections (opcodes and idioms from small tables, mostly
    # small displacements and immediates), little-endian tables of small integers and
    # pointers, and string tables: ~1.8 with LZ4, like /usr/bin on Debian.
    opcodes = [bytes(rnd.randrange(256) for _ in range(rnd.choice((1, 2, 2, 3))))
               for _ in range(60)]
    idioms = [b"".join(rnd.choice(opcodes) for _ in range(rnd.randrange(3, 8)))
              for _ in range(40)]

    def symbol() -> str:
        n = rnd.randrange(30)
        name = "".join(rnd.choice("abcdefghijklmnop") for _ in range(rnd.randrange(4, 16)))
        return f"_ZN{n}{name}Ev"

    symbols = [symbol() for _ in range(400)]
    base = 0x400000 + rnd.randrange(1 << 20) * 16
    while True:
        out = bytearray()
        for _ in range(16):
            section = rnd.random()
            if section < 0.6:
                for i in range(3000):
                    r = rnd.random()
                    if r < 0.4:
                        out += rnd.choice(idioms)
                    else:
                        out += rnd.choice(opcodes)
                        if r < 0.7:
                            out.append(rnd.randrange(0, 128, 8))
                        elif r < 0.85:
                            out += rnd.randrange(1 << 12).to_bytes(4, "little")
                        elif r < 0.9:
                            out += rnd.getrandbits(32).to_bytes(4, "little")
                    if i % 60 == 59:  # function end: ret, then padding to 16 bytes
                        out += b"\xc3" + b"\xcc" * (15 - len(out) % 16)
            elif section < 0.8:
                # relocation / pointer tables: increasing addresses, small values
                vals = [base + i * 24 + rnd.randrange(4) * 8 if i % 2
                        else rnd.randrange(64) for i in range(2048)]
                out += struct.pack(f"<{len(vals)}Q", *vals)
            elif section < 0.9:  # .data/.bss-like: mostly zeros, a few small values
                vals = [rnd.randrange(1 << 16) if rnd.random() < 0.1 else 0
                        for _ in range(4096)]
                out += struct.pack(f"<{len(vals)}I", *vals)
            else:
                out += b"\0".join(rnd.choice(symbols).encode() for _ in range(1000)) + b"\0"
        yield bytes(out)


def gen_log_fast(rnd: random.Random) -> Iterator[bytes]:
    """Log lines at ~4x gen_log's speed: 4,000 distinct line bodies made by gen_log,
    picked at random behind increasing millisecond timestamps. Each 4 KiB page
    compresses as gen_log's do (lz4 3.04 vs 3.04 on 4 KiB pages); zcachefs compresses
    pages alone, so repeats between far-apart pages do not help it."""
    source = gen_log(random.Random(rnd.random()))
    bodies: list[str] = []
    while len(bodies) < 4000:
        bodies += [line.split(" ", 1)[1] for line in next(source).decode().splitlines()]
    ms = (1_773_480_000 + rnd.randrange(86400 * 30)) * 1000
    while True:
        out = []
        last, prefix = -1, ""
        for body, gap in zip(rnd.choices(bodies, k=4000), rnd.choices(range(6), k=4000),
                             strict=True):
            ms += gap
            sec, milli = divmod(ms, 1000)
            if sec != last:
                last, prefix = sec, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
            out.append(f"{prefix}{milli:03d}Z {body}\n")
        yield "".join(out).encode()


CHUNK = 64 << 10  # the unit of logs10's incompressible share


def gen_logs10(rnd: random.Random) -> Iterator[bytes]:
    """64 KiB chunks of log text; in every run of ten, one (at a seeded place) is random
    bytes: 10% of the data does not compress at all."""
    text = gen_log_fast(rnd)
    spare = b""
    while True:
        noisy = rnd.randrange(10)
        for i in range(10):
            if i == noisy:
                yield rnd.randbytes(CHUNK)
                continue
            while len(spare) < CHUNK:
                spare += next(text)
            yield spare[:CHUNK]
            spare = spare[CHUNK:]


def gen_random(rnd: random.Random) -> Iterator[bytes]:
    while True:
        yield rnd.randbytes(1 << 20)


def gen_image(rnd: random.Random) -> Iterator[bytes]:
    # A disk image: extents of zero pages (70%), binary-like pages and random pages.
    binary = gen_binary(rnd)
    spare = b""
    zero = bytes(PAGE)
    while True:
        r = rnd.random()
        pages = rnd.randrange(1, 64)
        if r < 0.7:
            yield zero * pages
        elif r < 0.9:
            while len(spare) < pages * PAGE:
                spare += next(binary)
            yield spare[:pages * PAGE]
            spare = spare[pages * PAGE:]
        else:
            yield rnd.randbytes(pages * PAGE)


GENERATORS: dict[str, Callable[[random.Random], Iterator[bytes]]] = {
    "log": gen_log, "json": gen_json, "text": gen_text, "source": gen_source,
    "binary": gen_binary, "random": gen_random, "image": gen_image, "logs10": gen_logs10,
}


def write_sqlite(path: Path, size: int, rnd: random.Random) -> None:
    """A SQLite database of about `size` bytes (whole pages): orders with an index."""
    path.unlink(missing_ok=True)
    words = _vocabulary(rnd, 2000)
    cum = _zipf_weights(len(words))
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA page_size=4096")
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, email TEXT, "
                    "created TEXT, amount REAL, qty INTEGER, status TEXT, notes TEXT)")
        con.execute("CREATE INDEX orders_customer ON orders(customer)")
        statuses = ("new", "paid", "shipped", "delivered", "returned")
        prices = (4.99, 9.99, 14.5, 19.99, 24.0, 49.99, 99.0, 129.9)
        ident = 0
        con.execute("BEGIN")
        while True:
            rows = []
            for _ in range(2000):
                ident += 1
                first, last = rnd.choices(words, cum_weights=cum, k=2)
                rows.append((ident, f"{first.title()} {last.title()}",
                             f"{first}.{last}@example.org",
                             f"2025-{ident // 200000 % 12 + 1:02d}-"
                             f"{ident // 8000 % 28 + 1:02d} {ident // 333 % 24:02d}:"
                             f"{ident // 6 % 60:02d}",
                             rnd.choice(prices), rnd.randrange(1, 5),
                             rnd.choice(statuses),
                             " ".join(rnd.choices(words[:100], cum_weights=cum[:100],
                                                  k=rnd.choice((0, 0, 0, 2, 5))))))
            con.executemany("INSERT INTO orders VALUES (?,?,?,?,?,?,?,?)", rows)
            pages = con.execute("PRAGMA page_count").fetchone()[0]
            if pages * 4096 >= size:
                break
        con.execute("COMMIT")
    finally:
        con.close()


def write_lookup_db(path: Path, size: int, seed: int) -> int:
    """The real-application benchmark's SQLite database: one table `t` of about `size`
    bytes (4 KiB pages), ids 1..N as INTEGER PRIMARY KEY (a B-tree keyed by id: a point
    lookup reads a few pages). Rows are write_sqlite's orders, drawn from a pool of
    5,000 (every row differs by its id, date and amount), so a page compresses like
    one of write_sqlite's (each page is compressed alone). Returns N."""
    rnd = random.Random(f"lookup:{seed}")
    words = _vocabulary(rnd, 2000)
    cum = _zipf_weights(len(words))
    pool = []
    for _ in range(5000):
        first, last = rnd.choices(words, cum_weights=cum, k=2)
        pool.append((f"{first.title()} {last.title()}", f"{first}.{last}@example.org",
                     rnd.choice(("new", "paid", "shipped", "delivered", "returned")),
                     " ".join(rnd.choices(words[:100], cum_weights=cum[:100],
                                          k=rnd.choice((0, 0, 0, 2, 5))))))
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path, isolation_level=None)
    n = 0
    try:
        con.execute("PRAGMA page_size=4096")
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, customer TEXT, email TEXT, "
                    "created TEXT, amount REAL, qty INTEGER, status TEXT, notes TEXT)")
        con.execute("BEGIN")
        prices = (4.99, 9.99, 14.5, 19.99, 24.0, 49.99, 99.0, 129.9)
        while True:
            picks = rnd.choices(pool, k=20000)
            amounts = rnd.choices(prices, k=20000)
            rows = [(i, name, email, f"2025-{i // 200000 % 12 + 1:02d}-{i // 8000 % 28 + 1:02d} "
                     f"{i // 333 % 24:02d}:{i // 6 % 60:02d}", amount, i % 4 + 1, status, notes)
                    for i, (name, email, status, notes), amount
                    in zip(range(n + 1, n + 20001), picks, amounts, strict=True)]
            con.executemany("INSERT INTO t VALUES (?,?,?,?,?,?,?,?)", rows)
            n += 20000
            if con.execute("PRAGMA page_count").fetchone()[0] * PAGE >= size:
                break
        con.execute("COMMIT")
    finally:
        con.close()
    return n


def write_logs(outdir: Path, size: int, seed: int, file_size: int = 32 << 20) -> list[Path]:
    """The real-application benchmark's log directory: files of `file_size` bytes of log
    text (gen_log_fast), `size` bytes in all."""
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(max(1, -(-size // file_size))):
        path = outdir / f"app-{i:03d}.log"
        left = min(file_size, size - i * file_size)
        text = gen_log_fast(random.Random(f"logs:{seed}:{i}"))
        with open(path, "wb") as f:
            while left > 0:
                chunk = next(text)[:left]
                f.write(chunk)
                left -= len(chunk)
        paths.append(path)
    return paths


# -- the data set ---------------------------------------------------------------------

def plan(size: int, seed: int, dataset: str = "mix") -> list[tuple[str, str, int]]:
    """[(file name, kind, size)] for a set of `size` bytes: equal files, kinds by the
    data set's shares (largest remainder), in a seeded shuffled order."""
    mix = DATASETS[dataset]
    nfiles = max(MIN_FILES, round(size / FILE_TARGET))
    fsize = max(PAGE, size // nfiles // PAGE * PAGE)
    exact = {k: w * nfiles for k, w in mix.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True):
        if sum(counts.values()) >= nfiles:
            break
        counts[k] += 1
    kinds = [k for k in mix for _ in range(counts[k])]
    random.Random(f"plan:{seed}").shuffle(kinds)
    return [(f"{i:03d}-{k}.{EXT[k]}", k, fsize) for i, k in enumerate(kinds)]


def make_file(path: Path, kind: str, size: int, seed: int) -> str:
    """Write one file; returns its SHA-256."""
    rnd = random.Random(f"{seed}:{path.name}")
    if kind == "sqlite":
        write_sqlite(path, size, rnd)
    else:
        chunks = GENERATORS[kind](rnd)
        left = size
        with open(path, "wb") as f:
            while left > 0:
                chunk = next(chunks)[:left]
                f.write(chunk)
                left -= len(chunk)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _make(args: tuple[str, str, int, int]) -> str:
    path, kind, size, seed = args
    return make_file(Path(path), kind, size, seed)


def generate(outdir: Path, size: int, seed: int, workers: int | None = None,
             log: Callable[[str], None] = print, manifest_path: Path | None = None,
             dataset: str = "mix") -> dict:
    """Create (or reuse, if the manifest matches) the data set; returns the manifest.
    The manifest is OUTDIR/MANIFEST.json unless `manifest_path` puts it elsewhere (the
    benchmark keeps it out of the directory its workloads read)."""
    outdir.mkdir(parents=True, exist_ok=True)
    manifest_path = manifest_path or outdir / "MANIFEST.json"
    want = plan(size, seed, dataset)
    try:
        old = json.loads(manifest_path.read_text())
        if (old.get("version") == GENERATOR_VERSION and old.get("seed") == seed
                and old.get("dataset", "mix") == dataset
                and old.get("requested_size") == size
                and sqlite3.sqlite_version == old.get("sqlite_version")
                and all((outdir / f["name"]).stat().st_size == f["size"]
                        for f in old["files"])):
            log(f"data: reusing {outdir} ({dataset}, {old['size'] / 2**20:.0f} MiB, "
                f"seed {seed})")
            return old
    except (OSError, ValueError, KeyError):
        pass
    manifest_path.unlink(missing_ok=True)
    for stale in outdir.iterdir():
        if stale.is_file():
            stale.unlink()
    log(f"data: generating {dataset}: {len(want)} files, {size / 2**20:.0f} MiB, seed {seed} "
        f"in {outdir}")
    jobs = [(str(outdir / name), kind, fsize, seed) for name, kind, fsize in want]
    with ProcessPoolExecutor(max_workers=workers or min(2, os.cpu_count() or 1)) as ex:
        digests = list(ex.map(_make, jobs))
    files = [{"name": name, "kind": kind, "size": (outdir / name).stat().st_size,
              "sha256": digest} for (name, kind, _), digest in zip(want, digests, strict=True)]
    manifest = {"version": GENERATOR_VERSION, "dataset": dataset, "seed": seed,
                "requested_size": size,
                "size": sum(f["size"] for f in files), "sqlite_version": sqlite3.sqlite_version,
                "files": files}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# -- codec ratios ---------------------------------------------------------------------

def page_stats(paths: list[tuple[Path, str]], page_size: int = PAGE, threshold: int | None = None,
               codecs: tuple[str, ...] = ("lz4", "lzo"), sample: int = 1) -> dict:
    """Per codec and per kind: pages, zero / same-filled pages, compressed bytes (each
    page alone, as zcachefs stores it) and pages the pool would admit (<= threshold).
    `sample` = N reads every Nth page (1 = all)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from zcachefs import codecs as zcodecs

    threshold = threshold or page_size // 2
    table: dict[str, dict[str, dict[str, int]]] = {}
    for path, kind in paths:
        with open(path, "rb") as f:
            data = f.read()
        for off in range(0, len(data), page_size * sample):
            page = data[off:off + page_size]
            same = page.count(page[:1]) == len(page)
            for name in codecs:
                row = table.setdefault(name, {}).setdefault(kind, {
                    "pages": 0, "bytes": 0, "same_filled": 0, "compressed": 0,
                    "admitted": 0, "admitted_bytes": 0, "admitted_compressed": 0})
                row["pages"] += 1
                row["bytes"] += len(page)
                if same:
                    row["same_filled"] += 1
                    row["compressed"] += 1
                    continue
                n = min(len(zcodecs.get(name).compress(page)), len(page))
                row["compressed"] += n
                if n <= threshold:
                    row["admitted"] += 1
                    row["admitted_bytes"] += len(page)
                    row["admitted_compressed"] += n
    out: dict = {}
    for name, kinds in table.items():
        total = {k: sum(r[k] for r in kinds.values()) for k in next(iter(kinds.values()))}
        out[name] = {"total": _summary(total), "kinds": {k: _summary(r) for k, r in
                                                         sorted(kinds.items())}}
    return out


def _summary(r: dict[str, int]) -> dict[str, float]:
    return {
        "bytes": r["bytes"],
        # original bytes / compressed bytes, every page compressed alone (a page that
        # does not shrink counts at its size; a same-filled page as 1 byte)
        "ratio": round(r["bytes"] / max(1, r["compressed"]), 3),
        "same_filled_pct": round(100 * r["same_filled"] / max(1, r["pages"]), 1),
        # pages the pool keeps: compressed to <= threshold, or same-filled
        "admitted_pct": round(100 * (r["admitted"] + r["same_filled"]) / max(1, r["pages"]), 1),
        # ratio over the pages the pool keeps that cost memory
        "admitted_ratio": round(r["admitted_bytes"] / max(1, r["admitted_compressed"]), 3),
    }


def format_ratios(stats: dict) -> str:
    lines = [f"{'codec':<6} {'kind':<8} {'MiB':>7} {'ratio':>6} {'same%':>6} "
             f"{'kept%':>6} {'kept ratio':>10}"]
    for codec, d in stats.items():
        for kind, r in [*d["kinds"].items(), ("ALL", d["total"])]:
            lines.append(f"{codec:<6} {kind:<8} {r['bytes'] / 2**20:>7.1f} {r['ratio']:>6.2f} "
                         f"{r['same_filled_pct']:>6.1f} {r['admitted_pct']:>6.1f} "
                         f"{r['admitted_ratio']:>10.2f}")
    return "\n".join(lines)


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    low = text.strip().lower().removesuffix("ib").removesuffix("b")
    if low and low[-1] in units:
        return int(float(low[:-1]) * units[low[-1]])
    return int(low)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--size", type=parse_size, default=parse_size("1536M"),
                    help="total bytes (K/M/G suffixes), default 1536M")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="mix",
                    help="mix (eight kinds, ~2:1 with lz4; default) or logs10 (log text "
                         "with 10%% incompressible 64 KiB chunks)")
    ap.add_argument("--ratios", action="store_true",
                    help="print per-codec, per-kind compression ratios of 4 KiB pages")
    args = ap.parse_args(argv)
    manifest = generate(args.outdir, args.size, args.seed, dataset=args.dataset)
    print(f"{len(manifest['files'])} files, {manifest['size']} bytes")
    if args.ratios:
        print(format_ratios(page_stats([(args.outdir / f["name"], f["kind"])
                                        for f in manifest["files"]])))
    return 0


if __name__ == "__main__":
    sys.exit(main())

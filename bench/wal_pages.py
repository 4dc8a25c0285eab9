"""Which tables and indexes each commit writes: the pages in a SQLite write-ahead log, by b-tree.

Every page a transaction dirties is written to the log whole at commit (two ``pwrite`` calls a
page), then copied into the database by a checkpoint, so the pages per commit are what a write
costs beyond its statements. This reads a copy of a live ``-wal`` file (the frames of its current
generation, up to its last commit) and names each page's b-tree with SQLite's ``dbstat`` table on
the database file::

    cp gateway.db-wal /tmp/snap.wal        # while the gateway runs: closing removes the log
    python -m bench.wal_pages gateway.db /tmp/snap.wal

Pages allocated after the database file was last checkpointed may not be named yet (``?``).
"""

from __future__ import annotations

import argparse
import sqlite3
import struct
from collections import Counter
from pathlib import Path

HEADER = struct.Struct(">IIIIIIII")  # magic, version, page size, checkpoint seq, salts, checksum
FRAME = struct.Struct(">IIIIII")  # page number, db size after a commit (else 0), salts, checksum


def transactions(wal: bytes) -> list[list[int]]:
    """The page numbers each committed transaction wrote, oldest first. Frames whose salts
    differ from the header's are left over from an earlier generation of the log: the end."""
    if len(wal) < HEADER.size:
        return []
    _, _, page_size, _, salt1, salt2, _, _ = HEADER.unpack_from(wal)
    done: list[list[int]] = []
    pages: list[int] = []
    offset = HEADER.size
    while offset + FRAME.size + page_size <= len(wal):
        page, commit, s1, s2, _, _ = FRAME.unpack_from(wal, offset)
        if (s1, s2) != (salt1, salt2):
            break
        pages.append(page)
        if commit:  # the last frame of a transaction
            done.append(pages)
            pages = []
        offset += FRAME.size + page_size
    return done


def page_owners(db_path: Path) -> dict[int, str]:
    """Each page's table or index (SQLite's ``dbstat``, compiled into Debian's and Python's)."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return {page: name for name, page in db.execute("select name, pageno from dbstat")}
    finally:
        db.close()


def by_btree(commits: list[list[int]], owners: dict[int, str]) -> Counter[str]:
    """Pages written per b-tree, each page once per transaction (as SQLite writes it)."""
    counts: Counter[str] = Counter()
    for pages in commits:
        counts.update(owners.get(page, "?") for page in set(pages))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("db", type=Path, help="the database file")
    parser.add_argument("wal", type=Path, help="a copy of its -wal file")
    args = parser.parse_args()
    commits = transactions(args.wal.read_bytes())
    if not commits:
        print("no committed transaction in the log")
        return
    counts = by_btree(commits, page_owners(args.db))
    total = sum(counts.values())
    print(f"{len(commits):,} transactions, {total / len(commits):.1f} pages each")
    print("| pages | share | per transaction | table or index |")
    print("| ---: | ---: | ---: | --- |")
    for name, n in counts.most_common():
        print(f"| {n:,} | {100 * n / total:.1f} % | {n / len(commits):.2f} | {name} |")


if __name__ == "__main__":
    main()

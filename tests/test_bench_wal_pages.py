"""``python -m bench.wal_pages``: the pages each commit wrote, read from a real write-ahead log."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from bench import wal_pages

REPO = Path(__file__).resolve().parent.parent


def logged_database(tmp_path: Path) -> tuple[Path, Path]:
    """A database with a table and an index, three committed transactions still in its log
    (checkpoints off), and a copy of that log taken while the connection is open."""
    path = tmp_path / "t.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("pragma journal_mode = wal")
    db.execute("pragma wal_autocheckpoint = 0")
    db.execute("create table items (id integer primary key, key text, body text)")
    db.execute("create index items_key on items (key)")
    for batch in range(3):
        db.execute("begin")
        for i in range(40):  # random-ish keys: the index's leaves as well as the table's
            db.execute(
                "insert into items (key, body) values (?, ?)",
                [f"{i * 7919 % 97}-{batch}", "x" * 500],
            )
        db.execute("commit")
    copy = tmp_path / "snap.wal"
    shutil.copy(f"{path}-wal", copy)
    db.close()
    return path, copy


def test_each_commit_is_read_with_the_pages_it_wrote_named_by_btree(tmp_path: Path) -> None:
    path, wal = logged_database(tmp_path)

    commits = wal_pages.transactions(wal.read_bytes())
    counts = wal_pages.by_btree(commits[-3:], wal_pages.page_owners(path))

    assert len(commits) == 5  # create table, create index, three batches of inserts
    # 40 rows of 500 bytes take 5-6 leaves of 4 KB (plus the table's root, once split).
    assert 3 * 5 <= counts["items"] <= 3 * 8
    assert counts["items_key"] >= 3  # every batch touched the index
    # Page 1 (the schema's, with the file header) is written when the file grows.
    assert set(counts) <= {"items", "items_key", "sqlite_schema"}


def test_frames_of_an_older_generation_end_the_log(tmp_path: Path) -> None:
    _, wal = logged_database(tmp_path)
    data = bytearray(wal.read_bytes())
    all_commits = wal_pages.transactions(bytes(data))
    # Change the salt of the third transaction's first frame, as a frame left from before a
    # restart of the log has: what follows is not this generation's.
    page_size = wal_pages.HEADER.unpack_from(data)[2]
    frames_before = len(all_commits[0]) + len(all_commits[1])
    third = wal_pages.HEADER.size + frames_before * (wal_pages.FRAME.size + page_size)
    data[third + 8] ^= 0xFF

    commits = wal_pages.transactions(bytes(data))

    assert commits == all_commits[:2]


def test_the_command_prints_a_table_of_pages_per_btree(tmp_path: Path) -> None:
    path, wal = logged_database(tmp_path)

    done = subprocess.run(
        [sys.executable, "-m", "bench.wal_pages", str(path), str(wal)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("5 transactions, ")
    assert "| items |" in done.stdout and "| items_key |" in done.stdout

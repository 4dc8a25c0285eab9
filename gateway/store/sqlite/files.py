"""The database file as a whole: a read-only look (``gateway check``) and an online backup
(``gateway backup``). Neither writes to the live database."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from pathlib import Path

from sqlite_utils import Database

from gateway.store.sqlite.migrations import migrations


def _read_only(path: Path) -> sqlite3.Connection:
    # mode=ro: a look or a backup never writes to (or creates) the live database.
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)


def check_database(path: Path) -> str:
    """What ``gateway serve`` will find at ``path``, in a few words; raises ``OSError`` or
    ``sqlite3.Error`` when it could not open or create the database there."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a database file", str(path))
    if not path.exists():
        folder = path.parent
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(folder))
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "cannot create the database in", str(folder))
        return "created at first start"
    if not os.access(path, os.R_OK | os.W_OK):
        raise PermissionError(errno.EACCES, "cannot read and write", str(path))
    conn = _read_only(path)
    try:
        pending = migrations.pending(Database(conn, execute_plugins=False))
    finally:
        conn.close()
    return f"{len(pending)} migration(s) to apply at start" if pending else "up to date"


def backup_database(source: Path, target: Path) -> int:
    """Copy the live database at ``source`` into the new file ``target`` with SQLite's online
    backup; returns the number of pages copied.

    The copy is one consistent snapshot taken in a single step: a stepwise backup starts over
    whenever another process writes, which a busy gateway always does, while in WAL mode one
    step holds only a read snapshot and never blocks the gateway's writer. The copy is written
    beside ``target``, checked, and renamed, so ``target`` is complete or absent.
    """
    if not source.is_file():
        raise FileNotFoundError(errno.ENOENT, "no database file", str(source))
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    live = _read_only(source)
    try:
        copy = sqlite3.connect(str(partial))
        try:
            live.backup(copy)
            # A rollback-journal file stands alone (no -wal beside it); the gateway turns WAL
            # back on when it opens a restored copy.
            copy.execute("PRAGMA journal_mode = DELETE")
            (verdict,) = copy.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"the copy failed its check: {verdict}")
            (pages,) = copy.execute("PRAGMA page_count").fetchone()
        finally:
            copy.close()
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    finally:
        live.close()
    return int(pages)

"""The durable floor's store: every answered push is a committed row another connection can read."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from bench.durable_store import DurableLog


async def test_appends_are_committed_before_they_return_and_repeats_are_kept_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "floor.db"
    log = DurableLog(path)
    try:
        rows = [(f"psh_{n}", "beds24", f"key{n % 40}", b"{}") for n in range(50)]
        await asyncio.gather(*(log.append(row) for row in rows))
        # Read by another connection while the log is still open: committed, not just queued.
        conn = sqlite3.connect(path)
        try:
            stored = conn.execute("select count(*) from pushes").fetchone()[0]
            mode = conn.execute("pragma journal_mode").fetchone()[0]
        finally:
            conn.close()
    finally:
        log.close()
    assert stored == 40  # ten repeats of a dedupe key were recognised
    assert mode == "wal"

"""What a store raises when storage itself fails, whatever the backend."""

from __future__ import annotations


class StorageUnavailable(Exception):
    """The database can't take (or answer) this request right now: disk full, locked by another
    process, read-only, an I/O error. Nothing was stored; the caller answers 503 and the sender
    tries again later. The store has already logged the fault (once per interval)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

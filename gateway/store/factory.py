"""Choosing the store a config asks for: ``[storage] path`` (SQLite, the default) or ``url``
(PostgreSQL, shared by any number of gateway processes)."""

from __future__ import annotations

import sqlite3

from gateway.config import ConfigError, GatewayConfig
from gateway.store.interface import Store

POSTGRES_EXTRA = "pip install 'octo-gateway[postgres]'"


def make_store(config: GatewayConfig) -> Store:
    """The configured store, not yet opened. Raises ConfigError when PostgreSQL is asked for and
    its driver is not installed."""
    if config.storage.url is None:
        from gateway.store import SQLiteStore

        # Waits for another process's lock no longer than a push may wait.
        timeout = config.storage.write_timeout
        return SQLiteStore(
            config.storage.path, busy_timeout=timeout, fault_memory=max(2 * timeout, 1)
        )
    try:
        from gateway.store.postgres import PostgresStore
    except ImportError:
        raise ConfigError(
            f"{config.source_file or 'config'}: storage.url: PostgreSQL needs the asyncpg driver"
            f" ({POSTGRES_EXTRA})"
        ) from None
    return PostgresStore(config.storage.url)


def store_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a store raises when its database fails (to report them in one line)."""
    errors: list[type[BaseException]] = [sqlite3.Error]
    try:
        import asyncpg
    except ImportError:
        pass
    else:
        from gateway.store.postgres.base import StoreUnavailable

        errors += [asyncpg.PostgresError, asyncpg.InterfaceError, StoreUnavailable]
    return tuple(errors)

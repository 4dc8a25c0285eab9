"""The PostgreSQL store's plumbing: the connection pool, migrations, and LISTEN/NOTIFY wake-ups.

Any number of gateway processes share one database. Each state change is a short transaction;
claims lease rows with ``FOR UPDATE SKIP LOCKED`` so processes never wait on each other's rows.
A process that stored work another process could take sends ``NOTIFY`` in the same transaction
(delivered on commit); every process LISTENs on a connection of its own and wakes its workers.
Polling stays the fallback: a lost listener connection costs latency, never work.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar, cast
from urllib.parse import urlsplit

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from gateway.config import redact_url
from gateway.ratelog import RateLimitedLog
from gateway.store.errors import StorageUnavailable
from gateway.store.postgres import migrations

# A connection of the pool or one of our own: both run the same queries.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

log = logging.getLogger(__name__)
T = TypeVar("T")

PUSHES_CHANNEL = "gateway_pushes"
DELIVERIES_CHANNEL = "gateway_deliveries"
RELISTEN_AFTER = 2.0  # seconds between attempts to get a lost listener connection back


class StoreUnavailable(Exception):
    """The database cannot be reached (said without the URL's password)."""


class PostgresBase:
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._wakers: dict[str, list[Callable[[], None]]] = {
            PUSHES_CHANNEL: [],
            DELIVERIES_CHANNEL: [],
        }
        self._listen_task: asyncio.Task[None] | None = None
        self._closing = False
        self._outages = RateLimitedLog(log, 60.0)

    def describe(self) -> str:
        """Where the store is, safe to log (the URL's password masked)."""
        return redact_url(self.url)

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        conn = await connect(self.url)
        try:
            await migrations.apply(conn)
        finally:
            await conn.close()
        self._pool = await asyncpg.create_pool(
            self.url, min_size=1, max_size=self.pool_size, command_timeout=60, init=_durable
        )
        self._listen_task = asyncio.create_task(self._listen_forever(), name="store-listener")

    async def close(self) -> None:
        self._closing = True
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listen_task
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def check_writable(self) -> None:
        """A small real write (the probe row); ``StorageUnavailable`` when it fails."""
        try:
            await self.pool.execute(
                "insert into write_probe (id, probed_at) values (1, $1)"
                " on conflict (id) do update set probed_at = excluded.probed_at",
                time.time(),
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StorageUnavailable(f"{self.describe()}: {exc}") from exc

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    # -- wake-ups ------------------------------------------------------------------------------

    def on_pushes_waiting(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when any process stored a push this one could take."""
        self._wakers[PUSHES_CHANNEL].append(wake)

    def on_deliveries_waiting(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when any process stored deliveries this one could send."""
        self._wakers[DELIVERIES_CHANNEL].append(wake)

    async def _listen_forever(self) -> None:
        while not self._closing:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.url)
                lost = asyncio.Event()
                conn.add_termination_listener(_setter(lost))
                for channel in self._wakers:
                    await conn.add_listener(channel, self._notified)
                # Anything stored while no listener was up is found by the first wake-up.
                self._wake_all()
                await lost.wait()
                log.warning("lost the LISTEN connection to %s; polling meanwhile", self.describe())
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("cannot LISTEN on %s (%s); polling meanwhile", self.describe(), exc)
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()  # synchronous: safe while being cancelled
            await asyncio.sleep(RELISTEN_AFTER)

    def _notified(self, _conn: Any, _pid: int, channel: str, _payload: object) -> None:
        for wake in self._wakers.get(channel, []):
            wake()

    def _wake_all(self) -> None:
        for wakers in self._wakers.values():
            for wake in wakers:
                wake()


# Failures of the database itself, not of the statement: the same call may succeed later.
OUTAGES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08: connection exceptions
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.OperatorInterventionError,  # 57: admin shutdown, cannot connect now
    asyncpg.InsufficientResourcesError,  # 53: disk full, out of memory, too many connections
    asyncpg.ReadOnlySQLTransactionError,  # a standby (after a failover) takes no writes
)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def unavailable_on_outage(method: F) -> F:
    """Turn a database outage into ``StorageUnavailable`` (a push answers 503 with Retry-After,
    /readyz fails), as the SQLite store does for a full or locked disk."""

    @functools.wraps(method)
    async def wrapper(self: PostgresBase, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self, *args, **kwargs)
        except OUTAGES as exc:
            self._outages.fault("db", f"storage fault: {self.describe()}: {exc}")
            raise StorageUnavailable(f"{type(exc).__name__}: {exc}") from exc

    return cast(F, wrapper)


def guard_outages(cls: type[T]) -> type[T]:
    """Apply ``unavailable_on_outage`` to every public coroutine method of a store class."""
    for name in dir(cls):
        if name.startswith("_") or name in ("open", "close"):
            continue
        method = getattr(cls, name)
        if inspect.iscoroutinefunction(method):
            setattr(cls, name, unavailable_on_outage(method))
    return cls


async def connect(url: str) -> asyncpg.Connection:
    """A connection of our own; ``StoreUnavailable`` (saying why, without the URL's password)
    when the database can't be reached or the URL can't be read (asyncpg's ValueError)."""
    try:
        return await asyncpg.connect(url)
    except (TimeoutError, OSError) as exc:
        raise StoreUnavailable(f"cannot connect: {exc}") from None
    except ValueError as exc:
        raise StoreUnavailable(unusable_url(url, exc)) from None


def unusable_url(url: str, exc: ValueError) -> str:
    """What asyncpg found wrong with a URL, without the URL's password."""
    reason = str(exc)
    password = urlsplit(url).password
    if password:
        reason = reason.replace(password, "***")
    return f"not a usable PostgreSQL URL: {reason}"


async def _durable(conn: asyncpg.Connection) -> None:
    """A commit is on disk before it returns (a push is acknowledged only then), even where the
    server or database is set to ``synchronous_commit = off``; a stronger setting (waiting for
    standbys) is kept as it is."""
    if await conn.fetchval("show synchronous_commit") == "off":
        await conn.execute("set synchronous_commit = on")


def _setter(event: asyncio.Event) -> Callable[[Any], None]:
    return lambda _conn: event.set()


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode("utf-8")


# PostgreSQL takes no NUL in any text (nor \u0000 in JSON it parses), where SQLite keeps it. Text
# from outside (a subscriber's answer, a PMS's ids and free text) has U+FFFD in its place instead,
# so storing it never fails (a failing settle or push would be retried, and fail, for ever).
NUL = "\x00"
REPLACEMENT = "\ufffd"


def text(value: str | None) -> str | None:
    """``value`` as PostgreSQL can store it."""
    return value.replace(NUL, REPLACEMENT) if value is not None and NUL in value else value


def without_nul(value: Any) -> Any:
    """A JSON value with every NUL in its strings (keys included) replaced."""
    if isinstance(value, str):
        return value.replace(NUL, REPLACEMENT)
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


def record(row: asyncpg.Record) -> dict[str, Any]:
    return dict(row.items())

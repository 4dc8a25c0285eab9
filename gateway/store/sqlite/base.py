"""The SQLite store's plumbing: connections, migrations, and group commit on one connection.

Writes are batched into one transaction with whatever other writes are waiting (group commit) and
run one batch at a time on the store's one write connection, so SQLite never sees two writers
from this process. A batch of small writes runs on the event loop's own thread, in a callback: in
WAL mode with ``synchronous = NORMAL`` a commit is a write to the log, not an fsync (checkpoints,
the fsyncs, have a thread of their own), so handing it to another thread cost more than it saved
(two cross-CPU wake-ups, the GIL passed back and forth). The writer thread takes a batch when
waiting is involved or the work is long: another process holds the write lock (it waits up to
``busy_timeout`` there, never on the loop), a write was marked ``background`` (retention, replays,
large fan-outs), or a write failed (each is then run again on its own). Reads run on a small pool
of reader threads, each with its own connection, which WAL lets proceed while a batch writes; the
few small reads on the hot path run on the write connection instead, whose page cache is warm (at
once when no write is pending).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
from sqlite_utils import Database

from gateway.ratelog import RateLimitedLog
from gateway.store.errors import StorageUnavailable
from gateway.store.sqlite.migrations import migrations

log = logging.getLogger(__name__)
T = TypeVar("T")
CHECKPOINT_EVERY = 1.0  # seconds
# The write-ahead log's size past which it is restarted, and to which its file is cut back. A
# passive checkpoint lets the log be written from its start again only when it copied all of it
# before the next write began, which writes that never pause never allow: the log then grew by
# everything written (29 MB/s at full ingest), filling the disk. Restarting needs the write lock
# and every reader off the log, so it waits for them at most RESTART_WAIT, holding the write lock
# meanwhile (the store's writes wait, queued, without blocking the loop: about 40 ms at full
# ingest); kept from it by a long reader, it tries again RESTART_BACKOFF checkpoints later, not at
# every one. The limit is large so the pause is rare (every ~20 s at full ingest): at 64 MB it
# came every 2-3 s and doubled the p99 of 1,000 deliveries/s; at 512 MB it is within noise.
WAL_LIMIT_BYTES = 512 * 1024 * 1024
RESTART_WAIT = 0.05  # seconds
RESTART_BACKOFF = 10  # checkpoints
FAULT_LOG_INTERVAL = 60.0  # seconds between log lines about one lasting storage fault

# SQLite primary result codes that say the storage failed, not the statement: the same write may
# succeed later (disk freed, lock released, file writable again).
STORAGE_FAULTS = frozenset(
    {
        "SQLITE_BUSY",
        "SQLITE_LOCKED",
        "SQLITE_FULL",
        "SQLITE_IOERR",
        "SQLITE_READONLY",
        "SQLITE_CANTOPEN",
        "SQLITE_PERM",
        "SQLITE_PROTOCOL",
        "SQLITE_NOLFS",
        "SQLITE_NOMEM",
        "SQLITE_CORRUPT",
        "SQLITE_NOTADB",
    }
)


def storage_fault(exc: BaseException) -> str | None:
    """Why the storage failed when ``exc`` is a storage fault (disk full, locked by another
    process, read-only, I/O error), else None (a bug or a constraint: the write itself is bad)."""
    if not isinstance(exc, sqlite3.DatabaseError) or isinstance(
        exc, sqlite3.IntegrityError | sqlite3.ProgrammingError
    ):
        return None
    name: str = getattr(exc, "sqlite_errorname", None) or ""
    if "_".join(name.split("_")[:2]) not in STORAGE_FAULTS:
        return None
    return str(exc)


def _waited_for_lock(exc: BaseException) -> bool:
    name: str = getattr(exc, "sqlite_errorname", None) or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def connect(path: Path | str, busy_timeout: float = 30.0) -> Database:
    """A connection configured the way every gateway connection must be. ``busy_timeout``:
    seconds to wait for a lock another process holds before failing with "database is locked"."""
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=busy_timeout)
    db = Database(conn, execute_plugins=False)
    db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    db.execute("PRAGMA foreign_keys = ON")
    # NORMAL is durable in WAL mode against process crashes (kill -9); only an OS crash or power
    # loss can lose the last transactions.
    db.execute("PRAGMA synchronous = NORMAL")
    # Deleted and replaced rows are zeroed inside their pages (where that costs no extra I/O), so
    # what retention or an erase removes does not linger in the file as free space.
    db.execute("PRAGMA secure_delete = FAST")
    return db


class SQLiteBase:
    """One SQLite file in WAL mode: connections, migrations, and the group-committing writer.

    ``busy_timeout`` bounds how long a write waits for a lock another process holds; a storage
    fault fails the writes it hits with ``StorageUnavailable`` and is logged once per
    ``FAULT_LOG_INTERVAL``. ``check_writable`` reports a fault seen within ``fault_memory``
    seconds even once a test write succeeds (a full disk still takes writes that need no space).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        readers: int = 2,
        busy_timeout: float = 30.0,
        fault_memory: float = 10.0,
        wal_limit: int = WAL_LIMIT_BYTES,
        checkpoint_every: float = CHECKPOINT_EVERY,
    ) -> None:
        self.path = Path(path)
        self.wal_path = Path(f"{self.path}-wal")  # the write-ahead log, beside the database
        self.busy_timeout = busy_timeout
        self.fault_memory = fault_memory
        self.wal_limit = wal_limit
        self.checkpoint_every = checkpoint_every
        self._faults = RateLimitedLog(log, FAULT_LOG_INTERVAL)
        self._last_fault: tuple[float, str] | None = None  # (time.monotonic(), reason)
        self._writer = WriterThread("store-writer_0", self._flush)
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="store-reader")
        self._write_db: Database | None = None
        self._local = threading.local()
        self._reader_dbs: list[Database] = []
        self._reader_lock = threading.Lock()
        # Group commit: writes queue here and one flush (on the loop or the writer thread) runs
        # all that are waiting in one transaction, answering each caller once it is committed.
        self._queue: list[Queued] = []
        self._queue_lock = threading.Lock()
        self._flushing = False
        # Held by whatever uses the write connection (a batch on the loop or the writer thread,
        # a job on the writer thread): the loop never waits for it, it hands over instead.
        self._conn_lock = threading.Lock()
        # The checkpointer holds it to restart the log; a loop whose batch waited for that is
        # told to flush again once it is done.
        self._restarting = False
        self._deferred: asyncio.AbstractEventLoop | None = None
        self._in_batch = False
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._open_writer)

    def _open_writer(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = connect(self.path, self.busy_timeout)
        db.enable_wal()
        migrations.apply(db)
        # Checkpoints (the only fsyncs in WAL mode) move to a thread of their own, so a commit
        # never waits for one; the WAL is checkpointed every CHECKPOINT_EVERY s and restarted
        # past WAL_LIMIT_BYTES.
        db.execute("PRAGMA wal_autocheckpoint = 0")
        # The connection that writes the log from its start again cuts the file back to this.
        db.execute(f"PRAGMA journal_size_limit = {self.wal_limit}")
        # On the loop a lock held by another process must fail at once (the batch then waits on
        # the writer thread, which sets the busy timeout for as long as it holds the connection).
        db.execute("PRAGMA busy_timeout = 0")
        with self._conn_lock:
            self._write_db = db
        self._checkpointer = threading.Thread(
            target=self._checkpoint_forever, name="store-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_forever(self) -> None:
        try:
            db = connect(self.path)
        except sqlite3.Error:
            log.exception("cannot open %s to checkpoint it; the writer will on close", self.path)
            return
        skip = 0  # restarts not to try after one that could not wait for the readers
        try:
            while not self._stop_checkpoints.wait(self.checkpoint_every):
                # PASSIVE never blocks the writer: it copies what it can and returns; when busy
                # or locked, the next round catches up.
                with contextlib.suppress(sqlite3.Error):
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    if skip:
                        skip -= 1
                    elif _size(self.wal_path) > self.wal_limit and not self._restart_log(db):
                        skip = RESTART_BACKOFF
        finally:
            db.close()

    def _restart_log(self, db: Database) -> bool:
        """Have the next write start the log from its beginning (``wal_checkpoint(RESTART)``): what
        the passive checkpoint left is copied, then it waits for readers still using the log, at
        most ``RESTART_WAIT`` in all. False when it could not (a reader kept the log in use).

        It holds the write connection's lock meanwhile, so the store's own writes wait for it
        (woken the moment it ends, where SQLite's busy handler would poll) instead of racing it
        for SQLite's write lock."""
        # A second passive round first copies what was written during the first, so the restart,
        # which blocks writes, has less to copy: 42 ms on average instead of 61 at full ingest.
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        [waits] = db.execute("PRAGMA busy_timeout").fetchone()
        db.execute(f"PRAGMA busy_timeout = {int(RESTART_WAIT * 1000)}")
        try:
            with self._conn_lock:
                with self._queue_lock:
                    self._restarting = True
                try:
                    [busy, _, _] = db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                finally:
                    with self._queue_lock:
                        self._restarting = False
                        deferred, self._deferred = self._deferred, None
        finally:
            db.execute(f"PRAGMA busy_timeout = {waits}")
        if deferred is not None:
            try:
                deferred.call_soon_threadsafe(self._flush_on_loop)
            except RuntimeError:  # that loop is closed: the writer thread takes what waits
                self._kick_writer()
        return not busy

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop_checkpoints.set()
        if self._checkpointer is not None:
            await loop.run_in_executor(None, self._checkpointer.join)
        await loop.run_in_executor(self._writer, self._close_writer)
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            for db in self._reader_dbs:
                db.close()
            self._reader_dbs.clear()

    def _close_writer(self) -> None:
        with self._conn_lock:
            if self._write_db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._write_db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._write_db.close()
                self._write_db = None

    @contextmanager
    def _waiting_connection(self) -> Iterator[Database]:
        """The write connection for the writer thread: held exclusively, and waiting up to
        ``busy_timeout`` for a lock another process holds."""
        with self._conn_lock:
            db = self._wdb
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            try:
                yield db
            finally:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("PRAGMA busy_timeout = 0")

    # -- plumbing ------------------------------------------------------------------------------

    async def _write_connection_read(self, fn: Callable[[], T]) -> T:
        """``fn``, a read on the write connection: that connection's page cache is warm, where a
        reader's is dropped whenever the writer commits. At once when no write is queued or
        running (what it reads is then what a read queued behind every earlier write would
        read), else in the next batch, after those writes."""
        with self._queue_lock:
            idle = not self._flushing and not self._queue
        if idle and self._conn_lock.acquire(blocking=False):
            try:
                return fn()
            except sqlite3.Error:
                pass  # a storage fault, say: the queued read reports it as writes do
            finally:
                self._conn_lock.release()
        return await self._write(fn)

    async def _write(self, fn: Callable[[], T], *, background: bool = False) -> T:
        """Run ``fn`` inside the next group commit; returns once committed. ``background``:
        ``fn`` may take long (many rows), so its batch runs on the writer thread, not the loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._queue_lock:
            self._queue.append((fn, future, background))
            start = not self._flushing
            self._flushing = True
        if start:
            if background:
                self._kick_writer()
            else:
                loop.call_soon(self._flush_on_loop)
        return await future

    def _flush_on_loop(self) -> None:
        """The waiting writes, in one transaction on the event loop's thread, unless the batch
        belongs on the writer thread (see the module's docstring): then it is handed over."""
        with self._queue_lock:
            batch, self._queue = self._queue, []
            if not batch:
                self._flushing = False
                return
        if any(background for _, _, background in batch):
            self._hand_over(batch)
            return
        if not self._conn_lock.acquire(blocking=False):
            with self._queue_lock:
                if self._restarting:
                    # Held by the log's restart, a moment: the batch waits for it here, and
                    # grows meanwhile, rather than going to the writer thread.
                    self._queue[:0] = batch
                    self._deferred = asyncio.get_running_loop()
                    return
            self._hand_over(batch)
            return
        try:
            results = self._transaction([fn for fn, _, _ in batch])
        except Exception:
            # Locked by another process, or a write failed: nothing was committed; the writer
            # thread waits for the lock, or runs each write on its own.
            self._hand_over(batch)
            return
        finally:
            self._conn_lock.release()
        self._answer(batch, self._storage_outcomes([(result, None) for result in results]))
        with self._queue_lock:
            if not self._queue:
                self._flushing = False
                return
        # Queued meanwhile from another thread (its own event loop): the writer thread takes it,
        # not this loop, which may stop before a callback scheduled on it runs.
        self._kick_writer()

    def _hand_over(self, batch: list[Queued]) -> None:
        """The writer thread runs ``batch`` first, then whatever is waiting (still flushing)."""
        with self._queue_lock:
            self._queue[:0] = batch
        self._kick_writer()

    def _kick_writer(self) -> None:
        """Have the writer thread flush; once the store is closed there is none, and what
        waits fails (as a write to a closed store does) instead of waiting for ever."""
        try:
            self._writer.kick()
        except RuntimeError as exc:
            closed = RuntimeError("store is not open")
            closed.__cause__ = exc
            with self._queue_lock:
                batch, self._queue = self._queue, []
                self._flushing = False
            self._answer(batch, [(None, closed)] * len(batch))

    def _flush(self) -> None:
        """The writer thread's flush: batches until none is waiting."""
        while True:
            with self._queue_lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._flushing = False
                    return
            try:
                with self._waiting_connection():
                    outcomes = self._storage_outcomes(self._run_batch(batch))
            except RuntimeError as exc:  # no connection: the store is not open
                outcomes = [(None, exc)] * len(batch)
            # Done before the callers hear of it, so a caller's next read on the write
            # connection finds it idle and reads at once instead of queueing.
            with self._queue_lock:
                last = not self._queue
                if last:
                    self._flushing = False
            self._answer(batch, outcomes)
            if last:
                return

    @staticmethod
    def _answer(batch: list[Queued], outcomes: list[tuple[Any, BaseException | None]]) -> None:
        """Settle each write's future on its own loop: at once on the running loop, else one
        wake-up of each waiting loop per batch, not one per write."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        answers: dict[asyncio.AbstractEventLoop, list[Answer]] = {}
        for (_, future, _), (result, error) in zip(batch, outcomes, strict=True):
            answers.setdefault(future.get_loop(), []).append((future, result, error))
        for waiting, answered in answers.items():
            if waiting is running:
                _settle_futures(answered)
                continue
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                waiting.call_soon_threadsafe(_settle_futures, answered)

    def _run_batch(self, batch: list[Queued]) -> list[tuple[Any, BaseException | None]]:
        """All writes in one transaction. Should one fail, none took effect: each is then run
        again in a transaction of its own, so only the failing one fails (the rare path). A lock
        held by another process fails the whole batch at once: each write would only wait
        ``busy_timeout`` again, and the callers answer within seconds, not seconds times the batch."""
        try:
            return [(result, None) for result in self._transaction([fn for fn, _, _ in batch])]
        except BaseException as exc:
            if len(batch) == 1 or _waited_for_lock(exc):
                return [(None, exc)] * len(batch)
        outcomes: list[tuple[Any, BaseException | None]] = []
        for fn, _, _ in batch:
            try:
                outcomes.append((self._transaction([fn])[0], None))
            except BaseException as exc:
                outcomes.append((None, exc))
        return outcomes

    def _storage_outcomes(
        self, outcomes: list[tuple[Any, BaseException | None]]
    ) -> list[tuple[Any, BaseException | None]]:
        """Turn storage faults into ``StorageUnavailable`` (logged once per interval) and note
        whether storage works: any fault marks it failing, a clean batch marks it working."""
        converted: list[tuple[Any, BaseException | None]] = []
        fault: str | None = None
        for result, error in outcomes:
            reason = None if error is None else storage_fault(error)
            if reason is not None:
                fault = reason
                unavailable = StorageUnavailable(reason)
                unavailable.__cause__ = error
                error = unavailable
            converted.append((result, error))
        if fault is not None:
            self._last_fault = (time.monotonic(), fault)
            self._faults.fault(
                "write",
                f"storage fault: cannot write {self.path}: {fault}; pushes answer 503"
                " until it clears",
            )
        elif self._faults.failing("write"):
            self._faults.resolved("write", f"storage recovered: {self.path} takes writes again")
        return converted

    def _transaction(self, writes: list[Callable[[], Any]]) -> list[Any]:
        conn = self._wdb.conn
        conn.execute("BEGIN IMMEDIATE")
        self._in_batch = True
        try:
            results = [fn() for fn in writes]
            conn.execute("COMMIT")
            return results
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            self._in_batch = False

    async def _read(self, fn: Callable[[Database], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._run_read, fn)

    def _run_read(self, fn: Callable[[Database], T]) -> T:
        try:
            result = fn(self._reader_db())
        except sqlite3.Error as exc:
            reason = storage_fault(exc)
            if reason is None:
                raise
            self._faults.fault("read", f"storage fault: cannot read {self.path}: {reason}")
            raise StorageUnavailable(reason) from exc
        if self._faults.failing("read"):
            self._faults.resolved("read", f"storage recovered: {self.path} can be read again")
        return result

    async def check_writable(self) -> None:
        """A small write through the writer, as every write goes; raises ``StorageUnavailable``
        when it fails, or when any write failed for lack of storage within ``fault_memory``
        seconds (a full disk may still take this one)."""

        def probe() -> None:
            with self._immediate() as db:
                db.execute(
                    "insert into write_probe (id, probed_at) values (1, ?)"
                    " on conflict (id) do update set probed_at = excluded.probed_at",
                    [time.time()],
                )

        await self._write(probe)
        recent = self._last_fault
        if recent is not None:
            ago = time.monotonic() - recent[0]
            if ago < self.fault_memory:
                raise StorageUnavailable(f"{recent[1]} ({ago:.0f} s ago)")

    async def log_bytes(self) -> int | None:
        return _size(self.wal_path)  # one stat: no thread hop

    @property
    def _wdb(self) -> Database:
        if self._write_db is None:
            raise RuntimeError("store is not open")
        return self._write_db

    def _reader_db(self) -> Database:
        db: Database | None = getattr(self._local, "db", None)
        if db is None:
            db = connect(self.path, self.busy_timeout)
            self._local.db = db
            with self._reader_lock:
                self._reader_dbs.append(db)
        return db

    @contextmanager
    def _immediate(self) -> Iterator[Database]:
        """A write transaction that takes the write lock at once (BEGIN IMMEDIATE); inside a
        group commit it is the batch's transaction (should one write fail, the whole batch rolls
        back and each write is run again in a transaction of its own)."""
        db = self._wdb
        if self._in_batch:
            yield db
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.rollback()
            raise
        else:
            db.execute("COMMIT")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode("utf-8")


def _insert(db: Database, table: str, row: dict[str, Any]) -> int:
    """A plain INSERT: sqlite3 caches the statement, where Table.insert re-inspects the table.
    Returns the new rowid."""
    cursor = db.conn.execute(_insert_sql(table, tuple(row)), tuple(row.values()))
    assert cursor.lastrowid is not None
    return cursor.lastrowid


@functools.lru_cache(maxsize=64)
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    """The statement, written once per table and columns (once per push, it was)."""
    return f"insert into {table} ({', '.join(columns)}) values ({', '.join('?' * len(columns))})"


Answer = tuple[asyncio.Future[Any], Any, BaseException | None]
# A write waiting for its group commit: the work, its caller's future, whether it is background.
Queued = tuple[Callable[[], Any], asyncio.Future[Any], bool]


def _settle_futures(answers: list[Answer]) -> None:
    for future, result, error in answers:
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class WriterThread(Executor):
    """The store's one writer thread. ``kick`` has it flush the group-commit queue: one put on a
    C-implemented ``SimpleQueue`` (a ``Semaphore`` release is a Python-level condition, 1 % of a
    burst's samples), where an executor's ``submit`` makes a future, a condition and a work item
    per batch. ``submit`` runs anything else on it (opening and closing the connection)."""

    def __init__(self, name: str, flush: Callable[[], None]) -> None:
        self._name = name
        self._flush = flush
        self._jobs: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = deque()
        self._signal: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if kwargs:
            return self.submit(lambda: fn(*args, **kwargs))
        future: Future[T] = Future()
        with self._lock:
            self._check_running()
            self._jobs.append((future, fn, args))
        self._signal.put(None)
        return future

    def kick(self) -> None:
        with self._lock:
            self._check_running()
        self._signal.put(None)

    def _check_running(self) -> None:
        if self._stopping:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._signal.get()
            while self._jobs:
                future, fn, args = self._jobs.popleft()
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except BaseException as exc:
                        future.set_exception(exc)
            try:
                self._flush()
            except Exception:
                log.exception("store writer: flushing writes failed")
            with self._lock:
                if self._stopping and not self._jobs:
                    return

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._signal.put(None)
        if wait and thread is not None:
            thread.join()


# Random hex for ids, 19 digits (76 bits) apiece, cut from 4 KiB of os.urandom at a time: one
# getrandom call per 431 ids instead of one per id (uuid4 was 5 % of the ingest profile). One
# deque for every thread: popleft hands each piece out once (atomic under the GIL, and in
# free-threaded builds), so no two threads ever share one, without a per-thread pool or a lock.
_RANDOM_DIGITS = 19
_random: deque[str] = deque()
_take_random = _random.popleft


def _refill_random() -> None:
    digits = os.urandom(4096).hex()
    _random.extend(
        digits[at : at + _RANDOM_DIGITS]
        for at in range(0, len(digits) - _RANDOM_DIGITS + 1, _RANDOM_DIGITS)
    )


# A forked child starts with none of its parent's pieces, which the parent still hands out
# (instead of comparing os.getpid() on every id).
os.register_at_fork(after_in_child=_random.clear)


def new_id(prefix: str) -> str:
    """``prefix_`` + 32 hex digits: the time in microseconds (13 digits), then 76 random bits.

    Time first, so ids made one after another sort together: the unique index on a table's id
    then takes each new one at its right edge, as it takes the rowid, instead of on a random
    page of an index that outgrows the cache (uuid4-style ids cost 24 µs per inserted row against
    10 µs in a 200,000-row table here, the checkpoint included). 76 random bits still make two
    ids of the same microsecond collide about never."""
    while True:
        try:
            random = _take_random()
        except IndexError:
            _refill_random()  # another thread may empty it first: then again
            continue
        return f"{prefix}_{time.time_ns() // 1000:013x}{random}"


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    """``items`` in slices of ``size``: one statement's parameters or one short transaction."""
    for start in range(0, len(items), size):
        yield items[start : start + size]

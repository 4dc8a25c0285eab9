"""A throwaway PostgreSQL server from the machine's own binaries, for tests and the bench.

Debian installs PostgreSQL's binaries under /usr/lib/postgresql/VERSION/bin without starting a
server. ``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run as the ``postgres``
system user (``runuser -u postgres --``) in a temporary folder that user owns. The server listens on
a free loopback port with its unix socket inside that folder, trusts local connections, and is
stopped (and its folder removed) by ``stop()``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

BIN_ROOT = Path("/usr/lib/postgresql")


def find_bin_dir() -> Path | None:
    """$PG_BIN, else the newest /usr/lib/postgresql/*/bin, else the folder of pg_ctl on PATH."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    versions = sorted(
        (p for p in BIN_ROOT.glob("*/bin") if (p / "pg_ctl").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1]
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def missing_reason() -> str | None:
    """Why no throwaway server can be started here, or None when one can."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        return "no PostgreSQL binaries (pg_ctl) found; apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres system user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root without runuser to run initdb as postgres"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder. ``durable=False`` (tests) turns fsync off:
    a killed gateway process loses nothing either way, only an OS crash would."""

    def __init__(self, *, durable: bool = False, settings: dict[str, str] | None = None) -> None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise RuntimeError("no PostgreSQL binaries found")
        self.bin_dir = bin_dir
        self.durable = durable
        self.settings = dict(settings or {})
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.user = "postgres"
        self._as_postgres = os.geteuid() == 0
        self._databases = 0
        self._made: list[str] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        os.chmod(self.root, 0o755)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": "200",
            "shared_buffers": "128MB",
            **({} if self.durable else {"fsync": "off", "full_page_writes": "off"}),
            **self.settings,
        }
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            for key, value in options.items():
                conf.write(f"{key} = '{value}'\n")
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60", "start"
        )
        return self

    def pg_ctl(self, *args: str) -> None:
        """Run pg_ctl on this cluster (``stop``/``start`` mid-test)."""
        extra = ["-l", str(self.root / "log")] if args and args[0] == "start" else []
        self._run("pg_ctl", "-D", str(self.data), *extra, *args)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases -----------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, template: str = "template0", icu_locale: str | None = None) -> str:
        """A fresh empty database (collating as ICU's ``icu_locale``, if given: the server's own
        is C); returns its URL."""
        self._databases += 1
        name = f"gw_{self._databases}_{uuid.uuid4().hex[:8]}"
        locale = f" locale_provider icu icu_locale '{icu_locale}'" if icu_locale else ""
        self.psql(f'create database "{name}" template {template}{locale}')
        self._made.append(name)
        return self.url(name)

    def drop_databases(self) -> None:
        """Drop the databases ``create_database`` made, closing what is still connected."""
        while self._made:
            self.psql(f'drop database if exists "{self._made.pop()}" with (force)')

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                database,
                "-c",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout.strip()

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if result.returncode != 0:
            log = self.root / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise subprocess.CalledProcessError(
                result.returncode, command, result.stdout, result.stderr + tail
            )


class SyncQuery:
    """Blocking queries for test helpers that are synchronous (row counts polled by
    ``eventually``): one asyncpg connection driven by an event loop on a thread of its own."""

    def __init__(self, url: str) -> None:
        import asyncio
        import threading

        import asyncpg

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._conn = self._call(asyncpg.connect(url))

    def _call(self, coroutine: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        """``sql`` may use SQLite's ``?`` placeholders (the tests' SQL reads both stores)."""
        return self._call(self._conn.fetchval(dollar_params(sql), *(params or [])))

    def execute(self, sql: str, params: list[Any] | None = None) -> None:
        self._call(self._conn.execute(dollar_params(sql), *(params or [])))

    def close(self) -> None:
        """Close the connection (or, if its database was dropped under it, cut it) and the loop;
        never leaves a transport for the garbage collector to warn about."""
        try:
            self._call(self._conn.close(timeout=5))
        except Exception:
            self._loop.call_soon_threadsafe(self._conn.terminate)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()


def dollar_params(sql: str) -> str:
    """``?`` placeholders -> ``$1, $2, ...``."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], start=1))


def pg_dump(url: str) -> bytes:
    """The data of a database, as pg_dump writes it."""
    bin_dir = find_bin_dir()
    program = str(bin_dir / "pg_dump") if bin_dir is not None else "pg_dump"
    return subprocess.run(
        [program, "--data-only", "--dbname", url], check=True, capture_output=True
    ).stdout

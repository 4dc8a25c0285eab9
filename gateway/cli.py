"""The ``gateway`` command: serve | check | plugins | ...

Every expected failure (bad config, port in use, missing file) ends with a one-line message on stderr
and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sqlite3
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import IO, Any, NoReturn, TypeVar, get_args
from urllib.parse import urlencode

import aiohttp
import click
from aiohttp import web

from gateway.app import create_app
from gateway.config import (
    POSTGRES_SCHEMES,
    ConfigError,
    GatewayConfig,
    load_config,
    redact_url,
)
from gateway.heap import settle_heap
from gateway.hooks import Hooks
from gateway.models import DeliveryState
from gateway.plugins import PluginError, make_plugin_manager
from gateway.redact import install_redaction
from gateway.sources import SamplePush
from gateway.starter import starter_config
from gateway.store.errors import StorageUnavailable
from gateway.store.factory import POSTGRES_EXTRA, make_store, store_errors
from gateway.store.interface import Store
from gateway.store.sqlite.files import backup_database, check_database
from gateway.supervisor import Supervisor, listen
from gateway.web.server import GuardedSite, make_runner

T = TypeVar("T")

log = logging.getLogger("gateway")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file (default: $GATEWAY_CONFIG, else ./gateway.toml).",
)


class Failure(click.ClickException):
    """An expected failure: one line on stderr (``gateway: ...``) and a non-zero exit code.

    Raised rather than ``sys.exit``, so it also leaves a coroutine run by ``asyncio.run`` through
    its cleanups (the store is closed on the way out)."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"gateway: {self.format_message()}", err=True)


class ConfigFailure(Failure):
    """A problem with the config, the plugins or the arguments: exit code 2."""

    exit_code = 2


def fail(message: str, code: int = 1) -> NoReturn:
    raise (ConfigFailure if code == 2 else Failure)(message)


class CannotListen(Exception):
    """The listening socket could not be opened (address in use, bad host, no permission)."""


StorageFault = OSError | sqlite3.Error | StorageUnavailable
# What any store raises when its database fails (PostgreSQL's errors with its driver installed).
STORE_FAULTS: tuple[type[BaseException], ...] = (OSError, StorageUnavailable, *store_errors())


def describe_os_error(exc: StorageFault, about: Path | None = None) -> str:
    """The reason, and the file it concerns unless that is ``about`` (named already)."""
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        named = exc.filename and not (about and Path(exc.filename) == about)
        return f"{reason}: {exc.filename}" if named else reason
    return str(exc)


def storage_failure(config: GatewayConfig, exc: BaseException) -> NoReturn:
    """A database that can't be opened, named by the config key that points at it (a URL
    without its password)."""
    if config.storage.url is not None:
        reason = exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
        fail(f"{config.source_file}: storage.url: cannot use {config.storage.describe()}: {reason}")
    assert isinstance(exc, StorageFault)
    fail(
        f"{config.source_file}: storage.path: cannot open {config.storage.path}: "
        f"{describe_os_error(exc, config.storage.path)}"
    )


def check_storage(config: GatewayConfig) -> str:
    """Open the database read-only, as serve will find it; a problem ends the command."""
    if config.storage.url is not None:
        return "PostgreSQL (connected to when serving)"
    try:
        return check_database(config.storage.path)
    except (OSError, sqlite3.Error) as exc:
        storage_failure(config, exc)


def load_or_exit(path: Path | None) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc), 2)


def run_fast(main: Coroutine[Any, Any, None]) -> None:
    """uvloop where it is installed (it roughly halves aiohttp's per-request cost), else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_redaction()


@click.group()
@click.version_option(package_name="octo-gateway")
def cli() -> None:
    """octo-gateway: PMS pushes in, signed OCTO webhooks out."""


@cli.command()
@config_option
@click.option("--host", default=None, help="Address to listen on (overrides server.host).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port to listen on, 0-65535; 0 picks a free one (overrides server.port).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Gateway processes sharing the port (needs a PostgreSQL store).",
)
@click.option("--listen-fd", type=int, default=None, hidden=True)
@click.option("--process-name", default=None, hidden=True)
def serve(
    config_path: Path | None,
    host: str | None,
    port: int | None,
    workers: int,
    listen_fd: int | None,
    process_name: str | None,
) -> None:
    """Run the gateway until SIGINT or SIGTERM."""
    config = load_or_exit(config_path)
    setup_logging(config.logging.level)
    if host is not None:
        config.server.host = host
    if port is not None:
        config.server.port = port
    if process_name is not None:
        os.environ["GATEWAY_PROCESS_NAME"] = process_name
    check_storage(config)
    if workers > 1:
        _serve_workers(config, workers)
        return
    sock = socket.socket(fileno=listen_fd) if listen_fd is not None else None
    try:
        run_fast(_serve(config, sock))
    except KeyboardInterrupt:
        pass  # a SIGINT before the handlers were installed is still a clean stop
    except CannotListen as exc:
        fail(f"cannot listen on {config.server.host}:{config.server.port}: {exc}")
    except STORE_FAULTS as exc:
        # Listening is handled above: what is left at start-up is the database.
        storage_failure(config, exc)
    except (ConfigError, PluginError) as exc:
        fail(str(exc), 2)


def _serve_workers(config: GatewayConfig, workers: int) -> None:
    if config.storage.url is None:
        fail(
            f"--workers {workers}: several processes need a PostgreSQL store"
            f' ({config.source_file}: storage.url = "postgresql://..."); on the SQLite file'
            f" {config.storage.path} run one process (it has a single writer)",
            2,
        )
    try:
        create_app(config)  # a bad config fails here, once, not in every worker
        sock = listen(config.server.host, config.server.port)
    except (ConfigError, PluginError) as exc:
        fail(str(exc), 2)
    except OSError as exc:
        fail(f"cannot listen on {config.server.host}:{config.server.port}: {exc.strerror or exc}")
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    click.echo(f"octo-gateway listening on http://{host}:{port} ({workers} workers)")
    sys.stdout.flush()
    assert config.source_file is not None
    code = Supervisor(config.source_file, workers, sock, config.delivery.shutdown_grace).run()
    if code:
        fail(f"a worker failed (exit code {code})", code)


async def _serve(config: GatewayConfig, sock: socket.socket | None = None) -> None:
    if sock is None:
        await _check_port(config.server.host, config.server.port)
    app = create_app(config)
    runner = make_runner(app, config.server)
    await runner.setup()
    try:
        server = config.server
        # A worker of serve --workers listens on the socket its parent opened.
        site = GuardedSite(runner, server.host, server.port, server.max_connections, sock=sock)
        try:
            await site.start()
        except OSError as exc:
            raise CannotListen(exc.strerror or str(exc)) from exc
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if sock is None:  # under serve --workers the parent said where it listens
            urls = _listening_urls(runner)
            if urls and config.server.port == 0:
                config.server.port = int(urls[0].rsplit(":", 1)[1])  # the port the OS picked
            for url in urls:
                click.echo(f"octo-gateway listening on {url}", err=False)
            sys.stdout.flush()
        settle_heap()
        await stop.wait()
        log.info("shutting down")
    finally:
        # Stops accepting, lets in-flight requests finish, then runs cleanup_ctx (workers first).
        await runner.cleanup()


async def _check_port(host: str, port: int) -> None:
    """Fail before anything starts when the address cannot be listened on: a gateway that cannot
    listen opens no store, sends nothing and logs nothing but why (the store's first round of
    maintenance used to log before the bind failed). Bound as the site binds (all of the host's
    addresses, SO_REUSEADDR), then closed for the site to bind again."""
    if port == 0:  # any free port: nothing to find taken
        return
    loop = asyncio.get_running_loop()
    try:
        probe = await loop.create_server(asyncio.Protocol, host, port, reuse_address=True)
    except OSError as exc:
        raise CannotListen(exc.strerror or str(exc)) from exc
    probe.close()
    await probe.wait_closed()


def _listening_urls(runner: web.AppRunner) -> list[str]:
    urls = []
    for address in runner.addresses:
        if isinstance(address, tuple):
            host, port = address[0], address[1]
            host = f"[{host}]" if ":" in host else host
            urls.append(f"http://{host}:{port}")
    return urls


@cli.command()
@config_option
def check(config_path: Path | None) -> None:
    """Validate the config file, templates, plugins and the database file."""
    config = load_or_exit(config_path)
    try:
        create_app(config)  # loads plugins, checks sources and templates; starts nothing
    except (ConfigError, PluginError) as exc:
        fail(str(exc), 2)
    database = check_storage(config)
    sources = ", ".join(sorted(config.sources)) or "none"
    click.echo(f"{config.source_file}: ok (sources: {sources})")
    click.echo(f"storage {config.storage.describe()}: {database}")


@cli.command()
@click.argument(
    "directory",
    required=False,
    default=".",
    type=click.Path(file_okay=False, path_type=Path),
)
def init(directory: Path) -> None:
    """Write a commented starter gateway.toml into DIRECTORY (default: here).

    Its api keys and source tokens are drawn at random; an existing gateway.toml is never
    overwritten."""
    target = directory / "gateway.toml"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # O_EXCL: refuses an existing file even if one appears meanwhile; 0600: it holds secrets.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fail(f"{target}: already exists; nothing written (move it away to start afresh)")
    except OSError as exc:
        fail(f"{target}: cannot write: {describe_os_error(exc)}")
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(starter_config())
    click.echo(f"wrote {target}: edit it, then `gateway check --config {target}`")


@cli.command()
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@config_option
@click.option("--force", is_flag=True, help="Replace TARGET if it exists.")
def backup(target: Path, config_path: Path | None, force: bool) -> None:
    """Copy the database into TARGET while the gateway runs (SQLite online backup).

    The copy is one consistent snapshot; the running gateway keeps taking pushes meanwhile.
    Restore by stopping the gateway and putting the copy in place of storage.path."""
    config = load_or_exit(config_path)
    if config.storage.url is not None:
        fail(
            f"{config.source_file}: storage.url: backup copies the SQLite file; back a PostgreSQL"
            " database up with pg_dump or the server's own backups"
        )
    source = config.storage.path
    if not source.exists():
        fail(f"{config.source_file}: storage.path: no database at {source} yet")
    if target.exists() and not force:
        fail(f"{target}: already exists (--force replaces it)")
    if target.resolve() == source.resolve():
        fail(f"{target}: is the live database itself")
    try:
        pages = backup_database(source, target)
    except (OSError, sqlite3.Error) as exc:
        fail(f"backup of {source} to {target} failed: {describe_os_error(exc)}")
    click.echo(f"{target}: {pages} pages copied from {source}")


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def plugins(config_path: Path | None, as_json: bool) -> None:
    """List loaded plugins, the hooks they implement and the ingest sources they add."""
    config = load_or_exit(config_path)
    hooks = load_hooks_or_exit(config)
    sources = hooks.sources()
    described = hooks.describe()
    for plugin in described:
        plugin["sources"] = sorted(
            n for n, owner in hooks.source_owners.items() if owner == plugin["name"]
        )
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    for plugin in described:
        click.echo(plugin["name"])
        click.echo(f"  hooks:   {', '.join(plugin['hooks']) or '-'}")
        if plugin["sources"]:
            click.echo(f"  sources: {', '.join(plugin['sources'])}")
    click.echo(f"sources: {', '.join(sorted(sources)) or '-'}")


def load_hooks_or_exit(config: GatewayConfig) -> Hooks:
    try:
        hooks = Hooks(make_plugin_manager(config.plugins.dir))
        hooks.sources()
    except PluginError as exc:
        fail(f"plugin error: {exc}", 2)
    return hooks


def open_store(config: GatewayConfig) -> Store:
    if config.storage.url is not None:
        try:
            return make_store(config)
        except ConfigError as exc:
            fail(str(exc), 2)
    if not config.storage.path.exists():
        fail(
            f"{config.source_file}: storage.path: no database at {config.storage.path} yet"
            " (start the gateway once)"
        )
    return make_store(config)


def run_with_store(config: GatewayConfig, work: Callable[[Store], Awaitable[T]]) -> T:
    async def runner() -> T:
        store = open_store(config)
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(runner())
    except STORE_FAULTS as exc:
        storage_failure(config, exc)


url_option = click.option(
    "--url", default=None, help="The running gateway's base URL (default: from server.host/port)."
)


def gateway_url(config: GatewayConfig, url: str | None) -> str:
    """Where the running gateway answers: --url, else server.host and server.port."""
    if url:
        return url.rstrip("/")
    if config.server.port == 0:
        fail(f"{config.source_file}: server.port is 0 (a free port): give the gateway's --url")
    host = config.server.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{config.server.port}"


@cli.command(name="push-sample")
@click.argument("source")
@click.argument("kind")
@config_option
@url_option
def push_sample(source: str, kind: str, config_path: Path | None, url: str | None) -> None:
    """Post a bundled sample push (SOURCE KIND) to a running gateway.

    \b
    Kinds: channex booking | booking_new | ari | message; beds24 v1 | v2 | inventory.
    With [sandbox] enabled and the source's api_url = "sandbox", the PMS reads are answered by
    the gateway itself, so a subscription can be watched end to end without a PMS.
    """
    config = load_or_exit(config_path)
    samples: dict[str, SamplePush] = {}
    for name, found in load_hooks_or_exit(config).sources().items():
        for sample_kind, sample_push in (getattr(found, "samples", None) or {}).items():
            samples[f"{name} {sample_kind}"] = sample_push
    sample = samples.get(f"{source} {kind}")
    if sample is None:
        fail(f"no sample {source} {kind}; choose one of: {', '.join(samples) or 'none'}", 2)
    settings = config.sources.get(source)
    if settings is None:
        fail(f"{config.source_file}: sources.{source}: not configured", 2)
    base = gateway_url(config, url)
    target = f"{base}/ingest/{source}?" + urlencode(dict(sample.query))
    body = json.dumps(sample.body).encode() if sample.body is not None else None
    request = urllib.request.Request(
        target.rstrip("?"),
        data=body,
        method="POST" if body is not None else "GET",
        headers={"X-Gateway-Token": settings.token, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            click.echo(response.read().decode())
    except urllib.error.HTTPError as exc:
        fail(f"gateway answered {exc.code}: {exc.read().decode(errors='replace')}")
    except OSError as exc:
        fail(f"cannot reach the gateway at {base}: {exc}")


@cli.command(name="replay-pushes")
@click.argument("push_ids", nargs=-1)
@config_option
def replay_pushes(push_ids: tuple[str, ...], config_path: Path | None) -> None:
    """Queue failed pushes (all of them, or the PUSH_IDS given) to be processed again.

    A running gateway picks them up within its ingest poll interval. A PUSH_ID that names no
    push, or a push that has not failed, ends the command with nothing queued."""
    config = load_or_exit(config_path)

    async def replay(store: Store) -> list[str]:
        problems = []
        for push_id in push_ids:
            push = await store.get_push(push_id)
            if push is None:
                problems.append(f"no push {push_id}")
            elif push.state != "failed":
                problems.append(f"push {push_id} is {push.state}, not failed")
        if problems:
            fail("; ".join(problems) + "; nothing queued")
        return await store.replay_failed_pushes(list(push_ids) or None)

    replayed = run_with_store(config, replay)
    for push_id in replayed:
        click.echo(push_id)
    click.echo(f"{len(replayed)} failed push(es) queued again", err=True)


@cli.command()
@click.option(
    "--booking",
    "booking",
    required=True,
    metavar="SOURCE:ID",
    help="The PMS booking, e.g. beds24:82279106 or channex:<booking id>.",
)
@config_option
def erase(booking: str, config_path: Path | None) -> None:
    """Remove one guest's personal data everywhere: the pushes that carry the booking, its events
    with their messages, attempts and kept bodies, its state and room map.

    Deleted rows are overwritten, the space is given back and the write-ahead log emptied, so no
    copy is left in the database files. Prints how many rows went from each table. A running
    gateway may stay up; a message for the booking still waiting is not sent. A push that names
    several bookings goes whole."""
    source, _, booking_id = booking.partition(":")
    if not source or not booking_id:
        fail(f"--booking: {booking!r} is not SOURCE:ID (e.g. beds24:82279106)", 2)
    config = load_or_exit(config_path)
    removed = run_with_store(config, lambda store: store.erase_booking(source, booking_id))
    for table, count in removed.items():
        click.echo(f"{table:<16} {count}")
    click.echo(f"erased {sum(removed.values())} row(s) of {source}:{booking_id}", err=True)


DELIVERY_STATES: tuple[str, ...] = get_args(DeliveryState)


async def require_subscription(store: Store, webhook_id: str) -> None:
    if await store.get_subscription(None, webhook_id) is None:
        fail(f"no subscription {webhook_id}")


@cli.command()
@click.argument("webhook_id")
@config_option
@click.option(
    "--state",
    default=None,
    help=f"Only messages in this state ({', '.join(DELIVERY_STATES)}).",
)
@click.option("--limit", default=20, show_default=True, help="How many attempts to show.")
def deliveries(webhook_id: str, config_path: Path | None, state: str | None, limit: int) -> None:
    """Show a subscription's delivery attempts, newest first."""
    config = load_or_exit(config_path)
    if state is not None and state not in DELIVERY_STATES:
        fail(f"--state: {state!r} is not one of {', '.join(DELIVERY_STATES)}", 2)

    async def attempts(store: Store) -> list[Any]:
        await require_subscription(store, webhook_id)
        return await store.list_attempts(webhook_id, state=state, limit=limit)

    rows = run_with_store(config, attempts)
    for _, attempt, state_now in rows:
        view = attempt.view(state_now)
        click.echo(
            f"{view['attemptedAt']}  {view['messageId']}  #{view['attempt']}  {view['outcome']:<9}"
            f"  {view['status'] or '-':>3}  {view['latencyMs'] or 0:>8.1f} ms  {view['error'] or ''}"
        )
    if not rows:
        click.echo("no delivery attempts", err=True)


# How long the progress of a replay may stand still before the gateway is asked if it is alive.
STILL_FOR = 2.0


@cli.command()
@click.argument("webhook_id")
@click.option("--since", required=True, help="RFC 3339 time, e.g. 2026-11-24T00:00:00Z.")
@click.option(
    "--wait/--no-wait",
    default=True,
    help="Show progress until the replay is sent (needs the gateway running).",
)
@config_option
@url_option
def replay(
    webhook_id: str, since: str, wait: bool, config_path: Path | None, url: str | None
) -> None:
    """Send a subscription's messages since a time again (the running gateway sends them)."""
    config = load_or_exit(config_path)
    try:
        moment = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        fail(f"--since: {since!r} is not an RFC 3339 time", 2)
    if moment.tzinfo is None:
        fail("--since: give a time zone, e.g. 2026-11-24T00:00:00Z", 2)
    started = moment.timestamp()
    base = gateway_url(config, url) if wait else ""
    if wait and not asyncio.run(_answers(base)):
        fail(
            f"no gateway answers at {base}: start it, or queue the replay for its next start"
            " with --no-wait"
        )

    async def queue(store: Store) -> int:
        await require_subscription(store, webhook_id)
        return await store.replay_deliveries(webhook_id, started)

    count = run_with_store(config, queue)
    click.echo(f"{count} message(s) queued again")
    if wait and count:
        run_with_store(config, lambda store: _follow(store, webhook_id, started, count, base))


async def _answers(base: str) -> bool:
    """True when a gateway answers ``/healthz`` at ``base`` within a couple of seconds."""
    timeout = aiohttp.ClientTimeout(total=STILL_FOR)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, trust_env=False) as http,
            http.get(f"{base}/healthz") as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False


async def _follow(store: Store, webhook_id: str, since: float, total: int, base: str) -> None:
    loop = asyncio.get_running_loop()
    with click.progressbar(length=total, label="re-sending", file=sys.stderr) as bar:
        done = 0
        moved_at = loop.time()
        while done < total:
            waiting, _ = await store.replay_progress(webhook_id, since)
            now_done = max(total - waiting, 0)
            if now_done != done:
                bar.update(now_done - done)
                done = now_done
                moved_at = loop.time()
            elif loop.time() - moved_at > STILL_FOR:
                if not await _answers(base):
                    fail(
                        f"the gateway at {base} stopped answering; {total - done} message(s)"
                        " stay queued for its next start"
                    )
                moved_at = loop.time()
            if done < total:
                await asyncio.sleep(0.5)


@cli.command(name="migrate-store")
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The SQLite database file (stop the gateway using it first).",
)
@click.option(
    "--to", "target", required=True, help="An empty PostgreSQL database: postgresql://..."
)
def migrate_store(source: Path, target: str) -> None:
    """Copy an SQLite database into an empty PostgreSQL database, pending work included.

    Then point [storage] url at the PostgreSQL database and start any number of gateways on it."""
    if not target.startswith(POSTGRES_SCHEMES):
        fail(f"--to: must be a postgresql:// URL, not {redact_url(target)!r}", 2)
    try:
        from gateway.store.postgres.copy import CopyError, copy_sqlite_to_postgres
    except ImportError:
        fail(f"--to: PostgreSQL needs the asyncpg driver ({POSTGRES_EXTRA})", 2)
    try:
        report = asyncio.run(copy_sqlite_to_postgres(source, target))
    except CopyError as exc:
        fail(str(exc))
    except store_errors() as exc:
        fail(f"copying {source} to {redact_url(target)}: {exc}")
    except OSError as exc:
        fail(f"cannot reach {redact_url(target)}: {exc.strerror or exc}")
    for table, count in report.rows.items():
        click.echo(f"{table}: {count} row(s)")
    for table, count in report.released.items():
        click.echo(f"{table}: {count} lease(s) handed back, due now")
    click.echo(f"copied {source} to {redact_url(target)}", err=True)


def main() -> None:
    cli(prog_name="gateway")

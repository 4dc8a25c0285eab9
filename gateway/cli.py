"""The ``gateway`` command: serve | check | plugins | ...

Every expected failure (bad config, port in use, missing file) ends with a one-line message on stderr
and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sqlite3
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlencode

import click
from aiohttp import web

from gateway.app import create_app
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.hooks import Hooks
from gateway.plugins import PluginError, make_plugin_manager
from gateway.sources import SamplePush
from gateway.store import SQLiteStore

T = TypeVar("T")

log = logging.getLogger("gateway")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file (default: $GATEWAY_CONFIG, else ./gateway.toml).",
)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"gateway: {message}", err=True)
    sys.exit(code)


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


@click.group()
@click.version_option(package_name="octo-gateway")
def cli() -> None:
    """octo-gateway: PMS pushes in, signed OCTO webhooks out."""


@cli.command()
@config_option
@click.option("--host", default=None, help="Address to listen on (overrides server.host).")
@click.option("--port", type=int, default=None, help="Port to listen on (overrides server.port).")
def serve(config_path: Path | None, host: str | None, port: int | None) -> None:
    """Run the gateway until SIGINT or SIGTERM."""
    config = load_or_exit(config_path)
    setup_logging(config.logging.level)
    if host is not None:
        config.server.host = host
    if port is not None:
        config.server.port = port
    try:
        run_fast(_serve(config))
    except KeyboardInterrupt:
        pass  # a SIGINT before the handlers were installed is still a clean stop
    except sqlite3.Error as exc:
        fail(f"storage {config.storage.path}: {exc}")
    except OSError as exc:
        fail(f"cannot listen on {config.server.host}:{config.server.port}: {exc.strerror or exc}")
    except (ConfigError, PluginError) as exc:
        fail(str(exc), 2)


async def _serve(config: GatewayConfig) -> None:
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.server.host, config.server.port)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        urls = _listening_urls(runner)
        if urls and config.server.port == 0:
            config.server.port = int(urls[0].rsplit(":", 1)[1])  # the port the OS picked
        for url in urls:
            click.echo(f"octo-gateway listening on {url}", err=False)
        sys.stdout.flush()
        await stop.wait()
        log.info("shutting down")
    finally:
        # Stops accepting, lets in-flight requests finish, then runs cleanup_ctx (workers first).
        await runner.cleanup()


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
    """Validate the config file, templates and plugins."""
    config = load_or_exit(config_path)
    try:
        create_app(config)  # loads plugins, checks sources and templates; starts nothing
    except (ConfigError, PluginError) as exc:
        fail(str(exc), 2)
    sources = ", ".join(sorted(config.sources)) or "none"
    click.echo(f"{config.source_file}: ok (sources: {sources})")


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


def open_store(config: GatewayConfig) -> SQLiteStore:
    if not config.storage.path.exists():
        fail(f"{config.storage.path}: no database yet (start the gateway once)")
    return SQLiteStore(config.storage.path)


def run_with_store(config: GatewayConfig, work: Callable[[SQLiteStore], Awaitable[T]]) -> T:
    async def runner() -> T:
        store = open_store(config)
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(runner())
    except sqlite3.Error as exc:
        fail(f"storage {config.storage.path}: {exc}")
        raise


@cli.command(name="push-sample")
@click.argument("source")
@click.argument("kind")
@config_option
@click.option("--url", default=None, help="Gateway base URL (default: from server.host/port).")
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
    base = (url or f"http://{config.server.host}:{config.server.port}").rstrip("/")
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

    A running gateway picks them up within its ingest poll interval."""
    config = load_or_exit(config_path)
    ids = list(push_ids) or None
    replayed = run_with_store(config, lambda store: store.replay_failed_pushes(ids))
    for push_id in replayed:
        click.echo(push_id)
    click.echo(f"{len(replayed)} failed push(es) queued again", err=True)


@cli.command()
@click.argument("webhook_id")
@config_option
@click.option(
    "--state", default=None, help="Only messages in this state (pending, delivered, dead, ...)."
)
@click.option("--limit", default=20, show_default=True, help="How many attempts to show.")
def deliveries(webhook_id: str, config_path: Path | None, state: str | None, limit: int) -> None:
    """Show a subscription's delivery attempts, newest first."""
    config = load_or_exit(config_path)
    rows = run_with_store(
        config, lambda store: store.list_attempts(webhook_id, state=state, limit=limit)
    )
    for _, attempt, state_now in rows:
        view = attempt.view(state_now)
        click.echo(
            f"{view['attemptedAt']}  {view['messageId']}  #{view['attempt']}  {view['outcome']:<9}"
            f"  {view['status'] or '-':>3}  {view['latencyMs'] or 0:>8.1f} ms  {view['error'] or ''}"
        )
    if not rows:
        click.echo("no delivery attempts", err=True)


@cli.command()
@click.argument("webhook_id")
@click.option("--since", required=True, help="RFC 3339 time, e.g. 2026-11-24T00:00:00Z.")
@click.option("--wait/--no-wait", default=True, help="Show progress until the replay is sent.")
@config_option
def replay(webhook_id: str, since: str, wait: bool, config_path: Path | None) -> None:
    """Send a subscription's messages since a time again (the running gateway sends them)."""
    config = load_or_exit(config_path)
    try:
        moment = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        fail(f"--since: {since!r} is not an RFC 3339 time", 2)
    if moment.tzinfo is None:
        fail("--since: give a time zone, e.g. 2026-11-24T00:00:00Z", 2)
    started = moment.timestamp()
    count = run_with_store(config, lambda store: store.replay_deliveries(webhook_id, started))
    click.echo(f"{count} message(s) queued again")
    if wait and count:
        run_with_store(config, lambda store: _follow(store, webhook_id, started, count))


async def _follow(store: SQLiteStore, webhook_id: str, since: float, total: int) -> None:
    with click.progressbar(length=total, label="re-sending", file=sys.stderr) as bar:
        done = 0
        while done < total:
            waiting, _ = await store.replay_progress(webhook_id, since)
            now_done = max(total - waiting, 0)
            bar.update(now_done - done)
            done = now_done
            if done < total:
                await asyncio.sleep(0.5)


def main() -> None:
    cli(prog_name="gateway")

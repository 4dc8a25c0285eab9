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
from pathlib import Path

import click
from aiohttp import web

from gateway.app import create_app
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.hooks import Hooks
from gateway.plugins import PluginError, make_plugin_manager

log = logging.getLogger("gateway")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file (default: $GATEWAY_CONFIG, else ./gateway.toml).",
)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"gateway: {message}", err=True)
    sys.exit(code)


def load_or_exit(path: Path | None) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc), 2)
        raise  # unreachable; keeps type checkers honest


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
        asyncio.run(_serve(config))
    except KeyboardInterrupt:
        pass  # a SIGINT before the handlers were installed is still a clean stop
    except sqlite3.Error as exc:
        fail(f"storage {config.storage.path}: {exc}")
    except OSError as exc:
        fail(f"cannot listen on {config.server.host}:{config.server.port}: {exc.strerror or exc}")
    except ConfigError as exc:
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
    hooks = load_hooks_or_exit(config)
    click.echo(f"{config.source_file}: ok ({len(hooks.sources())} sources)")


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
        plugin["sources"] = sorted(n for n, owner in hooks.source_owners.items() if owner == plugin["name"])
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


def main() -> None:
    cli(prog_name="gateway")

"""The gateway under test: a real ``python -m gateway serve`` child on a temporary config.

The config is the shipped ``gateway.toml`` with only what a benchmark must change: its own
SQLite file, absolute plugin and template folders (the child may run from anywhere), the port,
and ``allow_private_targets`` (the receivers listen on loopback). Everything that shapes
performance (WAL with ``synchronous = NORMAL``, delivery concurrency, poll intervals) stays at
the shipped defaults, so the figures are what an operator gets out of the box.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.procs import PYTHON, REPO, ServerProcess, free_port

SHIPPED_CONFIG = REPO / "gateway.toml"


def shipped_config() -> dict[str, Any]:
    with SHIPPED_CONFIG.open("rb") as file:
        return tomllib.load(file)


def source_tokens(config: dict[str, Any] | None = None) -> dict[str, str]:
    """What each source's sender presents (the shipped demo tokens)."""
    config = config or shipped_config()
    return {name: str(source["token"]) for name, source in config.get("sources", {}).items()}


def reseller_key(config: dict[str, Any] | None = None) -> str:
    """The first non-admin api key of the shipped config (``demo-key``)."""
    config = config or shipped_config()
    for key in config.get("api_keys", []):
        if not key.get("admin"):
            return str(key["key"])
    raise RuntimeError(f"{SHIPPED_CONFIG}: no non-admin api key to subscribe with")


def bench_config(db_path: Path, port: int) -> dict[str, Any]:
    config = shipped_config()
    config.setdefault("server", {}).update({"host": "127.0.0.1", "port": port})
    config.setdefault("storage", {})["path"] = str(db_path)
    config.setdefault("plugins", {})["dir"] = str(REPO / "plugins")
    config.setdefault("templates", {})["dir"] = str(REPO / "templates")
    config.setdefault("delivery", {})["allow_private_targets"] = True
    return config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def to_toml(table: dict[str, Any], prefix: str = "") -> str:
    """Just enough TOML writing for a config that came from ``tomllib`` (no writer in stdlib)."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in table.items():
        name = f"{prefix}.{json.dumps(key)}" if prefix else json.dumps(key)
        if isinstance(value, dict):
            tables.append((name, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((name, value))
        else:
            lines.append(f"{json.dumps(key)} = {_toml_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for name, sub in tables:
        out += f"\n[{name}]\n" + to_toml(sub, name)
    for name, items in arrays:
        for item in items:
            out += f"\n[[{name}]]\n" + to_toml(item, name)
    return out


class Gateway(ServerProcess):
    """One gateway child with its own database in ``workdir``."""

    def __init__(self, workdir: Path, name: str, db_path: Path | None = None) -> None:
        port = free_port()
        self.db_path = db_path or workdir / f"{name}.db"
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(to_toml(bench_config(self.db_path, port)), encoding="utf-8")
        args = [PYTHON, "-m", "gateway", "serve", "--config", str(self.config_path)]
        args += ["--port", str(port)]
        super().__init__(name, args, workdir / f"{name}.log", port)
        self.key = reseller_key()
        self.tokens = source_tokens()

    async def start(self, ready_path: str = "/healthz", timeout: float = 60.0) -> None:
        await super().start(ready_path, timeout)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def subscribe(self, session: aiohttp.ClientSession, url: str, event: str) -> str:
        body = {"url": url, "event": event}
        async with session.post(f"{self.url}/octo/webhooks", json=body, headers=self.auth) as r:
            answer = await r.json()
            if r.status != 200:
                raise RuntimeError(f"subscribing {url} failed: {r.status} {answer}")
        return str(answer["id"])

    async def set_active(self, session: aiohttp.ClientSession, sub_id: str, active: bool) -> None:
        url = f"{self.url}/octo/webhooks/{sub_id}"
        async with session.patch(url, json={"active": active}, headers=self.auth) as r:
            if r.status != 200:
                raise RuntimeError(f"PATCH {sub_id} failed: {r.status} {await r.text()}")

    async def replay(self, session: aiohttp.ClientSession, sub_id: str, since: str) -> int:
        url = f"{self.url}/octo/webhooks/{sub_id}/replay"
        async with session.post(url, json={"since": since}, headers=self.auth) as r:
            answer = await r.json()
            if r.status != 200:
                raise RuntimeError(f"replay {sub_id} failed: {r.status} {answer}")
        return int(answer["replayed"])

    async def push(self, session: aiohttp.ClientSession, source: str, body: bytes) -> Any:
        headers = {"Content-Type": "application/json", "X-Gateway-Token": self.tokens[source]}
        async with session.post(f"{self.url}/ingest/{source}", data=body, headers=headers) as r:
            answer = await r.json()
            if r.status != 200:
                raise RuntimeError(f"push to {source} failed: {r.status} {answer}")
            return answer

    async def leased(self, session: aiohttp.ClientSession) -> dict[str, int]:
        """How the gateway's messages reached its delivery worker, from ``/metrics``: leased at
        fan-out (sent as stored) or by a claim (they waited in the queue)."""
        async with session.get(f"{self.url}/metrics") as r:
            text = await r.text()
        return {
            sample.labels["by"]: int(sample.value)
            for family in text_string_to_metric_families(text)
            if family.name == "gateway_deliveries_leased"
            for sample in family.samples
            if sample.name == "gateway_deliveries_leased_total"
        }

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(str(self.db_path), timeout=30)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    async def backlog(self) -> tuple[int, int]:
        """(pushes waiting to be processed, deliveries waiting to be sent), read from the
        gateway's own database, which WAL lets us read while it writes."""

        def read() -> tuple[int, int]:
            pushes = self._query("select count(*) from pushes where state = 'accepted'")[0][0]
            deliveries = self._query(
                "select count(*) from deliveries where state in ('pending', 'leased')"
            )[0][0]
            return int(pushes), int(deliveries)

        return await asyncio.to_thread(read)

    async def states(self) -> dict[str, dict[str, int]]:
        """Pushes and deliveries by state (an audit for losses: dead, skipped, superseded)."""

        def read() -> dict[str, dict[str, int]]:
            return {
                table: {
                    str(s): int(n)
                    for s, n in self._query(f"select state, count(*) from {table} group by state")
                }
                for table in ("pushes", "deliveries")
            }

        return await asyncio.to_thread(read)

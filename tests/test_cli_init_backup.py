"""`gateway init` (a starter config with fresh secrets) and `gateway backup` (an online copy of the
database while the gateway runs and writes), as real subprocesses."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import tomllib
import urllib.request
from pathlib import Path

from gateway.store import SQLiteStore
from tests.test_cli import REPO, demo_config, free_port, gateway, wait_healthy


def secrets_of(config: dict[str, object]) -> list[str]:
    keys = [key["key"] for key in config["api_keys"]]  # type: ignore[attr-defined,index]
    tokens = [table["token"] for table in config["sources"].values()]  # type: ignore[attr-defined]
    return [*keys, *tokens]


def test_init_writes_a_starter_with_fresh_secrets(tmp_path: Path) -> None:
    result = gateway("init", "site-a", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = tmp_path / "site-a" / "gateway.toml"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600  # it holds secrets
    text = written.read_text()
    assert text.count("\n#") > 10  # commented
    starter = tomllib.loads(text)
    assert sorted(starter["sources"]) == ["beds24", "channex"]
    assert any(key["admin"] for key in starter["api_keys"])

    shipped = tomllib.loads((REPO / "gateway.toml").read_text())
    found = secrets_of(starter)
    assert len(found) == 4 and len(set(found)) == 4
    assert all(len(secret) >= 32 for secret in found)
    assert not set(found) & set(secrets_of(shipped))  # never the demo values
    for demo in ("demo-key", "demo-admin-key", "demo-channex-token", "demo-beds24-token"):
        assert demo not in text

    assert gateway("init", str(tmp_path / "site-b")).returncode == 0
    other = tomllib.loads((tmp_path / "site-b" / "gateway.toml").read_text())
    assert not set(secrets_of(other)) & set(found)  # drawn afresh each time

    checked = gateway("check", "--config", str(written))
    assert checked.returncode == 0, checked.stderr
    assert "sources: beds24, channex" in checked.stdout


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    existing = tmp_path / "gateway.toml"
    existing.write_text("# mine\n")
    result = gateway("init", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "gateway: gateway.toml: already exists; nothing written" + (
        " (move it away to start afresh)"
    )
    assert existing.read_text() == "# mine\n"


SAMPLE = json.loads((REPO / "plugins/beds24/samples/beds24-v2-booking-1.json").read_text())[0]


def push(port: int, number: int) -> str:
    body = {**SAMPLE, "booking": {**SAMPLE["booking"], "id": 700000 + number}}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/ingest/beds24",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"X-Gateway-Token": "demo-beds24-token", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        push_id: str = json.loads(response.read())["id"]
        return push_id


def test_backup_while_the_gateway_runs_and_writes(tmp_path: Path) -> None:
    port = free_port()
    config = demo_config(tmp_path)
    # Its log goes to a file: a pipe nobody reads would stall the gateway once full.
    with (tmp_path / "serve.log").open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=log,
        )
    acknowledged: list[str] = []
    stop = threading.Event()

    def keep_pushing() -> None:
        number = 0
        while not stop.is_set() and number < 2000:
            acknowledged.append(push(port, number))
            number += 1

    try:
        wait_healthy(port, proc)
        for number in range(-20, 0):
            acknowledged.append(push(port, number))
        writer = threading.Thread(target=keep_pushing)
        writer.start()
        try:
            before = list(acknowledged)
            copy = tmp_path / "backups" / "copy.db"
            copy.parent.mkdir()
            result = gateway("backup", str(copy), "--config", str(config))
            during = len(acknowledged)
        finally:
            stop.set()
            writer.join(timeout=30)
        assert result.returncode == 0, result.stderr
        assert f"{copy}:" in result.stdout and "pages copied" in result.stdout
        assert during > len(before)  # the gateway took pushes while the backup ran
        assert push(port, 9999)  # and still does

        again = gateway("backup", str(copy), "--config", str(config))
        assert again.returncode == 1 and "already exists" in again.stderr
        assert gateway("backup", str(copy), "--force", "--config", str(config)).returncode == 0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 0

    with sqlite3.connect(copy) as conn:
        assert conn.execute("pragma integrity_check").fetchone() == ("ok",)
        assert conn.execute("pragma journal_mode").fetchone() == ("delete",)
        stored = {row[0] for row in conn.execute("select id from pushes")}
    assert set(before) <= stored  # everything acknowledged before the backup is in it
    assert not (copy.parent / "copy.db.partial").exists()

    async def reopen() -> None:
        # The copy is a working database: the store opens it and finds a push.
        store = SQLiteStore(copy)
        await store.open()
        try:
            assert await store.get_push(before[0]) is not None
        finally:
            await store.close()

    asyncio.run(reopen())


def test_backup_without_a_database_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text('[storage]\npath = "absent.db"\n')
    result = gateway("backup", "copy.db", "--config", "gw.toml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("gateway: gw.toml: storage.path: no database at")
    assert not (tmp_path / "copy.db").exists()

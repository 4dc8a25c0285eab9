"""The config and the gateway command fail loudly: one line naming the file (as given) and the
key, a non-zero exit, never a traceback. Every command runs as a real subprocess."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.models import Subscription
from gateway.store import SQLiteStore
from tests.test_cli import demo_config, free_port, gateway


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("table", "key"),
    [("channex", "api_kye"), ("beds24", "sync_dayz"), ("channex", "product_maps")],
)
def test_unknown_source_key_is_refused_naming_file_and_key(
    tmp_path: Path, table: str, key: str
) -> None:
    text = demo_config(tmp_path).read_text()
    text = text.replace(f"[sources.{table}]", f'[sources.{table}]\n{key} = "x"\n#', 1)
    (tmp_path / "gateway.toml").write_text(text)
    for args in (["check"], ["serve", "--port", "0"]):
        # The file as given: relative to the working directory.
        result = gateway(*args, "--config", "gateway.toml", cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert one_line(result) == f"gateway: gateway.toml: sources.{table}.{key}: unknown key"


def test_every_documented_source_key_passes(tmp_path: Path) -> None:
    text = demo_config(tmp_path).read_text()
    text = text.replace(
        "[sources.channex]", '[sources.channex]\nstatus_map = { cancelled = "CANCELLED" }\n#', 1
    )
    text += (
        '\n[sources.channex.product_map]\n"room-1" = "double"\n'
        '[sources.channex.option_map]\n"rate-1" = "flexible"\n'
        '[sources.beds24.unit_map]\nadult = "grown-up"\n'
    )
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    result = gateway("check", "--config", str(path))
    assert result.returncode == 0, result.stderr


def under_a_file(folder: Path) -> str:
    (folder / "afile").write_text("x")
    return "afile/gateway.db"


def a_folder(folder: Path) -> str:
    (folder / "afolder").mkdir()
    return "afolder"


def not_a_database(folder: Path) -> str:
    (folder / "junk.db").write_text("not sqlite " * 100)
    return "junk.db"


@pytest.mark.parametrize(
    ("make", "reason"),
    [(under_a_file, "not a folder"), (a_folder, "is a folder"), (not_a_database, "not a database")],
)
def test_unusable_storage_is_a_storage_error(
    tmp_path: Path, make: Callable[[Path], str], reason: str
) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(f'[storage]\npath = "{make(tmp_path)}"\n')
    for args in (["check"], ["serve", "--port", "0"]):
        result = gateway(*args, "--config", "gw.toml", cwd=tmp_path)
        assert result.returncode != 0, args
        line = one_line(result)
        assert line.startswith(f"gateway: gw.toml: storage.path: cannot open {tmp_path}"), line
        assert reason in line and "listen" not in line


def test_check_opens_the_database_and_says_what_serve_will_find(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[storage]\npath = "data/gw.db"\n')
    fresh = gateway("check", "--config", str(path))
    assert fresh.returncode == 0, fresh.stderr
    assert "created at first start" in fresh.stdout
    assert not (tmp_path / "data").exists()  # check creates nothing

    (tmp_path / "data").mkdir()
    with sqlite3.connect(tmp_path / "data" / "gw.db") as conn:
        conn.execute("create table unrelated (x)")
    older = gateway("check", "--config", str(path))
    assert older.returncode == 0, older.stderr
    assert "migration(s) to apply at start" in older.stdout

    async def migrate() -> None:
        store = SQLiteStore(tmp_path / "data" / "gw.db")
        await store.open()
        await store.close()

    asyncio.run(migrate())
    current = gateway("check", "--config", str(path))
    assert "up to date" in current.stdout


@pytest.mark.parametrize("port", ["70000", "-1", "65536"])
def test_port_outside_range_is_refused(tmp_path: Path, port: str) -> None:
    result = gateway("serve", "--config", str(demo_config(tmp_path)), "--port", port)
    assert result.returncode == 2
    assert "--port" in result.stderr and "0<=x<=65535" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "gateway.db").exists()


def with_subscription(tmp_path: Path) -> tuple[Path, str]:
    """A config whose database holds one subscription, and no gateway running on its port."""
    path = tmp_path / "gateway.toml"
    path.write_text(
        demo_config(tmp_path).read_text().replace("port = 8080", f"port = {free_port()}")
    )
    now = datetime.now(UTC)
    subscription = Subscription(
        id="sub_cli",
        tenant="demo-reseller",
        event="booking_update",
        url="https://93.184.216.34/hook",
        secret="whsec_dGVzdA==",
        created_at=now,
        updated_at=now,
    )

    async def insert() -> None:
        store = SQLiteStore(tmp_path / "gateway.db")
        await store.open()
        await store.insert_subscription(subscription)
        await store.close()

    asyncio.run(insert())
    return path, subscription.id


def test_replay_wait_without_a_gateway_says_so(tmp_path: Path) -> None:
    config, webhook = with_subscription(tmp_path)
    since = "2000-01-01T00:00:00Z"
    waited = gateway("replay", webhook, "--since", since, "--config", str(config))
    assert waited.returncode == 1
    assert one_line(waited).startswith("gateway: no gateway answers at http://127.0.0.1:")
    assert "--no-wait" in waited.stderr

    queued = gateway("replay", webhook, "--since", since, "--no-wait", "--config", str(config))
    assert queued.returncode == 0, queued.stderr
    assert "0 message(s) queued again" in queued.stdout


def test_look_ups_that_find_nothing_exit_non_zero(tmp_path: Path) -> None:
    config, webhook = with_subscription(tmp_path)
    cases = [
        (["deliveries", "sub_nope"], 1, "gateway: no subscription sub_nope"),
        (["deliveries", webhook, "--state", "lost"], 2, "--state: 'lost' is not one of"),
        (
            ["replay", "sub_nope", "--since", "2000-01-01T00:00:00Z", "--no-wait"],
            1,
            "gateway: no subscription sub_nope",
        ),
        (["replay-pushes", "push_nope"], 1, "gateway: no push push_nope; nothing queued"),
    ]
    for args, code, message in cases:
        result = gateway(*args, "--config", str(config))
        assert result.returncode == code, (args, result.stderr)
        assert message in one_line(result), args
    listed = gateway("deliveries", webhook, "--state", "dead", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert "no delivery attempts" in listed.stderr


def test_commands_without_a_database_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[storage]\npath = "none.db"\n')
    result = gateway("deliveries", "x", "--config", "gw.toml", cwd=tmp_path)
    assert result.returncode == 1
    assert one_line(result).startswith("gateway: gw.toml: storage.path: no database at")


def test_messages_name_the_config_file_as_given(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "gw.toml").write_text('[sources.opera]\ntoken = "x"\n')
    result = gateway("check", "--config", "etc/gw.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result).startswith("gateway: etc/gw.toml: sources.opera: no plugin provides")
    (tmp_path / "etc" / "gw.toml").write_text("")
    ok = gateway("check", "--config", "etc/gw.toml", cwd=tmp_path)
    assert ok.stdout.startswith("etc/gw.toml: ok")

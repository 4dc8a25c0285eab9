"""The gateway command as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def gateway(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def demo_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "gateway.toml"
    text = (REPO / "gateway.toml").read_text()
    text = text.replace('dir = "plugins"', f'dir = "{REPO / "plugins"}"')
    text = text.replace('dir = "templates"', f'dir = "{REPO / "templates"}"')
    path.write_text(text + extra)
    return path


def start_serve(config: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_healthy(port: int, proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited early: {proc.communicate()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("gateway did not become healthy")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_starts_answers_and_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    proc = start_serve(demo_config(tmp_path), port)
    try:
        wait_healthy(port, proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}" in out
    assert "Traceback" not in err
    assert (tmp_path / "gateway.db").exists()


def test_serve_reads_gateway_toml_from_working_directory(tmp_path: Path) -> None:
    port = free_port()
    demo_config(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"},
    )
    try:
        wait_healthy(port, proc)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = gateway("serve", "--config", str(demo_config(tmp_path)), "--port", str(port))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(port) in lines[0], result.stderr
    # The port is found taken before anything starts: no store opened, nothing logged before.
    assert not (tmp_path / "gateway.db").exists()


def test_bad_config_is_one_line_naming_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[api_keys]]\nname = "x"\n')
    for command in ("serve", "check", "plugins"):
        result = gateway(command, "--config", str(path))
        assert result.returncode != 0, command
        assert result.stderr.strip() == f"gateway: {path}: api_keys[0].key: field required", command


def test_missing_config_file(tmp_path: Path) -> None:
    result = gateway("serve", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode != 0
    assert "nope.toml" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_check_accepts_shipped_config() -> None:
    result = gateway("check", "--config", str(REPO / "gateway.toml"))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


@pytest.mark.parametrize("command", [[], ["serve"], ["check"], ["plugins"]])
def test_help(command: list[str]) -> None:
    result = gateway(*command, "--help")
    assert result.returncode == 0
    assert "Usage: gateway" in result.stdout


def test_plugins_lists_plugins_hooks_and_sources() -> None:
    result = gateway("plugins", "--config", str(REPO / "gateway.toml"))
    assert result.returncode == 0, result.stderr
    assert "register_sources" in result.stdout
    assert "sources: beds24, channex" in result.stdout
    as_json = gateway("plugins", "--json", "--config", str(REPO / "gateway.toml"))
    names = {p["name"] for p in json.loads(as_json.stdout)}
    # The built-ins load once, as entry points, though the shipped config names their folder.
    assert {"gateway.sandbox", "channex", "beds24"} <= names
    assert not any(name.startswith("gateway_plugins.") for name in names)


def test_configured_source_without_plugin_is_refused(tmp_path: Path) -> None:
    path = demo_config(tmp_path, '\n[sources.opera]\ntoken = "x"\n')
    result = gateway("check", "--config", str(path))
    assert result.returncode != 0
    assert result.stderr.strip().startswith(f"gateway: {path}: sources.opera: no plugin provides")


def test_bad_source_setting_names_the_key(tmp_path: Path) -> None:
    text = (
        demo_config(tmp_path)
        .read_text()
        .replace('timezone = "UTC"', 'timezone = "Mars/Olympus"', 1)
    )
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    result = gateway("check", "--config", str(path))
    assert result.returncode != 0
    assert "sources.channex.timezone" in result.stderr

"""Operator commands against a running `gateway serve` subprocess: push-sample, deliveries,
replay and replay-pushes."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import demo_config, free_port, gateway, start_serve, wait_healthy


def http(method: str, url: str, body: Any = None, key: str = "demo-key") -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    port = free_port()
    text = demo_config(tmp_path).read_text()
    text = text.replace("allow_private_targets = false", "allow_private_targets = true")
    text = text.replace("port = 8080", f"port = {port}")
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    proc = start_serve(config, port)
    try:
        wait_healthy(port, proc)
        yield config, port
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_push_sample_deliveries_and_replay(running: tuple[Path, int]) -> None:
    config, port = running
    base = f"http://127.0.0.1:{port}"
    webhook = http(
        "POST",
        f"{base}/octo/webhooks",
        {"url": f"{base}/sandbox/receiver", "event": "booking_update"},
    )
    pushed = gateway("push-sample", "channex", "booking", "--config", str(config))
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["state"] == "accepted"

    received = wait_for(lambda: http("GET", f"{base}/sandbox/receiver"))
    assert received[0]["body"]["booking"]["status"] == "CONFIRMED"
    first_id = received[0]["webhook-id"]

    listed = gateway("deliveries", webhook["id"], "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert first_id in listed.stdout and "delivered" in listed.stdout

    replayed = gateway(
        "replay", webhook["id"], "--since", "2000-01-01T00:00:00Z", "--config", str(config)
    )
    assert replayed.returncode == 0, replayed.stderr
    assert "1 message(s) queued again" in replayed.stdout
    again = wait_for(lambda: (r := http("GET", f"{base}/sandbox/receiver")) and len(r) == 2 and r)
    assert again[0]["webhook-id"] == first_id  # a replay keeps the message's webhook-id


def test_replay_pushes_requeues_failed(running: tuple[Path, int]) -> None:
    config, port = running
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/ingest/channex",
        data=b"{broken",
        method="POST",
        headers={"X-Gateway-Token": "demo-channex-token"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 400
    push_id = json.loads(info.value.read())["id"]

    result = gateway("replay-pushes", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [push_id]

    def failed_again() -> Any:
        push = http("GET", f"http://127.0.0.1:{port}/admin/pushes/{push_id}", key="demo-admin-key")
        return push if push["state"] == "failed" and push["attempts"] >= 1 else None

    push = wait_for(failed_again)
    assert "not valid JSON" in push["error"]


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    config = demo_config(tmp_path)
    for args in (
        ["push-sample", "channex", "nope"],
        ["deliveries", "x"],
        ["replay", "x", "--since", "yesterday"],
    ):
        result = gateway(*args, "--config", str(config))
        assert result.returncode != 0, args
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_push_sample_without_gateway_is_one_line(tmp_path: Path) -> None:
    config = demo_config(tmp_path)
    result = gateway(
        "push-sample",
        "beds24",
        "v2",
        "--url",
        f"http://127.0.0.1:{free_port()}",
        "--config",
        str(config),
    )
    assert result.returncode != 0
    assert "cannot reach the gateway" in result.stderr

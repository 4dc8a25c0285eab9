"""schemathesis against a real gateway (a subprocess on loopback) from its own /openapi.json:
no answer is a 5xx and every answer matches the document (status, content type, headers, body).

Bounded: a few generated examples per operation and a per-example deadline.
"""

from __future__ import annotations

import os
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import create_app
from gateway.config import load_config
from gateway.web.apidocs import document_key
from tests.test_cli import REPO, demo_config, free_port, start_serve, wait_healthy

ADMIN_KEY = "demo-admin-key"
TOKEN = "demo-channex-token"
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    # The shipped config (sandbox on, demo keys) on a fresh database, subscribers on loopback
    # allowed, retries fast.
    config = demo_config(tmp, "")
    text = config.read_text().replace('path = "gateway.db"', f'path = "{tmp / "fuzz.db"}"')
    text = text.replace("allow_private_targets = false", "allow_private_targets = true")
    config.write_text(text)
    port = free_port()
    proc = start_serve(config, port)
    try:
        wait_healthy(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def shipped_document() -> dict[str, Any]:
    """The document of an app built from the shipped config, in-process, so pytest can list one
    test per operation before any server runs (test_served_document_is_this_one checks that the
    served gateway answers the same document)."""
    app = create_app(load_config(REPO / "gateway.toml"), workers=False)
    return app[document_key].get(app)


DOCUMENT = shipped_document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_served_document_is_this_one(gateway_url: str) -> None:
    served = requests.get(f"{gateway_url}/openapi.json", timeout=10).json()
    assert served == DOCUMENT


class Seeds:
    """Real objects for generated cases to hit: half the cases whose path names an ``id`` get a
    real one (chosen from the generated case, so a case replays the same), so the handlers'
    own checks of bodies and query parameters are fuzzed too, not only the 404."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        self.webhook = ""
        self.push = ""

    def ensure_webhook(self) -> str:
        if self.webhook:
            found = requests.get(
                f"{self.base}/octo/webhooks/{self.webhook}", headers=self.headers, timeout=10
            )
            if found.status_code == 200:
                return self.webhook
        created = requests.post(
            f"{self.base}/octo/webhooks",
            json={"url": f"{self.base}/sandbox/receiver", "event": "booking_update"},
            headers=self.headers,
            timeout=10,
        )
        assert created.status_code == 200, created.text
        self.webhook = created.json()["id"]
        return self.webhook

    def ensure_push(self) -> str:
        if not self.push:
            answer = requests.post(
                f"{self.base}/ingest/channex",
                data=b"{broken",
                headers={"X-Gateway-Token": TOKEN},
                timeout=10,
            )
            self.push = answer.json()["id"]
        return self.push

    def place(self, case: Any) -> None:
        params = case.path_parameters or {}
        chosen = zlib.crc32(repr((params, case.query, case.body)).encode()) % 2
        if "id" not in params or chosen:
            return
        if case.path.startswith("/octo/webhooks/"):
            params["id"] = self.ensure_webhook()
        elif case.path.startswith("/admin/pushes/"):
            params["id"] = self.ensure_push()


@pytest.fixture(scope="module")
def seeds(gateway_url: str) -> Seeds:
    found = Seeds(gateway_url)
    webhook = found.ensure_webhook()
    # Some history for the deliveries list: a test send and a delivered sample booking.
    requests.post(f"{gateway_url}/octo/webhooks/{webhook}/test", headers=found.headers, timeout=10)
    sample = (REPO / "plugins/channex/samples/channex-booking-1.json").read_bytes()
    requests.post(
        f"{gateway_url}/ingest/channex", data=sample, headers={"X-Gateway-Token": TOKEN}, timeout=10
    )
    found.ensure_push()
    return found


@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "12")),  # more for a deeper look by hand
    deadline=5000,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_answers_as_documented(case: Any, gateway_url: str, seeds: Seeds) -> None:
    seeds.place(case)
    # The admin key may use every /octo and /admin route; one source token for ingest.
    case.call_and_validate(
        base_url=gateway_url,
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "X-Gateway-Token": TOKEN},
        checks=CHECKS,
        timeout=10,
    )

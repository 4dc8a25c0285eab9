"""``gateway erase --booking SOURCE:ID`` (issue 12, finding 10): one guest's personal data leaves
the database everywhere, down to the bytes of the files, and nobody else's does.

The gateway runs (in this process, on a real SQLite file) and delivers three updates of the guest's
booking and one of another guest's; the erase is the real command in a subprocess, run while the
gateway keeps serving. Then the database files are searched for the guest's name and email.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from gateway.store.sqlite.erase import mentions
from tests.conftest import REPO
from tests.fake_pms import Gateways, Harness, beds24_booking
from tests.octo_schema import load_fixture
from tests.tenants import AUTH_ADMIN

ERASED = 91500001
KEPT = 91500002
GUEST = {"firstName": "Zelda", "lastName": "Zanzibarova", "email": "zanzibarova@erase.example"}
OTHER = {"firstName": "Kim", "lastName": "Keepington", "email": "keepington@stay.example"}


async def push_update(gw: Harness, booking: int, guest: dict[str, str], n: int) -> str:
    fields = {**guest, "id": booking, "modifiedTime": f"2030-01-01T00:00:0{n}Z"}
    fields["comments"] = f"update {n} for {guest['lastName']}"
    gw.pms.beds24_bookings[str(booking)] = beds24_booking(**fields)
    item: dict[str, Any] = load_fixture("beds24-v2-booking-1.json")[0]
    answer = await gw.push_ok("beds24", {**item, "booking": {**item["booking"], **fields}})
    return str(answer["id"])


def files_of(db: Path) -> bytes:
    """The database and whatever lies beside it (write-ahead log, shared memory)."""
    return b"".join(
        path.read_bytes()
        for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))
        if path.exists()
    )


def erase(db: Path, tmp_path: Path, booking: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "erase.toml"
    config.write_text(f"[storage]\npath = {json.dumps(str(db))}\n", encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "gateway", "erase", "--booking", booking, "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_erase_removes_one_guest_everywhere_and_only_them(
    gateways: Gateways, tmp_path: Path
) -> None:
    gw = await gateways.start()
    erased = [await push_update(gw, ERASED, GUEST, n) for n in range(3)]
    kept = await push_update(gw, KEPT, OTHER, 0)
    await gw.settled()
    assert len(gw.bookings.bookings()) == 4
    for text in (b"Zanzibarova", b"zanzibarova@erase.example", b"Keepington"):
        assert text in files_of(gw.db_path)

    done = erase(gw.db_path, tmp_path, f"beds24:{ERASED}")
    assert done.returncode == 0, done.stderr
    counts = dict(line.split() for line in done.stdout.splitlines())
    assert counts == {
        "pushes": "3",
        "events": "3",
        "deliveries": "3",
        "attempts": "3",
        "delivery_bodies": "0",
        "booking_state": "1",
        "room_maps": "0",
    }
    assert f"erased 13 row(s) of beds24:{ERASED}" in done.stderr

    found = files_of(gw.db_path)
    assert b"Zanzibarova" not in found
    assert b"zanzibarova@erase.example" not in found
    assert b"Keepington" in found and b"keepington@stay.example" in found
    # The gateway kept serving: the other guest is all there, the erased one is gone.
    for push_id in erased:
        response = await gw.client.get(f"/admin/pushes/{push_id}", headers=AUTH_ADMIN)
        assert response.status == 404
    assert (await gw.admin_push(kept))["state"] == "processed"
    assert gw.count("select count(*) from booking_state where key = ?", [f"beds24:{KEPT}"]) == 1
    assert gw.count("select count(*) from events") == 1

    # Erasing again finds nothing; a booking id that is not SOURCE:ID is refused.
    again = erase(gw.db_path, tmp_path, f"beds24:{ERASED}")
    assert again.returncode == 0 and set(
        dict(line.split() for line in again.stdout.splitlines()).values()
    ) == {"0"}
    refused = erase(gw.db_path, tmp_path, "82279106")
    assert refused.returncode == 2
    assert "SOURCE:ID" in refused.stderr


def test_a_rejected_push_is_recognised_by_its_raw_body() -> None:
    """A push that could not be parsed is kept with its raw body in base64: erase looks inside."""

    def rejected(body: bytes, query: dict[str, str] | None = None) -> str:
        return orjson.dumps(
            {
                "method": "POST",
                "query": query or {},
                "contentType": None,
                "body": base64.b64encode(body).decode(),
            }
        ).decode()

    assert mentions("rejected", rejected(b'{"booking": {"id": 91500001, "x": [}'), "91500001")
    assert mentions("rejected", rejected(b'[{"booking": {"id": 91500001}}]'), "91500001")
    assert mentions("rejected", rejected(b"", {"bookid": "91500001"}), "91500001")
    assert not mentions("rejected", rejected(b'{"booking": {"id": 915000011}}'), "91500001")
    assert mentions("v2", '[{"id": 91500001, "firstName": "Zelda"}]', "91500001")
    assert not mentions("v2", '[{"id": 91500002, "price": 9150000.1}]', "91500001")

"""Bodies rendered once per event with each subscription's webhook spliced in: byte for byte what a
full render gives, and only for templates that use ``webhook`` as ``{{ webhook | json }}``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.appkeys import sender_key
from gateway.delivery.splice import webhook_only_as_json
from gateway.delivery.templates import Templates
from gateway.delivery.worker import Sender
from gateway.hookspecs import hookimpl
from gateway.models import DeliveryRecord, Subscription
from gateway.plugins import make_plugin_manager
from gateway.samples import sample_data
from gateway.store import utcnow
from tests.conftest import REPO


@pytest.mark.parametrize(
    ("source", "spliceable"),
    [
        ('{"webhook": {{ webhook | json }}, "booking": {{ booking | json }}}', True),
        ('{"booking": {{ booking | json }}}', True),
        ('{"id": {{ webhook.id | json }}}', False),
        ('{"w": {{ webhook | json(indent=2) }}}', False),
        ('{% set webhook = {"x": 1} %}{"w": {{ webhook | json }}}', False),
        ('{% for k in webhook %}{% endfor %}{"w": {{ webhook | json }}}', False),
        ('{% include "other.j2" %}', False),
        ('{"w": {{ webhook | tojson }}}', False),
    ],
)
def test_a_template_is_spliced_only_when_it_uses_the_webhook_whole_as_json(
    source: str, spliceable: bool
) -> None:
    env = Templates().env
    assert webhook_only_as_json(env, source) is spliceable


def subscription(
    id: str, template: str | None = None, url: str = "https://x.example/h"
) -> Subscription:
    now = utcnow()
    return Subscription(
        id=id,
        tenant="t",
        event="booking_update",
        url=url,
        headers={"X-Id": id},
        secret="whsec_abc",
        template=template,
        created_at=now,
        updated_at=now,
    )


def record(event_seq: int, n: int) -> DeliveryRecord:
    data = sample_data("booking_update")
    data["booking"]["notes"] = f"update {n}"
    return DeliveryRecord(
        seq=n,
        id=f"msg_{n}",
        event_seq=event_seq,
        subscription_id="x",
        event="booking_update",
        order_key="x|b",
        state="leased",
        attempts=0,
        next_attempt_at=0,
        created_at=0,
        data=data,
    )


async def sender_for(aiohttp_client: Any, make_config: Any, *plugins: Any) -> Sender:
    pm = make_plugin_manager()
    for plugin in plugins:
        pm.register(plugin)
    client = await aiohttp_client(create_app(make_config(), pm=pm))
    sender: Sender = client.app[sender_key]
    return sender


async def test_spliced_bodies_are_byte_for_byte_a_full_render(
    aiohttp_client: Any, make_config: Any
) -> None:
    sender = await sender_for(aiohttp_client, make_config)
    a, b = subscription("sub_a"), subscription("sub_b", url="https://u:secret@y.example/h")
    for event_seq, n in ((1, 0), (1, 0), (2, 1)):
        message = record(event_seq, n)
        for sub in (a, b):
            spliced = sender.render_message(message, sub)
            assert spliced == sender.render(message.event, message.data, sub)
    body = json.loads(sender.render_message(record(2, 1), b))
    assert body["webhook"]["id"] == "sub_b" and "secret@" not in body["webhook"]["url"]
    assert body["booking"]["notes"] == "update 1"


async def test_a_template_using_subscription_fields_renders_per_delivery(
    aiohttp_client: Any, make_config: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "by-id.json.j2").write_text(
        '{"to": {{ webhook.id | json }}, "n": {{ booking.notes | json }}}'
    )
    client = await aiohttp_client(create_app(make_config(templates={"dir": str(folder)})))
    sender: Sender = client.app[sender_key]
    message = record(7, 3)

    first = json.loads(sender.render_message(message, subscription("sub_a", "by-id.json.j2")))
    second = json.loads(sender.render_message(message, subscription("sub_b", "by-id.json.j2")))

    assert first == {"to": "sub_a", "n": "update 3"}
    assert second == {"to": "sub_b", "n": "update 3"}


async def test_a_render_payload_plugin_sees_every_delivery(
    aiohttp_client: Any, make_config: Any
) -> None:
    seen: list[str] = []

    class Plugin:
        @hookimpl
        def render_payload(
            self, event: str, payload: dict[str, Any], subscription: Any
        ) -> dict[str, Any]:
            seen.append(subscription.id)
            return {**payload, "diff": [{"op": "add", "path": "/to", "value": subscription.id}]}

    sender = await sender_for(aiohttp_client, make_config, Plugin())
    message = record(1, 0)
    bodies = [json.loads(sender.render_message(message, subscription(id))) for id in ("a", "b")]

    assert seen == ["a", "b"]
    assert [body["diff"][0]["value"] for body in bodies] == ["a", "b"]


def test_the_shipped_templates_are_spliced() -> None:
    templates = Templates(REPO / "templates")
    env = templates.env
    for name in ("booking_update.json.j2", "availability_update.json.j2"):
        source, _, _ = env.loader.get_source(env, name)  # type: ignore[union-attr]
        assert webhook_only_as_json(env, source), name

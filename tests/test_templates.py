"""Jinja2 body and URL templates: sandboxed, strict, checked when a subscription sets them."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.appkeys import deliverer_key, store_key
from gateway.delivery.templates import MAX_BODY_CHARS, MAX_URL_CHARS, TemplateProblem, Templates
from gateway.samples import sample_data
from tests.conftest import AUTH_A, REPO
from tests.octo_schema import validate_octo
from tests.receivers import FAST_DELIVERY, QUIET_INGEST, booking_event, emit, wait_attempts


@pytest.fixture
def template_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "templates"
    shutil.copytree(REPO / "templates", directory)
    (directory / "slim.json.j2").write_text(
        '{"ref": {{ booking.supplierReference | json }}, "n": {{ diff | length }}}'
    )
    (directory / "broken-json.json.j2").write_text('{"ref": {{ booking.supplierReference }}}')
    (directory / "undefined.json.j2").write_text('{"x": {{ booking.noSuchField | json }}}')
    (directory / "escape.json.j2").write_text('{"x": "{{ booking.__class__.__mro__ }}"}')
    (directory / "syntax.json.j2").write_text('{"x": {{ booking.uuid }')
    return directory


def context(event: str) -> dict[str, Any]:
    return {"webhook": {"id": "w"}, "supplier": {"id": "s"}, **sample_data(event)}


def test_default_bodies_are_contract_shaped(template_dir: Path) -> None:
    templates = Templates(template_dir)
    booking = json.loads(templates.render_body("booking_update", None, context("booking_update")))
    assert set(booking) == {"webhook", "booking", "diff", "supplier"}
    validate_octo("Booking", booking["booking"])
    availability = json.loads(
        templates.render_body("availability_update", None, context("availability_update"))
    )
    assert set(availability) == {"webhook", "availability", "productId", "optionId", "supplier"}
    validate_octo("Availability", availability["availability"])


def test_custom_template_renders(template_dir: Path) -> None:
    body = Templates(template_dir).render_body(
        "booking_update", "slim.json.j2", context("booking_update")
    )
    data = sample_data("booking_update")
    assert json.loads(body) == {"ref": data["booking"]["supplierReference"], "n": 0}


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("broken-json.json.j2", "valid JSON"),
        ("undefined.json.j2", "noSuchField"),
        ("escape.json.j2", "unsafe"),
        ("syntax.json.j2", "line 1"),
        ("missing.json.j2", "not found"),
        ("../gateway.toml", "plain file name"),
    ],
)
def test_bad_templates_are_refused(template_dir: Path, name: str, problem: str) -> None:
    with pytest.raises(TemplateProblem, match=problem):
        Templates(template_dir).render_body("booking_update", name, context("booking_update"))


def test_url_template_renders_booking_values(template_dir: Path) -> None:
    templates = Templates(template_dir)
    url = "https://93.184.216.34/hook?ref={{ booking.supplierReference }}"
    rendered = templates.render_url(url, context("booking_update"))
    assert rendered.endswith("ref=" + sample_data("booking_update")["booking"]["supplierReference"])
    assert templates.render_url("https://93.184.216.34/plain", {}) == "https://93.184.216.34/plain"


async def test_subscription_refuses_broken_templates(
    aiohttp_client: Any, make_config: Any, template_dir: Path
) -> None:
    client = await aiohttp_client(create_app(make_config(templates={"dir": str(template_dir)})))
    base = {"url": "https://93.184.216.34/hook", "event": "booking_update"}
    for template in (
        "broken-json.json.j2",
        "undefined.json.j2",
        "missing.json.j2",
        "escape.json.j2",
    ):
        response = await client.post(
            "/octo/webhooks", json={**base, "template": template}, headers=AUTH_A
        )
        assert response.status == 400, template
        message = (await response.json())["errorMessage"]
        assert "template" in message
        assert str(template_dir) not in message  # a tenant learns no server paths
    ok = await client.post(
        "/octo/webhooks", json={**base, "template": "slim.json.j2"}, headers=AUTH_A
    )
    assert ok.status == 200
    webhook = await ok.json()
    assert webhook["template"] == "slim.json.j2"
    patched = await client.patch(
        f"/octo/webhooks/{webhook['id']}", json={"template": "broken-json.json.j2"}, headers=AUTH_A
    )
    assert patched.status == 400


async def test_subscription_url_templates(aiohttp_client: Any, make_config: Any) -> None:
    client = await aiohttp_client(create_app(make_config()))
    good = "https://93.184.216.34/hook?ref={{ booking.supplierReference }}"
    response = await client.post(
        "/octo/webhooks", json={"url": good, "event": "booking_update"}, headers=AUTH_A
    )
    assert response.status == 200
    # booking values don't exist in availability events
    wrong = await client.post(
        "/octo/webhooks", json={"url": good, "event": "availability_update"}, headers=AUTH_A
    )
    assert wrong.status == 400
    # a template that renders to a private address is refused like a literal one
    private = "http://{{ '127.0.0.1' }}/hook"
    refused = await client.post(
        "/octo/webhooks", json={"url": private, "event": "booking_update"}, headers=AUTH_A
    )
    assert refused.status == 400
    assert "url" in (await refused.json())["errorMessage"]


async def test_url_template_comes_back_as_written_and_survives_a_patch(
    aiohttp_client: Any, make_config: Any, receiver: Any
) -> None:
    """GET shows a URL template exactly as it was written (only the password masked), and a PATCH
    of what GET showed keeps both the template and the stored password working."""
    client = await aiohttp_client(create_app(make_config(delivery={"allow_private_targets": True})))
    base = receiver.url("/hook").replace("http://", "http://alice:s3cr%40t@")
    url = base + "/{{ productId }}?opt={{ optionId | lower }}&t={{event}}"
    created = await client.post(
        "/octo/webhooks", json={"url": url, "event": "availability_update"}, headers=AUTH_A
    )
    assert created.status == 200, await created.text()
    webhook = await created.json()
    assert webhook["url"] == url
    shown = url.replace("s3cr%40t", "***")
    got = await (await client.get(f"/octo/webhooks/{webhook['id']}", headers=AUTH_A)).json()
    assert got["url"] == shown
    listed = await (await client.get("/octo/webhooks", headers=AUTH_A)).json()
    assert [w["url"] for w in listed] == [shown]

    patched = await client.patch(
        f"/octo/webhooks/{webhook['id']}", json={"url": got["url"]}, headers=AUTH_A
    )
    assert patched.status == 200, await patched.text()
    assert (await patched.json())["url"] == shown
    sent = await client.post(f"/octo/webhooks/{webhook['id']}/test", headers=AUTH_A)
    assert (await sent.json())["delivered"] is True
    sample = sample_data("availability_update")
    request = receiver.requests[-1]
    assert request.path == (
        f"/hook/{sample['productId']}?opt={sample['optionId'].lower()}&t=availability_update"
    )
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"alice:s3cr@t").decode()


# -- bounds on tenant-supplied templates (issue 12, finding 1) ---------------------------------

NESTED_LOOPS = "{% for i in range(20000) %}{% for j in range(20000) %}{% endfor %}{% endfor %}"


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        (NESTED_LOOPS, "no {% %} statements"),  # blocked the event loop for seconds
        ("{{ range(10**9) | length }}", "calling a function"),  # was a 500 (OverflowError)
        ("{{ 'x' * 100000000 }}", "'*'"),  # was +400 MB
        ("{{ 9 ** 9 ** 9 }}", "'**'"),
        ("{{ lipsum(1000) }}", "calling a function"),
        ("{{ lipsum }}", "'lipsum'"),
        ("{{ booking.notes.ljust(10**8) }}", "calling a function"),
        ("{{ booking.notes | replace('', booking.notes) }}", "filter 'replace'"),
        ("{{ booking.unitItems | join(booking.notes) }}", "filter 'join'"),
        ("{{ booking.notes[::-1] }}", "slicing"),
        ("{{ booking.uuid | lower(*booking.unitItems) }}", "*args"),
        ("{% set x = 1 %}{{ x }}", "no {% %} statements"),
        ("{{ " + "(" * 900 + "1" + ")" * 900 + " }}", "url template"),
        ("{{ booking.uuid", "url template"),
        # Each name may stand for a whole booking of a megabyte, stringified once per name.
        ("{{ " + "booking ~ " * 16 + "booking }}", "at most 16"),
        ("{{ booking.uuid }}" * 17, "at most 16"),
    ],
    ids=lambda value: value[:30],
)
async def test_url_templates_that_could_exceed_the_bounds_are_refused(
    aiohttp_client: Any, make_config: Any, template: str, problem: str
) -> None:
    client = await aiohttp_client(create_app(make_config()))
    url = "https://93.184.216.34/hook/" + template
    refused = await client.post(
        "/octo/webhooks", json={"url": url, "event": "booking_update"}, headers=AUTH_A
    )
    assert refused.status == 400, await refused.text()
    assert problem in (await refused.json())["errorMessage"]
    good = await client.post(
        "/octo/webhooks",
        json={"url": "https://93.184.216.34/hook", "event": "booking_update"},
        headers=AUTH_A,
    )
    webhook = await good.json()
    patched = await client.patch(
        f"/octo/webhooks/{webhook['id']}", json={"url": url}, headers=AUTH_A
    )
    assert patched.status == 400
    assert problem in (await patched.json())["errorMessage"]


def test_url_templates_keep_their_expressions_and_filters(template_dir: Path) -> None:
    templates = Templates(template_dir)
    data = context("booking_update")
    booking = data["booking"]
    url = (
        "https://93.184.216.34/{{ booking.productId }}/{{ booking['uuid'] | upper }}"
        "?ref={{ booking.supplierReference | urlencode }}&r={{ booking.resellerReference"
        " | default('none', true) }}&s={{ 'c' if booking.status == 'CONFIRMED' else 'x' }}"
        "&n={{ booking.unitItems | length }}&e={{ webhook.id ~ '-' ~ supplier.id }}"
    )
    assert templates.render_url(url, data) == (
        f"https://93.184.216.34/{booking['productId']}/{booking['uuid'].upper()}"
        f"?ref={booking['supplierReference']}&r={booking['resellerReference'] or 'none'}"
        f"&s={'c' if booking['status'] == 'CONFIRMED' else 'x'}"
        f"&n={len(booking['unitItems'])}&e=w-s"
    )


def test_url_template_output_is_capped(template_dir: Path) -> None:
    data = context("booking_update")
    data["booking"]["notes"] = "n" * (MAX_URL_CHARS + 1)
    with pytest.raises(TemplateProblem, match=f"more than {MAX_URL_CHARS} characters"):
        Templates(template_dir).render_url("https://93.184.216.34/{{ booking.notes }}", data)


def test_body_template_output_and_repetition_are_capped(template_dir: Path) -> None:
    (template_dir / "huge.json.j2").write_text(
        '{"x": "{% for i in range(100000) %}{{ booking.uuid ~ booking.uuid ~ booking.uuid }}{% endfor %}"}'
    )
    (template_dir / "times.json.j2").write_text('{"x": "{{ \'x\' * 100000000 }}"}')
    (template_dir / "range.json.j2").write_text('{"x": {{ range(10**9) | length }}}')
    templates = Templates(template_dir)
    with pytest.raises(TemplateProblem, match=f"more than {MAX_BODY_CHARS} characters"):
        templates.render_body("booking_update", "huge.json.j2", context("booking_update"))
    with pytest.raises(TemplateProblem, match="'\\*' would make more than"):
        templates.render_body("booking_update", "times.json.j2", context("booking_update"))
    with pytest.raises(TemplateProblem, match="Range too big"):
        templates.render_body("booking_update", "range.json.j2", context("booking_update"))


async def test_a_stored_url_template_outside_the_grammar_is_never_run(
    aiohttp_client: Any, make_config: Any, receiver: Any
) -> None:
    """A URL template stored before the grammar existed fails its attempts (and /test) with the
    reason; it is never rendered."""
    config = make_config(delivery={**FAST_DELIVERY, "retry_schedule": []}, ingest=QUIET_INGEST)
    client = await aiohttp_client(create_app(config))
    webhook = await (
        await client.post(
            "/octo/webhooks",
            json={"url": receiver.url("/hook"), "event": "booking_update"},
            headers=AUTH_A,
        )
    ).json()
    store = client.app[store_key]
    stored = await store.get_subscription(None, webhook["id"])
    assert stored is not None
    legacy = stored.model_copy(
        update={"url": receiver.url("/") + "{% for i in range(3) %}x{% endfor %}"}
    )
    assert await store.update_subscription(legacy, expected_updated_at=stored.updated_at)
    client.app[deliverer_key].subscriptions.forget(webhook["id"])

    tested = await client.post(f"/octo/webhooks/{webhook['id']}/test", headers=AUTH_A)
    assert tested.status == 400
    assert "no {% %} statements" in (await tested.json())["errorMessage"]
    await emit(store, [booking_event()])
    [attempt] = await wait_attempts(client, webhook["id"], 1)
    assert attempt["outcome"] == "dead" and "no {% %} statements" in attempt["error"]
    assert receiver.requests == []

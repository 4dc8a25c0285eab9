"""Console pages of a reseller: its subscriptions with their health, the forms to change them,
the delivery log, one message with its attempts, and replays.

Every change goes through the same functions as the JSON API (``create_subscription``,
``change_subscription``, ``send_sample``, ``replay_since`` ...), with the same checks and the same
tenant scoping: a subscription of another tenant is a 404 here as it is there.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from yarl import URL

from gateway.appkeys import sender_key, store_key
from gateway.delivery.http_client import wire_headers
from gateway.models import EVENTS, AttemptRecord, DeliveryRecord, Subscription, mask_password
from gateway.web.console.render import form_text, page, read_form, redirect, render
from gateway.web.console.session import Session
from gateway.web.errors import OctoError, bad_request, not_found
from gateway.web.webhook_actions import (
    DELIVERY_STATES,
    replay_since,
    rotate,
    send_sample,
    wake_deliverer,
)
from gateway.web.webhooks import (
    CreateWebhookBody,
    PatchWebhookBody,
    change_subscription,
    create_subscription,
    own_subscription,
    parse_body,
    remove_subscription,
)

DAY = 86400.0
LOG_PAGE = 25
# Header names whose values are credentials: shown masked.
SECRET_WORDS = ("auth", "token", "secret", "key", "password", "signature", "cookie", "session")


async def list_page(request: web.Request, session: Session) -> web.StreamResponse:
    store = request.app[store_key]
    subscriptions = await store.list_subscriptions(session.key.name)
    health = await store.subscription_health([s.id for s in subscriptions], time.time() - DAY)
    return render(
        request,
        session,
        "subscriptions.html",
        subscriptions=subscriptions,
        health=health,
        status_of=status_of,
        mask=mask_password,
    )


def status_of(subscription: Subscription) -> str:
    if subscription.active:
        return "active"
    return "disabled" if subscription.disabled_reason else "paused"


async def new_page(request: web.Request, session: Session) -> web.StreamResponse:
    return render(
        request, session, "subscription_form.html", subscription=None, values={}, events=EVENTS
    )


async def create(request: web.Request, session: Session) -> web.StreamResponse:
    values = await _form_values(request)
    try:
        body = parse_body(CreateWebhookBody, _webhook_fields(values, creating=True))
        subscription = await create_subscription(request, body)
    except OctoError as exc:
        return render(
            request,
            session,
            "subscription_form.html",
            status=exc.status,
            subscription=None,
            values=values,
            events=EVENTS,
            error=exc.message,
        )
    return redirect(
        request,
        f"/console/subscriptions/{subscription.id}",
        session,
        ("ok", "Subscription created. Its signing secret is under Settings."),
    )


async def detail_page(request: web.Request, session: Session) -> web.StreamResponse:
    subscription = await own_subscription(request)
    store = request.app[store_key]
    state = request.query.get("state") or None
    if state is not None and state not in DELIVERY_STATES:
        raise bad_request(f"state: must be one of {', '.join(sorted(DELIVERY_STATES))}")
    before = request.query.get("before", "")
    cursor = int(before) if before.isascii() and before.isdigit() and len(before) < 19 else None
    rows = await store.list_attempts(subscription.id, state=state, limit=LOG_PAGE, before=cursor)
    health = (await store.subscription_health([subscription.id], time.time() - DAY))[
        subscription.id
    ]
    since = _float(request.query.get("replayed"))
    progress = await store.replay_progress(subscription.id, since) if since else None
    return render(
        request,
        session,
        "subscription.html",
        subscription=subscription,
        health=health,
        standing=status_of(subscription),
        url=mask_password(subscription.url),
        attempts=[(attempt, state_now) for _, attempt, state_now in rows],
        older=rows[-1][0] if len(rows) == LOG_PAGE else None,
        state=state,
        states=sorted(DELIVERY_STATES),
        replay_since=since,
        progress=progress,
        now=datetime.now(UTC),
    )


async def progress_fragment(request: web.Request, session: Session) -> web.StreamResponse:
    """The replay progress bar alone, refreshed in place by console.js."""
    subscription = await own_subscription(request)
    since = _float(request.query.get("since")) or time.time()
    progress = await request.app[store_key].replay_progress(subscription.id, since)
    return render(
        request,
        session,
        "_progress.html",
        fragment=True,
        subscription=subscription,
        progress=progress,
        replay_since=since,
    )


async def edit_page(request: web.Request, session: Session) -> web.StreamResponse:
    subscription = await own_subscription(request)
    values = {
        "url": mask_password(subscription.url),
        "event": subscription.event,
        "headers": "\n".join(f"{k}: {v}" for k, v in subscription.headers.items()),
        "template": subscription.template or "",
        "retryOnError": subscription.retry_on_error,
        "useContactLanguage": subscription.use_contact_language,
    }
    return render(
        request,
        session,
        "subscription_form.html",
        subscription=subscription,
        values=values,
        events=EVENTS,
    )


async def update(request: web.Request, session: Session) -> web.StreamResponse:
    subscription = await own_subscription(request)
    values = await _form_values(request)
    try:
        body = parse_body(PatchWebhookBody, _webhook_fields(values, creating=False))
        await change_subscription(request, subscription, body)
    except OctoError as exc:
        return render(
            request,
            session,
            "subscription_form.html",
            status=exc.status,
            subscription=subscription,
            values=values,
            events=EVENTS,
            error=exc.message,
        )
    return redirect(request, _here(subscription), session, ("ok", "Saved."))


async def pause(request: web.Request, session: Session) -> web.StreamResponse:
    return await _set_active(request, session, False)


async def resume(request: web.Request, session: Session) -> web.StreamResponse:
    return await _set_active(request, session, True)


async def _set_active(request: web.Request, session: Session, active: bool) -> web.StreamResponse:
    subscription = await own_subscription(request)
    await change_subscription(request, subscription, PatchWebhookBody(active=active))
    text = (
        "Resumed: deliveries go out again." if active else "Paused: nothing is sent until resumed."
    )
    return redirect(request, _here(subscription), session, ("ok", text))


async def delete(request: web.Request, session: Session) -> web.StreamResponse:
    deleted = await remove_subscription(request, await own_subscription(request))
    text = f"Deleted the subscription to {mask_password(deleted.url)}."
    return redirect(request, "/console/subscriptions", session, ("ok", text))


async def send_test(request: web.Request, session: Session) -> web.StreamResponse:
    subscription = await own_subscription(request)
    outcome = await send_sample(request, subscription)
    answered = f"HTTP {outcome['status']}" if outcome["status"] else outcome["error"]
    kind = "ok" if outcome["delivered"] else "bad"
    text = f"Test {'delivered' if outcome['delivered'] else 'failed'}: {answered} in {outcome['latencyMs']:.0f} ms."
    return redirect(request, _here(subscription), session, (kind, text))


async def rotate_secret(request: web.Request, session: Session) -> web.StreamResponse:
    subscription = await rotate(request, await own_subscription(request))
    text = "New secret in use; the previous one also signs for 24 hours."
    return redirect(request, _here(subscription), session, ("ok", text))


async def replay(request: web.Request, session: Session) -> web.StreamResponse:
    subscription = await own_subscription(request)
    raw = await form_text(request, "since")
    try:
        given = datetime.fromisoformat(raw) if raw else None
    except ValueError:
        given = None
    # The form's field is UTC without an offset; a time sent with one means that moment.
    since = None
    if given is not None:
        since = given.replace(tzinfo=UTC) if given.tzinfo is None else given.astimezone(UTC)
    if since is None:
        raise bad_request("since: give a date and time (UTC)")
    replayed = await replay_since(request, subscription, since.timestamp())
    text = f"Replaying {replayed} message{'s' if replayed != 1 else ''} since {since:%Y-%m-%d %H:%M} UTC."
    return redirect(
        request, f"{_here(subscription)}?replayed={since.timestamp():.0f}", session, ("ok", text)
    )


async def message_page(request: web.Request, session: Session) -> web.StreamResponse:
    subscription = await own_subscription(request)
    store = request.app[store_key]
    message_id = request.match_info["message"]
    record = await store.get_delivery(subscription.id, message_id)
    if record is None:
        raise not_found(f"message {message_id}")
    attempts = await store.message_attempts(subscription.id, message_id)
    body, rendered_now = _body(request, record, subscription)
    return render(
        request,
        session,
        "message.html",
        subscription=subscription,
        message=record,
        body=body,
        body_shown=readable_body(body),
        rendered_now=rendered_now,
        attempts=[(a, _request_headers(request, record, subscription, a, body)) for a in attempts],
        finished=record.state in ("delivered", "dead", "skipped"),
    )


async def replay_message(request: web.Request, session: Session) -> web.StreamResponse:
    subscription = await own_subscription(request)
    message_id = request.match_info["message"]
    if not subscription.active:
        raise bad_request("subscription is paused or disabled; resume it first")
    if not await request.app[store_key].replay_delivery(subscription.id, message_id):
        raise not_found(f"finished message {message_id}")
    wake_deliverer(request)
    return redirect(
        request,
        f"{_here(subscription)}/messages/{message_id}",
        session,
        ("ok", "Queued again: the next attempt appears below when it is made."),
    )


def _body(
    request: web.Request, record: DeliveryRecord, subscription: Subscription
) -> tuple[str, bool]:
    """What was (or will be) sent: the body kept for a retry, else rendered from the stored
    event the way the worker renders it (the gateway keeps bodies only while they may be sent
    again)."""
    if record.body is not None:
        return record.body.decode("utf-8", "replace"), False
    try:
        rendered = request.app[sender_key].render_message(record, subscription)
    except Exception as exc:  # a broken template: show why, as the worker's attempt would
        return f"(cannot render: {exc})", True
    return rendered.decode("utf-8", "replace"), True


def _request_headers(
    request: web.Request,
    record: DeliveryRecord,
    subscription: Subscription,
    attempt: AttemptRecord,
    body: str,
) -> list[tuple[str, str]]:
    """The headers of an attempt as the sender builds them (at the attempt's time) and as they go
    on the wire (Host, User-Agent, the length), secrets masked."""
    sender = request.app[sender_key]
    data = body.encode()
    try:
        url, headers = sender.request(
            record.id,
            record.event,
            sender.target(record.event, record.data, subscription),
            data,
            subscription,
            now=int(attempt.attempted_at),
        )
        sent = wire_headers(URL(url), headers.items(), data)
    except Exception:  # a plugin's delivery_headers failing: show what the gateway itself sets
        sent = [("Content-Type", "application/json"), ("webhook-id", record.id)]
    return [(name, mask_header(name, value)) for name, value in sent]


def readable_body(body: str) -> str:
    """A JSON body indented, with the values of secret-looking headers in its Webhook object
    masked as in the request headers (the receiver got them; the screen needn't show them)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    webhook = doc.get("webhook") if isinstance(doc, dict) else None
    if isinstance(webhook, dict) and isinstance(webhook.get("headers"), dict):
        webhook["headers"] = {
            str(k): mask_header(str(k), str(v)) for k, v in webhook["headers"].items()
        }
    return json.dumps(doc, indent=2, ensure_ascii=False)


def mask_header(name: str, value: str) -> str:
    lowered = name.lower()
    if lowered == "webhook-signature":
        return " ".join(f"{part.split(',', 1)[0]},***" for part in value.split())
    if lowered == "authorization":
        return f"{value.split(' ', 1)[0]} ***"
    if any(word in lowered for word in SECRET_WORDS):
        return "***"
    return value


async def _form_values(request: web.Request) -> dict[str, Any]:
    form = await read_form(request)
    values: dict[str, Any] = {}
    for name in ("url", "event", "headers", "template"):
        value = form.get(name)
        values[name] = value.strip() if isinstance(value, str) else ""
    for name in ("retryOnError", "useContactLanguage"):
        values[name] = form.get(name) == "on"
    return values


def _webhook_fields(values: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    """Form values as the API's JSON body, so the API's models check them."""
    fields: dict[str, Any] = {
        "url": values["url"],
        "event": values["event"],
        "headers": _parse_headers(values["headers"]),
        "retryOnError": values["retryOnError"],
        "useContactLanguage": values["useContactLanguage"],
        "template": values["template"] or None,
    }
    if creating and fields["template"] is None:
        del fields["template"]
    return fields


def _parse_headers(text: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise bad_request(f"headers, line {number}: write it as Name: value")
        headers[name.strip()] = value.strip()
    return headers


def _here(subscription: Subscription) -> str:
    return f"/console/subscriptions/{subscription.id}"


def _float(raw: str | None) -> float | None:
    try:
        value = float(raw) if raw else None
    except ValueError:
        return None
    return value if value is not None and 0 < value < 1e11 else None


def add_routes(app: web.Application) -> None:
    base = "/console/subscriptions"
    app.router.add_get(base, page(list_page))
    app.router.add_get(f"{base}/new", page(new_page))
    app.router.add_post(base, page(create))
    app.router.add_get(base + "/{id}", page(detail_page))
    app.router.add_post(base + "/{id}", page(update))
    app.router.add_get(base + "/{id}/edit", page(edit_page))
    app.router.add_get(base + "/{id}/progress", page(progress_fragment))
    app.router.add_post(base + "/{id}/pause", page(pause))
    app.router.add_post(base + "/{id}/resume", page(resume))
    app.router.add_post(base + "/{id}/delete", page(delete))
    app.router.add_post(base + "/{id}/test", page(send_test))
    app.router.add_post(base + "/{id}/rotate", page(rotate_secret))
    app.router.add_post(base + "/{id}/replay", page(replay))
    app.router.add_get(base + "/{id}/messages/{message}", page(message_page))
    app.router.add_post(base + "/{id}/messages/{message}/replay", page(replay_message))

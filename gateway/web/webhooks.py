"""/octo/webhooks: resellers manage their own subscriptions (thin handlers over the store)."""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import Annotated, Any

from aiohttp import web
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    field_validator,
)

from gateway.appkeys import config_key, deliverer_key, sender_key, store_key
from gateway.config import ApiKey
from gateway.delivery.http_client import is_reserved_header
from gateway.delivery.netguard import UnresolvableHost, check_url
from gateway.delivery.signing import generate_secret
from gateway.delivery.templates import TemplateProblem, is_url_template
from gateway.models import EventName, Subscription, mask_password, restore_password
from gateway.samples import sample_data
from gateway.store import utcnow
from gateway.web.auth import find_api_key
from gateway.web.errors import OctoError, bad_request, describe_validation_error, not_found
from gateway.web.openapi import describe
from gateway.web.schemas import Webhook

log = logging.getLogger(__name__)

api_key_key = web.RequestKey("api_key", ApiKey)
HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
MAX_HEADERS = 50
MAX_HEADER_BYTES = 8192  # names and values together, as sent
# A field-value (RFC 9110 5.5): no control characters but horizontal tab.
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# A URL as written holds none at all (a URL template renders them percent-encoded if it must).
URL_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def plain_url(url: str | None) -> str | None:
    """Refuse a URL holding a control character: no receiver has such an address, and
    PostgreSQL cannot store a NUL (it was a 500 there)."""
    if url is not None and URL_CONTROL_CHARS.search(url):
        raise ValueError("may not contain control characters (line breaks, tabs, NUL)")
    return url


class WebhookFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    headers: dict[StrictStr, StrictStr] | None = None
    retryOnError: StrictBool | None = None
    useContactLanguage: StrictBool | None = None
    # Sent in every delivery's webhook object: bounded like the headers (OCTO's are "octo/...").
    capabilities: list[Annotated[StrictStr, Field(max_length=200)]] | None = Field(
        default=None, max_length=50
    )
    template: StrictStr | None = None


class CreateWebhookBody(WebhookFields):
    url: StrictStr = Field(max_length=2048)
    event: EventName

    _plain_url = field_validator("url")(plain_url)


class PatchWebhookBody(WebhookFields):
    url: StrictStr | None = Field(default=None, max_length=2048)
    event: EventName | None = None
    active: StrictBool | None = None

    _plain_url = field_validator("url")(plain_url)


def needs_api_key(path: str) -> bool:
    return path.startswith(("/octo", "/admin"))


def require_api_key(request: web.Request) -> None:
    """Every /octo request is a tenant's: find its key before anything else."""
    if needs_api_key(request.path):
        keys = request.app[config_key].api_keys
        request[api_key_key] = find_api_key(request.headers.get("Authorization"), keys)


def caller(request: web.Request) -> ApiKey:
    key: ApiKey = request[api_key_key]
    return key


async def read_json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        raise bad_request("request body is empty; expected a JSON object")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise bad_request("request body is nested too deeply") from None
    except ValueError as exc:  # bad JSON, bad UTF-8, or an integer of over 4300 digits
        raise bad_request(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    return body


def parse_body(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise bad_request(describe_validation_error(exc)) from None


def check_headers(headers: dict[str, str]) -> None:
    """Headers a delivery can carry: RFC 9110 names and field values, none the gateway sets
    itself, no name twice, at most MAX_HEADERS and MAX_HEADER_BYTES in all."""
    if len(headers) > MAX_HEADERS:
        raise bad_request(f"headers: at most {MAX_HEADERS} headers")
    seen: set[str] = set()
    size = 0
    for name, value in headers.items():
        if not HEADER_NAME.fullmatch(name):
            raise bad_request(f"headers.{name!r}: not a valid HTTP header name")
        lowered = name.lower()
        if is_reserved_header(name):
            raise bad_request(f"headers.{name}: set by the gateway itself; choose another header")
        if lowered in seen:
            raise bad_request(f"headers.{name}: given twice (header names ignore case)")
        seen.add(lowered)
        if CONTROL_CHARS.search(value):
            raise bad_request(
                f"headers.{name}: value may not contain line breaks or other control characters"
            )
        try:
            size += len(name) + len(value.encode("utf-8")) + 4  # "name: value\r\n"
        except UnicodeEncodeError:
            raise bad_request(f"headers.{name}: value is not valid Unicode") from None
    if size > MAX_HEADER_BYTES:
        raise bad_request(f"headers: more than {MAX_HEADER_BYTES} bytes in all")


async def check_delivery(request: web.Request, subscription: Subscription) -> None:
    """Render the subscription's body and URL templates against a sample event now, so a broken
    template is refused with 400 instead of failing every delivery later."""
    sender = request.app[sender_key]
    data = sample_data(subscription.event)
    try:
        sender.render(subscription.event, data, subscription)
    except TemplateProblem as exc:
        raise bad_request(f"template: {exc}") from None
    if is_url_template(subscription.url):
        try:
            rendered = sender.target(subscription.event, data, subscription)
        except TemplateProblem as exc:
            raise bad_request(f"url: {exc}") from None
        await check_target(request, rendered)
    else:
        await check_target(request, subscription.url)


async def check_target(request: web.Request, url: str) -> None:
    allow_private = request.app[config_key].delivery.allow_private_targets
    try:
        await check_url(url, allow_private=allow_private)
    except UnresolvableHost as exc:
        # Nothing can be reached through it now, and every delivery re-checks the address it
        # connects to, so a name that resolves later is still held to the private-address rule.
        log.warning("subscription url host does not resolve yet: %s", exc)
    except ValueError as exc:
        raise bad_request(f"url: {exc}") from None


@describe(
    "Subscribe to an event",
    tag="webhooks",
    description="400 when the api key already holds its max_subscriptions live subscriptions.",
    body=CreateWebhookBody,
    ok=Webhook,
)
async def create_webhook(request: web.Request) -> web.Response:
    body: CreateWebhookBody = parse_body(CreateWebhookBody, await read_json_object(request))
    subscription = await create_subscription(request, body)
    return web.json_response(subscription.webhook(reveal_password=True))


async def create_subscription(request: web.Request, body: CreateWebhookBody) -> Subscription:
    """Check and store a new subscription of the caller's (the API and the console both)."""
    key = caller(request)
    headers = body.headers or {}
    check_headers(headers)
    now = utcnow()
    subscription = Subscription(
        id=str(uuid.uuid4()),
        tenant=key.name,
        event=body.event,
        url=body.url,
        headers=headers,
        retry_on_error=True if body.retryOnError is None else body.retryOnError,
        use_contact_language=True if body.useContactLanguage is None else body.useContactLanguage,
        capabilities=body.capabilities or [],
        template=body.template,
        secret=generate_secret(),
        products=list(key.products),
        created_at=now,
        updated_at=now,
    )
    await check_delivery(request, subscription)
    if not await request.app[store_key].insert_subscription(
        subscription, max_per_tenant=key.max_subscriptions
    ):
        raise bad_request(
            f"this api key already has {key.max_subscriptions} webhooks, its limit"
            " (api_keys.max_subscriptions in the gateway's config); delete one first"
        )
    if deliverer_key in request.app:
        request.app[deliverer_key].slots.assign(subscription.id, subscription.tenant)
    log.info(
        "tenant %s created subscription %s (%s -> %s)",
        key.name,
        subscription.id,
        subscription.event,
        mask_password(subscription.url),
    )
    return subscription


@describe("List the caller's subscriptions", tag="webhooks", ok=list[Webhook])
async def list_webhooks(request: web.Request) -> web.Response:
    subscriptions = await request.app[store_key].list_subscriptions(caller(request).name)
    return web.json_response([s.webhook() for s in subscriptions])


async def own_subscription(request: web.Request) -> Subscription:
    """The caller's subscription named in the path; another tenant's is a 404, never a 403."""
    id = request.match_info["id"]
    subscription = await request.app[store_key].get_subscription(caller(request).name, id)
    if subscription is None:
        raise not_found(f"webhook {id}")
    return subscription


@describe("Get one subscription", tag="webhooks", ok=Webhook, errors=[404])
async def get_webhook(request: web.Request) -> web.Response:
    return web.json_response((await own_subscription(request)).webhook())


@describe(
    "Change a subscription (active: true turns a disabled one back on)",
    tag="webhooks",
    body=PatchWebhookBody,
    ok=Webhook,
    errors=[404, 409],
)
async def patch_webhook(request: web.Request) -> web.Response:
    subscription = await own_subscription(request)
    body: PatchWebhookBody = parse_body(PatchWebhookBody, await read_json_object(request))
    updated = await change_subscription(request, subscription, body)
    return web.json_response(updated.webhook())


async def change_subscription(
    request: web.Request, subscription: Subscription, body: PatchWebhookBody
) -> Subscription:
    """Apply a change to one of the caller's subscriptions (the API and the console both)."""
    changes = body.model_dump(exclude_unset=True)
    for field in ("url", "event", "active"):
        if field in changes and changes[field] is None:
            raise bad_request(f"{field}: may not be null")
    if body.headers is not None:
        check_headers(body.headers)
    try:
        # A URL sent back as GET showed it (password masked) keeps the stored password.
        url = subscription.url if body.url is None else restore_password(body.url, subscription.url)
    except ValueError as exc:
        raise bad_request(f"url: {exc}") from None
    updated = subscription.model_copy(
        update={
            "url": url,
            "event": body.event or subscription.event,
            "headers": body.headers if body.headers is not None else subscription.headers,
            "retry_on_error": _pick(body.retryOnError, subscription.retry_on_error),
            "use_contact_language": _pick(
                body.useContactLanguage, subscription.use_contact_language
            ),
            "capabilities": (
                body.capabilities if body.capabilities is not None else subscription.capabilities
            ),
            "template": body.template if "template" in changes else subscription.template,
            "active": _pick(body.active, subscription.active),
            "updated_at": utcnow(),
        }
    )
    if body.active:
        updated.disabled_reason = None
        updated.failing_since = None
    if {"url", "event", "template"} & changes.keys():
        await check_delivery(request, updated)
    await save(request, updated, subscription)
    log.info("tenant %s updated subscription %s", updated.tenant, updated.id)
    return updated


async def save(request: web.Request, updated: Subscription, read: Subscription) -> None:
    """Write a change made to what was read; a 409 if the gateway changed it meanwhile (e.g.
    disabled it after a 410), so that change is not silently undone."""
    if not await request.app[store_key].update_subscription(
        updated, expected_updated_at=read.updated_at
    ):
        raise OctoError(409, f"webhook {read.id} changed meanwhile; read it and try again")
    forget(request, read.id)


def forget(request: web.Request, id: str) -> None:
    """Tell this process's delivery workers a subscription changed."""
    if deliverer_key in request.app:
        request.app[deliverer_key].subscriptions.forget(id)


def _pick(new: bool | None, old: bool) -> bool:
    return old if new is None else new


@describe("Delete a subscription", tag="webhooks", ok=Webhook, errors=[404])
async def delete_webhook(request: web.Request) -> web.Response:
    deleted = await remove_subscription(request, await own_subscription(request))
    return web.json_response(deleted.webhook())


async def remove_subscription(request: web.Request, subscription: Subscription) -> Subscription:
    deleted = await request.app[store_key].delete_subscription(subscription.tenant, subscription.id)
    if deleted is None:
        raise not_found(f"webhook {subscription.id}")
    forget(request, deleted.id)
    if deliverer_key in request.app:  # its slots, if any, are freed by what holds them
        request.app[deliverer_key].slots.unassign(deleted.id)
    log.info("tenant %s deleted subscription %s", deleted.tenant, deleted.id)
    return deleted


def require_admin(request: web.Request) -> ApiKey:
    key = caller(request)
    if not key.admin:
        raise OctoError(403, "this api key may not use /admin endpoints")
    return key


def add_routes(app: web.Application) -> None:
    app.router.add_post("/octo/webhooks", create_webhook)
    app.router.add_get("/octo/webhooks", list_webhooks)
    app.router.add_get("/octo/webhooks/{id}", get_webhook)
    app.router.add_patch("/octo/webhooks/{id}", patch_webhook)
    app.router.add_delete("/octo/webhooks/{id}", delete_webhook)

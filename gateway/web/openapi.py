"""GET /openapi.json: the OpenAPI 3.1 document, generated from the route table and the models.

A handler says what it takes and answers with ``@describe(...)`` beside its definition; the
generator walks ``app.router`` and turns each route's description into an operation, with every
pydantic model under ``components/schemas``. A route with no description still appears (marked
``x-undescribed``), and tests/test_openapi.py fails on it, so a new route is described the day it
is added. Pages for people (the console, /docs) are left out with ``@hidden``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, TypeAdapter

from gateway import package_version
from gateway.web.schemas import OctoErrorBody

H = TypeVar("H", bound=Callable[..., Awaitable[web.StreamResponse]])
Auth = Literal["none", "api_key", "admin", "ingest_token"]
ATTRIBUTE = "__openapi__"
REF = "#/components/schemas/{model}"
PATH_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")

# What each error status means here; the body is always an OCTO error.
ERRORS = {
    400: "the request is malformed: errorMessage names the field and the problem",
    401: "missing or wrong credentials",
    403: "the api key may not do this",
    404: "no such resource (another tenant's is a 404 too)",
    409: "it changed meanwhile: read it again and retry",
    413: "the request body is over the size limit",
    429: "too many deliveries in flight: retry after Retry-After seconds",
    503: "storage is unavailable right now (nothing was stored): retry after Retry-After seconds",
}


@dataclass(frozen=True)
class Operation:
    """What one handler takes and answers; see ``describe``."""

    summary: str
    tag: str
    description: str | None = None
    auth: Auth = "none"
    body: Any = None
    body_required: bool = True
    query: type[BaseModel] | None = None
    ok: Any = None
    media: str = "application/json"
    errors: tuple[int, ...] = ()
    error_bodies: dict[int, Any] = field(default_factory=dict)
    ok_headers: dict[str, str] = field(default_factory=dict)
    path_values: Callable[[web.Application], dict[str, list[str]]] | None = None
    hidden: bool = False


def describe(
    summary: str,
    *,
    tag: str,
    description: str | None = None,
    auth: Auth = "none",
    body: Any = None,
    body_required: bool = True,
    query: type[BaseModel] | None = None,
    ok: Any = None,
    media: str = "application/json",
    errors: Iterable[int] = (),
    error_bodies: dict[int, Any] | None = None,
    ok_headers: dict[str, str] | None = None,
    path_values: Callable[[web.Application], dict[str, list[str]]] | None = None,
) -> Callable[[H], H]:
    """Describe a handler for /openapi.json.

    ``body``: the JSON request body's model (``Any`` for any JSON); ``query``: a model whose fields are the query
    parameters; ``ok``: the 200 answer's type (a model, ``list[Model]``, or None for a body that
    is not JSON, of type ``media``); ``errors``: statuses it may answer besides the ones implied
    (401 for ``auth``, 403 for ``admin``, 400 and 413 for a body); ``error_bodies``: a model
    replacing the OCTO error body for one status; ``path_values``: the values a path parameter
    can take in this app (e.g. the configured ingest sources).
    """
    operation = Operation(
        summary=summary,
        tag=tag,
        description=description,
        auth=auth,
        body=body,
        body_required=body_required,
        query=query,
        ok=ok,
        media=media,
        errors=tuple(errors),
        error_bodies=error_bodies or {},
        ok_headers=ok_headers or {},
        path_values=path_values,
    )

    def mark(handler: H) -> H:
        setattr(handler, ATTRIBUTE, operation)
        return handler

    return mark


HIDDEN = Operation(summary="", tag="", hidden=True)


def hidden(handler: H) -> H:
    """Leave a route out of the document (pages for people, their assets)."""
    setattr(handler, ATTRIBUTE, HIDDEN)
    return handler


def operation_of(handler: Any) -> Operation | None:
    found = getattr(handler, ATTRIBUTE, None)
    return found if isinstance(found, Operation) else None


def route_path(route: web.AbstractRoute) -> str:
    """The route's path in OpenAPI form: ``/octo/webhooks/{id}`` (regex parts dropped)."""
    info = route.resource.get_info() if route.resource is not None else {}
    raw = info.get("formatter") or info.get("path") or info.get("prefix") or ""
    return PATH_PARAM.sub(lambda m: "{" + m.group(1) + "}", str(raw))


def documented_routes(app: web.Application) -> list[tuple[str, str, Any]]:
    """(method, path, handler) of every route the document covers: all but HEAD (aiohttp adds
    one beside each GET) and hidden ones."""
    found: list[tuple[str, str, Any]] = []
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        op = operation_of(route.handler)
        if op is not None and op.hidden:
            continue
        methods = ["GET", "POST"] if route.method == "*" else [route.method]
        found.extend((method, route_path(route), route.handler) for method in methods)
    return found


class _Schemas:
    """Collects every type the operations name and renders their schemas in one pass, so each
    model appears once under components/schemas."""

    def __init__(self) -> None:
        self._inputs: list[
            tuple[int, Literal["validation", "serialization"], TypeAdapter[Any]]
        ] = []
        self._fills: list[tuple[int, Callable[[dict[str, Any]], None]]] = []

    def ref(
        self, tp: Any, mode: Literal["validation", "serialization"], fill: Callable[[Any], None]
    ) -> None:
        key = len(self._inputs)
        self._inputs.append((key, mode, TypeAdapter(tp)))
        self._fills.append((key, fill))

    def render(self) -> dict[str, Any]:
        if not self._inputs:
            return {}
        mapping, definitions = TypeAdapter.json_schemas(self._inputs, ref_template=REF)
        schemas_by_key = {key: schema for (key, _), schema in mapping.items()}
        for key, fill in self._fills:
            fill(schemas_by_key[key])
        defs: dict[str, Any] = definitions.get("$defs", {})
        return defs


def _json(schema_holder: dict[str, Any]) -> Callable[[Any], None]:
    def fill(schema: Any) -> None:
        schema_holder["schema"] = schema

    return fill


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """One query parameter per field; an optional field is simply not required (no null)."""
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        branches = prop.pop("anyOf", None)
        if branches is not None:
            kept = [b for b in branches if b.get("type") != "null"]
            prop.update(kept[0] if len(kept) == 1 else {"anyOf": kept})
        prop.pop("default", None)
        prop.pop("title", None)
        description = prop.pop("description", None)
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if description:
            param["description"] = description
        params.append(param)
    return params


def _operation_id(handler: Any, method: str, path: str, taken: set[str]) -> str:
    name = str(getattr(handler, "__name__", "")) or "handler"
    if name in taken:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_")
        name = f"{method.lower()}_{slug}"
    taken.add(name)
    return name


CAPABILITIES_HEADER = {
    "Octo-Capabilities": {
        "description": "the OCTO capabilities in effect (always octo/webhooks)",
        "required": True,
        "schema": {"type": "string"},
    }
}


def build_document(app: web.Application, *, needs_api_key: Callable[[str], bool]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route in ``app``."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    taken: set[str] = set()
    tags: list[str] = []
    for method, path, handler in documented_routes(app):
        op = operation_of(handler)
        entry = paths.setdefault(path, {})
        operation: dict[str, Any] = {"operationId": _operation_id(handler, method, path, taken)}
        entry[method.lower()] = operation
        values = op.path_values(app) if op is not None and op.path_values else {}
        parameters: list[dict[str, Any]] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", **({"enum": values[name]} if name in values else {})},
            }
            for name in PATH_PARAM.findall(path)
        ]
        if op is None:
            operation.update(
                {
                    "summary": "(not described)",
                    "x-undescribed": True,
                    "responses": {"default": {"description": "not described"}},
                }
            )
            if parameters:
                operation["parameters"] = parameters
            continue
        if op.tag not in tags:
            tags.append(op.tag)
        operation["summary"] = op.summary
        operation["tags"] = [op.tag]
        if op.description:
            operation["description"] = op.description
        if op.query is not None:
            parameters.extend(_query_parameters(op.query))
        if parameters:
            operation["parameters"] = parameters
        errors = set(op.errors)
        if needs_api_key(path) or op.auth in ("api_key", "admin"):
            operation["security"] = [{"apiKey": []}]
            errors.add(401)
        if needs_api_key(path):
            errors.add(503)  # every /octo and /admin operation reads or writes the store
            errors.add(400)  # and refuses a NUL in any query parameter (web/guards.py)
        if op.auth == "admin":
            errors.add(403)
        if op.auth == "ingest_token":
            operation["security"] = [{"ingestToken": []}, {"ingestTokenQuery": []}]
            errors.add(401)
        if op.auth == "none" and not needs_api_key(path):
            operation["security"] = []
        if op.body is not None and method != "GET":
            content: dict[str, Any] = {}
            operation["requestBody"] = {
                "required": op.body_required,
                "content": {"application/json": content},
            }
            schemas.ref(op.body, "validation", _json(content))
            errors.update((400, 413))
        responses: dict[str, Any] = {}
        ok: dict[str, Any] = {"description": "OK", "headers": dict(CAPABILITIES_HEADER)}
        for name, text in op.ok_headers.items():
            ok["headers"][name] = {"description": text, "schema": {"type": "string"}}
        media: dict[str, Any] = {}
        ok["content"] = {op.media: media}
        if op.ok is not None:
            schemas.ref(op.ok, "serialization", _json(media))
        else:
            media["schema"] = {"type": "string"}
        responses["200"] = ok
        for status in sorted(errors):
            answer: dict[str, Any] = {
                "description": ERRORS.get(status, "error"),
                "headers": dict(CAPABILITIES_HEADER),
            }
            if status in (429, 503):
                answer["headers"]["Retry-After"] = {
                    "description": "seconds to wait before sending again",
                    "schema": {"type": "string"},
                }
            body: dict[str, Any] = {}
            answer["content"] = {"application/json": body}
            schemas.ref(op.error_bodies.get(status, OctoErrorBody), "serialization", _json(body))
            responses[str(status)] = answer
        operation["responses"] = responses
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "octo-gateway",
            "version": package_version(),
            "description": (
                "Turns hotel PMS pushes (Channex, Beds24) into signed OCTO booking_update and"
                " availability_update webhooks. Every error answers an OCTO error body"
                ' {"error": "BAD_REQUEST", "errorMessage": "..."}.'
            ),
        },
        "tags": [{"name": tag} for tag in tags],
        "paths": paths,
        "components": {
            "schemas": schemas.render(),
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a reseller's api key (gateway.toml [[api_keys]])",
                },
                "ingestToken": {"type": "apiKey", "in": "header", "name": "X-Gateway-Token"},
                "ingestTokenQuery": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "for senders that can only put it in the URL (Beds24 v1)",
                },
            },
        },
    }

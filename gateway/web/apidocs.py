"""GET /openapi.json (the generated document) and GET /docs (that document as a page).

/docs is rendered on the server from the same document, with a stylesheet shipped in the
package: no script and nothing fetched from elsewhere, so it works on a gateway with no network.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.web.openapi import build_document, describe, hidden
from gateway.web.pages import page_environment, static_asset
from gateway.web.webhooks import needs_api_key

METHOD_ORDER = ["get", "post", "put", "patch", "delete"]


class DocumentCache:
    """The document is built once, on first use: by then every route is registered."""

    def __init__(self) -> None:
        self.document: dict[str, Any] | None = None

    def get(self, app: web.Application) -> dict[str, Any]:
        if self.document is None:
            self.document = build_document(app, needs_api_key=needs_api_key)
        return self.document


document_key = web.AppKey("openapi_document", DocumentCache)


@describe("This API described in OpenAPI 3.1", tag="operations", ok=dict[str, Any])
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[document_key].get(request.app))


@describe("This API as a page to read", tag="operations", media="text/html")
async def docs(request: web.Request) -> web.Response:
    document = request.app[document_key].get(request.app)
    page = (
        page_environment()
        .get_template("docs.html")
        .render(
            info=document["info"],
            groups=operation_groups(document),
            schemas=document["components"]["schemas"],
            label=schema_label,
        )
    )
    return web.Response(text=page, content_type="text/html")


@hidden
async def stylesheet(request: web.Request) -> web.Response:
    return web.Response(
        body=static_asset("pages.css"),
        content_type="text/css",
        headers={"Cache-Control": "max-age=3600"},
    )


def operation_groups(document: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Operations by tag, in the order tags were first used, each with its method and path."""
    groups: dict[str, list[dict[str, Any]]] = {tag["name"]: [] for tag in document["tags"]}
    for path, methods in document["paths"].items():
        for method in sorted(methods, key=METHOD_ORDER.index):
            op = methods[method]
            tag = (op.get("tags") or ["other"])[0]
            groups.setdefault(tag, []).append({"method": method, "path": path, **op})
    return [(tag, ops) for tag, ops in groups.items() if ops]


def schema_label(schema: dict[str, Any] | None) -> str:
    """A schema in a few words: a model's name, ``array of Name``, or its type."""
    if not schema:
        return "any"
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if schema.get("type") == "array":
        return f"array of {schema_label(schema.get('items'))}"
    if "enum" in schema:
        return " | ".join(str(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " | ".join(schema_label(s) for s in schema["anyOf"])
    kind = str(schema.get("type", "any"))
    return f"{kind} ({schema['format']})" if "format" in schema else kind


def add_routes(app: web.Application) -> None:
    app[document_key] = DocumentCache()
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
    app.router.add_get("/static/pages.css", stylesheet)

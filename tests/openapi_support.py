"""Helpers for tests that check answers against the generated OpenAPI document."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOC_URI = "urn:openapi"


def pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def response_validator(
    document: dict[str, Any], path: str, method: str, status: int, media: str = "application/json"
) -> Draft202012Validator:
    """A validator for one documented answer; $refs resolve inside the document."""
    registry: Registry[Any] = Registry().with_resource(
        DOC_URI, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    where = pointer("paths", path, method, "responses", str(status), "content", media, "schema")
    return Draft202012Validator({"$ref": f"{DOC_URI}#/{where}"}, registry=registry)


def assert_documented(
    document: dict[str, Any], path: str, method: str, status: int, body: Any
) -> None:
    errors = list(response_validator(document, path, method, status).iter_errors(body))
    assert not errors, f"{method.upper()} {path} {status}: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )

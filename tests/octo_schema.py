"""Test helpers for OCTO output: schema validation against the OCTO core bundle, golden files.

The bundle is found at ``$OCTO_SCHEMAS`` (the file, or a folder holding it), else at
``<repo>/../shared/octo/octo-core.schemas.json``, else at the copy in ``tests/fixtures``.
"""

from __future__ import annotations

import json
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures"
EXPECTED = FIXTURES / "expected"
BUNDLE = "octo-core.schemas.json"

UTC_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
LOCAL_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}$")


def schema_path() -> Path:
    configured = os.environ.get("OCTO_SCHEMAS")
    if configured:
        path = Path(configured)
        return path / BUNDLE if path.is_dir() else path
    shared = TESTS.parent.parent / "shared" / "octo" / BUNDLE
    return shared if shared.is_file() else FIXTURES / BUNDLE


@cache
def _validator(kind: str) -> Draft202012Validator:
    bundle = json.loads(schema_path().read_text(encoding="utf-8"))
    if kind not in bundle["$defs"]:
        raise KeyError(f"no $defs/{kind} in {schema_path()}")
    schema = {"$schema": bundle["$schema"], "$defs": bundle["$defs"], "$ref": f"#/$defs/{kind}"}
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def validate_octo(kind: str, obj: dict[str, Any]) -> None:
    """Raise AssertionError listing every way ``obj`` breaks ``$defs/<kind>`` or OCTO's rules."""
    problems = [
        f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in _validator(kind).iter_errors(obj)
    ]
    if not problems:
        problems = _rule_problems(kind, obj)
    if problems:
        raise AssertionError(f"invalid OCTO {kind}:\n" + "\n".join(problems))


def _rule_problems(kind: str, obj: dict[str, Any]) -> list[str]:
    """What OCTO validators check beyond the schema (time formats, status consistency)."""
    if kind == "Availability":
        return _availability_problems(obj)
    if kind != "Booking":
        return []
    problems = [
        f"{field}: not a UTC time {value!r}"
        for field, value in obj.items()
        if field.startswith("utc") and value is not None and not UTC_TIME.match(value)
    ]
    if obj["status"] == "CONFIRMED" and (not obj["utcConfirmedAt"] or obj["cancellation"]):
        problems.append("CONFIRMED needs utcConfirmedAt and no cancellation")
    if obj["status"] == "CANCELLED":
        cancelled_at = (obj["cancellation"] or {}).get("utcCancelledAt") or ""
        if not UTC_TIME.match(cancelled_at):
            problems.append("CANCELLED needs a cancellation with a UTC utcCancelledAt")
    if obj["availability"] is not None:
        problems += _availability_problems(obj["availability"])
        if obj["availabilityId"] != obj["availability"]["id"]:
            problems.append("availabilityId differs from availability.id")
    return problems


def _availability_problems(obj: dict[str, Any]) -> list[str]:
    problems = [
        f"{field}: not a local time with offset {obj[field]!r}"
        for field in ("localDateTimeStart", "localDateTimeEnd")
        if not LOCAL_TIME.match(obj[field])
    ]
    if not UTC_TIME.match(obj["utcCutoffAt"]):
        problems.append(f"utcCutoffAt: not a UTC time {obj['utcCutoffAt']!r}")
    if obj["id"] != obj["localDateTimeStart"]:
        problems.append("id differs from localDateTimeStart")
    return problems


def fixture_path(name: str) -> Path:
    """A vendor sample lives with its plugin (``plugins/<vendor>/samples``); anything else here."""
    vendor = name.split("-", 1)[0]
    sample = TESTS.parent / "plugins" / vendor / "samples" / name
    return sample if sample.is_file() else FIXTURES / name


def load_fixture(name: str) -> Any:
    return json.loads(fixture_path(name).read_text(encoding="utf-8"))


def assert_golden(name: str, actual: Any) -> None:
    """Compare with ``expected/<name>``; ``OCTO_UPDATE_GOLDEN=1`` (re)writes it instead."""
    path = EXPECTED / name
    if os.environ.get("OCTO_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert path.is_file(), f"no {path}: run once with OCTO_UPDATE_GOLDEN=1, then review it"
    assert actual == json.loads(path.read_text(encoding="utf-8"))

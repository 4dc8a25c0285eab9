"""The Jinja2 environment for pages people read (/docs, /console): templates and assets shipped
in the package under gateway/web/templates and gateway/web/static, autoescaped.

It is not the sandboxed environment that renders tenants' webhook templates: these templates are
the gateway's own, and every value a tenant or a PMS supplied is escaped when shown.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader

STATIC = resources.files("gateway.web").joinpath("static")


@cache
def page_environment() -> Environment:
    env = Environment(
        loader=PackageLoader("gateway.web", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pretty"] = pretty_json
    env.filters["when"] = when
    return env


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def when(value: float | datetime | None) -> str:
    """A moment as people read it in an operator's log: UTC, to the second."""
    if value is None:
        return "—"
    moment = value if isinstance(value, datetime) else datetime.fromtimestamp(value, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def static_asset(name: str) -> bytes:
    """A file shipped under gateway/web/static (names come from the route table, not users)."""
    return STATIC.joinpath(name).read_bytes()

"""Jinja2 URL and body templates, rendered in a sandbox with StrictUndefined.

The built-in body templates (``booking_update.json.j2`` and ``availability_update.json.j2``) ship in
the ``gateway_templates`` package; an operator's templates folder, when configured, is searched first,
so a file there overrides a built-in one of the same name. A subscription may name another template. A subscription URL
that contains ``{{`` is a URL template rendered per event. Templates are checked when they are set, by
rendering them against a sample event, so a broken one is refused then rather than at delivery time.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import orjson
from jinja2.sandbox import ImmutableSandboxedEnvironment

DEFAULT_TEMPLATES = {
    "booking_update": "booking_update.json.j2",
    "availability_update": "availability_update.json.j2",
}
TEMPLATE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class TemplateProblem(ValueError):
    """A template that can't be used; the message says which and why."""


def to_json(value: Any) -> str:
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()  # filters receive undefined values without failing
    try:
        return orjson.dumps(value).decode("utf-8")
    except TypeError:  # what orjson refuses (e.g. integers over 64 bits), json still writes
        return json.dumps(value, ensure_ascii=False)


def is_url_template(url: str) -> bool:
    return "{{" in url or "{%" in url


def builtin_templates_dir() -> Path:
    """The folder of the shipped templates (the top-level ``templates/`` of the repository)."""
    return Path(str(resources.files("gateway_templates")))


class Templates:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        builtin = builtin_templates_dir()
        folders = [builtin] if directory is None else [directory, builtin]
        self.env = ImmutableSandboxedEnvironment(
            loader=jinja2.FileSystemLoader([str(folder) for folder in folders]),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            auto_reload=False,  # no stat() of the file per delivery; restart to pick up edits
            keep_trailing_newline=False,
        )
        self.env.filters["json"] = to_json
        self._url_cache: dict[str, jinja2.Template] = {}

    def body_template(self, event: str, name: str | None) -> jinja2.Template:
        template_name = name or DEFAULT_TEMPLATES[event]
        if not set(template_name) <= TEMPLATE_NAME_CHARS or template_name.startswith("."):
            raise TemplateProblem(
                f"template {template_name!r}: use a plain file name in the templates folder"
            )
        try:
            return self.env.get_template(template_name)
        except jinja2.TemplateNotFound:
            raise TemplateProblem(
                f"template {template_name!r} not found"
                + (f" in {self.directory} or the built-in templates" if self.directory else "")
            ) from None
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateProblem(
                f"template {template_name!r} line {exc.lineno}: {exc.message}"
            ) from None

    def render_body(self, event: str, name: str | None, context: dict[str, Any]) -> bytes:
        """Render a delivery body; it must be valid JSON."""
        template = self.body_template(event, name)
        label = name or DEFAULT_TEMPLATES[event]
        try:
            text = template.render(context)
        except (jinja2.TemplateError, TypeError, ValueError) as exc:
            raise TemplateProblem(f"template {label!r}: {exc}") from None
        try:
            orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise TemplateProblem(f"template {label!r} does not render valid JSON: {exc}") from None
        return text.encode("utf-8")

    def render_url(self, url: str, context: dict[str, Any]) -> str:
        if not is_url_template(url):
            return url
        template = self._url_cache.get(url)
        try:
            if template is None:
                template = self.env.from_string(url)
                self._url_cache[url] = template
            return template.render(context).strip()
        except (jinja2.TemplateError, TypeError, ValueError) as exc:
            raise TemplateProblem(f"url template: {exc}") from None

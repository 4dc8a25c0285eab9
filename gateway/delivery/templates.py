"""Jinja2 URL and body templates, rendered in a sandbox with StrictUndefined, within bounds.

The built-in body templates (``booking_update.json.j2`` and ``availability_update.json.j2``) ship in
the ``gateway_templates`` package; an operator's templates folder, when configured, is searched first,
so a file there overrides a built-in one of the same name. A subscription may name another template. A subscription URL
that contains ``{{`` is a URL template rendered per event. Templates are checked when they are set, by
rendering them against a sample event, so a broken one is refused then rather than at delivery time.

URL templates are written by tenants, so they are held to a small grammar checked on the parsed
template before it is ever rendered: ``{{ ... }}`` expressions only (no ``{% %}`` statements, so no
loops), made of names of the event, attribute and item look-ups, constants, ``~``, ``if``/``else``,
comparisons, ``and``/``or``/``not``, and a few filters that never grow their input (``lower``,
``urlencode``, ``default``...), naming at most ``MAX_URL_NAMES`` values. No calls, no arithmetic,
no ``range``. Rendering such a template touches each value it names once, so it costs at most a
few times what building the body costs, on the event loop; and what it renders is capped at
``MAX_URL_CHARS``.
Body templates are the operator's files; their output is capped at ``MAX_BODY_CHARS`` while it is
generated, and in every template ``*`` and ``**`` refuse results that would be huge.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import orjson
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

DEFAULT_TEMPLATES = {
    "booking_update": "booking_update.json.j2",
    "availability_update": "availability_update.json.j2",
}
TEMPLATE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
MAX_URL_CHARS = 4096  # what a URL template may render to
# Values a URL template may name: each may stand for the whole booking (``booking ~ booking ~ ...``
# stringifies it once per name, before the output cap sees anything), so this bounds a render's
# time and memory to a few times the event's size.
MAX_URL_NAMES = 16
MAX_BODY_CHARS = 8 * 1024 * 1024  # what a body template may render to
MAX_REPEAT = 1024 * 1024  # the longest string or list ``*`` may make
MAX_POWER_BITS = 4096  # the largest integer ``**`` may make
URL_CACHE_SIZE = 4096
# Filters a URL template may use: none makes its output much larger than its input.
URL_FILTERS = frozenset(
    {
        "default",
        "d",
        "lower",
        "upper",
        "trim",
        "urlencode",
        "string",
        "int",
        "length",
        "count",
        "first",
        "last",
        "truncate",
    }
)
URL_TESTS = frozenset({"defined", "undefined", "none", "string", "number", "true", "false"})
# Expression nodes a URL template may contain (checked on the parsed template).
URL_NODES: tuple[type[nodes.Node], ...] = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Const,
    nodes.Getattr,
    nodes.Getitem,
    nodes.Filter,
    nodes.Test,
    nodes.CondExpr,
    nodes.Concat,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.Keyword,
)


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


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, with ``*`` and ``**`` refusing results that would take seconds or gigabytes
    (``'x' * 10**9``, ``9 ** 9 ** 9``)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*" and _repeats(left, right) > MAX_REPEAT:
            raise SecurityError(f"'*' would make more than {MAX_REPEAT} items")
        if operator == "**" and _power_bits(left, right) > MAX_POWER_BITS:
            raise SecurityError(f"'**' would make a number of more than {MAX_POWER_BITS} bits")
        return super().call_binop(context, operator, left, right)


def _repeats(left: Any, right: Any) -> int:
    """How many items ``left * right`` makes when it repeats a sequence (else 0)."""
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, (str, bytes, list, tuple)) and isinstance(times, int):
            return len(seq) * max(times, 0)
    return 0


def _power_bits(left: Any, right: Any) -> int:
    """About how many bits ``left ** right`` has, for integers (else 0)."""
    if isinstance(left, int) and isinstance(right, int) and right > 0:
        return int(max(abs(left), 1).bit_length() * right)
    return 0


def check_url_template(env: jinja2.Environment, url: str) -> None:
    """Refuse what a URL template may not contain (see the module docstring): TemplateProblem
    naming the first thing found."""
    try:
        tree = env.parse(url)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateProblem(f"url template: {exc.message}") from None
    except RecursionError:
        raise TemplateProblem("url template: nested too deeply") from None
    names = sum(1 for _ in tree.find_all(nodes.Name))
    if names > MAX_URL_NAMES:
        raise TemplateProblem(
            f"url template: names {names} values; at most {MAX_URL_NAMES} are allowed"
        )
    stack: list[nodes.Node] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, nodes.Template):
            if not all(isinstance(child, nodes.Output) for child in node.body):
                raise TemplateProblem(
                    "url template: only {{ ... }} expressions are allowed, no {% %} statements"
                )
        elif not isinstance(node, URL_NODES):
            raise TemplateProblem(
                f"url template: {_describe(node)} is not allowed; use names of the event, "
                "look-ups, constants, ~, if/else, comparisons and the filters "
                + ", ".join(sorted(URL_FILTERS))
            )
        elif isinstance(node, nodes.Name) and node.name in env.globals:
            raise TemplateProblem(f"url template: {node.name!r} is not allowed")
        elif isinstance(node, nodes.Filter) and node.name not in URL_FILTERS:
            raise TemplateProblem(f"url template: the filter {node.name!r} is not allowed")
        elif isinstance(node, nodes.Test) and node.name not in URL_TESTS:
            raise TemplateProblem(f"url template: the test {node.name!r} is not allowed")
        elif isinstance(node, (nodes.Filter, nodes.Test)) and (node.dyn_args or node.dyn_kwargs):
            raise TemplateProblem("url template: *args and **kwargs are not allowed")
        stack.extend(node.iter_child_nodes())


def _describe(node: nodes.Node) -> str:
    names: dict[type[nodes.Node], str] = {
        nodes.Call: "calling a function",
        nodes.Mul: "'*'",
        nodes.Pow: "'**'",
        nodes.Add: "'+'",
        nodes.Sub: "'-'",
        nodes.Div: "'/'",
        nodes.FloorDiv: "'//'",
        nodes.Mod: "'%'",
        nodes.Slice: "slicing",
    }
    return names.get(type(node), f"{type(node).__name__.lower()}")


def builtin_templates_dir() -> Path:
    """The folder of the shipped templates (the top-level ``templates/`` of the repository)."""
    return Path(str(resources.files("gateway_templates")))


class Templates:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        builtin = builtin_templates_dir()
        folders = [builtin] if directory is None else [directory, builtin]
        self.env = BoundedSandbox(
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
            # Tenants read this (API answers, attempts in the console): no server paths in it.
            raise TemplateProblem(
                f"template {template_name!r} not found"
                + (" in the templates folder or the built-in templates" if self.directory else "")
            ) from None
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateProblem(
                f"template {template_name!r} line {exc.lineno}: {exc.message}"
            ) from None

    def render_body(self, event: str, name: str | None, context: dict[str, Any]) -> bytes:
        """Render a delivery body; it must be valid JSON, of at most ``MAX_BODY_CHARS``."""
        template = self.body_template(event, name)
        label = name or DEFAULT_TEMPLATES[event]
        try:
            text = _render(template, context, MAX_BODY_CHARS)
        except RENDER_ERRORS as exc:
            raise TemplateProblem(f"template {label!r}: {exc}") from None
        try:
            orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise TemplateProblem(f"template {label!r} does not render valid JSON: {exc}") from None
        return text.encode("utf-8")

    def url_template(self, url: str) -> jinja2.Template:
        """The compiled URL template, checked against the URL grammar first (so one stored before
        the grammar existed is refused at delivery, never run)."""
        template = self._url_cache.get(url)
        if template is None:
            check_url_template(self.env, url)
            try:
                template = self.env.from_string(url)
            except (jinja2.TemplateError, RecursionError) as exc:
                raise TemplateProblem(f"url template: {exc}") from None
            if len(self._url_cache) >= URL_CACHE_SIZE:
                self._url_cache.pop(next(iter(self._url_cache)))
            self._url_cache[url] = template
        return template

    def render_url(self, url: str, context: dict[str, Any]) -> str:
        if not is_url_template(url):
            return url
        template = self.url_template(url)
        try:
            return _render(template, context, MAX_URL_CHARS).strip()
        except RENDER_ERRORS as exc:
            raise TemplateProblem(f"url template: {exc}") from None


class OutputTooLarge(ValueError):
    pass


# What rendering in the sandbox may raise on bad data or a refused operation: a template problem.
RENDER_ERRORS = (
    jinja2.TemplateError,
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
    RecursionError,
)


def _render(template: jinja2.Template, context: dict[str, Any], limit: int) -> str:
    """Render, giving up as soon as the output passes ``limit`` characters."""
    parts: list[str] = []
    size = 0
    for part in template.generate(context):
        size += len(part)
        if size > limit:
            raise OutputTooLarge(f"renders to more than {limit} characters")
        parts.append(part)
    return "".join(parts)

"""The delivery hot path's one fast path: render a body once per (event, template) and splice each
subscription's ``webhook`` object in, instead of one Jinja2 render per delivery.

A body template depends on the subscription only through ``webhook``. When its only use of it is
``{{ webhook | json }}`` (the shipped templates), the body is rendered once with a unique marker in
its place, and each delivery joins the pieces around that marker with the subscription's webhook
JSON: byte for byte what a full render gives. Any other use (``webhook.id``, a loop, a ``set``,
``include``/``extends`` that could hide one), a replaced ``json`` filter, or a plugin implementing
``render_payload`` (it sees each subscription) makes that template render per delivery as before.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jinja2
from jinja2 import nodes

from gateway.delivery.templates import Templates, to_json

MARK = f"octo-webhook-{uuid.uuid4().hex}"  # random per process: no event data can contain it
MARK_JSON = to_json(MARK)
CACHED_EVENTS = 2048  # rendered events kept; a burst's deliveries of one event come close together


def webhook_only_as_json(env: jinja2.Environment, source: str) -> bool:
    """True when the template uses ``webhook`` only as ``{{ webhook | json }}``."""
    tree = env.parse(source)
    if any(tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport))):
        return False
    spliced: set[int] = set()
    for output in tree.find_all(nodes.Output):
        for child in output.nodes:
            if (
                isinstance(child, nodes.Filter)
                and child.name == "json"
                and not child.args
                and not child.kwargs
                and child.dyn_args is None
                and child.dyn_kwargs is None
                and isinstance(child.node, nodes.Name)
                and child.node.name == "webhook"
                and child.node.ctx == "load"
            ):
                spliced.add(id(child.node))
    return all(id(name) in spliced for name in tree.find_all(nodes.Name) if name.name == "webhook")


class Spliced:
    """Bodies rendered once per (event, template), with the webhook spliced in per delivery."""

    def __init__(self, templates: Templates, per_subscription_hooks: bool) -> None:
        self.templates = templates
        self.enabled = not per_subscription_hooks
        self._spliceable: dict[tuple[str, str | None], bool] = {}
        self._pieces: OrderedDict[tuple[int, str | None], list[str]] = OrderedDict()

    def spliceable(self, event: str, template_name: str | None) -> bool:
        key = (event, template_name)
        known = self._spliceable.get(key)
        if known is None:
            known = self.enabled and self._check(event, template_name)
            self._spliceable[key] = known
        return known

    def _check(self, event: str, template_name: str | None) -> bool:
        env = self.templates.env
        if env.filters.get("json") is not to_json:  # a plugin's own json filter
            return False
        template = self.templates.body_template(event, template_name)
        if env.loader is None or template.name is None:
            return False
        source, _, _ = env.loader.get_source(env, template.name)
        try:
            return webhook_only_as_json(env, source)
        except jinja2.TemplateSyntaxError:
            return False

    def render(
        self,
        event_seq: int,
        template_name: str | None,
        webhook_json: str,
        render_once: Callable[[Any], bytes],
    ) -> bytes:
        """The body for one delivery; ``render_once(webhook)`` renders the event's body with
        ``webhook`` in the context (called with the marker, once per event and template)."""
        key = (event_seq, template_name)
        pieces = self._pieces.get(key)
        if pieces is None:
            pieces = render_once(MARK).decode("utf-8").split(MARK_JSON)
            self._pieces[key] = pieces
            if len(self._pieces) > CACHED_EVENTS:
                self._pieces.popitem(last=False)
        return webhook_json.join(pieces).encode("utf-8")

"""The only caller of ``pm.hook.*``: calls plugins and checks what they hand back."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pluggy
from aiohttp import web

from gateway.plugins import PluginError
from gateway.sources import Source

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    plugin: str


class Hooks:
    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        # Source name -> the plugin that registered it, filled by sources().
        self.source_owners: dict[str, str] = {}

    def implemented(self, hook_name: str) -> bool:
        """Whether any plugin implements ``hook_name`` (the delivery path skips building what an
        unimplemented hook would be handed)."""
        caller: Any = getattr(self.pm.hook, hook_name)
        return bool(caller.get_hookimpls())

    def _impls(self, hook_name: str) -> list[Any]:
        caller: Any = getattr(self.pm.hook, hook_name)
        return list(reversed(caller.get_hookimpls()))

    def sources(self) -> dict[str, Source]:
        """Every registered source by name; a source missing its methods or a taken name fails."""
        found: dict[str, Source] = {}
        for impl in self._impls("register_sources"):

            def register(source: Any, plugin: str = impl.plugin_name) -> None:
                name = getattr(source, "name", None)
                if not isinstance(name, str) or not name.isidentifier():
                    raise PluginError(
                        f"plugin {plugin}: a source needs a name made of letters, digits and _"
                    )
                for method in ("check_settings", "accept", "process", "acknowledge"):
                    if not callable(getattr(source, method, None)):
                        raise PluginError(
                            f"plugin {plugin}: source {name!r} has no {method}() method"
                        )
                if name in found:
                    raise PluginError(f"plugin {plugin}: source {name!r} is already registered")
                found[name] = source
                self.source_owners[name] = plugin

            impl.function(register=register)
        return found

    def routes(self) -> list[Route]:
        routes: list[Route] = []
        for impl in self._impls("register_routes"):

            def register(
                method: str, path: str, handler: Handler, plugin: str = impl.plugin_name
            ) -> None:
                if (
                    method.upper() not in METHODS
                    or not path.startswith("/")
                    or not callable(handler)
                ):
                    raise PluginError(f"plugin {plugin}: bad route {method} {path}")
                routes.append(Route(method.upper(), path, handler, plugin))

            impl.function(register=register)
        return routes

    def prepare_jinja2_environment(self, env: Any) -> None:
        self.pm.hook.prepare_jinja2_environment(env=env)

    def render_payload(
        self, event: str, payload: dict[str, Any], subscription: Any
    ) -> dict[str, Any]:
        result = self.pm.hook.render_payload(
            event=event, payload=payload, subscription=subscription
        )
        if result is None:
            return payload
        if not isinstance(result, dict):
            raise TypeError(
                f"render_payload must return a dict or None, not {type(result).__name__}"
            )
        return result

    def delivery_headers(self, event: str, subscription: Any, body: bytes) -> dict[str, str]:
        headers: dict[str, str] = {}
        for result in self.pm.hook.delivery_headers(
            event=event, subscription=subscription, body=body
        ):
            if result is None:
                continue
            if not isinstance(result, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in result.items()
            ):
                raise TypeError("delivery_headers must return dict[str, str] or None")
            headers.update(result)
        return headers

    def delivery_attempted(self, attempt: Any) -> None:
        try:
            self.pm.hook.delivery_attempted(attempt=attempt)
        except Exception:
            # An observer's bug must never affect delivery.
            log.exception("a delivery_attempted hook failed")

    async def startup(self, app: web.Application) -> None:
        for result in self.pm.hook.startup(app=app):
            if inspect.isawaitable(result):
                await result

    def describe(self) -> list[dict[str, Any]]:
        """Plugins and the hooks each implements, for `gateway plugins`."""
        described = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda item: item[0]):
            hooks = sorted(impl.name for impl in self.pm.get_hookcallers(plugin) or [])
            described.append({"name": name, "hooks": hooks})
        return described

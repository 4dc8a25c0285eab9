"""The only caller of ``pm.hook.*``: calls plugins and checks what they hand back.

Every hook is called through pluggy, so wrapper implementations (``@hookimpl(wrapper=True)`` or
``hookwrapper=True``) run around the others as pluggy promises. For the ``register_*`` hooks the
callback finds out which plugin is calling it from the call stack (the frame of that plugin's
implementation), so each source and route is attributed to the plugin that registered it.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from types import CodeType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import jinja2
import pluggy
from aiohttp import web

from gateway.hookspecs import Handler
from gateway.models import Subscription
from gateway.plugins import PluginError
from gateway.sources import Source

if TYPE_CHECKING:
    from gateway.delivery.worker import Attempt

log = logging.getLogger(__name__)

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
SOURCE_METHODS = ("check_settings", "accept", "process", "acknowledge")
T = TypeVar("T")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    plugin: str


class Registry(Generic[T]):
    """What plugins hand a ``register`` callback during one call of a ``register_*`` hook, each
    item with the plugin that gave it."""

    def __init__(self, pm: pluggy.PluginManager, hook: str) -> None:
        self.pm = pm
        self.hook = hook
        self.items: list[tuple[str, T]] = []
        self.closed = False
        # The code of each implementation, to find the calling one on the stack.
        self.owners: dict[CodeType, str] = {}
        caller: pluggy.HookCaller = getattr(pm.hook, hook)
        for impl in caller.get_hookimpls():
            code = getattr(inspect.unwrap(impl.function), "__code__", None)
            if isinstance(code, CodeType):
                self.owners[code] = impl.plugin_name

    def add(self, item: T) -> None:
        if self.closed:
            raise PluginError(
                f"register() called after {self.hook} returned: a plugin must register during"
                " the hook call"
            )
        self.items.append((_calling_plugin(self.owners), item))

    def close(self) -> list[tuple[str, T]]:
        """The items in the order the plugins were loaded (pluggy calls the last loaded first;
        the built-ins load first, so they come first here)."""
        self.closed = True
        order = {name: index for index, (name, _) in enumerate(self.pm.list_name_plugin())}
        return sorted(self.items, key=lambda entry: order.get(entry[0], len(order)))


class Hooks:
    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        # Source name -> the plugin that registered it, filled by sources().
        self.source_owners: dict[str, str] = {}

    def implemented(self, hook_name: str) -> bool:
        """Whether any plugin implements ``hook_name`` (the delivery path skips building what an
        unimplemented hook would be handed)."""
        caller: pluggy.HookCaller = getattr(self.pm.hook, hook_name)
        return bool(caller.get_hookimpls())

    def sources(self) -> dict[str, Source]:
        """Every registered source by name; a source missing its methods or a taken name fails."""
        registry: Registry[Source] = Registry(self.pm, "register_sources")

        def register(source: Source) -> None:
            registry.add(source)

        self.pm.hook.register_sources(register=register)
        found: dict[str, Source] = {}
        owners: dict[str, str] = {}
        for plugin, source in registry.close():
            name = getattr(source, "name", None)
            if not isinstance(name, str) or not name.isidentifier():
                raise PluginError(
                    f"plugin {plugin}: a source needs a name made of letters, digits and _"
                )
            for method in SOURCE_METHODS:
                if not callable(getattr(source, method, None)):
                    raise PluginError(f"plugin {plugin}: source {name!r} has no {method}() method")
            if name in found:
                raise PluginError(
                    f"plugin {plugin}: source {name!r} is already registered by {owners[name]}"
                )
            found[name] = source
            owners[name] = plugin
        self.source_owners = owners
        return found

    def routes(self) -> list[Route]:
        registry: Registry[tuple[str, str, Handler]] = Registry(self.pm, "register_routes")

        def register(method: str, path: str, handler: Handler) -> None:
            registry.add((method, path, handler))

        self.pm.hook.register_routes(register=register)
        routes: list[Route] = []
        for plugin, (method, path, handler) in registry.close():
            if (
                not isinstance(method, str)
                or method.upper() not in METHODS
                or not isinstance(path, str)
                or not path.startswith("/")
                or not callable(handler)
            ):
                raise PluginError(f"plugin {plugin}: bad route {method} {path}")
            routes.append(Route(method.upper(), path, handler, plugin))
        return routes

    def prepare_jinja2_environment(self, env: jinja2.Environment) -> None:
        self.pm.hook.prepare_jinja2_environment(env=env)

    def render_payload(
        self, event: str, payload: dict[str, Any], subscription: Subscription
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

    def delivery_headers(
        self, event: str, subscription: Subscription, body: bytes
    ) -> dict[str, str]:
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

    def delivery_attempted(self, attempt: Attempt) -> None:
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


def _calling_plugin(owners: dict[CodeType, str]) -> str:
    """The plugin whose hook implementation is on the call stack (it may have called a helper that
    called ``register``)."""
    frame = inspect.currentframe()
    while frame is not None:
        plugin = owners.get(frame.f_code)
        if plugin is not None:
            return plugin
        frame = frame.f_back
    return "(unknown)"

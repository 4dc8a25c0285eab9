"""Every hook is documented and tested; plugins load from drop-ins and entry points."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pluggy
import pytest
from aiohttp import web

from gateway import hookspecs
from gateway.app import create_app
from gateway.appkeys import hooks_key, sender_key, store_key, templates_key
from gateway.hooks import Hooks
from gateway.hookspecs import RegisterRoute, RegisterSource, hookimpl
from gateway.plugins import PluginError, make_plugin_manager
from gateway.samples import sample_data
from gateway.sources import AcceptedPush, IncomingPush, Outcome, StoredPush
from tests.conftest import AUTH_A, AUTH_ADMIN, REPO

HOOKS = sorted(
    name
    for name, value in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(value, "gateway_spec")
)
DOCS = (REPO / "docs" / "plugin_hooks.md").read_text()


def test_hookspecs_found() -> None:
    assert "register_sources" in HOOKS and len(HOOKS) >= 7


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_is_documented_with_its_signature(name: str) -> None:
    params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
    assert f"## {name}({params})" in DOCS


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_has_a_test(name: str) -> None:
    assert f"def test_hook_{name}(" in Path(__file__).read_text()


def manager(*plugins: object, plugins_dir: Path | None = None) -> pluggy.PluginManager:
    pm = make_plugin_manager(plugins_dir)
    for plugin in plugins:
        pm.register(plugin)
    return pm


async def eventually(check: Any, timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


class EchoSource:
    """A minimal source: any JSON body, no events."""

    name = "echo"

    def check_settings(self, settings: Any) -> None:
        return None

    def accept(self, push: IncomingPush) -> AcceptedPush:
        return AcceptedPush(kind="echo", payload={"size": len(push.body)})

    async def process(self, push: StoredPush, context: Any) -> Outcome:
        return Outcome(note=f"echo of {push.payload['size']} bytes")

    async def acknowledge(self, outcome: Outcome, context: Any) -> None:
        return None


async def test_hook_register_sources(aiohttp_client: Any, make_config: Any) -> None:
    class Plugin:
        @hookimpl
        def register_sources(self, register: Any) -> None:
            register(EchoSource())

    config = make_config(sources={"echo": {"token": "echo-token"}})
    client = await aiohttp_client(create_app(config, pm=manager(Plugin())))
    response = await client.post(
        "/ingest/echo", data=b"hello", headers={"X-Gateway-Token": "echo-token"}
    )
    assert response.status == 200
    push_id = (await response.json())["id"]

    async def processed() -> Any:
        answer = await client.get(f"/admin/pushes/{push_id}", headers=AUTH_ADMIN)
        body = await answer.json()
        return body if body["state"] == "processed" else None

    body = await eventually(processed)
    assert body["note"] == "echo of 5 bytes"


def test_register_sources_validates() -> None:
    class Nameless:
        @hookimpl
        def register_sources(self, register: Any) -> None:
            register(object())

    with pytest.raises(PluginError, match="a source needs a name"):
        create_app_with(Nameless())


def create_app_with(plugin: object) -> None:
    Hooks(manager(plugin)).sources()


def _register_echo(register: RegisterSource) -> None:
    """A helper a hook implementation calls: the source is still its plugin's."""
    register(EchoSource())


def test_wrapper_implementations_are_called_through_pluggy() -> None:
    calls: list[str] = []

    async def wrapped(request: web.Request) -> web.Response:
        return web.json_response({})

    class NewStyle:
        @hookimpl(wrapper=True)
        def register_sources(self, register: RegisterSource) -> Generator[None, None, None]:
            calls.append("new: before")
            result = yield
            _register_echo(register)  # after every other implementation
            calls.append("new: after")
            return result

    class OldStyle:
        @hookimpl(hookwrapper=True)
        def register_routes(self, register: RegisterRoute) -> Generator[None, Any, None]:
            calls.append("old: before")
            yield
            register("GET", "/wrapped", wrapped)

    pm = manager()
    pm.register(NewStyle(), name="new-style")
    pm.register(OldStyle(), name="old-style")
    hooks = Hooks(pm)
    sources = hooks.sources()
    routes = hooks.routes()
    assert calls == ["new: before", "new: after", "old: before"]
    assert {"channex", "beds24", "echo"} <= set(sources)
    assert hooks.source_owners == {"channex": "channex", "beds24": "beds24", "echo": "new-style"}
    [route] = [r for r in routes if r.path == "/wrapped"]
    assert route.plugin == "old-style"
    # Built-ins first, in the order plugins loaded, whatever order pluggy called them in.
    assert list(sources)[-1] == "echo"
    assert routes[0].plugin == "gateway.sandbox"


def test_register_after_the_hook_returned_is_refused() -> None:
    kept: list[RegisterSource] = []

    class Keeper:
        @hookimpl
        def register_sources(self, register: RegisterSource) -> None:
            kept.append(register)

    pm = manager()
    pm.register(Keeper(), name="keeper")
    Hooks(pm).sources()
    with pytest.raises(PluginError, match=re.escape("register() called after register_sources")):
        kept[0](EchoSource())


def test_a_taken_source_name_names_both_plugins() -> None:
    class Again:
        @hookimpl
        def register_sources(self, register: RegisterSource) -> None:
            register(EchoSource())
            register(EchoSource())

    pm = manager()
    pm.register(Again(), name="again")
    with pytest.raises(
        PluginError, match="plugin again: source 'echo' is already registered by again"
    ):
        Hooks(pm).sources()


async def test_hook_register_routes(aiohttp_client: Any, make_config: Any) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    class Plugin:
        @hookimpl
        def register_routes(self, register: Any) -> None:
            register("GET", "/hello", hello)

    client = await aiohttp_client(create_app(make_config(), pm=manager(Plugin())))
    response = await client.get("/hello")
    assert await response.json() == {"hello": "world"}
    assert response.headers["Octo-Capabilities"] == "octo/webhooks"


async def test_hook_prepare_jinja2_environment(aiohttp_client: Any, make_config: Any) -> None:
    class Plugin:
        @hookimpl
        def prepare_jinja2_environment(self, env: Any) -> None:
            env.filters["shout"] = lambda text: str(text).upper()

    app = create_app(make_config(), pm=manager(Plugin()))
    template = app[templates_key].env.from_string("{{ 'quiet' | shout }}")
    assert template.render() == "QUIET"


async def test_hook_render_payload(aiohttp_client: Any, make_config: Any) -> None:
    class Plugin:
        @hookimpl
        def render_payload(
            self, event: str, payload: dict[str, Any], subscription: Any
        ) -> dict[str, Any]:
            return {**payload, "diff": [{"op": "add", "path": "/x", "was": "null", "value": event}]}

    client = await aiohttp_client(create_app(make_config(), pm=manager(Plugin())))
    sender = client.app[sender_key]
    subscription = await subscribed(client, "booking_update")
    body = sender.render("booking_update", sample_data("booking_update"), subscription)
    assert json.loads(body)["diff"][0]["value"] == "booking_update"


async def subscribed(client: Any, event: str, url: str = "https://93.184.216.34/hook") -> Any:
    response = await client.post(
        "/octo/webhooks", json={"url": url, "event": event}, headers=AUTH_A
    )
    webhook = await response.json()
    return await client.app[store_key].get_subscription(None, webhook["id"])


async def test_hook_delivery_headers(
    aiohttp_client: Any, aiohttp_server: Any, make_config: Any
) -> None:
    seen: list[dict[str, str]] = []

    async def receive(request: web.Request) -> web.Response:
        # Every value of a name sent twice, joined, so a second one shows.
        seen.append({name: ", ".join(request.headers.getall(name)) for name in request.headers})
        return web.Response(text="ok")

    receiver = web.Application()
    receiver.router.add_post("/hook", receive)
    server = await aiohttp_server(receiver)

    class Plugin:
        @hookimpl
        def delivery_headers(self, event: str, subscription: Any, body: bytes) -> dict[str, str]:
            return {
                "X-Plugin": f"{event}:{len(body)}",
                "webhook-id": "forged",
                "Webhook-Signature": "v1,forged",  # another case is the same header
                "Content-Length": "1",  # would reframe the request
                "content-type": "text/plain",
            }

    config = make_config(delivery={"allow_private_targets": True})
    client = await aiohttp_client(create_app(config, pm=manager(Plugin()), workers=False))
    subscription = await subscribed(client, "booking_update", str(server.make_url("/hook")))
    response = await client.post(f"/octo/webhooks/{subscription.id}/test", headers=AUTH_A)
    assert (await response.json())["status"] == 200
    assert seen[0]["X-Plugin"].startswith("booking_update:")
    assert seen[0]["webhook-id"].startswith("msg_test_")  # signature headers win over plugins
    assert len(seen) == 1 and seen[0]["X-Plugin"] == f"booking_update:{seen[0]['Content-Length']}"
    assert "forged" not in seen[0]["webhook-signature"]
    assert seen[0]["Content-Type"] == "application/json"


async def test_hook_delivery_attempted(
    aiohttp_client: Any, aiohttp_server: Any, make_config: Any
) -> None:
    from gateway.models import NewEvent

    attempts: list[Any] = []

    async def receive(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    receiver = web.Application()
    receiver.router.add_post("/hook", receive)
    server = await aiohttp_server(receiver)

    class Plugin:
        @hookimpl
        def delivery_attempted(self, attempt: Any) -> None:
            attempts.append(attempt)

    config = make_config(delivery={"allow_private_targets": True, "poll_interval": 0.05})
    client = await aiohttp_client(create_app(config, pm=manager(Plugin())))
    subscription = await subscribed(client, "availability_update", str(server.make_url("/hook")))
    store = client.app[store_key]
    _, _ = await store.insert_push(
        source="t", kind="t", payload={}, dedupe_key=None, order_key=None
    )
    [claimed] = await store.claim_pushes(1, 60)
    data = sample_data("availability_update")
    event = NewEvent(
        event="availability_update",
        subject="t:p|o|d",
        product_id=data["productId"],
        option_id=data["optionId"],
        data={"availability": data["availability"]},
        state_key="t:p|o|d",
    )
    assert await store.complete_push(claimed.id, claimed.lease_token, [event]) == 1

    async def observed() -> bool:
        return bool(attempts)

    await eventually(observed)
    assert attempts[0].outcome == "delivered"
    assert attempts[0].subscription_id == subscription.id
    assert attempts[0].status == 200


async def test_hook_startup(aiohttp_client: Any, make_config: Any) -> None:
    started: list[str] = []

    class Plugin:
        @hookimpl
        def startup(self, app: web.Application) -> Any:
            async def inner() -> None:
                started.append("async")

            started.append("sync")
            return inner()

    await aiohttp_client(create_app(make_config(), pm=manager(Plugin())))
    assert started == ["sync", "async"]


def test_misspelled_hook_fails_at_start() -> None:
    class Typo:
        @hookimpl
        def register_sauces(self, register: Any) -> None:
            return None

    pm = make_plugin_manager(None)
    pm.register(Typo())
    with pytest.raises(pluggy.PluginValidationError):
        pm.check_pending()


DROP_IN = """
from pydantic import BaseModel
from gateway.plugin_api import hookimpl


class Greeting(BaseModel):
    text: str


@hookimpl
def register_routes(register):
    async def greet(request):
        from aiohttp import web
        return web.json_response(Greeting(text="hi").model_dump())
    register("GET", "/greet", greet)
"""


async def test_drop_in_plugin_loads_with_pydantic_models(
    tmp_path: Path, aiohttp_client: Any, make_config: Any
) -> None:
    (tmp_path / "greeter.py").write_text(DROP_IN)
    (tmp_path / "_private.py").write_text("raise RuntimeError('never imported')")
    config = make_config(plugins={"dir": str(tmp_path)})
    app = create_app(config)
    assert "gateway_plugins.greeter" in [p["name"] for p in app[hooks_key].describe()]
    client = await aiohttp_client(app)
    assert await (await client.get("/greet")).json() == {"text": "hi"}


def test_broken_drop_in_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_anywhere\n")
    with pytest.raises(PluginError, match=re.escape(str(broken))):
        make_plugin_manager(tmp_path)


def test_broken_drop_in_stops_serve_with_one_line(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "broken.py").write_text("raise RuntimeError('boom')\n")
    config = tmp_path / "gateway.toml"
    config.write_text(f'[plugins]\ndir = "{plugins}"\n[templates]\ndir = "{REPO / "templates"}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "broken.py" in result.stderr and "boom" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_entry_point_plugin_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "octo_gateway_entry_demo.py"
    module.write_text(
        textwrap.dedent(
            """
            from gateway.plugin_api import hookimpl

            @hookimpl
            def delivery_headers(event, subscription, body):
                return {"X-Entry-Point": "yes"}
            """
        )
    )
    dist = tmp_path / "octo_gateway_entry_demo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: octo-gateway-entry-demo\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text("[gateway]\nentry_demo = octo_gateway_entry_demo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = make_plugin_manager(None)
    assert pm.has_plugin("entry_demo")
    assert Hooks(pm).delivery_headers("booking_update", None, b"") == {"X-Entry-Point": "yes"}

"""The floor: a bare aiohttp server that does the least an ingest endpoint must do.

It checks the token header, reads the body, parses it as JSON with the same parser the gateway
uses (``json``), and answers a small JSON object, served the way ``gateway serve`` serves
(``AppRunner`` without an access log). Whatever the gateway does beyond this (validation,
dedupe, the durable write, background processing) is what the ingest ratio prices.

With ``--durable PATH`` it also stores each body as one row in SQLite before answering
(``bench/durable_store.py``): the floor of any ingest that keeps the gateway's durability promise.

Run: ``python -m bench.bare_server --port N [--durable PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import signal
import uuid
from pathlib import Path

from aiohttp import web

from bench.durable_store import DurableLog

TOKEN_HEADER = "X-Gateway-Token"


def make_app(durable: DurableLog | None = None) -> web.Application:
    counter = itertools.count(1)

    async def ingest(request: web.Request) -> web.Response:
        if not request.headers.get(TOKEN_HEADER):
            return web.json_response({"error": "UNAUTHORIZED"}, status=401)
        body = await request.read()
        try:
            json.loads(body)
        except ValueError:
            return web.json_response({"error": "BAD_REQUEST"}, status=400)
        if durable is not None:
            push_id = f"psh_{uuid.uuid4().hex}"
            key = hashlib.sha256(body).hexdigest()
            await durable.append((push_id, request.match_info["source"], key, body))
            return web.json_response({"id": push_id, "state": "accepted"})
        return web.json_response({"id": f"psh_{next(counter)}", "state": "accepted"})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=1_048_576)
    app.router.add_post("/ingest/{source}", ingest)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(port: int, durable_path: Path | None) -> None:
    durable = DurableLog(durable_path) if durable_path is not None else None
    runner = web.AppRunner(make_app(durable), handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    if durable is not None:
        durable.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--durable", type=Path, default=None, help="SQLite file to store pushes in")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.durable))


if __name__ == "__main__":
    main()

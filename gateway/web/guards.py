"""Path and query values no handler of the API or the console can use: ones holding a NUL.

No id the gateway hands out holds a NUL, yet PostgreSQL refuses the character in any text it is
given (SQLite takes it), so a ``%00`` in an id or a filter reached the store and came back as a
500. They are answered here, the same on every store: 404 for a path (no such resource), 400
naming the query parameter. Ingest is left alone: it keeps even a push that makes no sense.
"""

from __future__ import annotations

from aiohttp import web

from gateway.web.errors import bad_request, not_found

GUARDED = ("/octo", "/admin", "/console")


def refuse_nul(request: web.Request) -> None:
    if request.path.startswith(GUARDED):
        if "\x00" in request.path:
            raise not_found()
        for name, value in request.query.items():
            if "\x00" in name or "\x00" in value:
                raise bad_request(f"{name!r}: a query parameter may not hold a NUL character")

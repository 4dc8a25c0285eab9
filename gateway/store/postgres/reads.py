"""Reconciliation reads in PostgreSQL: the latest booking and availability the gateway sent.

The same queries as the SQLite store's: bookings by the columns written beside each one
(m009_booking_state_columns), availability on the expression index of migration m006 (PostgreSQL
uses an index on an expression only for the same expression, so the query repeats it exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from gateway.models import BookingFilter, LatestBooking
from gateway.store.postgres.base import PostgresBase

UUID = "uuid"
SUPPLIER_REFERENCE = "supplier_reference"
RESELLER_REFERENCE = "reseller_reference"
PRODUCT = "((booking::jsonb) ->> 'productId')"
# availability_state.key is "<source>:<productId>|<optionId>|<day>"; this is what follows source.
SLOT = "(substr(key, strpos(key, ':') + 1))"


class ReadStore(PostgresBase):
    async def latest_booking(
        self, uuid: str, products: Sequence[str] | None = None
    ) -> LatestBooking | None:
        params: list[Any] = [uuid]
        sql = f"select key, booking, updated_at from booking_state where {UUID} = $1"
        sql += _products(products, params)
        row = await self.pool.fetchrow(sql + " order by updated_at desc, key desc limit 1", *params)
        return None if row is None else _latest(row)

    async def latest_bookings(self, where: BookingFilter) -> list[LatestBooking]:
        clauses: list[str] = []
        params: list[Any] = []

        def param(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        if where.supplier_reference is not None:
            clauses.append(f"{SUPPLIER_REFERENCE} = {param(where.supplier_reference)}")
        if where.reseller_reference is not None:
            clauses.append(f"{RESELLER_REFERENCE} = {param(where.reseller_reference)}")
        if where.updated_since is not None:
            clauses.append(f"updated_at >= {param(float(where.updated_since))}")
        if where.after is not None:
            at, key = where.after
            clauses.append(f"(updated_at, key) < ({param(float(at))}, {param(key)})")
        sql = "select key, booking, updated_at from booking_state where " + (
            " and ".join(clauses) or "true"
        )
        sql += _products(where.products, params)
        sql += f" order by updated_at desc, key desc limit {param(where.limit)}"
        return [_latest(row) for row in await self.pool.fetch(sql, *params)]

    async def latest_availability(
        self, product_id: str, option_id: str, first_day: str, last_day: str
    ) -> list[dict[str, Any]]:
        prefix = f"{product_id}|{option_id}|"
        rows = await self.pool.fetch(
            f"select {SLOT} as slot, availability from availability_state"
            f" where {SLOT} between $1 and $2 order by {SLOT}, updated_at",
            prefix + first_day,
            prefix + last_day,
        )
        by_day: dict[str, dict[str, Any]] = {}
        for row in rows:
            slot = row["slot"]
            day = slot[len(prefix) :]
            # A '|' inside an id could make another product's key sort into the range.
            if slot.startswith(prefix) and len(day) == len(first_day):
                by_day[day] = orjson.loads(row["availability"])
        return [by_day[day] for day in sorted(by_day)]


def _products(products: Sequence[str] | None, params: list[Any]) -> str:
    if products is None or "*" in products:
        return ""
    if not products:
        return " and false"
    params.append(list(products))
    return f" and {PRODUCT} = any(${len(params)}::text[])"


def _latest(row: asyncpg.Record) -> LatestBooking:
    return LatestBooking(
        key=row["key"], booking=orjson.loads(row["booking"]), updated_at=float(row["updated_at"])
    )

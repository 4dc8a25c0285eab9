"""Reconciliation reads in SQLite: the latest booking and availability the gateway sent.

They read the state the fan-out keeps (``booking_state``, ``availability_state``): bookings by the
columns the fan-out writes beside each one (m009_booking_state_columns, each indexed where not
null), availability through m006's index on an expression, which the query repeats exactly (SQLite
uses an index on an expression only for the same expression).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlite_utils import Database

from gateway.models import BookingFilter, LatestBooking
from gateway.store.sqlite.base import SQLiteBase

UUID = "uuid"
SUPPLIER_REFERENCE = "supplier_reference"
RESELLER_REFERENCE = "reseller_reference"
PRODUCT = "json_extract(booking, '$.productId')"
# availability_state.key is "<source>:<productId>|<optionId>|<day>"; this is what follows source.
SLOT = "substr(key, instr(key, ':') + 1)"


class ReadStore(SQLiteBase):
    async def latest_booking(
        self, uuid: str, products: Sequence[str] | None = None
    ) -> LatestBooking | None:
        """The last booking sent with this uuid, if its product is one of ``products`` (None:
        any)."""

        def read(db: Database) -> LatestBooking | None:
            sql = f"select key, booking, updated_at from booking_state where {UUID} = ?"
            params: list[Any] = [uuid]
            sql += _products(products, params)
            row = db.execute(sql + " order by updated_at desc, key desc limit 1", params).fetchone()
            return None if row is None else _latest(row)

        return await self._read(read)

    async def latest_bookings(self, where: BookingFilter) -> list[LatestBooking]:
        """Latest bookings matching ``where``, newest first (by when the gateway recorded them),
        at most ``where.limit``, starting after ``where.after``."""

        def read(db: Database) -> list[LatestBooking]:
            clauses: list[str] = []
            params: list[Any] = []
            if where.supplier_reference is not None:
                clauses.append(f"{SUPPLIER_REFERENCE} = ?")
                params.append(where.supplier_reference)
            if where.reseller_reference is not None:
                clauses.append(f"{RESELLER_REFERENCE} = ?")
                params.append(where.reseller_reference)
            if where.updated_since is not None:
                clauses.append("updated_at >= ?")
                params.append(where.updated_since)
            if where.after is not None:
                clauses.append("(updated_at, key) < (?, ?)")
                params += list(where.after)
            sql = "select key, booking, updated_at from booking_state where " + (
                " and ".join(clauses) or "1"
            )
            sql += _products(where.products, params)
            sql += " order by updated_at desc, key desc limit ?"
            params.append(where.limit)
            return [_latest(row) for row in db.execute(sql, params).fetchall()]

        return await self._read(read)

    async def latest_availability(
        self, product_id: str, option_id: str, first_day: str, last_day: str
    ) -> list[dict[str, Any]]:
        """The last availability sent for each day from ``first_day`` to ``last_day`` (both
        included, ``YYYY-MM-DD``) of one product and option, in day order; days never sent are
        absent. Should two sources have sent the same day, the later one wins."""
        prefix = f"{product_id}|{option_id}|"

        def read(db: Database) -> list[dict[str, Any]]:
            rows = db.execute(
                f"select {SLOT}, availability, updated_at from availability_state"
                f" where {SLOT} between ? and ? order by {SLOT}, updated_at",
                [prefix + first_day, prefix + last_day],
            ).fetchall()
            by_day: dict[str, dict[str, Any]] = {}
            for slot, availability, _ in rows:
                day = slot[len(prefix) :]
                # A '|' inside an id could make another product's key sort into the range.
                if slot.startswith(prefix) and len(day) == len(first_day):
                    by_day[day] = orjson.loads(availability)
            return [by_day[day] for day in sorted(by_day)]

        return await self._read(read)


def _products(products: Sequence[str] | None, params: list[Any]) -> str:
    if products is None or "*" in products:
        return ""
    params += list(products)
    return f" and {PRODUCT} in ({','.join('?' * len(products))})" if products else " and 0"


def _latest(row: Sequence[Any]) -> LatestBooking:
    return LatestBooking(key=row[0], booking=orjson.loads(row[1]), updated_at=float(row[2]))

"""Subscriptions in SQLite."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlite_utils import Database

from gateway.models import (
    Subscription,
)
from gateway.store.sqlite.base import (
    SQLiteBase,
    _dt,
    _dumps,
    _insert,
    _ts,
    utcnow,
)


class SubscriptionStore(SQLiteBase):
    async def insert_subscription(
        self, subscription: Subscription, *, max_per_tenant: int | None = None
    ) -> bool:
        row = _subscription_row(subscription)

        def insert() -> bool:
            with self._immediate() as db:
                if max_per_tenant is not None:
                    [held] = db.execute(
                        "select count(*) from subscriptions where tenant = ? and deleted_at is null",
                        [subscription.tenant],
                    ).fetchone()
                    if held >= max_per_tenant:
                        return False
                _insert(db, "subscriptions", row)
            return True

        return await self._write(insert)

    async def get_subscription(self, tenant: str | None, id: str) -> Subscription | None:
        """One live subscription; ``tenant=None`` looks across tenants (workers, admins)."""
        sql = "select * from subscriptions where id = ? and deleted_at is null"
        params: list[Any] = [id]
        if tenant is not None:
            sql += " and tenant = ?"
            params.append(tenant)

        def get(db: Database) -> Subscription | None:
            rows = list(db.query(sql, params))
            return _subscription(rows[0]) if rows else None

        return await self._read(get)

    async def list_subscriptions(self, tenant: str) -> list[Subscription]:
        def list_(db: Database) -> list[Subscription]:
            rows = db.query(
                "select * from subscriptions where tenant = ? and deleted_at is null"
                " order by created_at, id",
                [tenant],
            )
            return [_subscription(row) for row in rows]

        return await self._read(list_)

    async def subscription_tenants(self) -> list[str]:
        def tenants(db: Database) -> list[str]:
            rows = db.execute(
                "select distinct tenant from subscriptions where deleted_at is null order by tenant"
            ).fetchall()
            return [str(row[0]) for row in rows]

        return await self._read(tenants)

    async def update_subscription(
        self, subscription: Subscription, *, expected_updated_at: datetime | None = None
    ) -> bool:
        """Write the whole row; with ``expected_updated_at``, only if nobody changed it since it
        was read (the gateway may disable a subscription meanwhile). False if it changed."""
        row = _subscription_row(subscription)
        assignments = ", ".join(f"{column} = :{column}" for column in row if column != "id")
        sql = f"update subscriptions set {assignments} where id = :id and deleted_at is null"
        if expected_updated_at is not None:
            sql += " and updated_at = :expected"
        params = {**row, "expected": _ts(expected_updated_at)}

        def update() -> bool:
            with self._immediate() as db:
                return db.execute(sql, params).rowcount == 1

        return await self._write(update)

    async def delete_subscription(self, tenant: str, id: str) -> Subscription | None:
        """Soft delete, so delivery history keeps its subscription; returns what was deleted."""

        def delete() -> Subscription | None:
            with self._immediate() as db:
                rows = list(
                    db.query(
                        "update subscriptions set deleted_at = ?, active = 0"
                        " where id = ? and tenant = ? and deleted_at is null returning *",
                        [_ts(utcnow()), id, tenant],
                    )
                )
            return _subscription(rows[0]) if rows else None

        return await self._write(delete)


def _subscription_row(sub: Subscription) -> dict[str, Any]:
    return {
        "id": sub.id,
        "tenant": sub.tenant,
        "event": sub.event,
        "url": sub.url,
        "headers": _dumps(sub.headers),
        "retry_on_error": int(sub.retry_on_error),
        "use_contact_language": int(sub.use_contact_language),
        "capabilities": _dumps(sub.capabilities),
        "template": sub.template,
        "secret": sub.secret,
        "previous_secret": sub.previous_secret,
        "previous_secret_until": _ts(sub.previous_secret_until),
        "products": _dumps(sub.products),
        "active": int(sub.active),
        "disabled_reason": sub.disabled_reason,
        "failing_since": sub.failing_since,
        "created_at": _ts(sub.created_at),
        "updated_at": _ts(sub.updated_at),
    }


def _subscription(row: dict[str, Any]) -> Subscription:
    return Subscription(
        id=row["id"],
        tenant=row["tenant"],
        event=row["event"],
        url=row["url"],
        headers=orjson.loads(row["headers"]),
        retry_on_error=bool(row["retry_on_error"]),
        use_contact_language=bool(row["use_contact_language"]),
        capabilities=orjson.loads(row["capabilities"]),
        template=row["template"],
        secret=row["secret"],
        previous_secret=row["previous_secret"],
        previous_secret_until=_dt(row["previous_secret_until"]),
        products=orjson.loads(row["products"]),
        active=bool(row["active"]),
        disabled_reason=row["disabled_reason"],
        failing_since=row["failing_since"],
        created_at=_dt(row["created_at"]),
        updated_at=_dt(row["updated_at"]),
    )

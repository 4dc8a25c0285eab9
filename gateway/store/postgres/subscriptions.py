"""Subscriptions in PostgreSQL (the same rows as the SQLite store's)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gateway.models import Subscription
from gateway.store.postgres.base import PostgresBase, record
from gateway.store.sqlite.base import _ts, utcnow
from gateway.store.sqlite.subscriptions import _subscription, _subscription_row

TENANT_LOCK = 741_103  # pg_advisory_xact_lock(TENANT_LOCK, hashtext(tenant))


class SubscriptionStore(PostgresBase):
    async def insert_subscription(
        self, subscription: Subscription, *, max_per_tenant: int | None = None
    ) -> bool:
        """Store a new subscription; False when its tenant holds ``max_per_tenant`` already. The
        count and the insert hold the tenant's advisory lock, so two processes can't both pass."""
        row = _subscription_row(subscription)
        columns = ", ".join(row)
        marks = ", ".join(f"${i}" for i in range(1, len(row) + 1))
        async with self.pool.acquire() as conn, conn.transaction():
            if max_per_tenant is not None:
                await conn.execute(
                    "select pg_advisory_xact_lock($1, hashtext($2))",
                    TENANT_LOCK,
                    subscription.tenant,
                )
                held = await conn.fetchval(
                    "select count(*) from subscriptions where tenant = $1 and deleted_at is null",
                    subscription.tenant,
                )
                if held >= max_per_tenant:
                    return False
            await conn.execute(
                f"insert into subscriptions ({columns}) values ({marks})", *row.values()
            )
        return True

    async def get_subscription(self, tenant: str | None, id: str) -> Subscription | None:
        sql = "select * from subscriptions where id = $1 and deleted_at is null"
        params: list[Any] = [id]
        if tenant is not None:
            sql += " and tenant = $2"
            params.append(tenant)
        row = await self.pool.fetchrow(sql, *params)
        return _subscription(record(row)) if row is not None else None

    async def list_subscriptions(self, tenant: str) -> list[Subscription]:
        rows = await self.pool.fetch(
            "select * from subscriptions where tenant = $1 and deleted_at is null"
            " order by created_at, id",
            tenant,
        )
        return [_subscription(record(row)) for row in rows]

    async def subscription_tenants(self) -> list[str]:
        rows = await self.pool.fetch(
            "select distinct tenant from subscriptions where deleted_at is null order by tenant"
        )
        return [str(row["tenant"]) for row in rows]

    async def update_subscription(
        self, subscription: Subscription, *, expected_updated_at: datetime | None = None
    ) -> bool:
        row = _subscription_row(subscription)
        names = [column for column in row if column != "id"]
        assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(names, start=2))
        sql = f"update subscriptions set {assignments} where id = $1 and deleted_at is null"
        params: list[Any] = [row["id"], *(row[column] for column in names)]
        if expected_updated_at is not None:
            sql += f" and updated_at = ${len(params) + 1}"
            params.append(_ts(expected_updated_at))
        status = await self.pool.execute(sql, *params)
        return status == "UPDATE 1"

    async def delete_subscription(self, tenant: str, id: str) -> Subscription | None:
        row = await self.pool.fetchrow(
            "update subscriptions set deleted_at = $1, active = 0"
            " where id = $2 and tenant = $3 and deleted_at is null returning *",
            _ts(utcnow()),
            id,
            tenant,
        )
        return _subscription(record(row)) if row is not None else None

"""Schema migrations for the SQLite store, applied at start-up (idempotent).

Add a new function at the end for every change; never edit one that has shipped.
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

migrations = Migrations("octo-gateway")


@migrations()
def m001_subscriptions(db: Database) -> None:
    db.execute(
        """
        create table subscriptions (
            id text primary key,
            tenant text not null,
            event text not null,
            url text not null,
            headers text not null default '{}',
            retry_on_error integer not null default 1,
            use_contact_language integer not null default 1,
            capabilities text not null default '[]',
            template text,
            secret text not null,
            previous_secret text,
            previous_secret_until text,
            products text not null default '["*"]',
            active integer not null default 1,
            disabled_reason text,
            created_at text not null,
            updated_at text not null,
            deleted_at text
        )
        """
    )
    db.execute("create index subscriptions_tenant on subscriptions (tenant, deleted_at)")
    db.execute("create index subscriptions_event on subscriptions (event, active, deleted_at)")

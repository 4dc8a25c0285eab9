"""Schema migrations for the PostgreSQL store, with the SQLite store's history.

Every SQLite migration has one here under the same name, recorded in ``gateway_migrations`` as
sqlite-utils records them in ``_sqlite_migrations``, so one list of names describes both stores and
``migrate-store`` can tell that both sides are at the same version. Tables and columns have the
SQLite store's names, so the same reports (and tests) read either. A migration that only tuned
SQLite is an empty step here. Add new ones at the end; never edit one that has shipped.

Concurrent starts are safe: the runner holds an advisory lock while it applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.store.postgres.base import Conn

MIGRATION_SET = "octo-gateway"
LOCK_KEY = 741_100  # pg_advisory_xact_lock(LOCK_KEY): one migrating process at a time

MIGRATIONS: list[tuple[str, Sequence[str]]] = [
    (
        "m001_subscriptions",
        [
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
                failing_since double precision,
                created_at text not null,
                updated_at text not null,
                deleted_at text
            )
            """,
            "create index subscriptions_tenant on subscriptions (tenant, deleted_at)",
            "create index subscriptions_event on subscriptions (event, active, deleted_at)",
        ],
    ),
    (
        "m002_pushes_and_events",
        [
            """
            create table pushes (
                seq bigserial primary key,
                id text not null unique,
                source text not null,
                kind text not null,
                dedupe_key text not null,
                coalesce_key text,
                order_key text,
                payload text,
                state text not null,
                error text,
                note text,
                attempts integer not null default 0,
                next_attempt_at double precision not null,
                lease_token text,
                lease_expires_at double precision,
                received_at double precision not null,
                processed_at double precision,
                unique (source, dedupe_key)
            )
            """,
            "create index pushes_due on pushes (state, next_attempt_at)",
            "create index pushes_waiting on pushes (seq) where state = 'accepted'",
            "create index pushes_order on pushes (order_key, state, seq)",
            "create index pushes_coalesce on pushes (source, coalesce_key, state)",
            """
            create table events (
                seq bigserial primary key,
                id text not null unique,
                push_id text not null,
                source text not null,
                event text not null,
                subject text not null,
                product_id text not null,
                option_id text not null,
                data text not null,
                created_at double precision not null
            )
            """,
            "create index events_push on events (push_id)",
            "create index events_created on events (event, created_at)",
            """
            create table booking_state (
                key text primary key,
                revision text,
                version text,
                booking text not null,
                updated_at double precision not null
            )
            """,
            """
            create table availability_state (
                key text primary key,
                availability text not null,
                updated_at double precision not null
            )
            """,
        ],
    ),
    (
        "m003_deliveries",
        [
            """
            create table deliveries (
                seq bigserial primary key,
                id text not null unique,
                event_seq bigint not null references events (seq),
                subscription_id text not null,
                event text not null,
                order_key text not null,
                state text not null,
                attempts integer not null default 0,
                next_attempt_at double precision not null,
                lease_token text,
                lease_expires_at double precision,
                body bytea,
                last_status integer,
                last_error text,
                created_at double precision not null,
                updated_at double precision not null,
                delivered_at double precision
            )
            """,
            "create index deliveries_delivered on deliveries (delivered_at)"
            " where state = 'delivered'",
            "create index deliveries_order on deliveries (order_key, state, seq)",
            "create index deliveries_subscription on deliveries (subscription_id, seq)",
            """
            create table attempts (
                id bigserial primary key,
                delivery_id text not null,
                subscription_id text not null,
                attempt integer not null,
                attempted_at double precision not null,
                outcome text not null,
                status integer,
                latency_ms double precision,
                error text,
                response text
            )
            """,
            "create index attempts_subscription on attempts (subscription_id, id)",
            "create index attempts_delivery on attempts (delivery_id, id)",
        ],
    ),
    (
        "m004_replay_keeps_attempt_numbers",
        ["alter table deliveries add column replayed_after integer not null default 0"],
    ),
    (
        # Claims seek each subscription's oldest due messages (and count its leased ones).
        "m005_deliveries_due_by_subscription",
        [
            "create index deliveries_due_by_subscription on deliveries"
            " (subscription_id, next_attempt_at, seq) where state in ('pending', 'leased')"
        ],
    ),
    (
        # Room maps, written with a push's events; generation fences concurrent writers. The
        # reconciliation-read indexes are SQLite's, on PostgreSQL's JSON operators.
        "m006_room_maps_and_reads",
        [
            """
            create table room_maps (
                source text not null,
                booking text not null,
                generation integer not null,
                map text not null,
                updated_at double precision not null,
                primary key (source, booking)
            )
            """,
            "create index booking_state_uuid on booking_state (((booking::jsonb) ->> 'uuid'))",
            "create index booking_state_supplier_reference"
            " on booking_state (((booking::jsonb) ->> 'supplierReference'))",
            "create index booking_state_reseller_reference"
            " on booking_state (((booking::jsonb) ->> 'resellerReference'))",
            "create index booking_state_updated on booking_state (updated_at, key)",
            "create index availability_state_slot"
            " on availability_state ((substr(key, strpos(key, ':') + 1)))",
        ],
    ),
    (
        "m007_write_probe",
        [
            "create table write_probe (id integer primary key check (id = 1),"
            " probed_at double precision not null)"
        ],
    ),
    (
        # Storage v2: a delivery row holds only its event, subscription, state, attempts and
        # times; a body is kept (delivery_bodies) only while its message waits for a retry;
        # attempts point at their message by seq; the order index holds only queued rows.
        "m008_storage_v2",
        [
            "create table delivery_bodies (delivery_seq bigint primary key, body bytea not null)",
            "insert into delivery_bodies (delivery_seq, body) select seq, body from deliveries"
            " where body is not null and state in ('pending', 'leased')",
            "alter table deliveries drop column body, drop column event",
            "alter table attempts add column delivery_seq bigint",
            "update attempts a set delivery_seq = d.seq from deliveries d where d.id = a.delivery_id",
            "delete from attempts where delivery_seq is null",
            "alter table attempts alter column delivery_seq set not null",
            "drop index attempts_delivery",
            "alter table attempts drop column delivery_id",
            "create index attempts_delivery on attempts (delivery_seq, id)",
            "drop index deliveries_order",
            "create index deliveries_waiting on deliveries (order_key, seq)"
            " where state in ('pending', 'leased')",
            # PostgreSQL checks the events foreign key when an event is deleted (retention):
            # without this index each check would read every delivery.
            "create index deliveries_event on deliveries (event_seq)",
        ],
    ),
    (
        # (Named m007_* by its issue; it runs after m008, as in the SQLite history.) Maintenance
        # prunes dead, skipped and superseded messages by when they finished.
        "m007_prune_finished_messages",
        [
            "create index deliveries_ended on deliveries (updated_at)"
            " where state in ('dead', 'skipped', 'superseded')"
        ],
    ),
    (
        # Maintenance drops a booking's state some days after its stay ended; the expression is
        # the one gateway/store/postgres/retention.py uses.
        "m007_stay_end_index",
        [
            "create index booking_state_stay_end on booking_state"
            " ((substr((booking::jsonb) #>> '{availability,localDateTimeEnd}', 1, 10)))"
        ],
    ),
    # SQLite's auto_vacuum setting; PostgreSQL's (auto)vacuum reuses the space of deleted rows.
    ("m007_incremental_vacuum", []),
    (
        # A booking's lookup fields as plain columns the store writes beside it: each expression
        # index cast the booking to jsonb again on every upsert. Indexed where known.
        "m009_booking_state_columns",
        [
            "drop index booking_state_uuid",
            "drop index booking_state_supplier_reference",
            "drop index booking_state_reseller_reference",
            "drop index booking_state_stay_end",
            "alter table booking_state add column uuid text, add column supplier_reference text,"
            " add column reseller_reference text, add column stay_end text",
            # Strings only, as the store writes them (gateway/store/lookups.py).
            "update booking_state set"
            " uuid = case when jsonb_typeof(b -> 'uuid') = 'string' then b ->> 'uuid' end,"
            " supplier_reference = case when jsonb_typeof(b -> 'supplierReference') = 'string'"
            " then b ->> 'supplierReference' end,"
            " reseller_reference = case when jsonb_typeof(b -> 'resellerReference') = 'string'"
            " then b ->> 'resellerReference' end,"
            " stay_end = case when jsonb_typeof(b #> '{availability,localDateTimeEnd}') = 'string'"
            " then substr(b #>> '{availability,localDateTimeEnd}', 1, 10) end"
            " from (select key as k, booking::jsonb as b from booking_state) as parsed"
            " where booking_state.key = parsed.k",
            "create index booking_state_uuid on booking_state (uuid) where uuid is not null",
            "create index booking_state_supplier_reference on booking_state (supplier_reference)"
            " where supplier_reference is not null",
            "create index booking_state_reseller_reference on booking_state (reseller_reference)"
            " where reseller_reference is not null",
            "create index booking_state_stay_end on booking_state (stay_end)"
            " where stay_end is not null",
        ],
    ),
    (
        # The push indexes hold only pushes still waiting (and failed ones, their own): a push
        # stored already processed enters three b-trees fewer. Queries name the state literally.
        "m010_push_indexes_hold_waiting_pushes",
        [
            "drop index pushes_due",
            "drop index pushes_order",
            "drop index pushes_coalesce",
            "create index pushes_due on pushes (next_attempt_at) where state = 'accepted'",
            "create index pushes_order on pushes (order_key, seq) where state = 'accepted'",
            "create index pushes_coalesce on pushes (source, coalesce_key)"
            " where state = 'accepted'",
            "create index pushes_failed on pushes (seq) where state = 'failed'",
        ],
    ),
    # Nothing reads events by the push that made them; every event paid an entry here.
    ("m011_events_not_indexed_by_push", ["drop index events_push"]),
    # SQLite's deliveries_ended written without an IN list, which SQLite rebuilds as a temporary
    # b-tree per row evaluated; PostgreSQL evaluates its IN list as it is.
    ("m012_ended_messages_index_without_an_in_list", []),
]

NAMES = [name for name, _ in MIGRATIONS]


async def apply(conn: Conn, stop_before: str | None = None) -> list[str]:
    """Apply what is pending, in order, each in the same transaction as its record; returns the
    names applied. ``stop_before`` (as sqlite-utils' own): leave that one and those after it
    pending, as an older release left its database."""
    async with conn.transaction():
        await conn.execute("select pg_advisory_xact_lock($1)", LOCK_KEY)
        await conn.execute(
            "create table if not exists gateway_migrations (id bigserial,"
            " migration_set text not null, name text not null,"
            " applied_at timestamptz not null default now(), primary key (migration_set, name))"
        )
        done = {
            row["name"]
            for row in await conn.fetch(
                "select name from gateway_migrations where migration_set = $1", MIGRATION_SET
            )
        }
        applied = []
        for name, statements in MIGRATIONS:
            if name == stop_before:
                break
            if name in done:
                continue
            for statement in statements:
                await conn.execute(statement)
            await conn.execute(
                "insert into gateway_migrations (migration_set, name) values ($1, $2)",
                MIGRATION_SET,
                name,
            )
            applied.append(name)
        return applied


async def applied_names(conn: Conn) -> list[str]:
    exists = await conn.fetchval("select to_regclass('gateway_migrations') is not null")
    if not exists:
        return []
    rows = await conn.fetch(
        "select name from gateway_migrations where migration_set = $1 order by id",
        MIGRATION_SET,
    )
    return [row["name"] for row in rows]

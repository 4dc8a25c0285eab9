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
            failing_since real,
            created_at text not null,
            updated_at text not null,
            deleted_at text
        )
        """
    )
    db.execute("create index subscriptions_tenant on subscriptions (tenant, deleted_at)")
    db.execute("create index subscriptions_event on subscriptions (event, active, deleted_at)")


@migrations()
def m002_pushes_and_events(db: Database) -> None:
    # Times used for scheduling are Unix seconds (REAL) so SQL can compare them cheaply.
    db.execute(
        """
        create table pushes (
            seq integer primary key autoincrement,
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
            next_attempt_at real not null,
            lease_token text,
            lease_expires_at real,
            received_at real not null,
            processed_at real,
            unique (source, dedupe_key)
        )
        """
    )
    db.execute("create index pushes_due on pushes (state, next_attempt_at)")
    # Claims walk waiting pushes in arrival order without sorting the backlog.
    db.execute("create index pushes_waiting on pushes (seq) where state = 'accepted'")
    db.execute("create index pushes_order on pushes (order_key, state, seq)")
    db.execute("create index pushes_coalesce on pushes (source, coalesce_key, state)")
    db.execute(
        """
        create table events (
            seq integer primary key autoincrement,
            id text not null unique,
            push_id text not null,
            source text not null,
            event text not null,
            subject text not null,
            product_id text not null,
            option_id text not null,
            data text not null,
            created_at real not null
        )
        """
    )
    db.execute("create index events_push on events (push_id)")
    db.execute("create index events_created on events (event, created_at)")
    db.execute(
        """
        create table booking_state (
            key text primary key,
            revision text,
            version text,
            booking text not null,
            updated_at real not null
        )
        """
    )
    db.execute(
        """
        create table availability_state (
            key text primary key,
            availability text not null,
            updated_at real not null
        )
        """
    )


@migrations()
def m003_deliveries(db: Database) -> None:
    db.execute(
        """
        create table deliveries (
            seq integer primary key autoincrement,
            id text not null unique,
            event_seq integer not null references events (seq),
            subscription_id text not null,
            event text not null,
            order_key text not null,
            state text not null,
            attempts integer not null default 0,
            next_attempt_at real not null,
            lease_token text,
            lease_expires_at real,
            body blob,
            last_status integer,
            last_error text,
            created_at real not null,
            updated_at real not null,
            delivered_at real
        )
        """
    )
    # Claims and due-time look-ups walk only queued rows; a leased row's next_attempt_at is its
    # lease expiry, so an expired lease is due like a retry.
    db.execute(
        "create index deliveries_queue on deliveries (next_attempt_at, seq)"
        " where state in ('pending', 'leased')"
    )
    db.execute(
        "create index deliveries_delivered on deliveries (delivered_at) where state = 'delivered'"
    )
    db.execute("create index deliveries_order on deliveries (order_key, state, seq)")
    db.execute("create index deliveries_subscription on deliveries (subscription_id, seq)")
    db.execute(
        """
        create table attempts (
            id integer primary key autoincrement,
            delivery_id text not null,
            subscription_id text not null,
            attempt integer not null,
            attempted_at real not null,
            outcome text not null,
            status integer,
            latency_ms real,
            error text,
            response text
        )
        """
    )
    db.execute("create index attempts_subscription on attempts (subscription_id, id)")
    db.execute("create index attempts_delivery on attempts (delivery_id, id)")


@migrations()
def m004_replay_keeps_attempt_numbers(db: Database) -> None:
    # A replay restarts a message's retry schedule but not its attempt numbers: the schedule
    # counts the attempts made after the latest replay.
    db.execute("alter table deliveries add column replayed_after integer not null default 0")


@migrations()
def m005_deliveries_due_by_subscription(db: Database) -> None:
    # Claims seek each subscription's oldest due messages, so a backlog that one subscription at
    # its concurrency limit holds (a replay, a slow receiver) is never scanned past. It replaces
    # the queue-wide index, so a settled message still updates as many indexes as before.
    db.execute(
        "create index deliveries_due_by_subscription on deliveries"
        " (subscription_id, next_attempt_at, seq) where state in ('pending', 'leased')"
    )
    db.execute("drop index deliveries_queue")


@migrations()
def m006_room_maps_and_reads(db: Database) -> None:
    # Which room of a multi-room booking is which, kept per booking between its revisions and
    # written in the same transaction as the events; generation fences concurrent writers.
    db.execute(
        """
        create table room_maps (
            source text not null,
            booking text not null,
            generation integer not null,
            map text not null,
            updated_at real not null,
            primary key (source, booking)
        )
        """
    )
    # Reconciliation reads (GET /octo/bookings, /octo/availability) find the latest state by the
    # fields resellers ask for; the expressions are the ones gateway/store/sqlite/reads.py uses.
    db.execute("create index booking_state_uuid on booking_state (json_extract(booking, '$.uuid'))")
    db.execute(
        "create index booking_state_supplier_reference"
        " on booking_state (json_extract(booking, '$.supplierReference'))"
    )
    db.execute(
        "create index booking_state_reseller_reference"
        " on booking_state (json_extract(booking, '$.resellerReference'))"
    )
    db.execute("create index booking_state_updated on booking_state (updated_at, key)")
    # availability_state keys are "<source>:<productId>|<optionId>|<day>": index what follows the
    # source, so one product/option's days are a range whatever source sent them.
    db.execute(
        "create index availability_state_slot"
        " on availability_state (substr(key, instr(key, ':') + 1))"
    )


@migrations()
def m007_write_probe(db: Database) -> None:
    # /readyz proves the database takes writes by updating this one row through the writer.
    db.execute(
        "create table write_probe (id integer primary key check (id = 1), probed_at real not null)"
    )


@migrations()
def m008_storage_v2(db: Database) -> None:
    """Storage v2: a delivery row holds only its event, subscription, state, attempts and times.

    - The rendered body leaves the row: bodies are rendered from the event when sent, and kept
      (in ``delivery_bodies``) only for a message that must be tried again, so a retry sends the
      same bytes. Messages waiting to be retried keep the body they had.
    - The event name leaves the row (it is the event's).
    - The per-booking order index holds only queued rows, so a settled message leaves it once
      instead of moving inside it on every state change.
    - Attempts point at their message by its integer ``seq`` and number themselves by rowid
      (no AUTOINCREMENT bookkeeping per insert).
    """
    db.execute(
        """
        create table deliveries_v2 (
            seq integer primary key autoincrement,
            id text not null unique,
            event_seq integer not null references events (seq),
            subscription_id text not null,
            order_key text not null,
            state text not null,
            attempts integer not null default 0,
            replayed_after integer not null default 0,
            next_attempt_at real not null,
            lease_token text,
            lease_expires_at real,
            last_status integer,
            last_error text,
            created_at real not null,
            updated_at real not null,
            delivered_at real
        )
        """
    )
    columns = (
        "seq, id, event_seq, subscription_id, order_key, state, attempts, replayed_after,"
        " next_attempt_at, lease_token, lease_expires_at, last_status, last_error, created_at,"
        " updated_at, delivered_at"
    )
    db.execute(f"insert into deliveries_v2 ({columns}) select {columns} from deliveries")
    db.execute(
        """
        create table delivery_bodies (
            delivery_seq integer primary key,
            body blob not null
        )
        """
    )
    db.execute(
        "insert into delivery_bodies (delivery_seq, body) select seq, body from deliveries"
        " where body is not null and state in ('pending', 'leased')"
    )
    db.execute(
        """
        create table attempts_v2 (
            id integer primary key,
            delivery_seq integer not null,
            subscription_id text not null,
            attempt integer not null,
            attempted_at real not null,
            outcome text not null,
            status integer,
            latency_ms real,
            error text,
            response text
        )
        """
    )
    db.execute(
        "insert into attempts_v2 (id, delivery_seq, subscription_id, attempt, attempted_at,"
        " outcome, status, latency_ms, error, response)"
        " select a.id, d.seq, a.subscription_id, a.attempt, a.attempted_at, a.outcome, a.status,"
        " a.latency_ms, a.error, a.response from attempts a join deliveries d on d.id = a.delivery_id"
    )
    db.execute("drop table attempts")
    db.execute("drop table deliveries")
    db.execute("alter table deliveries_v2 rename to deliveries")
    db.execute("alter table attempts_v2 rename to attempts")
    db.execute(
        "create index deliveries_due_by_subscription on deliveries"
        " (subscription_id, next_attempt_at, seq) where state in ('pending', 'leased')"
    )
    db.execute(
        "create index deliveries_waiting on deliveries (order_key, seq)"
        " where state in ('pending', 'leased')"
    )
    db.execute(
        "create index deliveries_delivered on deliveries (delivered_at) where state = 'delivered'"
    )
    db.execute("create index deliveries_subscription on deliveries (subscription_id, seq)")
    db.execute("create index attempts_subscription on attempts (subscription_id, id)")
    db.execute("create index attempts_delivery on attempts (delivery_seq, id)")


# Issue 12's migrations are named m007_*; they run after m008 (migrations run in the order they
# are defined here, whatever their names).


@migrations()
def m007_prune_finished_messages(db: Database) -> None:
    # Maintenance prunes dead, skipped and superseded messages by when they finished, as it does
    # delivered ones (by delivered_at, deliveries_delivered).
    db.execute(
        "create index deliveries_ended on deliveries (updated_at)"
        " where state in ('dead', 'skipped', 'superseded')"
    )


@migrations()
def m007_stay_end_index(db: Database) -> None:
    # Maintenance drops a booking's state some days after its stay ended; the expression is the
    # one gateway/store/sqlite/retention.py uses (SQLite uses an expression index only for it).
    db.execute(
        "create index booking_state_stay_end on booking_state"
        " (substr(json_extract(booking, '$.availability.localDateTimeEnd'), 1, 10))"
    )


@migrations(transactional=False)
def m007_incremental_vacuum(db: Database) -> None:
    # Free pages go back to the file system after maintenance deletes (PRAGMA incremental_vacuum).
    # An existing file takes the setting only when rebuilt: VACUUM, once, at the first start after
    # the upgrade (it needs free disk space the size of the database while it runs), which also
    # drops whatever deleted data lingered in free space.
    db.execute("PRAGMA auto_vacuum = INCREMENTAL")
    db.execute("VACUUM")


@migrations()
def m009_booking_state_columns(db: Database) -> None:
    # What the reconciliation reads and maintenance look bookings up by, as plain columns the
    # store writes from the booking it already holds: each index on json_extract(booking, ...)
    # parsed the booking's JSON again on every upsert (and for the old row on an update).
    # Bookings without a value (no reseller reference) stay out of the index; every query on a
    # column implies it is not null.
    for column in ("uuid", "supplier_reference", "reseller_reference", "stay_end"):
        db.execute(f"alter table booking_state add column {column} text")
    for index in ("uuid", "supplier_reference", "reseller_reference", "stay_end"):
        db.execute(f"drop index booking_state_{index}")
    # Strings only, as the store writes them (gateway/store/lookups.py).
    fields = {
        "uuid": "$.uuid",
        "supplier_reference": "$.supplierReference",
        "reseller_reference": "$.resellerReference",
        "stay_end": "$.availability.localDateTimeEnd",
    }
    values = ", ".join(
        f"{column} = case when json_type(booking, '{path}') = 'text'"
        f" then json_extract(booking, '{path}') end"
        for column, path in fields.items()
    )
    db.execute(f"update booking_state set {values}")
    db.execute("update booking_state set stay_end = substr(stay_end, 1, 10)")
    for column in ("uuid", "supplier_reference", "reseller_reference", "stay_end"):
        db.execute(
            f"create index booking_state_{column} on booking_state ({column})"
            f" where {column} is not null"
        )


@migrations()
def m010_push_indexes_hold_waiting_pushes(db: Database) -> None:
    # Claims, the per-booking order and coalescing look only at pushes still waiting (accepted);
    # indexed so, a push stored already processed (nearly all of them) enters three b-trees fewer.
    # Every query on them names state = 'accepted' (SQLite uses a partial index only then). Failed
    # pushes, which operators list and replay, get an index of their own.
    db.execute("drop index pushes_due")
    db.execute("drop index pushes_order")
    db.execute("drop index pushes_coalesce")
    db.execute("create index pushes_due on pushes (next_attempt_at) where state = 'accepted'")
    db.execute("create index pushes_order on pushes (order_key, seq) where state = 'accepted'")
    db.execute(
        "create index pushes_coalesce on pushes (source, coalesce_key) where state = 'accepted'"
    )
    db.execute("create index pushes_failed on pushes (seq) where state = 'failed'")


@migrations()
def m011_events_not_indexed_by_push(db: Database) -> None:
    # Nothing reads events by the push that made them (the activity read goes from an event to
    # its push, through pushes' id), and every event paid an entry in this index: ~5 µs of the
    # writer's time per processed push.
    db.execute("drop index events_push")


@migrations()
def m012_ended_messages_index_without_an_in_list(db: Database) -> None:
    # The same index, its condition written as comparisons: SQLite evaluates a partial index's
    # condition for every row an UPDATE changes the state of, and an IN list of three or more
    # values is built into a temporary b-tree at each evaluation (one per row of an
    # executemany). Measured on a claim's and a settle's UPDATE: ~9 of ~20 µs per row, for an
    # index none of those rows enters. Every query on it writes the condition the same way.
    db.execute("drop index deliveries_ended")
    db.execute(
        "create index deliveries_ended on deliveries (updated_at)"
        " where (state = 'dead' or state = 'skipped' or state = 'superseded')"
    )

"""asyncpg vs psycopg 3 (with psycopg_pool) on the operations the PostgreSQL store does.

    python -m bench.pg_drivers [--rounds 2000] [--concurrency 16]

Starts a throwaway PostgreSQL (tests/postgres.py, durable settings) and, for each driver, times on a
pool of 8 connections shared by ``--concurrency`` tasks: inserting a push (one INSERT … ON CONFLICT
… RETURNING in its own transaction), claiming 32 due rows with ``FOR UPDATE SKIP LOCKED`` and
settling a batch of 32 (one UPDATE over the batch plus 32 attempt rows). It prints operations per
second and the client's CPU µs per operation (the gateway process's cost; the server's is the same
SQL for both drivers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from tests.postgres import PostgresServer

SCHEMA = """
create table pushes (seq bigserial primary key, id text unique not null, source text not null,
  dedupe_key text not null, payload text, state text not null, received_at double precision not null,
  unique (source, dedupe_key));
create table deliveries (seq bigserial primary key, id text unique not null,
  subscription_id text not null, state text not null, attempts int not null default 0,
  next_attempt_at double precision not null, lease_token text, lease_expires_at double precision);
create index deliveries_due on deliveries (subscription_id, next_attempt_at, seq)
  where state in ('pending', 'leased');
create table attempts (id bigserial primary key, delivery_id text not null, attempt int not null,
  attempted_at double precision not null, outcome text not null, status int);
"""

INSERT_PUSH = (
    "insert into pushes (id, source, dedupe_key, payload, state, received_at)"
    " values ($1, 'channex', $2, $3, 'accepted', $4) on conflict (source, dedupe_key) do nothing"
    " returning seq"
)
CLAIM = (
    "update deliveries set state = 'leased', lease_token = $1, lease_expires_at = $2,"
    " next_attempt_at = $3 where seq in (select seq from deliveries"
    " where state = 'pending' and next_attempt_at <= $4 order by next_attempt_at, seq"
    " limit 32 for update skip locked) returning seq, id, subscription_id, attempts"
)
SETTLE = (
    "update deliveries set state = 'delivered', attempts = attempts + 1, lease_token = null,"
    " lease_expires_at = null where seq = any($1::bigint[])"
)
ATTEMPT = (
    "insert into attempts (delivery_id, attempt, attempted_at, outcome, status)"
    " values ($1, $2, $3, 'delivered', 200)"
)
PAYLOAD = json.dumps({"booking": {"id": "x" * 40, "rooms": [{"n": i} for i in range(20)]}})


def psycopg_sql(sql: str) -> str:
    """$n placeholders -> %s (psycopg's server-side binding uses %s)."""
    for n in range(9, 0, -1):
        sql = sql.replace(f"${n}", "%s")
    return sql


async def seed(url: str, rows: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("truncate deliveries, attempts, pushes")
        now = time.time() - 1
        await conn.executemany(
            "insert into deliveries (id, subscription_id, state, next_attempt_at)"
            " values ($1, $2, 'pending', $3)",
            [(f"msg_{i}", f"sub_{i % 10}", now) for i in range(rows)],
        )
    finally:
        await conn.close()


async def timed(
    name: str, rounds: int, concurrency: int, op: Callable[[int], Awaitable[Any]]
) -> dict[str, float]:
    queue = iter(range(rounds))

    async def runner() -> None:
        for i in queue:
            await op(i)

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(concurrency)))
    wall = time.perf_counter() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"ops_per_s": rounds / wall, "cpu_us_per_op": cpu / rounds * 1e6, "name": name}  # type: ignore[dict-item]


async def run_asyncpg(url: str, rounds: int, concurrency: int) -> list[dict[str, float]]:
    import asyncpg

    pool = await asyncpg.create_pool(url, min_size=8, max_size=8)
    assert pool is not None
    results = []

    async def insert(i: int) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.fetchval(INSERT_PUSH, uuid.uuid4().hex, f"a{i}", PAYLOAD, time.time())

    async def claim_settle(i: int) -> None:
        async with pool.acquire() as conn:
            async with conn.transaction():
                expires = time.time() + 60
                rows = await conn.fetch(CLAIM, uuid.uuid4().hex, expires, expires, time.time())
            async with conn.transaction():
                await conn.execute(SETTLE, [r["seq"] for r in rows])
                await conn.executemany(
                    ATTEMPT, [(r["id"], r["attempts"] + 1, time.time()) for r in rows]
                )

    results.append(await timed("asyncpg insert push", rounds, concurrency, insert))
    await seed(url, rounds * 32 // 4)
    results.append(
        await timed("asyncpg claim 32 + settle 32", rounds // 4, concurrency, claim_settle)
    )
    await pool.close()
    return results


async def run_psycopg(url: str, rounds: int, concurrency: int) -> list[dict[str, float]]:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

    async def configure(conn: AsyncConnection[Any]) -> None:
        conn.prepare_threshold = 0  # prepare every statement at once, as asyncpg does

    pool = AsyncConnectionPool(url, min_size=8, max_size=8, configure=configure, open=False)
    await pool.open()
    results = []
    insert_sql, claim_sql = psycopg_sql(INSERT_PUSH), psycopg_sql(CLAIM)
    settle_sql, attempt_sql = psycopg_sql(SETTLE), psycopg_sql(ATTEMPT)

    async def insert(i: int) -> None:
        async with pool.connection() as conn:
            await conn.execute(insert_sql, (uuid.uuid4().hex, f"p{i}", PAYLOAD, time.time()))

    async def claim_settle(i: int) -> None:
        async with pool.connection() as conn:
            async with conn.transaction():
                cur = await conn.execute(
                    claim_sql, (uuid.uuid4().hex, time.time() + 60, time.time() + 60, time.time())
                )
                rows = await cur.fetchall()
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute(settle_sql, ([r[0] for r in rows],))
                await cur.executemany(attempt_sql, [(r[1], r[3] + 1, time.time()) for r in rows])

    results.append(await timed("psycopg insert push", rounds, concurrency, insert))
    await seed(url, rounds * 32 // 4)
    results.append(
        await timed("psycopg claim 32 + settle 32", rounds // 4, concurrency, claim_settle)
    )
    await pool.close()
    return results


async def main_async(rounds: int, concurrency: int) -> None:
    server = PostgresServer(durable=True).start()
    try:
        url = server.create_database()
        server.psql(SCHEMA, database=url.rsplit("/", 1)[1])
        results = []
        for runner in (run_asyncpg, run_psycopg, run_asyncpg, run_psycopg):
            results += await runner(url, rounds, concurrency)
        for row in results:
            print(
                f"{row['name']:<32} {row['ops_per_s']:>9.0f} ops/s"
                f" {row['cpu_us_per_op']:>8.0f} µs CPU/op (client)"
            )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(main_async(args.rounds, args.concurrency))


if __name__ == "__main__":
    main()

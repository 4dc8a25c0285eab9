"""The ids the store hands out (messages' webhook-ids, pushes, events, leases)."""

from __future__ import annotations

import os
import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

from gateway.store import new_id


def test_ids_keep_their_format_and_sort_in_the_order_they_were_made() -> None:
    ids = []
    for _ in range(50):
        ids.append(new_id("msg"))
        time.sleep(0.000_002)  # ids of one microsecond may sort either way; these are apart
    assert all(re.fullmatch(r"msg_[0-9a-f]{32}", i) for i in ids)
    # Time first: each new id lands at the right edge of a table's unique index on ``id``.
    assert ids == sorted(ids)


def test_ids_made_in_the_same_microsecond_differ() -> None:
    ids = [new_id("msg") for _ in range(10_000)]
    assert len(set(ids)) == len(ids)


def test_ids_made_by_threads_at_once_differ() -> None:
    # One pool for every thread: each piece of random is handed out once (refills race too).
    with ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(lambda _: [new_id("msg") for _ in range(5_000)], range(8)))
    ids = [i for batch in batches for i in batch]
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_reuse_its_parents_random() -> None:
    new_id("msg")  # the parent holds unused random when it forks
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns of forking with other threads alive (some test's may be): this
        # child only makes ids and exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: its ids' random parts, to the parent
        try:
            os.write(write, " ".join(new_id("msg")[-19:] for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {new_id("msg")[-19:] for _ in range(100)}
    assert len(child) == 100
    assert not child & parent

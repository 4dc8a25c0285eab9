"""The ids the store hands out (messages' webhook-ids, pushes, events, leases)."""

from __future__ import annotations

import re
import time

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

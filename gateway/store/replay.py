"""The replay rule both stores share: which events a subscription missed while it got none."""

from __future__ import annotations

from collections.abc import Iterable


def missed_events(
    events: Iterable[tuple[int, str, str]],
    event: str,
    products: set[str],
    latest: dict[str, int],
) -> list[tuple[int, str]]:
    """(seq, subject) of each event in ``events`` (seq, subject, product, in seq order) the
    subscription matches and has no message for, nor for a later event of its subject
    (``latest``: the newest event seq per subject it has a message for). For availability only
    each day's last one: what the subscriber must end up holding. In event order, which is
    delivery order within a subject."""
    missed: dict[str, list[int]] = {}
    for seq, subject, product_id in events:
        if "*" not in products and product_id not in products:
            continue
        if latest.get(subject, 0) >= seq:
            continue
        if event == "availability_update":
            missed[subject] = [seq]
        else:
            missed.setdefault(subject, []).append(seq)
    return sorted((seq, subject) for subject, seqs in missed.items() for seq in seqs)

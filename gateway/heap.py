"""Python's cyclic garbage collector, set for a long-running server.

Measured under the bench's ingest phase with the interpreter's defaults, the collector took 8-9 %
of the gateway's CPU: full collections walked the whole start-up heap (modules, pydantic schemas,
compiled templates) every few seconds, ~50 ms each with the event loop stopped, and the youngest
generation was collected about every other request. The heap a running gateway keeps is almost all
built at start-up, and a request's containers die with it by reference counting, so:

- once started, everything alive is frozen out of the collector (``gc.freeze``): full collections
  then walk only what was made since;
- the youngest generation is collected once 10,000 containers more than were freed have been made
  since the last collection, not 700: the count never drops below zero, so at 700 the containers
  one request makes and frees (hundreds) trip it again and again, while at 10,000 only garbage
  that really piles up does. Cycles are still collected, a little later.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Call once start-up is done (plugins loaded, store open, listening)."""
    gc.collect()  # start-up's own cycles go now, not frozen for the life of the process
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


class HeapCollector(Collector):
    """``/metrics``: how many objects were frozen at start-up (0 until then, and in tests' apps)."""

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "gateway_gc_frozen_objects",
            "Objects frozen out of the garbage collector once start-up was done",
            value=gc.get_freeze_count(),
        )

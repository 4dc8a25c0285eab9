"""The garbage collector settings of a running gateway (gateway/heap.py)."""

from __future__ import annotations

import gc
import re
import urllib.request
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.heap import YOUNG_THRESHOLD, settle_heap
from gateway.metrics import Metrics
from tests.test_cli import demo_config, free_port, start_serve, wait_healthy


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settle_heap_freezes_what_start_up_made_and_still_collects_cycles_made_later(
    restored_collector: None,
) -> None:
    gc.unfreeze()
    metrics = Metrics()
    assert b"gateway_gc_frozen_objects 0.0" in metrics.render()
    middle_and_old = gc.get_threshold()[1:]
    settle_heap()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    assert f"gateway_gc_frozen_objects {float(frozen)}".encode() in metrics.render()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, *middle_and_old)
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, f"no {name} in /metrics"
    return float(found.group(1))


def test_served_gateway_freezes_its_start_up_heap_and_reports_collections(tmp_path: Path) -> None:
    port = free_port()
    proc = start_serve(demo_config(tmp_path), port)
    try:
        wait_healthy(port, proc)
        # Modules, pydantic schemas, compiled templates: far more than a few thousand objects.
        assert _metric(port, "gateway_gc_frozen_objects") > 20_000
        assert _metric(port, 'python_gc_collections_total{generation="2"}') >= 1
    finally:
        proc.terminate()
        proc.communicate(timeout=30)

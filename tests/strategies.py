"""Hypothesis strategies for PMS data: arbitrary JSON, and vendor samples with values replaced."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime
from typing import Any

from hypothesis import strategies as st

DAYS = st.dates(min_value=date(2020, 1, 1), max_value=date(2031, 12, 31))
MOMENTS = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2031, 12, 31))
# Text that looks like what PMSs send in dates and times, right or nearly right.
TIMEY = st.one_of(
    DAYS.map(date.isoformat),
    MOMENTS.map(datetime.isoformat),
    MOMENTS.map(lambda m: m.replace(tzinfo=UTC).isoformat()),
    MOMENTS.map(lambda m: m.strftime("%Y-%m-%dT%H:%M:%SZ")),
    st.sampled_from(["2024-02-30", "24-01-01", "2024-13-01", "0000-00-00", "tomorrow", ""]),
)
# What a parsed push may hold once its parser accepted it (no lone surrogates: they are refused).
PLAIN_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-3, max_value=12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    TIMEY,
)
# What a body may hold: also lone surrogates, which JSON escapes ("\ud800") and json reads back.
LEAVES = st.one_of(PLAIN_LEAVES, st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2))
JSON = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def _slots(doc: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in ``doc`` whose value could be replaced."""
    found: list[tuple[Any, Any]] = []
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found += [(item, key) for key in item]
            stack += list(item.values())
        elif isinstance(item, list):
            found += [(item, index) for index in range(len(item))]
            stack += item
    return found


@st.composite
def mutated(draw: st.DrawFn, doc: Any, values: st.SearchStrategy[Any] = JSON) -> Any:
    """``doc`` with one to four values somewhere in it replaced (or removed)."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        slots = _slots(doc)
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        if isinstance(container, dict) and draw(st.booleans()) and len(slots) > 1:
            del container[key]
        else:
            container[key] = draw(values)
    return doc

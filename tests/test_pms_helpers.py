"""The helpers source plugins share for what a PMS sends: card data left out, timestamps made OCTO's.
Both have a fast path for what PMSs usually send; these check it gives what the plain definition
gives, whatever came before it."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sources.pms import CARD_KEYS, without_card_data
from gateway.sources.translation import TranslationError, utc_timestamp


def plainly_without_card_data(value: Any) -> Any:
    """The definition: a deep copy of dicts and lists, keys whose lower case is a card key left out."""
    if isinstance(value, dict):
        return {
            k: plainly_without_card_data(v)
            for k, v in value.items()
            if str(k).lower() not in CARD_KEYS
        }
    if isinstance(value, list):
        return [plainly_without_card_data(v) for v in value]
    return value


KEYS = st.one_of(
    st.sampled_from(sorted(CARD_KEYS)),
    st.sampled_from(["CVV", "StripeToken", "Guarantee", "cardNumber", "id", "status", "Id"]),
    st.text(max_size=8),
)
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text()),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=20,
)


@settings(deadline=None, max_examples=200)
@given(values=st.lists(JSON, min_size=1, max_size=4))
def test_card_data_is_left_out_as_the_definition_says(values: list[Any]) -> None:
    # Several documents in a row: key names learned from one must not change the next's copy.
    for value in values:
        assert without_card_data(value) == plainly_without_card_data(value)


def test_a_card_key_is_left_out_after_its_neighbours_were_learned() -> None:
    plain = {"id": 1, "status": "new", "nested": {"id": 2}}
    assert without_card_data(plain) == plain
    for card in ("CVV", "stripeToken", "PCIBOOKINGTOKEN", "guarantee"):
        sent = {**plain, card: "4111", "nested": {"id": 2, card: {"number": "4111"}}}
        assert without_card_data(sent) == plain


def test_the_copy_is_deep_and_leaves_the_input_alone() -> None:
    sent = {"booking": {"cvv": "123", "rooms": [{"card_number": "4111", "id": 1}]}, "id": 7}
    copy = without_card_data(sent)
    assert copy == {"booking": {"rooms": [{"id": 1}]}, "id": 7}
    copy["booking"]["rooms"][0]["id"] = 2
    assert sent == {"booking": {"cvv": "123", "rooms": [{"card_number": "4111", "id": 1}]}, "id": 7}


def test_dict_and_list_subclasses_and_keys_that_are_not_text_are_scrubbed_too() -> None:
    class Rows(list[Any]):
        pass

    sent = {
        1: "one",
        None: {"CVC": 1, "x": 2},
        "o": OrderedDict(cvv=1, y=2),
        "r": Rows([{"cvv": 1}]),
    }
    assert without_card_data(sent) == {1: "one", None: {"x": 2}, "o": {"y": 2}, "r": [{}]}


@pytest.mark.parametrize(
    ("sent", "octo"),
    [
        ("2026-02-12T19:49:04Z", "2026-02-12T19:49:04Z"),
        ("2026-02-12T19:49:04", "2026-02-12T19:49:04Z"),
        (" 2026-02-12T19:49:04Z ", "2026-02-12T19:49:04Z"),
        ("2026-02-12 19:49:04Z", "2026-02-12T19:49:04Z"),
        ("2026-02-12T19:49:04.999Z", "2026-02-12T19:49:04Z"),
        ("2026-02-12T21:49:04+02:00", "2026-02-12T19:49:04Z"),
        ("2026-02-12", "2026-02-12T00:00:00Z"),
    ],
)
def test_utc_timestamps_are_written_as_octo_writes_them(sent: str, octo: str) -> None:
    assert utc_timestamp(sent, "bookingTime") == octo


@pytest.mark.parametrize("sent", ["2026-02-30T10:00:00Z", "2026-02-12T24:00:00Z", "soon"])
def test_a_timestamp_in_octo_form_that_is_no_time_is_refused(sent: str) -> None:
    with pytest.raises(TranslationError, match="bookingTime: not a timestamp"):
        utc_timestamp(sent, "bookingTime")

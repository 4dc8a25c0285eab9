"""Property tests (hypothesis) of every source parser and translator: whatever a PMS sends, a push
is accepted or rejected by name (never a crash, never a 500), what is accepted can be stored, and
what is translated is a valid OCTO object whose uuid is stable for one booking (room)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import ValidationError

from gateway.octo import Availability, AvailabilityEvent, BookingEvent, booking_uuid
from gateway.sources import IncomingPush, PushRejected
from gateway.sources.pms import CARD_KEYS, limit_guests
from gateway.sources.settings import TranslationSettings
from gateway.sources.translation import (
    TranslationError,
    availability_slot,
    stored_availability,
    text,
)
from gateway_beds24 import Beds24Source, versions_json
from gateway_beds24.translate import availability_from_calendar, booking_from_beds24
from gateway_channex import ChannexSource
from gateway_channex.translate import (
    ari_events,
    ari_rows,
    availability_from_ari,
    revision_attributes,
    translate_revision,
)
from tests.fake_pms import Harness
from tests.octo_schema import load_fixture, validate_octo
from tests.strategies import JSON, MOMENTS, PLAIN_LEAVES, TIMEY, mutated

# No deadline: the first example pays for loading schemas and samples, and CI is shared.
PROPERTIES = settings(deadline=None, max_examples=100)
CHANNEX = ChannexSource()
BEDS24 = Beds24Source()
UTC_SETTINGS = TranslationSettings()
NAMED_ERRORS = (TranslationError, ValidationError, PushRejected)
CHANNEX_PUSHES = [
    "channex-booking-1.json",
    "channex-booking-2.json",
    "channex-non-acked-booking-1.json",
    "channex-ari-1.json",
    "channex-ari-2.json",
    "channex-message-1.json",
]
BEDS24_PUSHES = ["beds24-v2-booking-1.json", "beds24-inventory-1.json"]
# Small numbers for translators: the plugins refuse absurd guest counts before translating.
SMALL_LEAVES = PLAIN_LEAVES.filter(
    lambda v: not isinstance(v, int) or isinstance(v, bool) or -5 < v < 20
)
NEAR_DAYS = st.dates(min_value=date(2026, 1, 1), max_value=date(2026, 3, 31))


def incoming(
    source: str,
    body: bytes,
    *,
    method: str = "POST",
    query: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> IncomingPush:
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": content_type}))
    return IncomingPush(source, method, query or {}, headers, body)


def bodies(samples: list[str]) -> st.SearchStrategy[bytes]:
    """Raw bytes, any JSON, and the vendor's own pushes with values replaced."""
    return st.one_of(
        st.binary(max_size=200),
        JSON.map(lambda doc: json.dumps(doc).encode()),
        st.sampled_from(samples)
        .flatmap(lambda name: mutated(load_fixture(name)))
        .map(lambda doc: json.dumps(doc).encode()),
    )


def accepted_or_rejected(source: Any, push: IncomingPush) -> None:
    try:
        accepted = source.accept(push)
    except PushRejected as exc:
        assert str(exc)  # the 400 names the problem
        return
    orjson.dumps(accepted.payload)  # the store can write what was accepted
    assert not _card_keys(accepted.payload)


def _card_keys(value: Any) -> list[str]:
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found += [k for k in item if str(k).lower() in CARD_KEYS]
            stack += list(item.values())
        elif isinstance(item, list):
            stack += item
    return found


# -- parsers (accept) ------------------------------------------------------------------------


@PROPERTIES
@given(body=bodies(CHANNEX_PUSHES), method=st.sampled_from(["POST", "GET", "PUT"]))
def test_channex_accepts_or_rejects_by_name_whatever_it_is_sent(body: bytes, method: str) -> None:
    accepted_or_rejected(CHANNEX, incoming("channex", body, method=method))


@PROPERTIES
@given(
    body=bodies(BEDS24_PUSHES),
    content_type=st.sampled_from(["application/json", "text/plain", "multipart/form-data"]),
)
def test_beds24_accepts_or_rejects_by_name_whatever_it_is_sent(
    body: bytes, content_type: str
) -> None:
    accepted_or_rejected(BEDS24, incoming("beds24", body, content_type=content_type))


@PROPERTIES
@given(
    query=st.dictionaries(
        st.sampled_from(["bookid", "status", "token", "x"]), st.text(max_size=30), max_size=4
    ),
    method=st.sampled_from(["GET", "POST"]),
)
def test_beds24_version_1_queries(query: dict[str, str], method: str) -> None:
    accepted_or_rejected(BEDS24, incoming("beds24", b"", method=method, query=query))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    source_body=st.one_of(
        st.tuples(st.just("channex"), bodies(CHANNEX_PUSHES)),
        st.tuples(st.just("beds24"), bodies(BEDS24_PUSHES)),
    )
)
async def test_ingest_never_answers_500_and_keeps_what_it_refuses(
    gw: Harness, source_body: tuple[str, bytes]
) -> None:
    source, body = source_body
    response = await gw.push(source, data=body, headers={"Content-Type": "application/json"})
    assert response.status in (200, 400), await response.text()
    answer = await response.json()
    if response.status == 400:
        assert answer["error"] == "BAD_REQUEST" and answer["errorMessage"]
        assert (await gw.admin_push(answer["id"]))["state"] == "failed"
    else:
        assert (await gw.admin_push(answer["id"]))["id"] == answer["id"]
    # What the gateway has delivered so far is valid OCTO.
    for booking in gw.bookings.bookings():
        validate_octo("Booking", booking)
    for availability in gw.availability.availability():
        validate_octo("Availability", availability)


# -- translators -----------------------------------------------------------------------------


def dumped(events: list[Any]) -> list[dict[str, Any]]:
    # What each event sends, taken before anything reads its booking (which validates it).
    sent = [
        event.booking_json() if isinstance(event, BookingEvent) else event.availability_json()
        for event in events
    ]
    dumps = [event.model_dump(mode="json", by_alias=True) for event in events]
    for event, json_sent, dump in zip(events, sent, dumps, strict=True):
        # What the event sends (the JSON it was built with) is the dump, key order included.
        key = "booking" if isinstance(event, BookingEvent) else "availability"
        assert orjson.dumps(json_sent) == orjson.dumps(dump[key])
    return dumps


def _limit_channex_guests(revision: dict[str, Any]) -> None:
    rooms = revision.get("rooms")
    for room in rooms if isinstance(rooms, list) else []:
        occupancy = (room.get("occupancy") if isinstance(room, dict) else None) or revision.get(
            "occupancy"
        )
        if isinstance(occupancy, dict):
            limit_guests(occupancy, "occupancy")


def channex_revision(name: str = "channex-booking-revision-1.json") -> dict[str, Any]:
    return revision_attributes(load_fixture(name))


REVISIONS = [f"channex-booking-revision-{n}.json" for n in range(1, 10)]


@PROPERTIES
@given(
    revision=st.sampled_from(REVISIONS).flatmap(
        lambda name: mutated(channex_revision(name), SMALL_LEAVES)
    ),
    received=MOMENTS.map(lambda m: m.replace(tzinfo=UTC)),
)
def test_channex_revisions_translate_to_valid_bookings_or_a_named_error(
    revision: dict[str, Any], received: datetime
) -> None:
    try:
        _limit_channex_guests(revision)  # as the plugin does before translating
        result = translate_revision(revision, UTC_SETTINGS, None, received_at=received)
    except NAMED_ERRORS:
        return
    for event in dumped(result.events):
        validate_octo("Booking", event["booking"])


@PROPERTIES
@given(
    name=st.sampled_from(["Ann", "Zoë", "", "李"]),
    notes=st.text(max_size=50),
    status=st.sampled_from(["new", "modified"]),
    adults=st.integers(min_value=0, max_value=6),
    later=MOMENTS.filter(lambda m: m > datetime(2019, 4, 23, 10, 3, 30)),
    amount=st.decimals(min_value=0, max_value=10**6, places=2).map(str),
)
def test_channex_room_uuids_stay_the_same_across_revisions(
    name: str, notes: str, status: str, adults: int, later: datetime, amount: str
) -> None:
    first = channex_revision()
    before = translate_revision(first, UTC_SETTINGS, None)
    second = copy.deepcopy(first)
    second.update(status=status, notes=notes, inserted_at=later.isoformat())
    second["customer"]["name"] = name
    second["rooms"][0].update(amount=amount, occupancy={"adults": adults, "children": 0})
    after = translate_revision(second, UTC_SETTINGS, before.rooms)
    uuids = [event["booking"]["uuid"] for event in dumped(after.events)]
    assert uuids == [event["booking"]["uuid"] for event in dumped(before.events)]
    assert uuids == [booking_uuid("channex", first["booking_id"], 0)]
    for event in dumped(after.events):
        validate_octo("Booking", event["booking"])


ARI_ROW = st.fixed_dictionaries(
    {},
    optional={
        "room_type_id": st.one_of(st.text(max_size=8), st.integers(), st.none()),
        "rate_plan_id": st.one_of(st.text(max_size=8), st.none()),
        "date": st.one_of(NEAR_DAYS.map(date.isoformat), TIMEY),
        "date_from": NEAR_DAYS.map(date.isoformat),
        "date_to": NEAR_DAYS.map(date.isoformat),
        "availability": st.one_of(st.integers(-5, 50), st.none(), st.text(max_size=4)),
        "booked": st.one_of(st.integers(-5, 50), st.none()),
        "stop_sell": st.one_of(st.booleans(), st.none()),
        "stop_sell_manual": st.one_of(st.booleans(), st.none()),
    },
)


@PROPERTIES
@given(rows=st.lists(ARI_ROW, max_size=6))
def test_channex_ari_translates_to_valid_availability_or_a_named_error(
    rows: list[dict[str, Any]],
) -> None:
    try:
        events = availability_from_ari(rows, UTC_SETTINGS, {})
    except NAMED_ERRORS:
        return
    for event in dumped(events):
        validate_octo("Availability", event["availability"])
        assert event["availability"]["vacancies"] >= 0


ZONES = st.sampled_from(
    ["UTC", "Europe/Paris", "America/St_Johns", "Asia/Kathmandu", "Pacific/Apia"]
)
KNOWN_SLOT = st.tuples(st.integers(0, 9), st.one_of(st.none(), st.integers(0, 20)), st.booleans())


# Rows of a few room types over a few days, so they meet each other and the known slots.
FEW_DAYS = st.dates(min_value=date(2026, 3, 1), max_value=date(2026, 3, 4)).map(date.isoformat)
NARROW_ARI_ROW = st.fixed_dictionaries(
    {"room_type_id": st.one_of(st.sampled_from(["r1", "r2", "0"]), st.integers(0, 2))},
    optional={
        "rate_plan_id": st.one_of(st.just("rate"), st.none()),
        "date": FEW_DAYS,
        "date_from": FEW_DAYS,
        "date_to": FEW_DAYS,
        "availability": st.one_of(st.integers(-5, 50), st.none()),
        "booked": st.one_of(st.integers(-5, 50), st.none()),
        "stop_sell_manual": st.one_of(st.booleans(), st.none()),
    },
)


@PROPERTIES
@given(
    rows=st.lists(st.one_of(ARI_ROW, NARROW_ARI_ROW), max_size=6),
    zone=ZONES,
    known=st.dictionaries(st.sampled_from(["r1", "r2", "0"]), KNOWN_SLOT, max_size=3),
    day=st.dates(min_value=date(2026, 3, 1), max_value=date(2026, 3, 4)),
)
def test_channex_ari_events_send_what_the_validated_models_dump(
    rows: list[dict[str, Any]],
    zone: str,
    known: dict[str, tuple[int, int | None, bool]],
    day: date,
) -> None:
    """The events are built with their JSON and without validation: each is what the checked
    models build (``availability_slot`` validates), and sends exactly their dump."""
    settings = TranslationSettings(timezone=zone)
    # What was sent before for some slots, read back as the store gives it (its OCTO JSON).
    previous = {}
    previous_json = {}
    for room, (vacancies, capacity, closed) in known.items():
        sent = availability_slot(
            day,
            date.fromordinal(day.toordinal() + 1),
            settings.zone,
            vacancies=vacancies,
            capacity=capacity,
            closed=closed,
        ).model_dump(mode="json", by_alias=True)
        back = stored_availability(sent)
        assert back == Availability.model_validate(sent)
        previous[(room, "DEFAULT", day.isoformat())] = back
        previous_json[(room, "DEFAULT", day.isoformat())] = sent
    try:
        events = availability_from_ari(rows, settings, previous)
    except NAMED_ERRORS:
        return
    # The plugin reads what was sent as JSON (``known_availability_json``): the same events.
    assert ari_events(ari_rows(rows, settings)[0], settings, previous_json) == events
    for event, dump in zip(events, dumped(events), strict=True):
        validate_octo("Availability", dump["availability"])
        slot = event.availability
        checked = AvailabilityEvent(
            product_id=event.product_id,
            option_id=event.option_id,
            availability=availability_slot(
                date.fromisoformat(event.key[2]),
                date.fromordinal(date.fromisoformat(event.key[2]).toordinal() + 1),
                settings.zone,
                vacancies=slot.vacancies,
                capacity=slot.capacity,
                closed=slot.status == "CLOSED",
            ),
        )
        assert event == checked
        assert orjson.dumps(event.availability_json()) == orjson.dumps(
            checked.availability.model_dump(mode="json", by_alias=True)
        )


def beds24_booking() -> dict[str, Any]:
    booking: dict[str, Any] = load_fixture("beds24-v2-booking-1.json")[0]["booking"]
    return booking


@PROPERTIES
@given(booking=mutated(beds24_booking(), SMALL_LEAVES))
def test_beds24_bookings_translate_to_valid_bookings_with_a_stable_uuid(
    booking: dict[str, Any],
) -> None:
    try:
        # As the plugin does before translating: one unit item per guest.
        limit_guests({f: booking.get(f) for f in ("numAdult", "numChild")}, "booking")
        event = booking_from_beds24(booking, UTC_SETTINGS)
    except NAMED_ERRORS:
        return
    if event is None:  # an owner block, or a status mapped to IGNORE
        return
    octo = event.model_dump(mode="json", by_alias=True)["booking"]
    validate_octo("Booking", octo)
    # What the event sends (the JSON it was made from) is the booking's dump, key order included.
    assert orjson.dumps(event.booking_json()) == orjson.dumps(octo)
    booking_id = text(booking.get("id"))
    assume(booking_id is not None)
    assert octo["uuid"] == booking_uuid("beds24", booking_id)


CALENDAR_RANGE = st.fixed_dictionaries(
    {"from": NEAR_DAYS.map(date.isoformat)},
    optional={
        "to": NEAR_DAYS.map(date.isoformat),
        "numAvail": st.one_of(st.integers(-5, 50), st.none(), st.text(max_size=3)),
        "override": st.sampled_from(["none", "blackout", "x"]),
    },
)


@PROPERTIES
@given(
    items=st.lists(
        st.fixed_dictionaries(
            {"roomId": st.one_of(st.integers(1, 10**6), st.text(max_size=6))},
            optional={"calendar": st.lists(CALENDAR_RANGE, max_size=4)},
        ),
        max_size=3,
    ),
    start=NEAR_DAYS,
    days=st.integers(min_value=0, max_value=40),
)
def test_beds24_calendars_translate_to_valid_availability_or_a_named_error(
    items: list[dict[str, Any]], start: date, days: int
) -> None:
    end = date.fromordinal(start.toordinal() + days)
    try:
        events = availability_from_calendar(items, UTC_SETTINGS, start, end)
    except NAMED_ERRORS:
        return
    for event in dumped(events):
        validate_octo("Availability", event["availability"])
        assert event["availability"]["vacancies"] >= 0
        assert start.isoformat() <= event["availability"]["id"][:10] <= end.isoformat()


@pytest.fixture
async def gw(gateways: Any) -> Harness:
    harness: Harness = await gateways.start()
    return harness


@PROPERTIES
@given(versions=st.lists(st.text(max_size=12), min_size=1, max_size=3))
def test_beds24_versions_digest_text_is_json_dumps(versions: list[str]) -> None:
    """The dedupe keys of pushes stored before orjson wrote it were made of json.dumps's bytes."""
    assert versions_json(versions) == json.dumps(versions).encode()

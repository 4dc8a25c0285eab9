"""Pydantic models of the OCTO objects the gateway emits, and the events that carry them.

Field names are snake_case in Python and camelCase on the wire (``model_dump(mode="json",
by_alias=True)``), exactly as in ``shared/octo/octo-core.schemas.json``. Every key the schema
lists as required is always emitted, with ``None`` where the schema allows null. Optional
capability data (``pricing``, ``product``, ``unit``) is not emitted.

Timestamps are kept as the strings OCTO shows: UTC times as ``2024-05-01T10:00:00Z``, local times
with their offset (``2024-05-01T00:00:00+02:00``).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from gateway.models import trusted

BookingStatus = Literal[
    "ON_HOLD", "CONFIRMED", "EXPIRED", "CANCELLED", "REDEEMED", "PENDING", "REJECTED"
]
AvailabilityStatus = Literal["AVAILABLE", "FREESALE", "SOLD_OUT", "LIMITED", "CLOSED"]
Refund = Literal["FULL", "PARTIAL", "NONE"]
DeliveryMethod = Literal["VOUCHER", "TICKET"]
DeliveryFormat = Literal["PDF_URL", "QRCODE", "CODE128", "PKPASS_URL", "AZTECCODE"]
RedemptionMethod = Literal["DIGITAL", "PRINT", "MANIFEST"]

UtcTimestamp = Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")]
LocalTimestamp = Annotated[
    str, Field(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}$")
]

# Never change: every booking uuid the gateway has ever sent is derived from it.
BOOKING_NAMESPACE = uuid.UUID("6f1c2a8e-3b5d-5e7a-9c41-0d2b8f6a7e13")


class OctoModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Contact(OctoModel):
    full_name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    email_address: str | None = None
    phone_number: str | None = None
    locales: list[str] = Field(default_factory=list)
    postal_code: str | None = None
    country: str | None = None
    notes: str | None = None


class OpeningHours(OctoModel):
    from_: str = Field(alias="from")
    to: str


class Availability(OctoModel):
    id: str
    local_date_time_start: LocalTimestamp
    local_date_time_end: LocalTimestamp
    utc_cutoff_at: UtcTimestamp
    all_day: bool
    available: bool
    status: AvailabilityStatus
    vacancies: int | None
    capacity: int | None
    max_units: int | None = None
    opening_hours: list[OpeningHours] = Field(default_factory=list)

    @model_validator(mode="after")
    def _id_is_start(self) -> Availability:
        if self.id != self.local_date_time_start:
            raise ValueError("availability id must equal localDateTimeStart")
        return self


class BookingCancellation(OctoModel):
    refund: Refund
    reason: str | None
    utc_cancelled_at: UtcTimestamp


class DeliveryOption(OctoModel):
    delivery_format: DeliveryFormat
    delivery_value: str


class Ticket(OctoModel):
    redemption_method: RedemptionMethod
    utc_redeemed_at: UtcTimestamp | None = None
    delivery_options: list[DeliveryOption] = Field(default_factory=list)


class UnitItem(OctoModel):
    uuid: str
    reseller_reference: str | None = None
    supplier_reference: str | None = None
    unit_id: str
    status: BookingStatus
    utc_redeemed_at: UtcTimestamp | None = None
    contact: Contact = Field(default_factory=Contact)
    ticket: Ticket | None = None


class Booking(OctoModel):
    id: str
    uuid: str
    test_mode: bool
    reseller_reference: str | None
    supplier_reference: str | None
    status: BookingStatus
    utc_created_at: UtcTimestamp
    utc_updated_at: UtcTimestamp
    utc_expires_at: UtcTimestamp | None = None
    utc_redeemed_at: UtcTimestamp | None = None
    utc_confirmed_at: UtcTimestamp | None
    product_id: str
    option_id: str
    cancellable: bool
    cancellation: BookingCancellation | None
    freesale: bool = False
    availability_id: str | None
    availability: Availability | None
    contact: Contact
    notes: str | None
    delivery_methods: list[DeliveryMethod] = Field(default_factory=list)
    voucher: Ticket | None = None
    unit_items: list[UnitItem]

    @model_validator(mode="after")
    def _status_rules(self) -> Booking:
        """The rules OCTO validators check beyond the schema."""
        if self.status == "CONFIRMED" and (self.utc_confirmed_at is None or self.cancellation):
            raise ValueError("a CONFIRMED booking needs utcConfirmedAt and no cancellation")
        if self.status == "CANCELLED" and self.cancellation is None:
            raise ValueError("a CANCELLED booking needs a cancellation")
        if self.availability is not None and self.availability_id != self.availability.id:
            raise ValueError("availabilityId must equal availability.id")
        return self


class SupplierContact(OctoModel):
    website: str | None = None
    email: str | None = None
    telephone: str | None = None
    address: str | None = None


class Supplier(OctoModel):
    id: str
    name: str
    endpoint: str
    contact: SupplierContact = Field(default_factory=SupplierContact)


def _same_fields(a: BaseModel, b: BaseModel) -> bool:
    """Equal as pydantic compares models (type, fields, extra fields), leaving out the private
    attributes: an event's kept JSON is how it was made, not what it is."""
    return (
        type(a) is type(b)
        and a.__dict__ == b.__dict__
        and a.__pydantic_extra__ == b.__pydantic_extra__
    )


class AvailabilityEvent(OctoModel):
    """What an availability_update carries besides ``webhook`` and ``supplier``."""

    product_id: str
    option_id: str
    availability: Availability

    # The availability's OCTO JSON, when the event was built with it (``wired_availability_event``,
    # for ``day_event``), with the availability it was built with: what the event sends while
    # ``availability`` is still that one.
    _wire: tuple[Availability, dict[str, Any]] | None = PrivateAttr(default=None)

    @property
    def key(self) -> tuple[str, str, str]:
        """(productId, optionId, "YYYY-MM-DD"): the slot this event describes."""
        return (self.product_id, self.option_id, self.availability.local_date_time_start[:10])

    def __eq__(self, other: object) -> bool:
        """As pydantic compares models, but for the kept JSON: an event given its JSON equals one
        without it."""
        if not isinstance(other, AvailabilityEvent):
            return NotImplemented
        return _same_fields(self, other)

    def availability_json(self) -> dict[str, Any]:
        """The availability as OCTO JSON (``model_dump(mode="json", by_alias=True)``)."""
        private = self.__pydantic_private__
        wire = None if private is None else private.get("_wire")
        if wire is not None and wire[0] is self.availability:
            return wire[1]  # type: ignore[no-any-return]
        return self.availability.model_dump(mode="json", by_alias=True)


class BookingEvent(OctoModel):
    """One OCTO booking and the key of the PMS booking (room) it comes from."""

    booking: Booking
    # Orders updates and finds the previous state for the diff: source + booking id + room index.
    booking_key: str
    # The PMS's version of this booking (Channex revision id, Beds24 id@modifiedTime): a version
    # already sent is not sent again.
    revision: str | None = None
    # Orders versions of one booking: an older version arriving late is dropped. An instant (an
    # ISO timestamp given as text is parsed; one without an offset is UTC), never compared as text.
    version: datetime | None = None

    # The booking's OCTO JSON, when the event was made from it (``from_wire``), with the
    # booking validated from it (None until then, for JSON taken unvalidated): what the event
    # sends while ``booking`` is still that booking.
    _wire: tuple[Booking | None, dict[str, Any]] | None = PrivateAttr(default=None)

    @field_validator("version")
    @classmethod
    def _version_is_utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @classmethod
    def from_wire(
        cls,
        wire: dict[str, Any],
        *,
        booking_key: str,
        revision: str | None = None,
        version: datetime | None = None,
        validate: bool = True,
    ) -> BookingEvent:
        """An event for a booking given as its OCTO JSON: validated into ``booking`` as usual, and
        sent as given instead of dumping ``booking`` again (a dump was 7-15 µs per booking, a
        tenth of a push's translation). ``wire`` must be exactly what ``booking_json`` would
        otherwise write: camelCase, every key in the models' order, JSON values (no value that
        validation would convert). Change neither afterwards; replacing ``booking`` is fine (the
        new one is dumped).

        ``validate=False`` takes ``wire`` as valid and validates it only if ``booking`` is read
        (sending it never does): for JSON valid by construction, written from values the plugin
        API's builders check (``slot_json``, ``unit_items_json``, ``contact_json``,
        ``utc_timestamp``, ``booking_status``), as the shipped translators write it; their tests
        validate every booking they write, hypothesis-made ones included. The validation was a
        third of a Beds24 push's translation. JSON that is not valid is then sent as it is."""
        if validate or not (
            type(booking_key) is str
            and (revision is None or type(revision) is str)
            and (version is None or (type(version) is datetime and version.tzinfo is not None))
        ):
            booking = Booking.model_validate(wire)
            event = cls(
                booking=booking, booking_key=booking_key, revision=revision, version=version
            )
            # Straight into pydantic's private values: its __setattr__ and __getattr__ for a
            # private attribute cost about as much as the rest of this.
            event.__pydantic_private__["_wire"] = (booking, wire)  # type: ignore[index]
            return event
        event = cls.__new__(cls)
        # Every field set but ``booking``, which ``__getattr__`` validates from ``wire`` when read.
        _set(
            event,
            "__dict__",
            {"booking_key": booking_key, "revision": revision, "version": version},
        )
        _set(event, "__pydantic_fields_set__", set(_BOOKING_EVENT_FIELDS))
        _set(event, "__pydantic_extra__", None)
        _set(event, "__pydantic_private__", {"_wire": (None, wire)})
        return event

    def _booking(self) -> Booking:
        """The booking, validated from the JSON the event was made from if it was not yet."""
        found = self.__dict__.get("booking")
        if found is not None:
            return found  # type: ignore[no-any-return]
        private = self.__pydantic_private__
        wire = None if private is None else private.get("_wire")
        if wire is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute 'booking'")
        booking = Booking.model_validate(wire[1])
        self.__dict__["booking"] = booking
        private["_wire"] = (booking, wire[1])  # type: ignore[index]
        return booking

    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            # Only for what the instance lacks: ``booking`` of an event made from unvalidated JSON.
            if name == "booking":
                return self._booking()
            return super().__getattr__(name)

    @model_serializer(mode="wrap")
    def _with_booking(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Every dump has the booking: one not yet validated from its JSON is, first."""
        self._booking()
        return handler(self)

    def __repr_args__(self) -> Any:
        self._booking()
        return super().__repr_args__()

    def __iter__(self) -> Any:
        self._booking()
        return super().__iter__()

    def __getstate__(self) -> dict[Any, Any]:
        self._booking()
        return super().__getstate__()

    def __eq__(self, other: object) -> bool:
        """As pydantic compares models, but for the kept JSON: an event made ``from_wire`` equals
        one built from the same booking."""
        if not isinstance(other, BookingEvent):
            return NotImplemented
        self._booking()
        other._booking()
        return _same_fields(self, other)

    def booking_json(self) -> dict[str, Any]:
        """The booking as OCTO JSON (``model_dump(mode="json", by_alias=True)``)."""
        private = self.__pydantic_private__
        wire = None if private is None else private.get("_wire")
        if wire is not None:
            booking = self.__dict__.get("booking")
            if booking is None or booking is wire[0]:
                return wire[1]  # type: ignore[no-any-return]
        return self.booking.model_dump(mode="json", by_alias=True)


_BOOKING_EVENT_FIELDS = frozenset(BookingEvent.model_fields)


_AVAILABILITY_EVENT_FIELDS = frozenset(AvailabilityEvent.model_fields)


def wired_availability_event(
    product_id: str, option_id: str, values: dict[str, Any], wire: dict[str, Any]
) -> AvailabilityEvent:
    """An availability event built without validation from values the gateway made itself:
    ``values`` the availability's field values (every field, each of its type), ``wire`` the
    same as OCTO JSON, exactly what ``model_dump(mode="json", by_alias=True)`` writes, key order
    included. The event sends ``wire`` instead of dumping the availability again: the dump and
    the models' validation were 8 of a day's 13 µs, one event per ARI row and day. Not in the
    plugin API: plugins build events with ``day_event`` or the models, both checked."""
    availability = trusted(Availability, values)
    event = AvailabilityEvent.__new__(AvailabilityEvent)
    _set(
        event,
        "__dict__",
        {"product_id": product_id, "option_id": option_id, "availability": availability},
    )
    _set(event, "__pydantic_fields_set__", set(_AVAILABILITY_EVENT_FIELDS))
    _set(event, "__pydantic_extra__", None)
    _set(event, "__pydantic_private__", {"_wire": (availability, wire)})
    return event


_set = object.__setattr__


def booking_key(source: str, booking_id: str, room_index: int | None = None) -> str:
    """``channex:<booking id>:<room index>`` or ``beds24:<id>``."""
    parts = [source, booking_id] if room_index is None else [source, booking_id, str(room_index)]
    return ":".join(parts)


def booking_uuid(source: str, booking_id: str, room_index: int | None = None) -> str:
    """A uuid that stays the same for one PMS booking (room) across all its updates."""
    return uuid5_text(BOOKING_NAMESPACE, booking_key(source, booking_id, room_index))


def uuid5_text(namespace: uuid.UUID, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))`` (RFC 4122 name-based, SHA-1) without building a
    ``UUID``: the SHA-1's hex digits with the version digit and the variant bits written in
    (1.6-2.2 µs against 7 µs; a booking takes one per guest and room on every push)."""
    if namespace is BOOKING_NAMESPACE:
        # The namespace's bytes already hashed: a copy of that state (``namespace.bytes`` is a
        # property that builds them each time).
        digest = _BOOKING_SHA1.copy()
    else:
        digest = hashlib.sha1(namespace.bytes)
    digest.update(name.encode("utf-8"))
    x = digest.hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


_BOOKING_SHA1 = hashlib.sha1(BOOKING_NAMESPACE.bytes)


# The RFC 4122 variant: a hex digit's top two bits become 10.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}

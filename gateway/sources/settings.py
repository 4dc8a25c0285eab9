"""Per-source translation settings, read from ``[sources.<name>]`` in gateway.toml."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Self, TypeVar, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.octo import BookingStatus

IGNORE = "IGNORE"
UNIT_KINDS = ("adult", "child", "infant")
BOOKING_STATUSES: frozenset[str] = frozenset(get_args(BookingStatus))
M = TypeVar("M", bound=BaseModel)


# Parsed settings by (model, the settings object they came from): a source parses its table on
# every push, and re-validating it each time was about 1 % of ingest. The settings object is kept
# in the entry, so its id is not reused while cached; sources are few, the cache stays small.
_PARSED: dict[tuple[type[BaseModel], int], tuple[BaseModel, BaseModel]] = {}
_PARSED_MAX = 256


def _parsed(model: type[M], settings: BaseModel, parse: Callable[[], M]) -> M:
    key = (model, id(settings))
    found = _PARSED.get(key)
    if found is not None and found[0] is settings:
        return found[1]  # type: ignore[return-value]
    value = parse()
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[key] = (settings, value)
    return value


class TranslationSettings(BaseModel):
    """How one source's PMS data maps onto OCTO; every map falls back to the PMS value itself."""

    model_config = ConfigDict(extra="forbid")

    timezone: str = "UTC"
    product_map: dict[str, str] = Field(default_factory=dict)  # PMS room id -> productId
    option_map: dict[str, str] = Field(default_factory=dict)  # PMS rate/offer id -> optionId
    unit_map: dict[str, str] = Field(default_factory=dict)  # adult/child/infant -> unitId
    # PMS status as the PMS writes it (lower case) -> OCTO status, or IGNORE: no booking_update.
    status_map: dict[str, str] = Field(default_factory=dict)
    test_mode: bool = False

    @classmethod
    def from_source(cls, values: Mapping[str, Any]) -> Self:
        """The translation keys of a ``[sources.<name>]`` table; its other keys are the source's."""
        return cls.model_validate({k: v for k, v in values.items() if k in cls.model_fields})

    @classmethod
    def of_config(cls, settings: BaseModel) -> Self:
        """``from_source`` of a ``[sources.<name>]`` table, parsed once per settings object (the
        same object comes back each time: treat it as read-only)."""
        return _parsed(cls, settings, lambda: cls.from_source(settings.model_dump()))

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
        return value

    @field_validator("unit_map")
    @classmethod
    def _known_units(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(UNIT_KINDS))
        if unknown:
            raise ValueError(f"unknown unit kinds {unknown}; use {list(UNIT_KINDS)}")
        return value

    @field_validator("status_map")
    @classmethod
    def _known_statuses(cls, value: dict[str, str]) -> dict[str, str]:
        allowed = BOOKING_STATUSES | {IGNORE}
        wrong = sorted(status for status in value.values() if status not in allowed)
        if wrong:
            raise ValueError(f"unknown OCTO statuses {wrong}; use {sorted(allowed)}")
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def product_id(self, room_id: str) -> str:
        return self.product_map.get(room_id, room_id)

    def option_id(self, rate_id: str | None) -> str:
        return self.option_map.get(rate_id, rate_id) if rate_id else "DEFAULT"

    def unit_id(self, kind: str) -> str:
        return self.unit_map.get(kind, kind)

    def status(self, pms_status: str, defaults: Mapping[str, str]) -> str | None:
        """The OCTO status (or IGNORE) for a PMS status; None when neither map knows it."""
        return self.status_map.get(pms_status, defaults.get(pms_status))


class SourceSettings(TranslationSettings):
    """Every key a ``[sources.<name>]`` table may hold: the ones the gateway reads (``token``,
    ``api_url``), the translation maps, and, in a subclass, the source's own keys.

    A source's ``check_settings`` validates its table against its subclass of this model; a key
    that no field names is refused (``sources.<name>.<key>: unknown key``), so a misspelt key
    never passes silently.
    """

    token: str = Field(min_length=1)
    api_url: str | None = None

    @classmethod
    def from_config(cls, settings: BaseModel) -> Self:
        """Validate a ``[sources.<name>]`` table (the ``SourceConfig`` a source is handed); keys
        left out take the model's defaults. Parsed once per settings object (the same object
        comes back each time: treat it as read-only)."""
        return _parsed(
            cls, settings, lambda: cls.model_validate(settings.model_dump(exclude_none=True))
        )

"""Reading a PMS API from a source plugin: JSON in, failures sorted into retry-later or give-up."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from gateway.sources import PushRejected, RetryLater


async def request_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    params: Mapping[str, str] | None = None,
    what: str,
) -> Any:
    """A PMS API call. 5xx, 429, auth failures and network errors are temporary (``RetryLater``:
    the push waits and is tried again); 404 and other 4xx mean the push can't be processed as it is
    (``PushRejected``: it is kept as failed, replayable)."""
    try:
        async with session.request(method, url, headers=headers, params=params) as response:
            text = await response.text(errors="replace")
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RetryLater(f"{what}: {type(exc).__name__}: {exc}") from None
    if status >= 500 or status in (408, 429):
        raise RetryLater(f"{what}: PMS API answered {status}")
    if status in (401, 403):
        raise RetryLater(f"{what}: PMS API refused our credentials ({status}); check the api key")
    if status >= 400:
        raise PushRejected(f"{what}: PMS API answered {status}: {text[:200]}")
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        raise RetryLater(
            f"{what}: PMS API answered {status} with a body that is not JSON"
        ) from None


def parse_json(body: bytes) -> Any:
    """A push body as JSON, or PushRejected naming the problem."""
    try:
        # The fast path: orjson accepts exactly what is valid JSON (no NaN, no BOM). Anything it
        # refuses goes through the slow path below, which names the problem precisely.
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _parse_json_slowly(body)
    if may_nest_too_deep(body) and nesting_depth(value) > MAX_DEPTH:
        raise PushRejected(f"body is nested more than {MAX_DEPTH} levels deep")
    return value


def _parse_json_slowly(body: bytes) -> Any:
    try:
        text = body.decode("utf-8").removeprefix("\ufeff")  # a byte order mark is not JSON
    except UnicodeDecodeError as exc:
        raise PushRejected(f"body is not UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise PushRejected("body is empty; expected JSON")
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise PushRejected(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise PushRejected(f"body is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError:
        # Python refuses integers of more than 4300 digits (int_max_str_digits).
        raise PushRejected("body is not valid JSON: a number in it is too long") from None
    if may_nest_too_deep(body) and nesting_depth(value) > MAX_DEPTH:
        raise PushRejected(f"body is nested more than {MAX_DEPTH} levels deep")
    try:
        # What Python's json accepts and the store's orjson can't write (a lone surrogate escape
        # such as "\ud800", an integer over 64 bits) is refused here, so the push is kept as failed.
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise PushRejected(f"body is not valid JSON: {exc}") from None
    return value


MAX_DEPTH = 32


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise PushRejected(f"body is not valid JSON: the number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise PushRejected(f"body is not valid JSON: {name} is not a JSON value")


def may_nest_too_deep(body: bytes) -> bool:
    """False when the body has too few brackets to nest more than MAX_DEPTH levels: each level
    opens one (a bracket inside a string only counts extra). Two C-speed counts spare the walk
    over every value of an ordinary push (4 % of a Beds24 ingest profile)."""
    return body.count(b"[") + body.count(b"{") > MAX_DEPTH


def nesting_depth(value: Any) -> int:
    """How deep containers nest, without recursion (so hostile input can't exhaust the stack)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_DEPTH:
            stack.extend((child, depth + 1) for child in children)
    return deepest


# More guests than this in one booking (room) is refused: OCTO gets one unit item per guest, and a
# count like 10**8 in a push would otherwise exhaust memory.
MAX_GUESTS = 500


def limit_guests(counts: Mapping[str, Any], where: str) -> None:
    """PushRejected when the guest counts (whole numbers, as the translators read them) of one
    booking add up to more than MAX_GUESTS; values that aren't numbers are left to the translator."""
    total = 0
    for field, value in counts.items():
        try:
            number = int(value or 0)
        except (TypeError, ValueError, OverflowError):
            continue
        if number > MAX_GUESTS:
            raise PushRejected(f"{where}.{field}: more than {MAX_GUESTS} guests ({number})")
        total += max(number, 0)
    if total > MAX_GUESTS:
        raise PushRejected(f"{where}: more than {MAX_GUESTS} guests in all ({total})")


CARD_KEYS = {
    "guarantee",
    "card_number",
    "cardnumber",
    "cvv",
    "cvc",
    "card_cvv",
    "card_token",
    "stripetoken",
    "pcibookingtoken",
}


def without_card_data(value: Any) -> Any:
    """A deep copy without card data (Channex ``guarantee``, card numbers, CVVs, tokens)."""
    if isinstance(value, dict):
        return _dict_without_card_data(value)
    if isinstance(value, list):
        return [without_card_data(v) for v in value]
    return value


# Key names seen that are not card keys: a dict whose keys are all known is copied at C speed
# and only its nested containers are visited (a Beds24 booking has ~80 keys; lower-casing each
# and a call per value was 20-30 µs per push). Bounded: past it, new names take the slow path.
_PLAIN_KEYS: set[str] = set()
_PLAIN_KEYS_MAX = 4096


def _dict_without_card_data(value: dict[Any, Any]) -> dict[Any, Any]:
    copy = dict(value)
    if not _PLAIN_KEYS.issuperset(copy):
        for key in copy.keys() - _PLAIN_KEYS:
            if str(key).lower() in CARD_KEYS:
                del copy[key]
            elif type(key) is str and len(_PLAIN_KEYS) < _PLAIN_KEYS_MAX:
                _PLAIN_KEYS.add(key)
    for key, item in copy.items():
        if item.__class__ not in _SCALARS and isinstance(item, (dict, list)):
            copy[key] = without_card_data(item)  # a new value for a key: no resize
    return copy


# What JSON values mostly are: a class test is cheaper than isinstance against two classes.
_SCALARS = frozenset({str, int, float, bool, type(None)})

"""Canonical events: the one vocabulary every reader, the encoder and the runtime share.

An event is a mapping with the fields below. `ts` is Unix seconds (float, UTC);
`event` is one of EVENT_TYPES; `session`, `category` and `price` are optional.

Seams: the rule constants (MIN_TS/MAX_TS, MIN_PRICE) that the readers apply to whole
columns, and `canonical_event`, the one check of a single event that the live path
(`FeatureEncoder.step`, LiveSession, SessionStore, `serve`) and `Scorer.encode_session`
share, with `check_time` for a time on its own; `shown` cuts a bad value for a message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from edge_runtime.errors import ConfigError

EVENT_TYPES: tuple[str, ...] = ("view", "cart", "fav", "purchase")
EVENT_CODE: dict[str, int] = {name: code for code, name in enumerate(EVENT_TYPES)}
VIEW, CART, FAV, PURCHASE = (EVENT_CODE[n] for n in EVENT_TYPES)

REQUIRED_FIELDS: tuple[str, ...] = ("user", "ts", "event", "item")
CANONICAL_FIELDS: tuple[str, ...] = ("user", "session", "ts", "event", "item", "category", "price")

# Timestamps outside this window are "absurd" rather than merely unusual:
# before 2000-01-01 or after 2100-01-01 (UTC).
MIN_TS = 946_684_800.0
MAX_TS = 4_102_444_800.0

# A short, valid session for checks that must run a model on something real: `doctor`, the
# cold-start and live-memory probes, the benchmarks' fallback when no log is given.
PROBE_SESSION: tuple[dict, ...] = (
    {"ts": 1.7e9, "event": "view", "item": "a", "category": "c", "price": 10.0},
    {"ts": 1.7e9 + 35, "event": "view", "item": "a", "category": "c", "price": 10.0},
    {"ts": 1.7e9 + 80, "event": "cart", "item": "a", "category": "c", "price": 10.0},
)

# --------------------------------------------------------------------------- one event
# The rules every path applies to one canonical event: the readers (vectorised, on whole
# columns), and `canonical_event` (one event at a time: the live path, Scorer.encode_session).
# ts: a finite number of Unix seconds within MIN_TS..MAX_TS, not a boolean.
# event: a name of EVENT_TYPES, or its integer code (not a boolean).
# item: required; text or a number, not empty or blank. category: optional; absent, null,
# empty or blank all mean "no category". price: optional; absent, null or NaN (numpy's
# missing value, as in the encoder's arrays) mean "no price", otherwise a finite number
# >= MIN_PRICE.
MIN_PRICE = 0.0
# The fields `canonical_event` needs (``user`` and ``session`` are the caller's business).
REQUIRED_EVENT_FIELDS: tuple[str, ...] = ("ts", "event", "item")
# How much of a bad value a message shows: a 400-digit number or a 3 KB id is cut.
SHOWN_CHARS = 60


class Event(NamedTuple):
    """One validated canonical event, as `canonical_event` returns it.

    Attributes:
        ts: Unix seconds, within MIN_TS..MAX_TS.
        code: the event type's code (EVENT_CODE).
        item: the item id as text (ids compare as text: 1 and "1" are one item).
        category: the category id as text, or None for "no category".
        price: the price, NaN for "no price".
    """

    ts: float
    code: int
    item: str
    category: str | None
    price: float


def canonical_event(event: Mapping) -> Event:
    """Check one event against the rules above and return its values.

    The one validation of an event given as a mapping: `FeatureEncoder.step` (and so every
    live session and `serve`) and `Scorer.encode_session` call it, so a value is refused or
    accepted alike on every path, and alike to the readers.

    Args:
        event: a mapping with ``ts``, ``event``, ``item`` and optionally ``category`` and
            ``price`` (other keys are ignored).

    Returns:
        The validated Event.

    Raises:
        ConfigError: naming the field and its value: not a mapping, a missing field, a ts
            that is not a number or outside 2000..2100, an unknown event type, a null, empty
            or non-text item, a non-text category, a price that is not a finite number >= 0.
    """
    try:
        ts, kind, item = event["ts"], event["event"], event["item"]
        category, price = event.get("category"), event.get("price")
    except KeyError as e:
        raise ConfigError(f"event has no {e.args[0]!r} field (needs {list(REQUIRED_EVENT_FIELDS)})") from None
    except (TypeError, AttributeError):
        raise ConfigError(f"an event must be a mapping of fields, got {type(event).__name__}") from None
    # Fast paths for the common types (this runs on every live event); whatever they do not
    # pass takes the full check, which gives them the same result.
    kind_of = type(ts)
    ts = float(ts) if (kind_of is float or kind_of is int) and MIN_TS <= ts <= MAX_TS else check_time(ts)
    if type(kind) is str:
        code = EVENT_CODE.get(kind, -1)
    else:  # an integer code, as logs read by trainer.readers and replayed sessions carry
        code = kind if type(kind) is int and 0 <= kind < len(EVENT_TYPES) else -1
    if code < 0:
        code = _event_code(kind)
    # A str id without whitespace at either end is its own text (the first check of each).
    if type(item) is not str or not item or item[0].isspace() or item[-1].isspace():
        item = _id(item, "item")
    if category is not None and (type(category) is not str or not category or category[0].isspace()
                                 or category[-1].isspace()):
        category = _id(category, "category")
    if price is None:
        price = math.nan
    elif type(price) is not float or not MIN_PRICE <= price < math.inf:
        price = _price(price)
    return _new_tuple(Event, (ts, code, item, category, price))


_new_tuple = tuple.__new__  # Event(...) without its keyword handling: a few hundred ns an event


def shown(value: object) -> str:
    """``repr(value)`` cut to SHOWN_CHARS characters, for a message that names a bad value."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + f"... ({len(text):,} characters)"


def check_time(ts: object) -> float:
    """``ts`` as Unix seconds, by the rule of canonical events.

    Raises:
        ConfigError: a boolean, not a number, not finite, or outside MIN_TS..MAX_TS
            (2000-01-01..2100-01-01 UTC); a value that reads as milliseconds says so.
    """
    value = _number(ts, "ts", "Unix seconds")
    if MIN_TS <= value <= MAX_TS:
        return value
    if not math.isfinite(value):
        raise ConfigError(f"ts {shown(ts)} is not a finite number")
    hint = "; milliseconds? send seconds" if MIN_TS * 1000 <= value <= MAX_TS * 1000 else ""
    raise ConfigError(f"ts {shown(ts)} is outside 2000-01-01..2100-01-01 (Unix seconds "
                      f"{MIN_TS:.0f}..{MAX_TS:.0f}){hint}")


def _event_code(kind: object) -> int:
    # A name, or an integer code (numpy ints too); not a bool, float, null or container.
    if isinstance(kind, str):
        code = EVENT_CODE.get(kind, -1)
    elif isinstance(kind, (int, np.integer)) and not isinstance(kind, (bool, np.bool_)):
        code = int(kind) if 0 <= kind < len(EVENT_TYPES) else -1
    else:
        code = -1
    if code < 0:
        raise ConfigError(f"event type {shown(kind)} not in {list(EVENT_TYPES)}")
    return code


# Integral floats below this read as integers in ids, as Arrow writes them as text (from
# 1e15 up it writes 1e+15).
INTEGRAL_FLOAT_IDS = 1e15


def _id(value: object, field: str) -> str | None:
    """An item or category id as text; None for a blank category; ConfigError otherwise.

    The text the log readers give the same value (trainer.readers: Arrow's cast to text, then
    whitespace trimmed): surrounding whitespace goes, and an integral float below
    INTEGRAL_FLOAT_IDS reads as its integer (12.0 -> "12"), so a live event names the id a
    log names, which the target tables need (ids learned from logs, looked up live)."""
    if isinstance(value, str):
        text = value.strip()
    elif value is None:
        raise ConfigError(f"{field} is null")
    elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        if isinstance(value, (float, np.floating)) and abs(value) < INTEGRAL_FLOAT_IDS \
                and float(value).is_integer():
            value = int(value)
        try:
            text = str(value)
        except ValueError:  # an int beyond Python's digit limit for int -> str
            raise ConfigError(f"{field} {shown(value)} is too long a number for an id") from None
    else:
        raise ConfigError(f"{field} {shown(value)} is not an id (text or a number)")
    if text:
        return text
    if field == "category":
        return None
    raise ConfigError(f"{field} {value!r} is empty")


def _number(value: object, field: str, unit: str) -> float:
    """``value`` as a float; ConfigError for a boolean, a non-number or an integer too large
    for a float (hundreds of digits), naming ``field``."""
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{field} {value!r} is a boolean, not {unit}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{field} {shown(value)} is not a number") from None
    except OverflowError:  # an integer of hundreds of digits
        raise ConfigError(f"{field} {shown(value)} is not a finite number") from None


def _price(price: object) -> float:
    value = _number(price, "price", "a number")
    if MIN_PRICE <= value < math.inf or value != value:  # NaN: numpy's "no value"
        return value
    raise ConfigError(f"price {shown(price)} is not a finite number >= {MIN_PRICE:g}")

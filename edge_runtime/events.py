"""Canonical events: the one vocabulary every reader, the encoder and the runtime share.

An event is a mapping with the fields below. `ts` is Unix seconds (float, UTC);
`event` is one of EVENT_TYPES; `session`, `category` and `price` are optional.
"""

from __future__ import annotations

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

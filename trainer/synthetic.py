"""Seeded synthetic e-commerce browsing logs for the demo and the fast tests.

A fresh clone has no real data, yet the demo must train something meaningful and
the tests must run offline. This module fabricates a log whose aggregate shape
follows the Taobao UserBehavior sample (facts in the shared data folder's
README: event mix, sessions per user, session lengths, dwell times) and in
which purchase intent leaves a trace in the *order* of events, not only in their
counts, so that a sequence model has something to learn that a bag of counts
does not.

The generative story, in the order the code follows it:

1. Catalogue. About 5,000 items in 100 categories. Popularity is Zipf-like both
   across categories and across items, so a few items dominate views as in real
   logs. Each category has a lognormal median price; items scatter around it.
2. Users. Each user has a latent propensity ``z ~ N(0, 1)`` (how readily they
   buy), an activity rate of roughly 0.5-6 sessions per day, and a handful of
   favourite categories.
3. Session timing. Session starts are spread over ``days`` with an hour-of-day
   profile that peaks in the evening. A session that would begin less than 90
   minutes after the previous one ended is pushed later, so splitting at a
   30-minute inactivity gap recovers the sessions exactly. Within a session the
   dwell time between events is lognormal (median about 40 s) with occasional
   pauses of a few minutes, always below 25 minutes.
4. Session content. A session has an intent score (propensity, plus a boost
   once the user has bought before, plus noise) and a heavy-tailed planned
   length (median about 4 events, a few beyond 50). Each step views an item:
   either a return to an item already seen in the session (more likely with
   high intent), a new item of the focus category, or a new item after
   switching category. The shopper keeps a decaying "interest" per item that
   rises on every view/cart/fav of it and fades as attention moves elsewhere.
   Carts and favs follow a view of the same item, mostly a repeat view. The
   cart persists across sessions, and a later session may open by coming back
   to an item left in it.
5. Purchase. Whenever the shopper touches an item they have carted or viewed
   repeatedly, they may buy it with a probability that grows with the item's
   *current* (decayed) interest, with it being in the cart, and with intent.
   Hence a cart followed by repeat views of the carted item near the end of a
   session leads to a purchase far more often than the same cart followed by
   drifting to other items, even though both have the same event counts. After
   a purchase the session ends within a few events.

With the defaults (400 users, 9 days) this yields roughly 85-90% views, 5-7%
carts, 2-4% favs, 1.5-3% purchases, and 8-14% of sessions contain a purchase.
"""

from __future__ import annotations

import bisect
import csv
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from edge_runtime.errors import ConfigError
from edge_runtime.events import CART, EVENT_TYPES, FAV, PURCHASE, VIEW

CSV_HEADER: tuple[str, ...] = ("user", "ts", "event", "item", "category", "price")

N_ITEMS = 5_000
N_CATEGORIES = 100

# Relative activity per local hour, shaped after the hours of the Taobao
# sample's events (UTC+8): a night trough, a plateau by day, an evening peak.
_HOUR_PROFILE = np.array(
    [3.7, 1.7, 0.9, 0.5, 0.6, 0.8, 1.6, 2.7, 3.3, 3.9, 4.5, 4.6,
     3.8, 5.0, 5.0, 5.4, 5.1, 4.5, 4.8, 7.0, 8.0, 8.9, 8.0, 6.0]
)

# Sessions must be separable at a 30-minute gap with a wide margin, both ways.
_MIN_SESSION_GAP_S = 90 * 60.0
_MAX_DWELL_S = 24 * 60.0

_DECAY = 0.7  # per step: interest in an item halves after about two steps elsewhere


class _Uniforms:
    """Hands out uniform draws from a buffer, refilled from the generator.

    Per-event decisions run in a Python loop; one numpy call per draw would
    dominate the run time, a buffer keeps it to one call per few thousand.
    """

    def __init__(self, rng: np.random.Generator, size: int = 8192) -> None:
        self._rng = rng
        self._size = size
        self._buf: list[float] = []
        self._pos = 0

    def __call__(self) -> float:
        if self._pos >= len(self._buf):
            self._buf = self._rng.random(self._size).tolist()
            self._pos = 0
        u = self._buf[self._pos]
        self._pos += 1
        return u


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    return 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent


class _Catalogue:
    """Items, their categories and prices, and per-category popularity samplers."""

    def __init__(self, rng: np.random.Generator) -> None:
        cat_pop = _zipf_weights(N_CATEGORIES, 0.9)
        rng.shuffle(cat_pop)  # popularity rank should not follow the id order
        self.category_popularity = cat_pop / cat_pop.sum()

        # Popular categories hold more items, as real shops stock them deeper;
        # one item per category up front keeps every category browsable.
        item_category = np.concatenate((
            np.arange(N_CATEGORIES),
            rng.choice(N_CATEGORIES, size=N_ITEMS - N_CATEGORIES, p=self.category_popularity),
        ))
        rng.shuffle(item_category)
        self.item_category = item_category
        item_pop = _zipf_weights(N_ITEMS, 1.0)
        rng.shuffle(item_pop)

        cat_median = rng.lognormal(mean=math.log(25.0), sigma=0.9, size=N_CATEGORIES)
        price = cat_median[self.item_category] * rng.lognormal(0.0, 0.35, size=N_ITEMS)
        self.price = np.maximum(np.round(price, 2), 0.01)

        # Python lists + bisect: sampling happens one event at a time in the loop.
        self.items_of: list[list[int]] = []
        self.cumweights_of: list[list[float]] = []
        for c in range(N_CATEGORIES):
            members = np.flatnonzero(self.item_category == c)
            self.items_of.append(members.tolist())
            self.cumweights_of.append(np.cumsum(item_pop[members]).tolist())
        self.cum_category = np.cumsum(self.category_popularity).tolist()

    def sample_item(self, category: int, u: float) -> int:
        cum = self.cumweights_of[category]
        k = bisect.bisect_right(cum, u * cum[-1])
        return self.items_of[category][min(k, len(cum) - 1)]

    def sample_category(self, u: float) -> int:
        return min(bisect.bisect_right(self.cum_category, u), N_CATEGORIES - 1)


def _dwell_times(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds between consecutive events of one session."""
    dwell = rng.lognormal(mean=math.log(40.0), sigma=1.0, size=n)
    # Occasional longer pauses (reading reviews, a phone call) of a few minutes.
    pause = rng.random(n) < 0.04
    dwell[pause] = rng.uniform(180.0, 720.0, size=int(pause.sum()))
    return np.clip(dwell, 1.0, _MAX_DWELL_S)


def _session_starts(
    rng: np.random.Generator, rate_per_day: float, days: int
) -> np.ndarray:
    """Candidate session start offsets (seconds from start_ts), sorted."""
    n = max(1, int(rng.poisson(rate_per_day * days)))
    day = rng.integers(0, days, size=n)
    hour = rng.choice(24, size=n, p=_HOUR_PROFILE / _HOUR_PROFILE.sum())
    offset = day * 86_400.0 + hour * 3_600.0 + rng.uniform(0.0, 3_600.0, size=n)
    return np.sort(offset)


def _simulate_session(
    cat: _Catalogue,
    r: _Uniforms,
    planned_len: int,
    intent: float,
    prefs: list[int],
    pref_cum: list[float],
    cart: set[int],
    out_items: list[int],
    out_events: list[int],
) -> int:
    """Append one session's (item, event) pairs to the output lists.

    Returns the number of purchases made, which the caller uses to mark the
    user as a returning buyer.
    """
    p_return = _sigmoid(-1.6 + 0.9 * intent)
    p_cart_repeat = _sigmoid(-0.8 + 0.7 * intent)
    p_stay = 0.8

    # Interest per item: (value at last touch, step of last touch); decay is
    # applied lazily so an untouched item costs nothing per step.
    interest: dict[int, tuple[float, int]] = {}
    views: dict[int, int] = {}

    def current(item: int, step: int) -> float:
        value, last = interest.get(item, (0.0, step))
        return value * _DECAY ** (step - last)

    def touch(item: int, step: int, amount: float) -> None:
        interest[item] = (current(item, step) + amount, step)

    def pick_category() -> int:
        # Mostly the user's own categories, sometimes something the shop promotes.
        if r() < 0.85:
            return prefs[min(bisect.bisect_right(pref_cum, r()), len(prefs) - 1)]
        return cat.sample_category(r())

    focus = pick_category()
    # A returning shopper sometimes opens the session on something left in the cart.
    pending = sorted(cart)
    if pending and r() < _sigmoid(-1.5 + 0.8 * intent):
        first_item: int | None = pending[int(r() * len(pending))]
    else:
        first_item = None

    n_events = 0
    limit = planned_len
    purchases = 0
    step = 0
    while n_events < limit:
        step += 1
        if first_item is not None:
            item, first_item = first_item, None
            focus = int(cat.item_category[item])
        elif interest and r() < p_return:
            # Return to an item proportionally to how much it is on the shopper's mind.
            items = list(interest)
            weights = [current(i, step) for i in items]
            x = r() * sum(weights)
            acc = 0.0
            item = items[-1]
            for i, w in zip(items, weights, strict=True):
                acc += w
                if x < acc:
                    item = i
                    break
        else:
            if r() >= p_stay:
                focus = pick_category()
            item = cat.sample_item(focus, r())

        out_items.append(item)
        out_events.append(VIEW)
        n_events += 1
        views[item] = views.get(item, 0) + 1
        repeat = views[item] >= 2
        touch(item, step, 1.0)

        if n_events < limit and item not in cart:
            p_cart = p_cart_repeat if repeat else 0.025
            p_fav = 0.12 if repeat else 0.03
            u = r()
            if u < p_cart:
                if not repeat and r() < 0.3:
                    # Added straight from a listing page: the log shows a cart
                    # with no view of the item before it.
                    out_events[-1] = CART
                    views[item] -= 1
                else:
                    out_items.append(item)
                    out_events.append(CART)
                    n_events += 1
                cart.add(item)
                touch(item, step, 1.5)
            elif u < p_cart + p_fav:
                out_items.append(item)
                out_events.append(FAV)
                n_events += 1
                touch(item, step, 0.5)

        in_cart = item in cart
        if in_cart or repeat:
            # Buying hinges on the item's current, decayed interest: attention
            # that keeps coming back to it, not how much was browsed overall.
            logit = -7.45 + 1.0 * current(item, step) + 1.6 * in_cart + 0.6 * intent
            if r() < _sigmoid(logit):
                out_items.append(item)
                out_events.append(PURCHASE)
                n_events += 1
                purchases += 1
                cart.discard(item)
                interest.pop(item, None)
                # Checkout often takes along other cart items looked at in this
                # visit, which is why buying sessions average over one purchase.
                for other in sorted(cart & interest.keys()):
                    if r() < 0.4:
                        out_items.append(other)
                        out_events.append(PURCHASE)
                        n_events += 1
                        purchases += 1
                        cart.discard(other)
                        interest.pop(other, None)
                # After checkout the visit winds down within a few events.
                tail = 0
                while r() < 0.5 and tail < 4:
                    tail += 1
                limit = min(limit, n_events + tail)
    return purchases


def generate_events(
    n_users: int = 400,
    days: int = 9,
    seed: int = 0,
    start_ts: float = 1_700_000_000.0,
) -> dict[str, np.ndarray]:
    """Generate a seeded synthetic browsing log in canonical columns.

    Args:
        n_users: Number of distinct users; each gets at least one session.
        days: Length of the observation window in days. Session starts fall
            inside it; the last session may run a little past its end.
        seed: Seed of the random generator; equal arguments give equal arrays.
        start_ts: Unix time of the window's start, treated as local midnight
            of day 0 for the hour-of-day activity pattern.

    Returns:
        A dict of equal-length numpy arrays sorted by (user, ts): ``user``
        (str, e.g. "u00017"), ``ts`` (float64 Unix seconds), ``event`` (str,
        one of EVENT_TYPES), ``item`` (str), ``category`` (str) and ``price``
        (float64, > 0). There is no ``session`` column: sessions are separated
        by more than 90 minutes of inactivity and events within one are less
        than 25 minutes apart, so a 30-minute gap split recovers them.

    Raises:
        ConfigError: If n_users or days is below 1, or start_ts is not finite.
    """
    if int(n_users) != n_users or n_users < 1:
        raise ConfigError(f"n_users must be a positive integer, got {n_users!r}")
    if int(days) != days or days < 1:
        raise ConfigError(f"days must be a positive integer, got {days!r}")
    if not math.isfinite(start_ts):
        raise ConfigError(f"start_ts must be a finite Unix time, got {start_ts!r}")
    n_users, days = int(n_users), int(days)

    rng = np.random.default_rng(seed)
    cat = _Catalogue(rng)
    r = _Uniforms(rng)
    window_s = days * 86_400.0

    propensity = rng.normal(0.0, 1.0, size=n_users)
    rate = np.clip(rng.gamma(shape=2.0, scale=1.0, size=n_users), 0.5, 6.0)

    user_idx: list[np.ndarray] = []
    ts_parts: list[np.ndarray] = []
    items: list[int] = []
    events: list[int] = []

    for u in range(n_users):
        z = float(propensity[u])
        n_prefs = 2 + int(rng.poisson(2.0))
        prefs = rng.choice(N_CATEGORIES, size=min(n_prefs, N_CATEGORIES), replace=False,
                           p=cat.category_popularity).tolist()
        pref_cum = np.cumsum(rng.dirichlet(np.full(len(prefs), 0.7))).tolist()

        starts = _session_starts(rng, float(rate[u]), days)
        cart: set[int] = set()
        bought_before = False
        prev_end = -math.inf
        user_begin = len(events)
        for start in starts:
            if start < prev_end + _MIN_SESSION_GAP_S:
                # Too close to the last visit to be a separate session: push it
                # later rather than merge, so session counts stay as drawn.
                start = prev_end + _MIN_SESSION_GAP_S + float(rng.exponential(3_600.0))
                if start >= window_s:
                    break
            intent = z + (1.0 if bought_before else 0.0) + float(rng.normal(0.0, 0.7)) - 0.4
            # Heavy tail: lognormal length, median 4 events, engaged shoppers browse longer.
            planned = 1 + int(rng.lognormal(math.log(3.5) + 0.15 * intent, 1.2))
            planned = min(planned, 200)

            before = len(events)
            bought = _simulate_session(cat, r, planned, intent, prefs, pref_cum,
                                       cart, items, events)
            bought_before = bought_before or bought > 0
            n = len(events) - before
            gaps = _dwell_times(rng, n - 1)
            session_ts = start + np.concatenate(([0.0], np.cumsum(gaps)))
            ts_parts.append(session_ts)
            prev_end = float(session_ts[-1])
        user_idx.append(np.full(len(events) - user_begin, u, dtype=np.int64))

    uid = np.concatenate(user_idx)
    # Millisecond resolution, as the CSV stores it, so the arrays and their CSV
    # round trip agree and a demo trained from either sees the same data.
    ts = np.round(start_ts + np.concatenate(ts_parts), 3)
    item = np.asarray(items, dtype=np.int64)
    ev = np.asarray(events, dtype=np.int64)

    # Already in (user, ts) order by construction; the sort makes it a guarantee.
    order = np.lexsort((ts, uid))
    uid, ts, item, ev = uid[order], ts[order], item[order], ev[order]

    user_names = np.array([f"u{i:05d}" for i in range(n_users)])
    item_names = np.array([f"i{i:05d}" for i in range(N_ITEMS)])
    cat_names = np.array([f"c{i:03d}" for i in range(N_CATEGORIES)])
    return {
        "user": user_names[uid],
        "ts": ts.astype(np.float64),
        "event": np.array(EVENT_TYPES)[ev],
        "item": item_names[item],
        "category": cat_names[cat.item_category[item]],
        "price": cat.price[item].astype(np.float64),
    }


def write_canonical_csv(events: dict[str, np.ndarray], path: str | os.PathLike) -> int:
    """Write events as a canonical CSV, atomically.

    Args:
        events: Columns as returned by generate_events; at least the six
            columns of CSV_HEADER, all of equal length.
        path: Destination file; its directory is created if needed. A reader never sees a
            half-written file: rows go to a temporary file beside it, which then
            replaces the destination in one step.

    Returns:
        The number of data rows written (the header excluded).

    Raises:
        ValueError: If a column is missing or the columns differ in length.
    """
    missing = [c for c in CSV_HEADER if c not in events]
    if missing:
        raise ValueError(f"events lacks column(s) {', '.join(missing)}")
    n = len(events["user"])
    lengths = {c: len(events[c]) for c in CSV_HEADER}
    if any(v != n for v in lengths.values()):
        raise ValueError(f"columns differ in length: {lengths}")

    ts = np.char.mod("%.3f", np.asarray(events["ts"], dtype=np.float64))
    price = np.char.mod("%.2f", np.asarray(events["price"], dtype=np.float64))
    rows = zip(
        np.asarray(events["user"]).astype(str).tolist(),
        ts.tolist(),
        np.asarray(events["event"]).astype(str).tolist(),
        np.asarray(events["item"]).astype(str).tolist(),
        np.asarray(events["category"]).astype(str).tolist(),
        price.tolist(), strict=True,
    )

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(CSV_HEADER)
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; a data file should be readable like
        # any other the user writes.
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return n

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

In the code: `_Catalogue` is step 1, `_simulate_user` steps 2-3, `_Visit` (one
session, stage by stage) steps 4-5. `generate_events` is the entry point and
`write_canonical_csv` writes its result through `trainer.files.atomic_open`. For logs
bigger than memory (the scale benchmark's 16 million events), `iter_event_batches` yields
the same log in batches of whole users and `write_synthetic_log` streams it to a CSV
(gzipped for a .gz name), the same bytes as the in-memory pair writes.
Every draw comes from one seeded generator in a fixed order: a seed pins the log
(tests/test_synthetic.py holds a digest of one).
"""

from __future__ import annotations

import bisect
import csv
import gzip
import io
import math
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import ConfigError
from edge_runtime.events import CART, EVENT_TYPES, FAV, PURCHASE, VIEW
from trainer.files import atomic_open

CSV_HEADER: tuple[str, ...] = ("user", "ts", "event", "item", "category", "price")

N_ITEMS = 5_000
N_CATEGORIES = 100

# Users per batch of a streamed log: about 117,000 events, a few tens of MB in Python lists.
DEFAULT_BATCH_USERS = 1_000

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


class _Visit:
    """One session of one shopper, event by event: steps 4 and 5 of the story above.

    Each step views an item (``_next_item``), may cart or favourite it (``_cart_or_fav``)
    and, on an item carted or seen before, may end in a checkout (``_maybe_buy``). The
    uniform draws happen in one fixed order, which is what makes a seed give the same log.

    Args:
        cat: the catalogue.
        r: the shared uniform draws.
        intent: the session's intent score (propensity, past purchases, noise).
        prefs, pref_cum: the user's favourite categories and their cumulative odds.
        cart: the user's cart; it outlives the session and is updated in place.
        out_items, out_events: the log's output lists; the session's events are appended.
    """

    P_STAY = 0.8  # a new item comes from the focus category, else the shopper switches

    def __init__(self, cat: _Catalogue, r: _Uniforms, intent: float, prefs: list[int],
                 pref_cum: list[float], cart: set[int], out_items: list[int],
                 out_events: list[int]) -> None:
        self.cat, self.r, self.intent = cat, r, intent
        self.prefs, self.pref_cum, self.cart = prefs, pref_cum, cart
        self.items, self.events = out_items, out_events
        # Intent shows as coming back to items already seen, and carting them once seen twice.
        self.p_return = _sigmoid(-1.6 + 0.9 * intent)
        self.p_cart_repeat = _sigmoid(-0.8 + 0.7 * intent)
        # Interest per item: (value at last touch, step of last touch); decay is
        # applied lazily so an untouched item costs nothing per step.
        self.interest: dict[int, tuple[float, int]] = {}
        self.views: dict[int, int] = {}
        self.step = 0
        self.n_events = 0
        self.limit = 0
        self.purchases = 0
        self.focus = 0

    def run(self, planned_len: int) -> int:
        """Append the session's (item, event) pairs; return the number of purchases, which
        the caller uses to mark the user as a returning buyer."""
        self.limit = planned_len
        self.focus = self._pick_category()
        first_item = self._cart_comeback()
        while self.n_events < self.limit:
            self.step += 1
            if first_item is not None:
                item, first_item = first_item, None
                self.focus = int(self.cat.item_category[item])
            else:
                item = self._next_item()
            repeat = self._view(item)
            if self.n_events < self.limit and item not in self.cart:
                self._cart_or_fav(item, repeat)
            in_cart = item in self.cart
            if in_cart or repeat:
                self._maybe_buy(item, in_cart)
        return self.purchases

    # ------------------------------------------------------------------ interest

    def _current(self, item: int) -> float:
        value, last = self.interest.get(item, (0.0, self.step))
        return value * _DECAY ** (self.step - last)

    def _touch(self, item: int, amount: float) -> None:
        self.interest[item] = (self._current(item) + amount, self.step)

    def _emit(self, item: int, event: int) -> None:
        self.items.append(item)
        self.events.append(event)
        self.n_events += 1

    # ------------------------------------------------------------------ stages of a step

    def _pick_category(self) -> int:
        # Mostly the user's own categories, sometimes something the shop promotes.
        r = self.r
        if r() < 0.85:
            return self.prefs[min(bisect.bisect_right(self.pref_cum, r()), len(self.prefs) - 1)]
        return self.cat.sample_category(r())

    def _cart_comeback(self) -> int | None:
        """A returning shopper sometimes opens the session on something left in the cart."""
        pending = sorted(self.cart)
        if pending and self.r() < _sigmoid(-1.5 + 0.8 * self.intent):
            return pending[int(self.r() * len(pending))]
        return None

    def _next_item(self) -> int:
        """The item this step views: one already on the shopper's mind, or a new one."""
        if self.interest and self.r() < self.p_return:
            return self._revisit()
        if self.r() >= self.P_STAY:
            self.focus = self._pick_category()
        return self.cat.sample_item(self.focus, self.r())

    def _revisit(self) -> int:
        """Return to an item proportionally to how much it is on the shopper's mind."""
        items = list(self.interest)
        weights = [self._current(i) for i in items]
        x = self.r() * sum(weights)
        acc = 0.0
        for i, w in zip(items, weights, strict=True):
            acc += w
            if x < acc:
                return i
        return items[-1]

    def _view(self, item: int) -> bool:
        """Log a view of ``item``; return whether the session has viewed it before."""
        self._emit(item, VIEW)
        self.views[item] = self.views.get(item, 0) + 1
        self._touch(item, 1.0)
        return self.views[item] >= 2

    def _cart_or_fav(self, item: int, repeat: bool) -> None:
        """Carts and favs follow a view of the same item, mostly a repeat view."""
        p_cart = self.p_cart_repeat if repeat else 0.025
        p_fav = 0.12 if repeat else 0.03
        u = self.r()
        if u < p_cart:
            if not repeat and self.r() < 0.3:
                # Added straight from a listing page: the log shows a cart
                # with no view of the item before it.
                self.events[-1] = CART
                self.views[item] -= 1
            else:
                self._emit(item, CART)
            self.cart.add(item)
            self._touch(item, 1.5)
        elif u < p_cart + p_fav:
            self._emit(item, FAV)
            self._touch(item, 0.5)

    def _maybe_buy(self, item: int, in_cart: bool) -> None:
        """Perhaps buy ``item`` (and other cart items of this visit), then wind down."""
        # Buying hinges on the item's current, decayed interest: attention
        # that keeps coming back to it, not how much was browsed overall.
        logit = -7.45 + 1.0 * self._current(item) + 1.6 * in_cart + 0.6 * self.intent
        if self.r() >= _sigmoid(logit):
            return  # not this time
        self._buy(item)
        # Checkout often takes along other cart items looked at in this
        # visit, which is why buying sessions average over one purchase.
        for other in sorted(self.cart & self.interest.keys()):
            if self.r() < 0.4:
                self._buy(other)
        # After checkout the visit winds down within a few events.
        tail = 0
        while self.r() < 0.5 and tail < 4:
            tail += 1
        self.limit = min(self.limit, self.n_events + tail)

    def _buy(self, item: int) -> None:
        self._emit(item, PURCHASE)
        self.purchases += 1
        self.cart.discard(item)
        self.interest.pop(item, None)


def _favourite_categories(rng: np.random.Generator, cat: _Catalogue) -> tuple[list[int], list[float]]:
    """A user's handful of favourite categories and the cumulative odds of browsing each."""
    n_prefs = 2 + int(rng.poisson(2.0))
    prefs = rng.choice(N_CATEGORIES, size=min(n_prefs, N_CATEGORIES), replace=False,
                       p=cat.category_popularity).tolist()
    pref_cum = np.cumsum(rng.dirichlet(np.full(len(prefs), 0.7))).tolist()
    return prefs, pref_cum


def _simulate_user(rng: np.random.Generator, r: _Uniforms, cat: _Catalogue, propensity: float,
                   rate_per_day: float, days: int, out_items: list[int],
                   out_events: list[int]) -> list[np.ndarray]:
    """Append one user's sessions to the output lists (steps 2-5 of the story above).

    Returns:
        The event times of each session, in seconds from the window's start.
    """
    prefs, pref_cum = _favourite_categories(rng, cat)
    starts = _session_starts(rng, rate_per_day, days)
    window_s = days * 86_400.0
    cart: set[int] = set()
    bought_before = False
    prev_end = -math.inf
    times: list[np.ndarray] = []
    for start in starts:
        if start < prev_end + _MIN_SESSION_GAP_S:
            # Too close to the last visit to be a separate session: push it
            # later rather than merge, so session counts stay as drawn.
            start = prev_end + _MIN_SESSION_GAP_S + float(rng.exponential(3_600.0))
            if start >= window_s:
                break
        intent = propensity + (1.0 if bought_before else 0.0) + float(rng.normal(0.0, 0.7)) - 0.4
        # Heavy tail: lognormal length, median 4 events, engaged shoppers browse longer.
        planned = 1 + int(rng.lognormal(math.log(3.5) + 0.15 * intent, 1.2))
        planned = min(planned, 200)

        before = len(out_events)
        bought = _Visit(cat, r, intent, prefs, pref_cum, cart, out_items, out_events).run(planned)
        bought_before = bought_before or bought > 0
        gaps = _dwell_times(rng, len(out_events) - before - 1)
        session_ts = start + np.concatenate(([0.0], np.cumsum(gaps)))
        times.append(session_ts)
        prev_end = float(session_ts[-1])
    return times


def _checked(n_users: int, days: int, start_ts: float, batch_users: int) -> tuple[int, int, int]:
    """The arguments of generate_events / iter_event_batches as ints, or a ConfigError."""
    if int(n_users) != n_users or n_users < 1:
        raise ConfigError(f"n_users must be a positive integer, got {n_users!r}")
    if int(days) != days or days < 1:
        raise ConfigError(f"days must be a positive integer, got {days!r}")
    if not math.isfinite(start_ts):
        raise ConfigError(f"start_ts must be a finite Unix time, got {start_ts!r}")
    if int(batch_users) != batch_users or batch_users < 1:
        raise ConfigError(f"batch_users must be a positive integer, got {batch_users!r}")
    return int(n_users), int(days), int(batch_users)


def iter_event_batches(
    n_users: int = 400,
    days: int = 9,
    seed: int = 0,
    start_ts: float = 1_700_000_000.0,
    batch_users: int = DEFAULT_BATCH_USERS,
) -> Iterator[dict[str, np.ndarray]]:
    """The log of `generate_events`, as consecutive batches of whole users.

    Memory stays bounded by one batch (plus 16 bytes per user for the propensities and
    activity rates, which are drawn for all users up front: drawing them per batch would
    move every later draw of the seeded stream and so change the log). Concatenating the
    batches gives exactly the arrays `generate_events` returns, whatever ``batch_users``
    is: users are simulated in id order from one generator, and each batch is sorted on
    its own, which equals the global (user, ts) sort because batches never share a user.

    Args:
        n_users, days, seed, start_ts: as `generate_events`.
        batch_users: users simulated and handed out per batch (the last batch may hold
            fewer).

    Returns:
        An iterator of dicts with the columns of `generate_events`. The arguments are
        checked at the call, not at the first ``next``.

    Raises:
        ConfigError: as `generate_events`, or batch_users below 1.
    """
    n_users, days, batch_users = _checked(n_users, days, start_ts, batch_users)
    return _batches(n_users, days, seed, start_ts, batch_users)


def _batches(n_users: int, days: int, seed: int, start_ts: float,
             batch_users: int) -> Iterator[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    cat = _Catalogue(rng)
    r = _Uniforms(rng)

    propensity = rng.normal(0.0, 1.0, size=n_users)
    rate = np.clip(rng.gamma(shape=2.0, scale=1.0, size=n_users), 0.5, 6.0)

    event_names = np.array(EVENT_TYPES)
    item_names = np.array([f"i{i:05d}" for i in range(N_ITEMS)])
    cat_names = np.array([f"c{i:03d}" for i in range(N_CATEGORIES)])
    for first in range(0, n_users, batch_users):
        last = min(first + batch_users, n_users)
        user_idx: list[np.ndarray] = []
        ts_parts: list[np.ndarray] = []
        items: list[int] = []
        events: list[int] = []
        for u in range(first, last):
            user_begin = len(events)
            ts_parts += _simulate_user(rng, r, cat, float(propensity[u]), float(rate[u]), days,
                                       items, events)
            user_idx.append(np.full(len(events) - user_begin, u - first, dtype=np.int64))

        uid = np.concatenate(user_idx)
        # Millisecond resolution, as the CSV stores it, so the arrays and their CSV
        # round trip agree and a demo trained from either sees the same data.
        ts = np.round(start_ts + np.concatenate(ts_parts), 3)
        item = np.asarray(items, dtype=np.int64)
        ev = np.asarray(events, dtype=np.int64)

        # Already in (user, ts) order by construction; the sort makes it a guarantee.
        order = np.lexsort((ts, uid))
        uid, ts, item, ev = uid[order], ts[order], item[order], ev[order]

        user_names = np.array([f"u{i:05d}" for i in range(first, last)])
        yield {
            "user": user_names[uid],
            "ts": ts.astype(np.float64),
            "event": event_names[ev],
            "item": item_names[item],
            "category": cat_names[cat.item_category[item]],
            "price": cat.price[item].astype(np.float64),
        }


def generate_events(
    n_users: int = 400,
    days: int = 9,
    seed: int = 0,
    start_ts: float = 1_700_000_000.0,
) -> dict[str, np.ndarray]:
    """Generate a seeded synthetic browsing log in canonical columns, in memory.

    For logs too big for memory, `iter_event_batches` hands out the same log in batches
    of users and `write_synthetic_log` streams it to a file.

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
    n_users, days, _ = _checked(n_users, days, start_ts, 1)
    # One batch of all users: no concatenation, so no second copy of the log.
    (log,) = _batches(n_users, days, seed, start_ts, batch_users=n_users)
    return log


def write_canonical_csv(events: dict[str, np.ndarray], path: str | os.PathLike) -> int:
    """Write events as a canonical CSV, atomically.

    Args:
        events: Columns as returned by generate_events; at least the six
            columns of CSV_HEADER, all of equal length.
        path: Destination file; its directory is created if needed. A reader never sees a
            half-written file: rows go to a temporary file beside it, which then
            replaces the destination in one step. A name ending in ``.gz`` is gzipped.

    Returns:
        The number of data rows written (the header excluded).

    Raises:
        ValueError: If a column is missing or the columns differ in length.
        OutputError: The file cannot be written (trainer.files.atomic_path).
    """
    rows = _csv_rows(events)  # checked before the destination is touched
    with _open_csv(Path(path)) as writer:
        writer.writerows(rows)
    return len(events["user"])


def write_synthetic_log(
    path: str | os.PathLike,
    n_users: int = 400,
    days: int = 9,
    seed: int = 0,
    start_ts: float = 1_700_000_000.0,
    batch_users: int = DEFAULT_BATCH_USERS,
    on_batch: Callable[[int, int], None] | None = None,
) -> int:
    """Generate the log of `generate_events` and write it as a canonical CSV, streaming.

    Users are simulated and written ``batch_users`` at a time, so memory does not grow
    with the log (16 bytes per user aside, see `iter_event_batches`); the file is the one
    ``write_canonical_csv(generate_events(...), path)`` writes, byte for byte.

    Example:
        ``write_synthetic_log("events-16M.csv", n_users=137_000)`` writes about 16 million
        events (about 117 per user over the default 9 days).

    Args:
        path: Destination file, written atomically as `write_canonical_csv` does; a name
            ending in ``.gz`` is gzipped.
        n_users, days, seed, start_ts, batch_users: as `iter_event_batches`.
        on_batch: Called after each batch with (users written, events written) so far,
            for a progress display.

    Returns:
        The number of data rows written (the header excluded).

    Raises:
        ConfigError: As `iter_event_batches`, before the destination is touched.
        OutputError: The file cannot be written.
    """
    batches = iter_event_batches(n_users, days, seed, start_ts, batch_users)
    rows = users = 0
    with _open_csv(Path(path)) as writer:
        for batch in batches:
            writer.writerows(_csv_rows(batch))
            rows += len(batch["user"])
            users = min(users + int(batch_users), int(n_users))
            if on_batch is not None:
                on_batch(users, rows)
    return rows


@contextmanager
def _open_csv(dest: Path) -> Iterator[Any]:
    """A csv writer on an atomically written ``dest`` (gzipped if its name ends in .gz),
    the header already written."""
    with ExitStack() as stack:
        if dest.name.endswith(".gz"):
            raw = stack.enter_context(atomic_open(dest, "wb"))
            # mtime=0 and the final name (not the temporary file's): the same log gives
            # the same bytes. Level 6, zlib's default: level 9 costs far more for little.
            gz = stack.enter_context(gzip.GzipFile(filename=dest.name, mode="wb", fileobj=raw,
                                                   compresslevel=6, mtime=0))
            f = stack.enter_context(io.TextIOWrapper(gz, encoding="utf-8", newline=""))
        else:
            f = stack.enter_context(atomic_open(dest, "w", newline=""))
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        yield writer


def _csv_rows(events: dict[str, np.ndarray]) -> Iterator[tuple[str, ...]]:
    """The CSV rows of ``events`` (ts to the millisecond, price to the cent), as strings.

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
    return zip(
        np.asarray(events["user"]).astype(str).tolist(),
        ts.tolist(),
        np.asarray(events["event"]).astype(str).tolist(),
        np.asarray(events["item"]).astype(str).tolist(),
        np.asarray(events["category"]).astype(str).tolist(),
        price.tolist(), strict=True,
    )

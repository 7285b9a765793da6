"""Intent tiers: score cut-offs that turn a probability into a segment a campaign can use,
and live triggers that fire when a session climbs into one.

`convert` chooses the cut-offs on the run's validation sessions, scored by the artifact
itself, and stores them in the artifact (ArtifactInfo's ``tiers`` entry), so every device
that holds the file cuts at the same scores. By default the tiers hold equal numbers of
*expected* buyers (the sum of the calibrated probabilities, no label needed): a browsing
tier of many sessions that each rarely buy, a likely tier of few that often do.
`fit_shares` cuts at given shares of the sessions instead.

A tier is ``[low, high)``: the lowest tier starts at 0, the highest ends at 1 (inclusive),
and a score equal to a cut-off belongs to the tier above it.

Seams: `IntentTiers` (``tier_index``, ``tier_of``, ``bounds``, ``to_dict`` /
``from_dict``, ``fit_expected_buyers``, ``fit_shares``), `chosen_tiers` (the artifact's
tiers or the user's cut-offs, for `segment` and `serve --triggers`) and `TriggerRule`
(``update``, the pure step a SessionStore runs on each push). numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edge_runtime.errors import ArtifactError, ConfigError

DEFAULT_TIER_NAMES = ("browsing", "considering", "likely")
EXPECTED_BUYERS = "expected-buyers"
SHARES = "shares"
GIVEN = "given"  # cut-offs typed by a user (`segment --cuts`)
METHODS = (EXPECTED_BUYERS, SHARES, GIVEN)
# A tier name is echoed in every trigger line and assignment row: short, printable text.
MAX_NAME_CHARS = 40
# A live session keeps one bit per tier for its triggers (SessionStore's 64-bit column).
MAX_TIERS = 32
# The default hysteresis of a trigger: once fired, it re-arms only after the score has
# fallen below the tier's low cut-off by this fraction of it (a cut at 0.20 re-arms below
# 0.18), so a score hovering at the cut-off fires once.
DEFAULT_HYSTERESIS = 0.1


def parse_names(text: str) -> tuple[str, ...]:
    """``browsing,considering,likely`` -> the names, checked.

    Raises:
        ConfigError: fewer than two names, a blank or repeated name, or one longer than
            MAX_NAME_CHARS or not printable.
    """
    names = tuple(n.strip() for n in str(text).split(","))
    check_names(names)
    return names


def check_names(names: Sequence[str]) -> None:
    """ConfigError unless ``names`` are 2 to MAX_TIERS distinct, printable, short names."""
    if not 2 <= len(names) <= MAX_TIERS:
        raise ConfigError(f"intent tiers need 2 to {MAX_TIERS} names, got {len(names)}: "
                          f"{list(names)[:5]}{'...' if len(names) > 5 else ''}")
    for name in names:
        if not isinstance(name, str) or not name or not name.isprintable() \
                or len(name) > MAX_NAME_CHARS or "," in name:
            raise ConfigError(f"tier name {name!r} must be 1-{MAX_NAME_CHARS} printable characters "
                              f"without a comma")
    if len(set(names)) != len(names):
        raise ConfigError(f"tier names must be distinct, got {list(names)}")


def parse_numbers(text: str, option: str, example: str) -> tuple[float, ...]:
    """``0.05,0.15`` -> floats; ConfigError naming ``option`` and the value that is not a
    number (``example`` shows what is expected)."""
    numbers = []
    for part in str(text).split(","):
        try:
            numbers.append(float(part))
        except ValueError:
            raise ConfigError(f"{option}: {part.strip()!r} is not a number (e.g. {example})") from None
    return tuple(numbers)


def parse_cuts(text: str) -> tuple[float, ...]:
    """``--cuts 0.05,0.15`` -> the cut-offs as floats, checked by `check_cuts`.

    Raises:
        ConfigError: a value that is not a number, or cut-offs `check_cuts` refuses.
    """
    cuts = parse_numbers(text, "--cuts", "0.05,0.15")
    if len(cuts) >= MAX_TIERS:
        raise ConfigError(f"--cuts: {len(cuts)} cut-offs make {len(cuts) + 1} tiers; at most "
                          f"{MAX_TIERS} tiers ({MAX_TIERS - 1} cut-offs)")
    try:
        check_cuts(cuts)
    except ConfigError as e:
        raise ConfigError(f"--cuts: {e}") from None
    return cuts


def check_shares(shares: Sequence[float], names: Sequence[str]) -> None:
    """ConfigError unless ``shares`` are one positive number per tier, summing to 1 (1e-6)."""
    if len(shares) != len(names) or not all(s > 0 for s in shares) or abs(sum(shares) - 1) > 1e-6:
        raise ConfigError(f"tier shares must be {len(names)} positive numbers summing to 1, one "
                          f"per tier ({', '.join(names)}), got {list(shares)}")


def check_hysteresis(hysteresis: float, name: str = "hysteresis") -> float:
    """``hysteresis`` as a float in [0, 1); ConfigError naming it (as ``name``) otherwise,
    NaN too."""
    if isinstance(hysteresis, bool) or not isinstance(hysteresis, (int, float)) \
            or not 0.0 <= float(hysteresis) < 1.0:
        raise ConfigError(f"{name} must be a fraction in [0, 1), got {hysteresis!r}")
    return float(hysteresis)


def check_cuts(cuts: Sequence[float]) -> None:
    """ConfigError unless ``cuts`` are finite probabilities in (0, 1), strictly increasing."""
    if not cuts:
        raise ConfigError("intent tiers need at least one cut-off")
    for c in cuts:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) \
                or not 0.0 < c < 1.0:
            raise ConfigError(f"cut-off {c!r} must be a probability strictly between 0 and 1")
    if any(b <= a for a, b in zip(cuts, cuts[1:], strict=False)):
        raise ConfigError(f"cut-offs must increase strictly, got {list(cuts)}")


@dataclass(frozen=True)
class IntentTiers:
    """Named tiers of the score, from the lowest intent to the highest.

    Attributes:
        names: one per tier, lowest first.
        cuts: the ``len(names) - 1`` cut-offs between them, increasing; tier ``i`` holds the
            scores in ``[cuts[i - 1], cuts[i])`` (0 below the first, 1 above the last).
        method: how the cut-offs were chosen (METHODS; any short text is read, so that an
            artifact of a newer ubp-edge with another method still loads).
        fitted_on: what they were chosen on, in words (e.g. ``1,511 validation sessions``).

    Example:
        >>> tiers = IntentTiers(("browsing", "considering", "likely"), (0.05, 0.15))
        >>> tiers.tier_of(0.2)
        'likely'
    """

    names: tuple[str, ...]
    cuts: tuple[float, ...]
    method: str = GIVEN
    fitted_on: str = ""

    def __post_init__(self) -> None:
        check_names(self.names)
        check_cuts(self.cuts)
        if len(self.cuts) != len(self.names) - 1:
            raise ConfigError(f"{len(self.names)} tiers need {len(self.names) - 1} cut-offs, got "
                              f"{len(self.cuts)}: {list(self.cuts)}")
        if not isinstance(self.method, str) or not 0 < len(self.method) <= MAX_NAME_CHARS \
                or not self.method.isprintable():
            raise ConfigError(f"tier method {self.method!r} must be 1-{MAX_NAME_CHARS} printable "
                              f"characters, e.g. {', '.join(METHODS)}")

    def tier_index(self, p) -> np.ndarray:
        """The tier of each probability (0 = lowest), int64 of ``p``'s shape."""
        return np.searchsorted(np.asarray(self.cuts, np.float64), np.asarray(p, np.float64),
                               side="right").astype(np.int64)

    def tier_of(self, p: float) -> str:
        """The name of the tier of one probability."""
        return self.names[int(self.tier_index(p))]

    def bounds(self, i: int) -> tuple[float, float]:
        """(low, high) of tier ``i``: its score range ``[low, high)`` (the last includes 1)."""
        edges = (0.0, *self.cuts, 1.0)
        return edges[i], edges[i + 1]

    def index(self, name: str) -> int:
        """The position of the tier called ``name``; ConfigError naming the tiers otherwise."""
        if name not in self.names:
            raise ConfigError(f"no tier {name!r}; the tiers are {', '.join(self.names)}")
        return self.names.index(name)

    def renamed(self, names: Sequence[str]) -> IntentTiers:
        """The same cut-offs under other names (as many as there are tiers)."""
        names = tuple(names)
        if len(names) != len(self.names):
            raise ConfigError(f"{len(names)} tier names for {len(self.names)} tiers (cut-offs "
                              f"{list(self.cuts)}); give as many names, or --cuts with them")
        return IntentTiers(names, self.cuts, self.method, self.fitted_on)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "cuts": list(self.cuts), "method": self.method,
                "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, d: Mapping) -> IntentTiers:
        """The tiers stored in an artifact; ArtifactError when malformed."""
        try:
            names, cuts = d["names"], d["cuts"]
            if not isinstance(names, list) or not isinstance(cuts, list):
                raise TypeError(f"names and cuts must be lists, got {names!r} and {cuts!r}")
            return cls(tuple(names), tuple(cuts), str(d["method"]), str(d.get("fitted_on", "")))
        except (KeyError, TypeError, ConfigError) as e:
            raise ArtifactError(f"intent tiers are malformed: {e}") from None

    @classmethod
    def fit_expected_buyers(cls, p: np.ndarray, names: Sequence[str] = DEFAULT_TIER_NAMES,
                            fitted_on: str = "") -> IntentTiers:
        """Cut-offs that give each tier an equal share of the expected buyers.

        Sessions are sorted by score; cut-off ``k`` is the score of the session after the one
        at which the running sum of probabilities reaches ``k / K`` of their total (ties
        kept together, see `_cuts_at`).

        Args:
            p: calibrated probabilities of the sessions to fit on (validation).
            names: the tiers' names, lowest first.
            fitted_on: what ``p`` is, in words.

        Raises:
            ConfigError: too few distinct scores for the tiers, or no sessions.
        """
        names = tuple(names)
        check_names(names)
        p = np.sort(np.asarray(p, np.float64))
        if len(p) == 0 or not p.sum() > 0:
            raise ConfigError("intent tiers need sessions with a positive score to fit on")
        running = np.cumsum(p) / p.sum()
        targets = np.arange(1, len(names)) / len(names)
        at = np.searchsorted(running, targets, side="left") + 1  # first session past each share
        return cls(names, _cuts_at(p, at, names), EXPECTED_BUYERS, fitted_on)

    @classmethod
    def fit_shares(cls, p: np.ndarray, shares: Sequence[float],
                   names: Sequence[str] = DEFAULT_TIER_NAMES, fitted_on: str = "") -> IntentTiers:
        """Cut-offs that put the given shares of the sessions in each tier, lowest first.

        Args:
            p: probabilities of the sessions to fit on.
            shares: one per tier, positive, summing to 1 (within 1e-6).
            names, fitted_on: as `fit_expected_buyers`.

        Raises:
            ConfigError: shares of the wrong number, not positive or not summing to 1, or
                too few distinct scores for them.
        """
        names = tuple(names)
        check_names(names)
        shares = [float(s) for s in shares]
        check_shares(shares, names)
        p = np.sort(np.asarray(p, np.float64))
        if len(p) == 0:
            raise ConfigError("intent tiers need sessions to fit on")
        at = np.ceil(np.cumsum(shares)[:-1] * len(p) - 1e-9).astype(np.int64)
        return cls(names, _cuts_at(p, at, names), SHARES, fitted_on)


def _cuts_at(sorted_p: np.ndarray, at: np.ndarray, names: tuple[str, ...]) -> tuple[float, ...]:
    """Cut-offs at the sessions at positions ``at`` of ``sorted_p``: each the exact score of
    the first session of its upper tier (a float32 score is exact as a float and in JSON), so
    that session is in the tier above on every device.

    Tied scores go together: a cut-off that would fall inside a block of equal scores sits
    at the block's score (the block goes to the tier above), and one that would leave a tier
    without a session moves up to the next distinct score (seen on full-integer artifacts,
    whose scores move in steps of 1/256).

    Raises:
        ConfigError: fewer distinct scores than tiers.
    """
    distinct = np.unique(sorted_p)
    if len(distinct) < len(names):
        raise ConfigError(f"too few distinct scores ({len(distinct)} among {len(sorted_p)} "
                          f"sessions) for {len(names)} tiers")
    chosen, previous = [], 0
    for k, position in enumerate(np.clip(at, 0, len(sorted_p) - 1)):
        j = int(np.searchsorted(distinct, sorted_p[position]))
        # Above the previous cut-off (and the lowest score), and leaving a distinct score for
        # each tier still to come.
        j = min(max(j, previous + 1), len(distinct) - (len(names) - 1 - k))
        chosen.append(j)
        previous = j
    cuts = tuple(float(distinct[j]) for j in chosen)
    if not all(0 < c < 1 for c in cuts):
        raise ConfigError(f"the scores cannot be cut into {len(names)} tiers within (0, 1): "
                          f"cut-offs {list(cuts)}")
    return cuts


def chosen_tiers(stored: IntentTiers | None, cuts: Sequence[float] | None,
                 names: Sequence[str] | None, source: str = "artifact",
                 names_option: str = "--tiers") -> tuple[IntentTiers, bool]:
    """The tiers a command uses: the artifact's, renamed, or given cut-offs.

    Args:
        stored: the artifact's tiers (ArtifactInfo.intent_tiers), None when it has none.
        cuts: cut-offs given by the user (``--cuts``), or None.
        names: tier names given by the user, or None. With ``cuts`` they name those tiers;
            without, they rename the artifact's. Given cut-offs without names take the
            artifact's names (or DEFAULT_TIER_NAMES, or ``tier 1``, ``tier 2``, ...) when
            they fit in number.
        source: the artifact's name, for messages.
        names_option: the option that gives ``names``, for messages.

    Returns:
        (the tiers, whether the cut-offs are the artifact's).

    Raises:
        ConfigError: no ``cuts`` and the artifact has none; names that do not fit the tiers
            in number.
    """
    if cuts is None:
        if stored is None:
            raise ConfigError(f"{source}: the artifact carries no intent tiers (converted by an "
                              f"older ubp-edge, or its validation scores could not be cut into "
                              f"tiers: `convert` says why); re-run `ubp-edge convert` or pass "
                              f"--cuts, e.g. --cuts 0.05,0.15")
        return (stored if names is None else stored.renamed(names)), True
    count = len(cuts) + 1
    if names is None:
        names = next((n for n in ((stored.names if stored else ()), DEFAULT_TIER_NAMES)
                      if len(n) == count), tuple(f"tier {i + 1}" for i in range(count)))
    elif len(names) != count:
        raise ConfigError(f"--cuts {','.join(map(str, cuts))} makes {count} tiers but "
                          f"{names_option} names {len(names)} ({', '.join(names)})")
    return IntentTiers(tuple(names), tuple(cuts)), False


@dataclass(frozen=True)
class TriggerRule:
    """When a live session fires a trigger: the first time its score reaches the low
    cut-off of a watched tier, with hysteresis.

    A trigger for tier T fires when the score reaches T's low cut-off (the session is in T or
    above) and T is armed; it then disarms, and re-arms only when the score falls below the
    cut-off by ``hysteresis`` of it. A session that jumps over several watched tiers at once
    fires each of them, lowest first.

    Attributes:
        tiers: the artifact's (or given) IntentTiers.
        watched: indices of the watched tiers, increasing; never the lowest (it has no low
            cut-off to cross).
        hysteresis: fraction of a cut-off below it that re-arms the trigger, in [0, 1).
    """

    tiers: IntentTiers
    watched: tuple[int, ...]
    hysteresis: float = DEFAULT_HYSTERESIS

    def __post_init__(self) -> None:
        watched = tuple(self.watched)
        if not watched or list(watched) != sorted(set(watched)) \
                or not all(isinstance(i, int) and 1 <= i < len(self.tiers.names) for i in watched):
            raise ConfigError(f"watched tiers must be increasing indices in 1..{len(self.tiers.names) - 1} "
                              f"(the lowest tier has no cut-off to climb past), got {list(watched)}")
        object.__setattr__(self, "hysteresis", check_hysteresis(self.hysteresis))

    @classmethod
    def for_names(cls, tiers: IntentTiers, names: Sequence[str],
                  hysteresis: float = DEFAULT_HYSTERESIS) -> TriggerRule:
        """The rule watching the tiers called ``names``.

        Raises:
            ConfigError: an unknown tier, the lowest tier, no name, or a hysteresis outside
                [0, 1).
        """
        if not names:
            raise ConfigError("name at least one tier to trigger on")
        watched = sorted({tiers.index(n) for n in names})
        if watched[0] == 0:
            raise ConfigError(f"tier {tiers.names[0]!r} is the lowest: it has no cut-off to climb "
                              f"past; trigger on "
                              f"{', '.join(tiers.names[1:])}")
        return cls(tiers, tuple(watched), hysteresis)

    def update(self, fired: int, p: float) -> tuple[int, list[str]]:
        """One new score of a session.

        Args:
            fired: the session's bit mask of disarmed triggers (bit ``i`` for tier ``i``);
                0 for a new session.
            p: its score after the event.

        Returns:
            (the new mask, the names of the tiers that fire now, lowest first).
        """
        names = []
        for i in self.watched:
            low = self.tiers.cuts[i - 1]
            bit = 1 << i
            if fired & bit:
                if p < low * (1.0 - self.hysteresis):
                    fired &= ~bit
            elif p >= low:
                fired |= bit
                names.append(self.tiers.names[i])
        return fired, names

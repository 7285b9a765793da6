"""Learned target statistics: what the training split says about a category (or an item).

For each id of one field (``category`` or ``item``) that training sessions touched, a
`TargetTable` holds two numbers: the logit of its smoothed purchase rate (of the training
sessions whose prefix touched it, shrunk towards the training base rate) and the log1p of
how many training sessions touched it. The encoder looks them up for every event
(edge_runtime.features), in training, in batch scoring and in the live path, and the table
travels inside the FeatureSpec, so inside every artifact.

No id is stored in clear: an id is looked up by a keyed hash, the first HASH_BYTES bytes of
BLAKE2b keyed with the table's ``key`` over the id's 8-byte digest
(edge_runtime.features.id_digest, which a live session computes anyway). The key is in the
artifact, so whoever holds the artifact can test an id they already know (and read its two
numbers), but cannot list the ids, and cannot match the entries of two tables with another
key. An id not in the table (never seen in training, seen in fewer than `MIN_SUPPORT`
sessions, or from another shop) reads the fallback: the base rate's logit and popularity 0.
Two ids share a hash with probability about n / 2**32 per lookup of an unknown id (n
entries): such an id reads another id's numbers.

Size: HASH_BYTES + 2 x 2 (float16) = 8 bytes an entry, 80,000 bytes per 10,000 entries,
about 106,700 as the base64 text the spec holds.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

try:  # as edge_runtime.features: hashlib's blake2b without OpenSSL
    from _blake2 import blake2b
except ImportError:
    from hashlib import blake2b

from edge_runtime.errors import ArtifactError

TABLE_FIELDS = ("category", "item")
HASH_BYTES = 4
KEY_BYTES = 16
DIGEST_DTYPE = np.dtype(">u8")  # an 8-byte id digest as one number, byte order kept
# Training sessions an id needs to get an entry: with one, its number would be that session's
# own label, which out-of-fold training never sees and the smoothing mostly hides anyway.
MIN_SUPPORT = 2
# Pseudo-sessions at the base rate added to every id's count (the rate's shrinkage).
SMOOTHING = 20.0
# Ids whose values a table keeps at hand (`TargetTable._value`): about 200 bytes each, so at
# most about 1.6 MB for a table of many items; Taobao's 1,335 categories all fit.
CACHED_IDS = 1 << 13
RATE_FLOOR = 1e-4  # rates are kept in [RATE_FLOOR, 1 - RATE_FLOOR]: logits within +-9.2


def logit(p: np.ndarray | float) -> np.ndarray | float:
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True, eq=False)
class TargetTable:
    """One field's statistics, sorted by keyed hash.

    Attributes:
        field: "category" or "item".
        key: the KEY_BYTES-byte key of the hash.
        hashes: (n,) uint32, ascending and distinct.
        rate: (n,) float16, logit of the smoothed purchase rate.
        popularity: (n,) float16, log1p(training sessions that touched the id).
        fallback_rate: the logit of the training base rate (an unknown id's rate; popularity 0).
    """

    field: str
    key: bytes
    hashes: np.ndarray
    rate: np.ndarray
    popularity: np.ndarray
    fallback_rate: float

    def __post_init__(self) -> None:
        if self.field not in TABLE_FIELDS:
            raise ArtifactError(f"target table field {self.field!r}; expected one of {list(TABLE_FIELDS)}")
        if len(self.key) != KEY_BYTES:
            raise ArtifactError(f"target table key has {len(self.key)} bytes, expected {KEY_BYTES}")
        n = len(self.hashes)
        if not (len(self.rate) == len(self.popularity) == n):
            raise ArtifactError(f"target table for {self.field}: {n} hashes, {len(self.rate)} rates, "
                                f"{len(self.popularity)} popularities")
        if n and not (np.diff(self.hashes.astype(np.int64)) > 0).all():
            raise ArtifactError(f"target table for {self.field}: hashes are not ascending and distinct")
        if not (np.isfinite(self.rate).all() and np.isfinite(self.popularity).all()
                and math.isfinite(self.fallback_rate)):
            raise ArtifactError(f"target table for {self.field}: values must be finite")
        object.__setattr__(self, "_hasher", blake2b(key=self.key, digest_size=HASH_BYTES))
        # The values of the ids looked up so far, by digest (as a number): a shop has a few
        # thousand categories and its sessions look the same ones up again and again, so
        # after the first time an id costs one dict lookup instead of a keyed hash and a
        # search. At most CACHED_IDS entries (the first ones; later ids are hashed each time).
        object.__setattr__(self, "_cache", {})
        object.__setattr__(self, "_fallback", (self.fallback_rate, 0.0))

    def __len__(self) -> int:
        return len(self.hashes)

    def _content(self) -> tuple:
        return (self.field, self.key, self.hashes.tobytes(), self.rate.tobytes(),
                self.popularity.tobytes(), self.fallback_rate)

    def __eq__(self, other: object) -> bool:  # by content: two artifacts' copies are equal
        return isinstance(other, TargetTable) and self._content() == other._content()

    def __hash__(self) -> int:
        return hash(self._content())

    def keyed(self, digests: np.ndarray) -> np.ndarray:
        """The keyed hashes (uint32) of 8-byte id digests (DIGEST_DTYPE or uint64 numbers
        holding the digest's bytes big-endian), each distinct digest hashed once."""
        digests = np.asarray(digests).astype(DIGEST_DTYPE, copy=False)
        distinct, inverse = np.unique(digests, return_inverse=True)
        out = np.fromiter(map(self._keyed_one, distinct.tolist()), np.uint32, len(distinct))
        return out[inverse.reshape(-1)]

    def contains(self, digests: np.ndarray) -> np.ndarray:
        """Whether each id digest has an entry (boolean array)."""
        if not len(self.hashes) or not len(digests):
            return np.zeros(len(digests), bool)
        keyed = self.keyed(digests)
        at = np.minimum(np.searchsorted(self.hashes, keyed), len(self.hashes) - 1)
        return self.hashes[at] == keyed

    def _keyed_one(self, number: int) -> int:
        """The keyed hash of the id whose digest is ``number`` (its 8 bytes big-endian)."""
        hasher = self._hasher.copy()
        hasher.update(number.to_bytes(8, "big"))
        return int.from_bytes(hasher.digest(), "big")

    def columns(self, digests: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
        """(n, 2) float64: rate and popularity of each id digest; the fallback for ids
        not in the table and where ``known`` is False (an event without a category)."""
        n = len(digests)
        out = np.empty((n, 2), np.float64)
        out[:, 0], out[:, 1] = self.fallback_rate, 0.0
        if n == 0 or len(self.hashes) == 0:
            return out
        rows = np.arange(n) if known is None else np.flatnonzero(known)
        picked = np.asarray(digests)[rows].astype(DIGEST_DTYPE, copy=False)
        if len(picked) > 64:  # many events: each distinct id looked up once, then gathered
            distinct, inverse = np.unique(picked, return_inverse=True)
            values = np.array([self._value(d) for d in distinct.tolist()], np.float64).reshape(-1, 2)
            out[rows] = values[inverse.reshape(-1)]
        elif len(picked):
            cache = self._cache
            out[rows] = [cache[d] if d in cache else self._value(d) for d in picked.tolist()]
        return out

    def values_of(self, digest: bytes | None) -> tuple[float, float]:
        """Rate and popularity of one id's 8-byte digest (None: no id), for the live path."""
        if digest is None:
            return self._fallback
        number = int.from_bytes(digest, "big")
        found = self._cache.get(number)
        return found if found is not None else self._value(number)

    def _value(self, number: int) -> tuple[float, float]:
        """The values of the id whose digest is ``number`` (the 8 bytes big-endian), cached."""
        found = self._cache.get(number)
        if found is not None:
            return found
        keyed = self._keyed_one(number)
        at = int(np.searchsorted(self.hashes, keyed))
        if at < len(self.hashes) and int(self.hashes[at]) == keyed:
            found = (float(self.rate[at]), float(self.popularity[at]))
        else:
            found = self._fallback
        if len(self._cache) < CACHED_IDS:
            self._cache[number] = found
        return found

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, field: str, key: bytes, digests: np.ndarray, sessions: np.ndarray,
              purchases: np.ndarray, base_rate: float,
              rate_counts: tuple[np.ndarray, np.ndarray] | None = None) -> TargetTable:
        """A table from per-id training counts.

        Args:
            field: TABLE_FIELDS.
            key: the hash key (KEY_BYTES).
            digests: (n,) distinct id digests (DIGEST_DTYPE or uint64).
            sessions, purchases: training sessions that touched each id, and how many of them
                purchased.
            base_rate: the training split's purchase rate, in (0, 1).
            rate_counts: (sessions, purchases) the rate is computed from instead (`prepare`'s
                out-of-fold tables: the rate without a fold's labels, while ``sessions``,
                which decide the entries and the popularity and hold no label, count every
                other training session).

        Ids with fewer than MIN_SUPPORT sessions get no entry.
        """
        sessions = np.asarray(sessions, np.float64)
        keep = sessions >= MIN_SUPPORT
        # A split with no (or only) purchases would give infinite logits.
        base_rate = min(max(float(base_rate), RATE_FLOOR), 1.0 - RATE_FLOOR)
        fallback = float(np.float16(logit(base_rate)))
        probe = cls(field, key, np.zeros(0, np.uint32), np.zeros(0, np.float16), np.zeros(0, np.float16),
                    fallback)
        hashes = probe.keyed(np.asarray(digests)[keep])
        n = sessions[keep]
        seen, bought = (sessions, purchases) if rate_counts is None else rate_counts
        m, k = np.asarray(seen, np.float64)[keep], np.asarray(bought, np.float64)[keep]
        rate = logit(np.clip((k + SMOOTHING * base_rate) / (m + SMOOTHING), RATE_FLOOR,
                             1.0 - RATE_FLOOR)).astype(np.float16)
        popularity = np.log1p(n).astype(np.float16)
        # Two ids sharing a hash keep the entry of the one with more sessions.
        order = np.lexsort((-n, hashes))
        first = np.r_[True, hashes[order][1:] != hashes[order][:-1]] if len(order) else np.zeros(0, bool)
        chosen = order[first]
        return cls(field, key, hashes[chosen], rate[chosen], popularity[chosen], fallback)

    # ------------------------------------------------------------------ the spec's JSON
    def to_dict(self) -> dict:
        return {"field": self.field, "key": self.key.hex(), "hash_bytes": HASH_BYTES,
                "entries": len(self), "fallback_rate": self.fallback_rate,
                "hashes": _b64(self.hashes.astype("<u4")), "rate": _b64(self.rate.astype("<f2")),
                "popularity": _b64(self.popularity.astype("<f2"))}

    @classmethod
    def from_dict(cls, d: Mapping) -> TargetTable:
        """ArtifactError naming what is wrong when ``d`` is not a table this version reads."""
        if not isinstance(d, Mapping):
            raise ArtifactError(f"target table is {type(d).__name__}, expected an object")
        try:
            if d["hash_bytes"] != HASH_BYTES:
                raise ArtifactError(f"target table hash_bytes {d['hash_bytes']!r}; this ubp-edge "
                                    f"reads {HASH_BYTES}")
            n = int(d["entries"])
            table = cls(field=str(d["field"]), key=bytes.fromhex(d["key"]),
                        hashes=_array(d["hashes"], "<u4", n).astype(np.uint32),
                        rate=_array(d["rate"], "<f2", n).astype(np.float16),
                        popularity=_array(d["popularity"], "<f2", n).astype(np.float16),
                        fallback_rate=float(d["fallback_rate"]))
        except (KeyError, TypeError, ValueError, AttributeError, UnicodeError) as e:
            raise ArtifactError(f"target table is malformed: {type(e).__name__} {e}") from None
        return table


def _b64(values: np.ndarray) -> str:
    return base64.b64encode(values.tobytes()).decode("ascii")


def _array(text: str, dtype: str, n: int) -> np.ndarray:
    if not isinstance(text, str):
        raise ValueError(f"{type(text).__name__} where base64 text was expected")
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) != n * np.dtype(dtype).itemsize:
        raise ValueError(f"{len(raw)} bytes for {n} entries of {dtype}")
    return np.frombuffer(raw, dtype)


"""From sessions to model inputs through the one FeatureEncoder (edge_runtime.features)."""

from __future__ import annotations

import numpy as np

from edge_runtime.features import FeatureEncoder, default_features, id_digests
from trainer.readers import Ids
from trainer.sessions import Sessions


def prefix_fields(sessions: Sessions, s: int) -> dict:
    """The canonical fields of session ``s``'s prefix, as the encoder takes them."""
    log = sessions.log
    ev = sessions.prefix_events(s)
    return {
        "ts": log.ts[ev],
        "event": log.event[ev],
        "item": log.item.codes[ev],
        "category": None if log.category is None else log.category.values(ev),
        "price": None if log.price is None else log.price[ev],
        "context": sessions.context[s],
    }


def new_encoder(sessions: Sessions, max_len: int, use_context: bool | None = None) -> FeatureEncoder:
    """An unfitted encoder with the features this log supports."""
    log = sessions.log
    has_category = log.category is not None and bool((log.category.names != "").any())
    has_price = log.price is not None and bool(np.isfinite(log.price).any())
    context = log.has_user_ids if use_context is None else (use_context and log.has_user_ids)
    return FeatureEncoder(default_features(has_price, has_category, context),
                          utc_offset_hours=log.utc_offset_hours, max_len=max_len)


def prefix_rows(sessions: Sessions, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The log rows of the prefixes of sessions ``idx``, concatenated, and the offsets between
    them (session ``k``'s rows are ``rows[offsets[k]:offsets[k+1]]``), gathered without a loop."""
    idx = np.asarray(idx, np.int64)
    lengths = sessions.prefix_len[idx].astype(np.int64)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    first = np.repeat(sessions.offsets[idx] - offsets[:-1], lengths)
    return sessions.order[first + np.arange(offsets[-1])], offsets


def _digests(ids: Ids, rows: np.ndarray, none: str | None = None) -> np.ndarray:
    """The id digests (edge_runtime.features.id_digests) of ``rows``, each distinct id
    hashed once; 0 where the id is ``none`` (the empty category: no category)."""
    used, inverse = np.unique(ids.codes[rows], return_inverse=True)
    names = ids.names[used]
    digests = id_digests(names)
    if none is not None:
        digests = np.where(names == none, np.zeros(1, digests.dtype), digests).astype(digests.dtype)
    return digests[inverse.reshape(-1)]


def window_digests(sessions: Sessions, idx: np.ndarray, *,
                   window: int | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The item and the category digests (DIGEST_DTYPE; category 0 where an event has none;
    None for a log without categories) of the events `raw_sessions` encodes, stacked, and
    each session's count of them: what `prepare` learns the target tables from and looks
    them up by. Flat arrays, not a list per session: a log has millions of sessions."""
    log = sessions.log
    rows, offsets = prefix_rows(sessions, idx)
    lengths = np.diff(offsets)
    kept = lengths if window is None else np.minimum(lengths, window)
    # Keep each session's last ``kept`` rows: those within ``kept`` of its end.
    from_end = np.repeat(offsets[1:], lengths) - np.arange(len(rows))
    keep = from_end <= np.repeat(kept, lengths)
    category = None if log.category is None else _digests(log.category, rows[keep], none="")
    return _digests(log.item, rows[keep]), category, kept


def _batch_fields(sessions: Sessions, idx: np.ndarray, digests: tuple[str, ...] = ()) -> dict:
    """Concatenated canonical fields of the prefixes of sessions ``idx``, with their offsets,
    and the digests of the id fields named in ``digests`` (those with target tables)."""
    log = sessions.log
    rows, offsets = prefix_rows(sessions, idx)
    category = None
    if log.category is not None:
        # Codes, with the empty category as -1 ("no category"), avoid string comparisons.
        empty = np.flatnonzero(log.category.names == "")
        category = log.category.codes[rows]
        if len(empty):
            category = np.where(category == empty[0], -1, category)
    fields = {"offsets": offsets, "ts": log.ts[rows],
              "event": log.event[rows], "item": log.item.codes[rows], "category": category,
              "price": None if log.price is None else log.price[rows],
              "context": sessions.context[np.asarray(idx, np.int64)]}
    if "item" in digests:
        fields["item_digest"] = _digests(log.item, rows)
    if "category" in digests and log.category is not None:
        fields["category_digest"] = _digests(log.category, rows, none="")
    return fields


def _windowed(rows: np.ndarray, offsets: np.ndarray, window: int | None) -> list[np.ndarray]:
    """Each session's rows: all of them (``window`` None), else its last ``window``. Encoding
    happens before any cut, so positions and elapsed time are those of the whole prefix."""
    if window is None:
        return [rows[offsets[k]:offsets[k + 1]] for k in range(len(offsets) - 1)]
    if isinstance(window, bool) or not isinstance(window, int | np.integer) or window < 1:
        raise ValueError(f"window must be a whole number >= 1 or None, got {window!r}")
    return [rows[max(offsets[k], offsets[k + 1] - window):offsets[k + 1]] for k in range(len(offsets) - 1)]


def raw_sessions(sessions: Sessions, idx: np.ndarray, encoder: FeatureEncoder, *,
                 window: int | None) -> list[np.ndarray]:
    """Raw feature rows per session (before normalisation).

    Args:
        sessions: the log's sessions.
        idx: scorable sessions (at least one event before the outcome).
        encoder: decides the features; its normalisation is not used.
        window: None: every event of each prefix (scoring, as a live session reads them);
            a number: each prefix's last ``window`` events (training's window, ``max_len``).

    Returns:
        One float64 array (events, features) per session of ``idx``.
    """
    fields = _batch_fields(sessions, idx, encoder.table_fields)
    return _windowed(encoder.raw_batch(**fields), fields["offsets"], window)


def encode_sessions(sessions: Sessions, idx: np.ndarray, encoder: FeatureEncoder, *,
                    window: int | None) -> list[np.ndarray]:
    """Normalised float32 features per session.

    Args:
        sessions, idx, encoder, window: as `raw_sessions` (the encoder fitted).

    Returns:
        One float32 array (events, features) per session of ``idx``.
    """
    fields = _batch_fields(sessions, idx, encoder.table_fields)
    return _windowed(encoder.encode_batch(**fields), fields["offsets"], window)


def pad(encoded: list[np.ndarray], max_len: int) -> np.ndarray:
    """Stack sessions into (N, max_len, F), real events first, zeros after (masked in training)."""
    n_features = encoded[0].shape[1]
    out = np.zeros((len(encoded), max_len, n_features), np.float32)
    for i, x in enumerate(encoded):
        out[i, :len(x)] = x
    return out


# The logistic-regression baseline's per-session columns (`aggregate_features`), in order;
# a PREP_DIR's manifest lists them as ``baseline_features``.
BASELINE_FEATURES: tuple[str, ...] = (
    "log_events", "log_views", "log_carts", "log_favs", "log_duration_s", "log_unique_items",
    "repeat_item_share", "log_prior_sessions", "log_prior_purchases", "log_open_cart_items")


def aggregate_features(sessions: Sessions, idx: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per-session counts for the logistic-regression baseline: no order, no timing within.

    Computed for all sessions ``idx`` at once (no loop over sessions), with the same
    floating-point operations per value as one session at a time would take.

    Args:
        sessions: the log's sessions.
        idx: sessions with at least one event before their first purchase.

    Returns:
        (N, K) float64 and the K column names (BASELINE_FEATURES).
    """
    idx = np.asarray(idx, np.int64)
    n = len(idx)
    log = sessions.log
    rows, offsets = prefix_rows(sessions, idx)
    lengths = np.diff(offsets)
    if (lengths == 0).any():
        raise ValueError("aggregate_features: a session without events before its purchase")
    session = np.repeat(np.arange(n), lengths)
    counts = np.bincount(session * 4 + log.event[rows], minlength=4 * n).reshape(n, 4)
    # Distinct items per session: sort (session, item), count where either changes.
    items = log.item.codes[rows]
    by_item = np.lexsort((items, session))
    s_sorted, i_sorted = session[by_item], items[by_item]
    new = np.r_[True, (s_sorted[1:] != s_sorted[:-1]) | (i_sorted[1:] != i_sorted[:-1])] if n else \
        np.zeros(0, bool)
    unique = np.bincount(s_sorted[new], minlength=n)
    ts = log.ts[rows]
    duration = ts[offsets[1:] - 1] - ts[offsets[:-1]] if n else np.zeros(0)
    out = np.column_stack([np.log1p(lengths), np.log1p(counts[:, 0]), np.log1p(counts[:, 1]),
                           np.log1p(counts[:, 2]), np.log1p(duration), np.log1p(unique),
                           1.0 - unique / lengths, np.log1p(sessions.context[idx])]) if n else \
        np.zeros((0, len(BASELINE_FEATURES)))
    return out, list(BASELINE_FEATURES)

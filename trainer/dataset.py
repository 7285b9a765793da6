"""From sessions to model inputs through the one FeatureEncoder (edge_runtime.features)."""

from __future__ import annotations

import numpy as np

from edge_runtime.features import FeatureEncoder, default_features
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


def _batch_fields(sessions: Sessions, idx: np.ndarray) -> dict:
    """Concatenated canonical fields of the prefixes of sessions ``idx``, with their offsets."""
    log = sessions.log
    parts = [sessions.prefix_events(int(s)) for s in idx]
    lengths = np.array([len(p) for p in parts], np.int64)
    rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    category = None
    if log.category is not None:
        # Codes, with the empty category as -1 ("no category"), avoid string comparisons.
        empty = np.flatnonzero(log.category.names == "")
        category = log.category.codes[rows]
        if len(empty):
            category = np.where(category == empty[0], -1, category)
    return {"offsets": np.r_[0, np.cumsum(lengths)].astype(np.int64), "ts": log.ts[rows],
            "event": log.event[rows], "item": log.item.codes[rows], "category": category,
            "price": None if log.price is None else log.price[rows],
            "context": sessions.context[np.asarray(idx, np.int64)]}


def _last_rows(rows: np.ndarray, offsets: np.ndarray, max_len: int) -> list[np.ndarray]:
    """Each session's last ``max_len`` rows. Encoding happens before the cut, so positions and
    elapsed time are those of the whole prefix, as when the runtime scores a long session."""
    return [rows[max(offsets[k], offsets[k + 1] - max_len):offsets[k + 1]]
            for k in range(len(offsets) - 1)]


def raw_sessions(sessions: Sessions, idx: np.ndarray, encoder: FeatureEncoder) -> list[np.ndarray]:
    """Raw feature rows per session, each cut to its last ``encoder.max_len`` events."""
    fields = _batch_fields(sessions, idx)
    return _last_rows(encoder.raw_batch(**fields), fields["offsets"], encoder.max_len)


def encode_sessions(sessions: Sessions, idx: np.ndarray, encoder: FeatureEncoder) -> list[np.ndarray]:
    """Normalised float32 features per session (the last ``max_len`` events of each prefix)."""
    fields = _batch_fields(sessions, idx)
    return _last_rows(encoder.encode_batch(**fields), fields["offsets"], encoder.max_len)


def pad(encoded: list[np.ndarray], max_len: int) -> np.ndarray:
    """Stack sessions into (N, max_len, F), real events first, zeros after (masked in training)."""
    n_features = encoded[0].shape[1]
    out = np.zeros((len(encoded), max_len, n_features), np.float32)
    for i, x in enumerate(encoded):
        out[i, :len(x)] = x
    return out


def aggregate_features(sessions: Sessions, idx: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per-session counts for the logistic-regression baseline: no order, no timing within.

    Returns:
        (N, K) float64 and the K column names.
    """
    names = ["log_events", "log_views", "log_carts", "log_favs", "log_duration_s",
             "log_unique_items", "repeat_item_share", "log_prior_sessions",
             "log_prior_purchases", "log_open_cart_items"]
    out = np.zeros((len(idx), len(names)))
    log = sessions.log
    for row, s in enumerate(idx):
        ev = sessions.prefix_events(int(s))
        codes = log.event[ev]
        counts = np.bincount(codes, minlength=4)
        n = len(ev)
        unique = len(np.unique(log.item.codes[ev]))
        out[row] = [np.log1p(n), np.log1p(counts[0]), np.log1p(counts[1]), np.log1p(counts[2]),
                    np.log1p(log.ts[ev[-1]] - log.ts[ev[0]]), np.log1p(unique),
                    1.0 - unique / n, *np.log1p(sessions.context[int(s)])]
    return out, names

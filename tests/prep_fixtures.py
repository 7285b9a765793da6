"""A PREP_DIR built the reference way, in memory: read_log + sessionize + time_split + the
FeatureEncoder + PrepWriter. Tests of the PREP_DIR format and of training from it use it,
and the streaming `prepare` engines are compared against it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.dataset import aggregate_features, encode_sessions, new_encoder, raw_sessions
from trainer.prepdir import FORMAT_VERSION, QUARANTINE, PrepWriter, sha256_file, write_manifest
from trainer.readers import read_log
from trainer.sessions import key_digests, sessionize, time_split


def write_small_log(folder: Path) -> Path:
    """``folder/log.csv``: 60 synthetic users and one bad row (so a PREP_DIR of it has a
    quarantine)."""
    from trainer.synthetic import generate_events, write_canonical_csv

    path = Path(folder) / "log.csv"
    write_canonical_csv(generate_events(n_users=60, seed=3), path)
    with open(path, "a", encoding="utf-8") as f:
        f.write("u99999,not-a-time,view,i1,c1,1.0\n")
    return path


# Sessions per PrepWriter.add call: small, so that batches cross row groups and shards.
ADD_BATCH = 700


def build_prep_dir(log_path: str | Path, folder: str | Path, format: str | None = None,
                   max_len: int = 50, gap_minutes: float = 30.0, validation: float = 0.15,
                   test: float = 0.15, use_context: bool = True,
                   sessions_per_shard: int | None = None, shards: int | None = None) -> dict:
    """Prepare ``log_path`` into ``folder`` with today's in-memory functions.

    Returns:
        The manifest written.
    """
    folder = Path(folder)
    log = read_log(log_path, format)
    sessions = sessionize(log, gap_minutes)
    split = time_split(sessions, validation, test)
    encoder = new_encoder(sessions, max_len, use_context)
    encoder.fit(np.concatenate(raw_sessions(sessions, split.train, encoder, window=max_len)))
    spec = encoder.spec()
    # Scorable sessions in canonical order: sessionize orders sessions by (start, key).
    scorable = np.flatnonzero(sessions.scorable)
    names = np.empty(len(sessions), object)
    for name, index in split.parts().items():
        names[index] = name
    with PrepWriter(folder, spec.n_features, aggregate_features(sessions, scorable[:1])[1],
                    sessions_per_shard=sessions_per_shard, shards=shards,
                    total_sessions=len(scorable) if shards else None) as writer:
        for a in range(0, len(scorable), ADD_BATCH):
            ix = scorable[a:a + ADD_BATCH]
            writer.add({"key_digest": key_digests(sessions.key[ix]), "split": names[ix].astype(str),
                        "label": sessions.label[ix], "start": sessions.start[ix],
                        "prefix_len": sessions.prefix_len[ix],
                        "features": encode_sessions(sessions, ix, encoder, window=max_len),
                        "baseline": aggregate_features(sessions, ix)[0]})
        shard_list, digest = writer.close()
    size, sha = sha256_file(log_path)
    manifest = {
        "format_version": FORMAT_VERSION, "engine": "local",
        "input": {"path": str(log_path), "format": log.format, "bytes": size, "sha256": sha},
        "settings": {"gap_minutes": gap_minutes, "validation": validation, "test": test,
                     "max_len": max_len, "use_context": use_context},
        "counts": {"rows_read": log.rows_read, "bad_rows": log.bad.summary(), "events": len(log),
                   **sessions.summary(),
                   "split": {name: {"sessions": int(len(ix)), "positives": int(sessions.label[ix].sum())}
                             for name, ix in split.parts().items()}},
        "has_user_ids": log.has_user_ids,
        "time_span_utc": [float(log.ts.min()), float(log.ts.max())],
        "split_rule": {"validation_from_ts": split.validation_from, "test_from_ts": split.test_from},
        "feature_spec": spec.to_dict(),
        "baseline_features": list(aggregate_features(sessions, scorable[:1])[1]),
        "shards": shard_list,
        "content_digest": digest,
    }
    log.bad.write(folder / QUARANTINE)
    write_manifest(folder, manifest)
    return manifest

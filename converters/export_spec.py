"""An artifact's contract for native clients: `spec.json` and `golden.jsonl`.

A Kotlin, Swift or C++ team that runs a ubp-edge artifact on its own LiteRT interpreter has
to turn events into the model's features exactly as edge_runtime.features does, call the
graph as edge_runtime.whole_graph and edge_runtime.live do, and apply the artifact's
recalibration. `export_spec` writes what they need without reading our Python:

- ``spec.json``: every feature in input order with its formula in words and as an
  expression over the canonical event fields and the session's running state, its
  normalisation constants, the event codes and rules, the context fields, max_len, the
  decision threshold, the Platt calibration if any, and the model's signatures read from
  the interpreter (names, shapes, dtypes, int8 quantisation) with how to call them.
- ``golden.jsonl``: real sessions (or the embedded synthetic log's, said so), one JSON object
  a line: the canonical events, the encoded features, the whole-session model output, the
  calibrated probability and the live probability after each event, every float32 written
  with the digits that give back its exact bits.

Where the numbers come from: the FeatureSpec of the artifact (features, mean, scale,
utc_offset_hours, max_len, max_dt_seconds), edge_runtime.events (event codes, value
rules), edge_runtime.features (CONTEXT_FIELDS, MAX_REMEMBERED_IDS), the artifact's
metadata (threshold, calibration, precision, graph) and its interpreter (signatures). The
formulas exist only as code (FeatureEncoder._transform, step_features); their
descriptions live here, next to each other in FEATURE_FORMULAS, one entry per feature of
edge_runtime.features.FEATURE_LAYOUT. tests/test_export_spec.py rebuilds the features from
the written spec alone, in a process without edge_runtime, and fails when an entry is
missing or its expression computes something else than the encoder.

Seams: `export_spec` (the command's one call), `feature_contract` (the features part of
the spec, for any FeatureSpec), `model_contract`, `calibration_contract`,
`golden_records`, `mixed_lengths`, FEATURE_FORMULAS, STATE, EXPRESSION_VOCABULARY.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from edge_runtime.artifact import STEP_METADATA_NAME, ArtifactInfo, read_artifact
from edge_runtime.backends import make_interpreter
from edge_runtime.calibration import PROBABILITY_CLIP, PlattCalibration
from edge_runtime.errors import ConfigError, DataError
from edge_runtime.events import (
    CART,
    EVENT_CODE,
    MAX_TS,
    MIN_PRICE,
    MIN_TS,
    REQUIRED_EVENT_FIELDS,
)
from edge_runtime.features import CONTEXT_FEATURES, CONTEXT_FIELDS, MAX_REMEMBERED_IDS, FeatureSpec
from edge_runtime.scorer import Scorer
from edge_runtime.target_stats import TABLE_FIELDS
from edge_runtime.tflite_reader import read_metadata
from edge_runtime.tiers import DEFAULT_HYSTERESIS
from edge_runtime.whole_graph import CHUNK_KEY, chunk_plan
from trainer.files import atomic_open, write_json_atomic
from trainer.logsource import EventLogSource

# `ubp-edge --help` imports this module (for DEFAULT_SESSIONS): the modules that load pyarrow
# are imported where they are used.
if TYPE_CHECKING:
    from trainer.readers import EventLog
    from trainer.sessions import Sessions

SPEC_FORMAT = "ubp-edge-native-spec"
SPEC_FORMAT_VERSION = 1
SPEC_FILE = "spec.json"
GOLDEN_FILE = "golden.jsonl"
DEFAULT_SESSIONS = 50
# What golden.jsonl promises: every number within this of what the runtime computes.
GOLDEN_TOLERANCE = 1e-6

# ----------------------------------------------------------------------------- the language
# The expressions of the spec are Python 3 expressions (readable as C-like pseudo-code), over
# the variables the spec lists and this vocabulary; evaluated in IEEE-754 double precision.
EXPRESSION_VOCABULARY: dict[str, str] = {
    "log1p(x)": "ln(1 + x), accurate near 0 (Math.log1p on the JVM, log1p in C, C++ and Swift)",
    "log(x)": "the natural logarithm",
    "exp(x)": "e to the power x",
    "sin(x), cos(x)": "of an angle in radians",
    "isfinite(x)": "x is neither infinite nor NaN",
    "min(a, b), max(a, b)": "the smaller, the larger of two numbers",
    "pi": "3.141592653589793",
    "a % b": "remainder with the sign of b (floor modulo); the operands here are never negative, "
             "so C's fmod and Kotlin's or Swift's % (truncated) give the same",
    "a if c else b": "c ? a : b",
    "x is None, x is not None": "x is null, x is not null",
    "x in S": "the set S holds x",
    "S | {x}": "the set S with x added",
    "len(S)": "the number of elements of the set S",
    "set()": "the empty set",
    "round_half_even(x)": "the nearest integer, a tie to the even one (2.5 -> 2, 3.5 -> 4)",
    "lookup(field, id)": "the pair [rate, log_sessions] target_tables[field] holds for the id "
                         "(text, or null): see target_tables.lookup",
}

# How a native client reads the target tables (edge_runtime.target_stats.TargetTable).
TARGET_LOOKUP = (
    "h = BLAKE2b(key = the table's key (16 bytes), digest_size = 4) of the 8 bytes "
    "BLAKE2b(digest_size = 8) of the id's UTF-8 text (no key), read as a big-endian unsigned "
    "32-bit integer; the pair is entries[str(h)] when the table has that entry, else the "
    "table's fallback; a null id (an event without a category) reads the fallback")


class StateVariable(NamedTuple):
    """One quantity a session keeps between its events.

    Attributes:
        initial: its value before the session's first event (an expression).
        update: its value after an event, from the values before it (an expression over
            the event's fields and the state before the event).
        meaning: what it is, in words.
    """

    initial: str
    update: str
    meaning: str


# The running state of a session, as FeatureEncoder.step_event keeps it (EncoderState):
# every feature of an event reads the state as it was before the event; then every variable
# is updated at once from those same values.
STATE: dict[str, StateVariable] = {
    "n": StateVariable("0", "n + 1", "events of the session before this one"),
    "first_ts": StateVariable("0.0", "ts if n == 0 else first_ts",
                              "ts of the session's first event (not read while n == 0)"),
    "last_ts": StateVariable("0.0", "ts", "ts of the session's previous event (not read while n == 0)"),
    "carts": StateVariable("0", f"carts + (1 if code == {CART} else 0)",
                           "cart events of the session before this one"),
    "items_seen": StateVariable(
        "set()", "items_seen | {item} if len(items_seen) < max_remembered_ids else items_seen",
        "the distinct item ids (as text) seen earlier in the session: the first "
        "max_remembered_ids of them; an id first seen after that is never remembered"),
    "categories_seen": StateVariable(
        "set()", "categories_seen | {category} if category is not None and "
                 "len(categories_seen) < max_remembered_ids else categories_seen",
        "the distinct category ids (as text) seen earlier in the session, as items_seen; "
        "an event without a category adds nothing"),
}


class Formula(NamedTuple):
    """One feature's raw (unnormalised) value.

    Attributes:
        words: the formula in words.
        raw: the same as an expression (EXPRESSION_VOCABULARY) over the event's fields, the
            state before the event (STATE), the session's context and the spec's constants.
    """

    words: str
    raw: str


# The meaning of each context field (trainer.sessions.user_history computes them from a log;
# an app keeps them per user).
CONTEXT_MEANINGS: dict[str, str] = {
    "prior_sessions": "sessions the same user started before this session",
    "prior_purchases": "purchases of the same user before this session started",
    "open_cart_items": "items the same user carted and had not bought when this session started",
}

# The time-of-day angle, as FeatureEncoder._transform and step_features compute it.
_ANGLE = "((ts + utc_offset_hours * 3600.0) % 86400.0) * (2.0 * pi / 86400.0)"

# Every feature of edge_runtime.features.FEATURE_LAYOUT: what FeatureEncoder._transform (the
# batch path) and FeatureEncoder.step_features (the one-event path) compute, in words and as
# an expression. A feature added there without an entry here fails tests/test_export_spec.py,
# and so does an entry whose expression computes anything else.
FEATURE_FORMULAS: dict[str, Formula] = {
    **{f"is_{name}": Formula(f"1 when the event's type is {name!r} (code {code}), else 0",
                             f"1.0 if code == {code} else 0.0")
       for name, code in EVENT_CODE.items()},
    "log_dt_prev": Formula(
        "log1p of the seconds since the session's previous event (0 for its first event; a "
        "negative gap counts as 0), capped at max_dt_seconds",
        "log1p(min(max(0.0 if n == 0 else ts - last_ts, 0.0), max_dt_seconds))"),
    "tod_sin": Formula(
        "sine of the time of day on the shop's clock (UTC + utc_offset_hours) as an angle, "
        "a full turn a day", f"sin({_ANGLE})"),
    "tod_cos": Formula("cosine of the same angle", f"cos({_ANGLE})"),
    "log_position": Formula("log1p of the event's index in the session (0 for its first event)",
                            "log1p(n)"),
    "log_elapsed": Formula(
        "log1p of the seconds since the session's first event (0 for the first event; a "
        "negative time counts as 0)", "log1p(0.0 if n == 0 else max(ts - first_ts, 0.0))"),
    "repeat_item": Formula(
        "1 when the event's item id, compared as text, is one of the session's remembered "
        "items (items_seen), else 0", "1.0 if item in items_seen else 0.0"),
    "repeat_category": Formula(
        "1 when the event has a category and it is one of the session's remembered categories "
        "(categories_seen), else 0",
        "1.0 if category is not None and category in categories_seen else 0.0"),
    "log_carts_so_far": Formula(
        "log1p of the session's cart events up to and including this one",
        f"log1p(carts + (1.0 if code == {CART} else 0.0))"),
    "log_price": Formula(
        "log1p of the event's price; 0 when it has none (null or NaN) or it is negative",
        "log1p(price if price is not None and isfinite(price) and price >= 0.0 else 0.0)"),
    **{f"ctx_log_{name}": Formula(
        f"log1p of the session's context value {name} ({CONTEXT_MEANINGS[name]}), a negative "
        f"value counted as 0; the same for every event of the session",
        f"log1p(max({name}, 0.0))") for name in CONTEXT_FIELDS},
    **{f"{field}_rate": Formula(
        f"logit of the purchase rate of the training sessions that touched the event's {field}, "
        f"smoothed towards the training base rate (target_tables.{field}; its fallback for an "
        f"unknown {field}{' or none' if field == 'category' else ''})",
        f"lookup({field!r}, {field})[0]") for field in TABLE_FIELDS},
    **{f"{field}_log_sessions": Formula(
        f"log1p of the training sessions that touched the event's {field} (0 for an unknown one)",
        f"lookup({field!r}, {field})[1]") for field in TABLE_FIELDS},
}


def target_tables_contract(spec: FeatureSpec) -> dict:
    """The spec's target tables as a native client reads them: each entry under its hash."""
    return {"lookup": TARGET_LOOKUP, **{t.field: {
        "key": t.key.hex(), "hash_bytes": t.hashes.itemsize,
        "fallback": [t.fallback_rate, 0.0],
        "entries": {str(h): [r, p] for h, r, p in zip(t.hashes.tolist(), t.rate.astype(np.float64).tolist(),
                                                     t.popularity.astype(np.float64).tolist(), strict=True)},
    } for t in spec.tables}}

NORMALISATION = ("x = float32((raw - mean) / scale): computed in double precision from the "
                 "feature's raw value, mean and scale below, then rounded to the nearest float32")

# The int8 ports of an int8-io artifact, as edge_runtime.whole_graph.TensorPort converts them:
# expressions over a number x (or an int8 q) and the port's scale and zero_point.
QUANTISATION: dict[str, str] = {
    "to_model": "min(max(round_half_even(x / scale) + zero_point, -128), 127)",
    "from_model": "(q - zero_point) * scale",
    "note": "to_model gives the int8 q a port takes for a number x; from_model the number an int8 "
            "q a port gives stands for, computed in float32. round_half_even rounds to the nearest "
            "integer, a tie to the even one (2.5 -> 2, 3.5 -> 4), as numpy's round",
}

# edge_runtime.calibration.PlattCalibration.apply, written out.
PLATT_EXPRESSION = ("1.0 / (1.0 + exp(-(a * log(min(max(p, probability_clip), 1.0 - probability_clip) "
                    "/ min(max(1.0 - p, probability_clip), 1.0)) + b)))")


# ----------------------------------------------------------------------------- features
def feature_contract(spec: FeatureSpec) -> dict:
    """The spec's sections on events, state, context and features, for one FeatureSpec.

    Everything a native encoder needs: the canonical event fields and their rules, the
    event codes, the running state, the context, the constants, and each selected feature
    in input order with its expression, mean and scale.

    Args:
        spec: the artifact's FeatureSpec.

    Returns:
        A dict of JSON values (keys ``expressions``, ``events``, ``context``, ``state``,
        ``constants``, ``features``, ``normalisation``, ``max_len``).

    Raises:
        ConfigError: a feature of the spec has no entry in FEATURE_FORMULAS.
    """
    missing = [f for f in spec.features if f not in FEATURE_FORMULAS]
    if missing:
        raise ConfigError(f"features {missing} have no formula in converters.export_spec.FEATURE_FORMULAS")
    return {
        "expressions": {
            "syntax": "Python 3 expressions, evaluated in IEEE-754 double precision, over the "
                      "variables below (the event's fields, the session's state before the "
                      "event, its context, the constants)",
            "vocabulary": EXPRESSION_VOCABULARY,
        },
        "events": {
            "fields": {
                "ts": f"Unix seconds (UTC), a number within {MIN_TS:.0f}..{MAX_TS:.0f} "
                      f"(2000-01-01..2100-01-01); milliseconds are refused",
                "event": "the event's type: a name of event_codes, or its integer code; in the "
                         "expressions, code is the integer",
                "item": "the item id: text without the whitespace at either end, or a number "
                        "read as its text (Python's str: 1 -> \"1\", 1.5 -> \"1.5\"; a float "
                        "with no fraction below 1e15 as its integer: 12.0 -> \"12\"); not empty "
                        "or blank",
                "category": "the category id, as item; optional: absent, null, empty or blank "
                            "mean no category (null in the expressions)",
                "price": f"optional: a number >= {MIN_PRICE:g}; absent, null or NaN mean no price "
                         f"(null in the expressions)",
            },
            "required": list(REQUIRED_EVENT_FIELDS),
            "event_codes": dict(EVENT_CODE),
            "ids": "item and category ids are compared as text: the number 1 and the text \"1\" "
                   "are one item; ubp-edge remembers each as an 8-byte BLAKE2b digest of its "
                   "UTF-8 text (two ids share one with probability about 2**-64), a native client "
                   "may keep the text",
            "order": "a session's events in time order, as they happened; every event is read "
                     "(none is dropped past max_len)",
        },
        "context": {
            "fields": {name: CONTEXT_MEANINGS[name] for name in CONTEXT_FIELDS},
            "used": spec.uses_context,
            "default": "0 for a field the app does not know, and for every field of a session "
                       "without context",
            "note": ("the model reads the context features below: give each session its user's "
                     "history at the session's start" if spec.uses_context else
                     "this model reads no context feature; the fields are listed for completeness"),
        },
        "state": {name: v._asdict() for name, v in STATE.items()},
        "state_order": "for each event: compute every feature from the event and the state as it "
                       "was before the event, then update every state variable from those same "
                       "values",
        "constants": {
            "max_dt_seconds": spec.max_dt_seconds,
            "utc_offset_hours": spec.utc_offset_hours,
            "max_remembered_ids": MAX_REMEMBERED_IDS,
        },
        "features": [
            {"index": i, "name": name, "description": FEATURE_FORMULAS[name].words,
             "raw": FEATURE_FORMULAS[name].raw, "mean": mean, "scale": scale,
             **({"context_field": CONTEXT_FIELDS[CONTEXT_FEATURES.index(name)]}
                if name in CONTEXT_FEATURES else {})}
            for i, (name, mean, scale) in enumerate(zip(spec.features, spec.mean, spec.scale, strict=True))
        ],
        **({"target_tables": target_tables_contract(spec)} if spec.tables else {}),
        "normalisation": NORMALISATION,
        "max_len": {
            "value": spec.max_len,
            "meaning": "the training window: the model was trained on each session prefix's last "
                       "max_len events. Scoring reads every event of a session, however long, "
                       "whole and live alike: do not cut sessions at max_len",
        },
    }


def calibration_contract(calibration: Mapping | None) -> dict | None:
    """The artifact's Platt recalibration as the spec describes it, or None without one.

    Args:
        calibration: ArtifactInfo.calibration (``{"method": "platt", "a": .., "b": ..}``).

    Returns:
        ``{"method", "a", "b", "probability_clip", "expression", "note"}`` or None.
    """
    if calibration is None:
        return None
    platt = PlattCalibration.from_dict(calibration)
    return {"method": "platt", "a": platt.a, "b": platt.b, "probability_clip": PROBABILITY_CLIP,
            "expression": PLATT_EXPRESSION,
            "note": "p is the model's output (model_output); the result is the probability the "
                    "threshold applies to. ubp-edge computes it in float32; double precision "
                    f"agrees within {GOLDEN_TOLERANCE:g}"}


# ----------------------------------------------------------------------------- the model
def _port(details: Mapping) -> dict:
    """One tensor of a signature: its name in the graph, shape (-1: any size), dtype and the
    quantisation of an int8 port."""
    dtype = np.dtype(details["dtype"])
    port = {"tensor": str(details["name"]),
            "shape": [int(v) for v in details.get("shape_signature", details["shape"])],
            "dtype": dtype.name}
    if dtype == np.int8:
        scale, zero_point = details["quantization"]
        port["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
    return port


def _signature_order(key: str) -> tuple:
    match = CHUNK_KEY.fullmatch(key)
    return (1, int(match.group(1)), key) if match else (0, 0, key)


def describe_signatures(model: bytes, backend: str = "auto") -> dict[str, dict]:
    """The signatures of a .tflite as its interpreter lists them, chunks in step order.

    Args:
        model: the model's bytes.
        backend: the interpreter to read them with (edge_runtime.backends).

    Returns:
        ``{key: {"inputs": {name: port}, "outputs": {name: port}}}``; a port is ``{"tensor",
        "shape", "dtype"}`` and, for int8, ``"quantization": {"scale", "zero_point"}``.

    Raises:
        ArtifactError: the interpreter refuses the model.
        ConfigError: the backend is unknown or not installed.
    """
    interpreter, _ = make_interpreter(model, backend)
    described = {}
    for key in sorted(interpreter.get_signature_list(), key=_signature_order):
        runner = interpreter.get_signature_runner(key)
        described[key] = {
            "inputs": {name: _port(d) for name, d in sorted(runner.get_input_details().items())},
            "outputs": {name: _port(d) for name, d in sorted(runner.get_output_details().items())},
        }
    if not described:  # a model without signatures: its positional inputs and outputs
        described[""] = {"inputs": {d["name"]: _port(d) for d in interpreter.get_input_details()},
                         "outputs": {d["name"]: _port(d) for d in interpreter.get_output_details()}}
    return described


def _find(models: Mapping[str, Mapping[str, dict]], inputs: set[str]) -> tuple[str, str] | None:
    """(model, signature key) of the first signature whose inputs are ``inputs``."""
    for where, signatures in models.items():
        for key, sig in signatures.items():
            if set(sig["inputs"]) == inputs:
                return where, key
    return None


ARTIFACT_MODEL = "artifact"


def model_contract(model: bytes, info: ArtifactInfo, backend: str = "auto") -> dict:
    """The spec's ``model`` section: precision, graph kind, every signature (read from the
    interpreter, so the spec follows whatever layout the artifact has) and how to call the
    whole-session graph and the live one-event graph.

    Args:
        model: the artifact's bytes.
        info: its ArtifactInfo.
        backend: the interpreter that reads the signatures.

    Returns:
        A dict of JSON values.

    Raises:
        ArtifactError: the interpreter refuses the model or its step graph.
    """
    models = {ARTIFACT_MODEL: describe_signatures(model, backend)}
    step_bytes = read_metadata(model).get(STEP_METADATA_NAME)
    step_where = f"metadata entry {STEP_METADATA_NAME}"
    if step_bytes is not None:
        models[step_where] = describe_signatures(bytes(step_bytes), backend)
    n_features = info.spec.n_features
    whole: dict
    if info.graph == "unrolled":
        chunks = {int(CHUNK_KEY.fullmatch(k).group(1)): k for k in models[ARTIFACT_MODEL]
                  if CHUNK_KEY.fullmatch(k)}
        examples = sorted({1, 5, 23, info.spec.max_len, 2 * info.spec.max_len + 7})
        whole = {
            "kind": "unrolled",
            "signatures": [chunks[t] for t in sorted(chunks)],
            "call": [
                "A session of L events runs through chunks of T events: signature chunk_T takes "
                f"events [B, T, {n_features}], h [B, units] and c [B, units] and returns "
                "probability [B, 1], h and c (B sessions at once; 1 for one session).",
                "The chunks cover the session in order, longest first: while events remain, "
                "take the longest chunk whose T is at most the events left (plan below).",
                "h and c start as zeros; each chunk's outputs h and c are the next chunk's "
                "inputs; the last chunk's probability is the session's model_output.",
            ],
            "chunk_plan_examples": {str(n): chunk_plan(n, list(chunks)) for n in examples},
        }
    else:
        found = _find({ARTIFACT_MODEL: models[ARTIFACT_MODEL]}, {"events"})
        key = found[1] if found else next(iter(models[ARTIFACT_MODEL]))
        whole = {
            "kind": "fused",
            "signature": key or None,
            "call": [
                f"One invoke per session over events [1, L, {n_features}], L the session's "
                "events so far (every one of them): resize the input to that shape and "
                "allocate tensors.",
                "Before each session's invoke, reset the interpreter's variable tensors: the "
                "fused LSTM op keeps its state in them between invokes (resetVariableTensors() "
                "in the Java/Kotlin API, ResetVariableTensors() in C++; or a fresh interpreter "
                "per session).",
                "Invoke and read probability [1, 1]: the session's model_output.",
            ],
        }
    whole["output"] = ("model_output: the probability before calibration; apply the calibration "
                       "(when the artifact has one) to get the probability the threshold applies to")
    if any("quantization" in port for sig in models[ARTIFACT_MODEL].values()
           for port in (*sig["inputs"].values(), *sig["outputs"].values())):
        whole["call"].append(
            "Its int8 ports take and give quantised numbers, each with its own scale and zero "
            "point (quantisation): quantise the features; dequantise the probability"
            + ("; h and c pass between chunks as numbers, dequantised from one chunk's outputs "
               "and quantised for the next chunk's inputs" if info.graph == "unrolled" else "") + ".")
    live_found = _find(models, {"event", "h", "c"})
    live = None
    if live_found is not None:
        where, key = live_found
        live = {
            "model": where,
            "signature": key or None,
            "call": [
                f"For each event of a session: event [1, {n_features}] (the event's features), "
                "h and c [1, units] (zeros for the session's first event, else the h and c the "
                "previous event returned); invoke; read probability [1, 1], h and c.",
                "The probability, calibrated, is the session's live probability after that "
                "event (trajectory in golden.jsonl). It agrees with the whole-session "
                "probability within the precision's parity tolerance, not bit for bit: the step "
                "graph's precision is step_precision.",
            ],
        }
        if where != ARTIFACT_MODEL:
            live["call"].insert(0, f"The step graph is a complete .tflite stored in the artifact's "
                                   f"TFLite metadata: the buffer of the Model.metadata entry named "
                                   f"{STEP_METADATA_NAME!r}; open those bytes as a second model.")
    units = sorted({sig["inputs"]["h"]["shape"][-1] for signatures in models.values()
                    for sig in signatures.values() if "h" in sig["inputs"]})
    return {
        "precision": info.precision,
        "step_precision": info.provenance.get("step_precision"),
        "graph": info.graph,
        "units": units[0] if len(units) == 1 else units,  # the LSTM's: h and c are [batch, units]
        "models": models,
        "whole_session": whole,
        "live": live,
        "quantisation": QUANTISATION,
    }


# ----------------------------------------------------------------------------- golden sessions
@dataclass(frozen=True)
class GoldenSession:
    """One session of golden.jsonl before it is scored.

    Attributes:
        key: the session's key in its log (trainer.sessions: the log's session id, else
            ``user@start``).
        events: its canonical events before its first purchase, as dicts.
        context: its user's history at its start (CONTEXT_FIELDS), or None when the model
            reads none.
    """

    key: str
    events: list[dict]
    context: dict | None


def mixed_lengths(lengths: np.ndarray, count: int) -> np.ndarray:
    """Positions of ``count`` sessions of a mix of lengths: half spread evenly over the
    sessions ranked by length (the common short ones, the median), half spread evenly over
    the distinct lengths (so the longest, and lengths past max_len, are among them), each
    length's first session; topped up from the rank order when they overlap.

    Args:
        lengths: each session's events, in the log's session order.
        count: how many to pick.

    Returns:
        The positions, ordered by length then position; all of them when ``count`` is at
        least ``len(lengths)``.
    """
    n = len(lengths)
    if count >= n:
        chosen = np.arange(n)
    else:
        by_length = np.argsort(lengths, kind="stable")
        typical = by_length[np.round(np.linspace(0, n - 1, (count + 1) // 2)).astype(np.int64)]
        distinct, first = np.unique(lengths, return_index=True)
        spread = first[np.round(np.linspace(0, len(distinct) - 1, count // 2)).astype(np.int64)]
        chosen = np.unique(np.r_[typical, spread])
        if len(chosen) < count:
            rest = by_length[~np.isin(by_length, chosen)]
            more = rest[np.round(np.linspace(0, len(rest) - 1, count - len(chosen))).astype(np.int64)]
            chosen = np.r_[chosen, more]
    return chosen[np.lexsort((chosen, lengths[chosen]))]


def golden_sessions(sessions: Sessions, index: np.ndarray, count: int, uses_context: bool
                    ) -> list[GoldenSession]:
    """Pick ``count`` of the scorable sessions ``index`` (`mixed_lengths`) as canonical events.

    Args:
        sessions: the log's sessions.
        index: the scorable sessions to pick from.
        count: how many.
        uses_context: the model reads context: each session carries its user's history.

    Returns:
        The sessions, shortest first.
    """
    log = sessions.log
    picked = index[mixed_lengths(sessions.prefix_len[index], count)]
    out = []
    for s in picked.tolist():
        events = log.event_dicts(sessions.prefix_events(s))
        context = (dict(zip(CONTEXT_FIELDS, map(float, sessions.context[s]), strict=True))
                   if uses_context else None)
        out.append(GoldenSession(str(sessions.key[s]), events, context))
    return out


def float32_values(values) -> list:
    """float32 numbers as JSON-ready floats with the fewest digits that give back the same
    float32 (``0.15193234``, not ``0.15193234384059906``); nested lists keep their shape."""
    array = np.asarray(values, np.float32)
    if array.ndim == 0:
        return float(str(array[()]))
    return [float32_values(v) for v in array]


def golden_records(scorer: Scorer, chosen: Sequence[GoldenSession]) -> list[dict]:
    """Score each session every way the runtime does: golden.jsonl's objects.

    Args:
        scorer: the loaded artifact.
        chosen: the sessions (`golden_sessions`).

    Returns:
        One dict a session: ``session``, ``length``, ``context`` (when the model reads it),
        ``events``, ``features`` [L, F], ``model_output`` (`Scorer.score_encoded` uncalibrated),
        ``probability`` (calibrated), ``trajectory`` (the live probability after each event).

    Raises:
        ArtifactError: the artifact fails to run, or has no step graph.
    """
    features = [scorer.encode_session(g.events, g.context) for g in chosen]
    output = scorer.score_encoded(features, calibrated=False)
    probability = output if scorer.calibration is None else scorer.calibration.apply(output)
    records = []
    for g, x, p_raw, p in zip(chosen, features, output, probability, strict=True):
        live = scorer.start_session(g.context)
        trajectory = [live.push(e) for e in g.events]
        record = {"session": g.key, "length": len(g.events)}
        if g.context is not None:
            record["context"] = g.context
        record.update(events=g.events, features=float32_values(x), model_output=float32_values(p_raw),
                      probability=float32_values(p), trajectory=float32_values(trajectory))
        records.append(record)
    return records


# ----------------------------------------------------------------------------- the export
@dataclass
class ExportResult:
    """What `export_spec` wrote.

    Attributes:
        spec_path, golden_path: the two files.
        sessions: golden sessions written.
        events: their events, all together.
        n_features: the model's features per event.
        max_len: the spec's training window.
        longest: the longest golden session's events.
        source: where the sessions came from, in words.
        synthetic: they came from the embedded synthetic log.
        warnings: what the log lacks that the model reads (one sentence each).
        live_vs_whole: max |last live probability - whole-session probability| over the sessions.
    """

    spec_path: Path
    golden_path: Path
    sessions: int
    events: int
    n_features: int
    max_len: int
    longest: int
    source: str
    synthetic: bool
    warnings: list[str] = field(default_factory=list)
    live_vs_whole: float = 0.0


def check_session_count(sessions: object) -> int:
    """``--sessions`` as an int >= 1; ConfigError naming the value otherwise."""
    if isinstance(sessions, bool) or not isinstance(sessions, int | np.integer) or sessions < 1:
        raise ConfigError(f"--sessions must be a whole number >= 1, got {sessions!r}")
    return int(sessions)


def export_spec(artifact: str | Path, out_dir: str | Path, data: EventLogSource | EventLog,
                sessions: int = DEFAULT_SESSIONS, backend: str = "auto",
                data_label: str | None = None, gap_minutes: float | None = None) -> ExportResult:
    """Write ``out_dir/spec.json`` and ``out_dir/golden.jsonl`` for an artifact, atomically.

    Args:
        artifact: a ``.tflite`` written by ``ubp-edge convert``.
        out_dir: the folder for the two files (created if missing; files replaced).
        data: the log to take sessions from: an EventLogSource (read here, sessionized with
            its gap, else the artifact's, as `score` does), or an EventLog already in memory
            (the embedded synthetic log; sessionized with the artifact's gap).
        sessions: how many sessions golden.jsonl holds (fewer when the log has fewer).
        backend: the interpreter (edge_runtime.backends).
        data_label: how the spec names an in-memory log (e.g. the synthetic generator's
            settings); an EventLogSource is named by its path and format.
        gap_minutes: the session gap for an in-memory log; None: the artifact's (an
            EventLogSource carries its own).

    Returns:
        ExportResult.

    Raises:
        ConfigError: ``sessions`` < 1; the backend is unknown or not installed.
        ArtifactError: the artifact is missing, not ours or does not run.
        DataError: the log cannot be read, or has no session with an event before its first
            purchase.
        OutputError: a file cannot be written.

    Example:
        >>> from trainer.logsource import EventLogSource
        >>> r = export_spec("runs/taobao/model-dynamic.tflite", "golden",
        ...                 EventLogSource("UserBehavior_sample.csv", format="taobao"))
        >>> r.sessions, r.n_features
        (50, 15)
    """
    from trainer.scoring import model_session_gap, scorable_sessions
    from trainer.sessions import sessionize

    count = check_session_count(sessions)
    if gap_minutes is not None and not gap_minutes > 0:
        raise ConfigError(f"--gap-minutes must be a positive number of minutes, got {gap_minutes}")
    artifact, out_dir = Path(artifact), Path(out_dir)
    model, info = read_artifact(artifact)
    scorer = Scorer.from_bytes(model, backend, source=str(artifact), info=info)
    if isinstance(data, EventLogSource):
        found = scorable_sessions(data, scorer)
        all_sessions, index, warnings = found.sessions, found.index, list(found.warnings)
        gap = data.session_gap(model_session_gap(scorer))
        source = data_label or f"{data.path} (format {found.log.format})"
    else:
        gap = model_session_gap(scorer) if gap_minutes is None else float(gap_minutes)
        all_sessions, warnings = sessionize(data, gap), []
        index = np.flatnonzero(all_sessions.scorable)
        source = data_label or str(data.source)
    if len(index) == 0:
        raise DataError(f"{source}: no session has an event before its first purchase; nothing to export")
    chosen = golden_sessions(all_sessions, index, count, info.spec.uses_context)
    records = golden_records(scorer, chosen)
    live_vs_whole = float32_values(max(abs(r["trajectory"][-1] - r["probability"]) for r in records))
    golden_path, spec_path = out_dir / GOLDEN_FILE, out_dir / SPEC_FILE
    with atomic_open(golden_path) as f:
        for record in records:
            f.write(json.dumps(record, allow_nan=False) + "\n")
    lengths = [r["length"] for r in records]
    document = {
        "format": SPEC_FORMAT,
        "version": SPEC_FORMAT_VERSION,
        "about": "How to run this ubp-edge artifact from a native LiteRT client: turn a session's "
                 "events into the model's features, call the model, calibrate and decide. "
                 f"{GOLDEN_FILE} beside this file holds sessions with every number the reference "
                 f"runtime computes for them, to test an implementation against (to {GOLDEN_TOLERANCE:g}).",
        "artifact": {"file": artifact.name, "bytes": len(model),
                     "sha256": hashlib.sha256(model).hexdigest(),
                     "spec_version": info.spec.version, "provenance": info.provenance},
        **feature_contract(info.spec),
        "decision": {"threshold": info.threshold,
                     "rule": "a session is called a purchase when its probability (after the "
                             "calibration, if any) is at or above the threshold"},
        "calibration": calibration_contract(info.calibration),
        "intent": {
            "empty_session_probability": info.empty_session_probability,
            "tiers": info.tiers,
            "rule": "a session's score before its first event is empty_session_probability; its "
                    "tier is the number of cut-offs at or below its score (0: the first name); a "
                    "live trigger for a tier fires when the score first reaches the tier's low "
                    "cut-off, and re-arms once the score falls below it by the hysteresis "
                    f"fraction of it (ubp-edge serve --hysteresis, default {DEFAULT_HYSTERESIS:g}); "
                    "the cut-offs were chosen on whole-session scores, and live scores of a "
                    "full-integer artifact (its step graph runs at dynamic range) can differ from "
                    "them by a few thousandths",
        },
        "model": model_contract(model, info, backend),
        "sessions": {
            "gap_minutes": gap,
            "rule": "the sessions below are one user's events with no gap longer than gap_minutes "
                    "(or the log's own session ids), cut before the session's first purchase: "
                    "what the model was trained to score",
        },
        "golden": {
            "file": GOLDEN_FILE, "sessions": len(records), "events": int(sum(lengths)),
            "shortest": min(lengths), "longest": max(lengths), "source": source,
            "synthetic": not isinstance(data, EventLogSource),
            "selection": "half spread over the sessions ranked by length, half over the distinct "
                         "lengths (the longest among them); shortest first",
            "tolerance": GOLDEN_TOLERANCE,
            "fields": {
                "session": "the session's key in the log",
                "length": "its events",
                "context": "its user's history at its start (only when the model reads context)",
                "events": "its canonical events, in order",
                "features": "the encoded features [length, features], float32",
                "model_output": "the whole-session graph's output for them, before calibration",
                "probability": "model_output after the calibration (equal to it without one)",
                "trajectory": "the live probability (step graph, calibrated) after each event",
            },
            "live_vs_whole_max_abs_diff": live_vs_whole,
            "warnings": warnings,
        },
    }
    write_json_atomic(spec_path, document)
    return ExportResult(spec_path, golden_path, len(records), int(sum(lengths)), info.spec.n_features,
                        info.spec.max_len, max(lengths), source, not isinstance(data, EventLogSource),
                        warnings, float(live_vs_whole))

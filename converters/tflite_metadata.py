"""The standard TFLite metadata of an artifact: what Netron and Android Studio's model viewer
show about a `.tflite` file (conversion time only).

Beside ubp-edge's own entries (``ubp_edge``: the FeatureSpec, threshold, calibration and
provenance as JSON; ``ubp_edge_sha256``: the digest), an artifact carries the TFLite metadata
schema's ``ModelMetadata`` under the Model.metadata name ``TFLITE_METADATA``: the model's
name, description (what it predicts, its precision and graph, where it was trained),
version, author, licence, and for every subgraph the name and meaning of each input and
output tensor. The table layout follows tflite-support's
tensorflow_lite_support/metadata/metadata_schema.fbs (schema 1.5.0, file identifier
"M001"; github.com/tensorflow/tflite-support, commit dd3362ea685b), written here with the
``flatbuffers`` Builder: the tflite-support wheel, which ships generated classes, pins
protobuf<4 and cannot be installed beside TensorFlow 2.21.

SubGraphMetadata is positional: the i-th describes subgraph i, and its tensor lists follow
that subgraph's ``inputs`` and ``outputs`` (not its SignatureDef's order, which is sorted by
name). Every subgraph gets one, in order, read from the model itself: its signature key names
it and the signature's tensor names pick the descriptions (`events`, `event`, `h`, `c`,
`probability`), so a model of signatures ``score`` and ``step``, or ``chunk_1`` ...
``chunk_16`` and ``step``, is described as it is. Netron reads it the same way (subgraph i,
tensor j); Android Studio and tflite-support's MetadataExtractor read subgraph 0 and check
its tensor counts. (tflite-support's own MetadataPopulator refuses to write more than one
SubGraphMetadata, a limit of that writer, not of the schema.)

Every field written is of schema 1.0.0 (the .fbs history lists nothing later among them),
so ``min_parser_version`` is "1.0.0", as tflite-support's metadata_version.cc would compute.

Seams: `add_standard_metadata(model, info)` (before `converters.metadata_writer.seal`,
which then covers the new entry with the digest), `standard_metadata(model, info)` (the
ModelMetadata as a dict in the .fbs field names, the JSON form tflite-support's
MetadataDisplayer prints), `read_standard_metadata(model)`, `check_standard_metadata(model)`,
`graph_signatures(model)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from converters.metadata_writer import add_metadata, flatbuffer_text, read_model, tflite_schema
from edge_runtime.artifact import DIGEST_METADATA_NAME, METADATA_NAME, ArtifactInfo
from edge_runtime.errors import ArtifactError
from edge_runtime.tflite_reader import read_metadata
from edge_runtime.whole_graph import CHUNK_KEY, chunk_plan

# tflite-support's MetadataPopulator.METADATA_FIELD_NAME and METADATA_FILE_IDENTIFIER.
STANDARD_METADATA_NAME = "TFLITE_METADATA"
METADATA_FILE_IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.0.0"

# The tables of metadata_schema.fbs this module writes or reads, each field in declaration
# order: a field's vtable slot is its position (a union takes two: its type, then its value).
# Kinds: "string", "strings", "table:T", "tables:T", "union_type:U" / "union:U"; "skip" marks
# a field this module neither writes nor reads (kept so the later slots stay right).
SCHEMA: dict[str, tuple[tuple[str, str], ...]] = {
    "ModelMetadata": (("name", "string"), ("description", "string"), ("version", "string"),
                      ("subgraph_metadata", "tables:SubGraphMetadata"), ("author", "string"),
                      ("license", "string"), ("associated_files", "skip"),
                      ("min_parser_version", "string")),
    "SubGraphMetadata": (("name", "string"), ("description", "string"),
                         ("input_tensor_metadata", "tables:TensorMetadata"),
                         ("output_tensor_metadata", "tables:TensorMetadata"),
                         ("associated_files", "skip"), ("input_process_units", "skip"),
                         ("output_process_units", "skip"), ("input_tensor_groups", "skip"),
                         ("output_tensor_groups", "skip"), ("custom_metadata", "skip")),
    "TensorMetadata": (("name", "string"), ("description", "string"),
                       ("dimension_names", "strings"), ("content", "table:Content"),
                       ("process_units", "skip"), ("stats", "skip"), ("associated_files", "skip")),
    "Content": (("content_properties_type", "union_type:ContentProperties"),
                ("content_properties", "union:ContentProperties"), ("range", "skip")),
    "FeatureProperties": (),
}
# union ContentProperties: its members' type codes (0 is NONE).
UNIONS: dict[str, dict[str, int]] = {
    "ContentProperties": {"FeatureProperties": 1, "ImageProperties": 2,
                          "BoundingBoxProperties": 3, "AudioProperties": 4},
}

# The tensors ubp-edge describes, by (direction, signature name), with their dimension names.
TENSOR_DIMENSIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("input", "events"): ("batch", "event", "feature"), ("input", "event"): ("batch", "feature"),
    ("input", "h"): ("batch", "unit"), ("input", "c"): ("batch", "unit"),
    ("output", "h"): ("batch", "unit"), ("output", "c"): ("batch", "unit"),
    ("output", "probability"): ("batch", "probability"),
}

GRAPH_TEXT = {
    "fused": "one fused LSTM op (UNIDIRECTIONAL_SEQUENCE_LSTM) over the whole session",
    "unrolled": "the LSTM written out step by step in plain ops, as chunks of events "
                "(signatures chunk_T) chained with the LSTM state passed in and out",
}


@dataclass(frozen=True)
class Port:
    """One input or output tensor of a subgraph, as the model file declares it.

    Attributes:
        name: the signature's name for it (``events``), else the tensor's own name.
        tensor: the tensor's name in the subgraph (``serving_default_events:0``).
        shape: the shape signature, -1 for a dimension fixed at run time.
        dtype: the TensorType's name, lower case (``float32``, ``int8``).
        quantization: (scale, zero point) of a tensor with one scale, else None.
    """

    name: str
    tensor: str
    shape: tuple[int, ...]
    dtype: str
    quantization: tuple[float, int] | None = None


@dataclass(frozen=True)
class GraphSignature:
    """One subgraph: its position, signature key(s) and ports in the subgraph's own order.

    Attributes:
        index: the subgraph's position in Model.subgraphs.
        keys: the signature keys that run it (none for a control-flow body).
        name: the subgraph's own name.
        inputs, outputs: in the order of SubGraph.inputs / SubGraph.outputs.
    """

    index: int
    keys: tuple[str, ...]
    name: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]

    @property
    def label(self) -> str:
        """The signature key, or the subgraph's name when it has no signature."""
        return self.keys[0] if self.keys else self.name or f"subgraph_{self.index}"


def graph_signatures(model: bytes) -> list[GraphSignature]:
    """Every subgraph of a model, in order, with its signature keys and ports.

    Args:
        model: a `.tflite` file's bytes.

    Returns:
        One GraphSignature per Model.subgraphs entry.

    Raises:
        ArtifactError: not a readable TFLite flatbuffer.
    """
    schema = tflite_schema()
    read_metadata(model)  # the bounds-checked reader refuses damaged bytes by name first
    m = read_model(model)
    type_names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    keys: dict[int, list[str]] = {}
    names: dict[int, dict[int, str]] = {}
    for sig in m.signatureDefs or []:
        keys.setdefault(sig.subgraphIndex, []).append(flatbuffer_text(sig.signatureKey))
        by_tensor = names.setdefault(sig.subgraphIndex, {})
        for t in list(sig.inputs or []) + list(sig.outputs or []):
            by_tensor.setdefault(t.tensorIndex, flatbuffer_text(t.name))

    def port(subgraph, i: int, index: int) -> Port:
        t = subgraph.tensors[index]
        shape = t.shapeSignature if t.shapeSignature is not None and len(t.shapeSignature) else t.shape
        q = t.quantization
        one_scale = q is not None and q.scale is not None and len(q.scale) == 1
        return Port(name=names.get(i, {}).get(index, flatbuffer_text(t.name)), tensor=flatbuffer_text(t.name),
                    shape=tuple(int(d) for d in (shape if shape is not None else ())),
                    dtype=type_names.get(t.type, str(t.type)),
                    quantization=(float(q.scale[0]), int(q.zeroPoint[0])) if one_scale else None)

    def ports(subgraph, i: int, indices) -> tuple[Port, ...]:
        return tuple(port(subgraph, i, j) for j in (indices if indices is not None else []))

    return [GraphSignature(index=i, keys=tuple(keys.get(i, ())), name=flatbuffer_text(sg.name or b""),
                           inputs=ports(sg, i, sg.inputs), outputs=ports(sg, i, sg.outputs))
            for i, sg in enumerate(m.subgraphs or [])]


# --- what the model and its tensors mean -------------------------------------------------

def _graph_kind(g: GraphSignature) -> str:
    """``whole``, ``chunk``, ``step`` or ``other``, from the signature's tensor names."""
    inputs = {p.name for p in g.inputs}
    if not g.keys:
        return "other"
    if inputs == {"events"}:
        return "whole"
    if inputs == {"events", "h", "c"}:
        return "chunk"
    if inputs == {"event", "h", "c"}:
        return "step"
    return "other"


def _dims(p: Port, direction: str) -> tuple[str, ...] | None:
    """Dimension names of a tensor ubp-edge describes, when its rank matches."""
    dims = TENSOR_DIMENSIONS.get((direction, p.name))
    return dims if dims is not None and len(dims) == len(p.shape) else None


def _shape_text(p: Port, dims: tuple[str, ...] | None) -> str:
    """``float32 [1, L, 15]``: -1 dimensions by letter (B batch, L events), else ``?``."""
    letters = {"batch": "B", "event": "L"}
    shown = [str(d) if d >= 0 else letters.get(dims[i], "?") if dims else "?"
             for i, d in enumerate(p.shape)]
    return f"{p.dtype} [{', '.join(shown)}]"


def _quant_text(p: Port, direction: str) -> str:
    if p.quantization is None or p.dtype not in ("int8", "uint8", "int16"):
        return ""
    scale, zero = p.quantization
    q = f"q - {zero}" if zero >= 0 else f"q + {-zero}"
    use = "quantise values into it" if direction == "input" else "dequantise it"
    return f" Stored as {p.dtype}: value = {scale:.9g} * ({q}); {use} with these."


def _features_text(info: ArtifactInfo) -> str:
    spec = info.spec
    clock = ""
    if any(f.startswith("tod_") for f in spec.features):
        clock = f" Time of day is read on the shop's clock, UTC{spec.utc_offset_hours:+g} h."
    return (f"Each of the {spec.n_features} features is normalised as (x - mean) / scale with the "
            f"FeatureSpec of metadata entry '{METADATA_NAME}' (JSON); in order: "
            f"{', '.join(spec.features)}.{clock}")


def _probability_text(info: ArtifactInfo, shape: str) -> str:
    cal = info.calibration
    if cal:
        decision = (f"Calibrate it as sigmoid(a * logit(p) + b) with a = {cal['a']:.9g}, "
                    f"b = {cal['b']:.9g} (Platt scaling, also in '{METADATA_NAME}'); the session is "
                    f"called a purchase when the calibrated probability is at least "
                    f"{info.threshold:.9g}.")
    else:
        decision = (f"The artifact has no calibration: the session is called a purchase when it "
                    f"is at least {info.threshold:.9g}.")
    return (f"Purchase probability after the last event given so far, {shape}, in [0, 1], before "
            f"calibration (the model's sigmoid output). {decision}")


def _tensor_text(p: Port, kind: str, direction: str, info: ArtifactInfo, g: GraphSignature) -> str:
    shape = _shape_text(p, _dims(p, direction))
    key = (direction, p.name)
    if key not in TENSOR_DIMENSIONS or kind == "other":
        role = "Input" if direction == "input" else "Output"
        where = f"signature '{g.keys[0]}'" if g.keys else f"subgraph {g.index}"
        text = f"{role} '{p.name}' of {where}, {shape}: not a tensor ubp-edge describes."
    elif key == ("input", "events"):
        if kind == "chunk":
            text = (f"The next events of a session, encoded, {shape}: one row per event in time "
                    f"order, B sessions at once. {_features_text(info)}")
        else:
            text = (f"A session's encoded events, {shape}: one row per event in time order, any "
                    f"number L >= 1 of them (trained on the last {info.spec.max_len}). "
                    f"{_features_text(info)}")
    elif key == ("input", "event"):
        text = (f"One encoded event, {shape}: the session's next event, encoded as a row of a "
                f"session's events. {_features_text(info)}")
    elif direction == "input":  # h or c
        state = "hidden" if p.name == "h" else "cell"
        text = (f"LSTM {state} state before these events, {shape}: zeros at a session's start, "
                f"else output '{p.name}' of the previous call for the same session.")
    elif p.name in ("h", "c"):
        state = "hidden" if p.name == "h" else "cell"
        text = (f"LSTM {state} state after these events, {shape}: pass it as input '{p.name}' "
                f"with the session's next events.")
    else:
        text = _probability_text(info, shape)
    return text + _quant_text(p, direction)


def _subgraph_text(g: GraphSignature, kind: str, chunks: list[int], max_len: int) -> str:
    if kind == "whole":
        return ("Whole session: the purchase probability after a session's last event, from all "
                "its encoded events in one call.")
    if kind == "chunk":
        steps = next((p.shape[1] for p in g.inputs if p.name == "events" and len(p.shape) == 3), -1)
        plan = chunk_plan(max_len, chunks) if 1 in chunks else []
        chained = (f"; a session is scored whole by chaining chunks from zero state, longest first "
                   f"({max_len} events: {', '.join(map(str, plan))})") if plan else ""
        size = f"{steps} event{'s' if steps != 1 else ''}" if steps > 0 else "T events"
        return (f"Chunk of {size}: advances the LSTM over the next "
                f"events of up to B sessions from their state (h, c) and returns the probability "
                f"after them and the new state{chained}.")
    if kind == "step":
        return ("One event (live scoring): advances the LSTM by one event from the state (h, c) "
                "and returns the probability after it and the new state. Start each session from "
                "zeros and keep its state between events.")
    if g.keys:
        return f"Signature '{g.keys[0]}': not a graph ubp-edge describes."
    return (f"Subgraph {g.index} '{g.name}': no signature, so not an entry point (a control-flow "
            f"body called from another subgraph).")


def _model_text(info: ArtifactInfo, graphs: list[GraphSignature]) -> str:
    """What the model predicts, its precision and graph, where it was trained (provenance)."""
    from converters.precisions import PRECISIONS

    prov = info.provenance
    units = next((p.shape[-1] for g in graphs for p in g.inputs if p.name == "h" and p.shape), 0)
    precision = PRECISIONS[info.precision].description if info.precision in PRECISIONS else ""
    text = [f"Predicts whether an e-commerce browsing session ends in a purchase, from its events "
            f"in time order (view, cart, fav, purchase), with an LSTM"
            f"{f' of {units} units' if units > 0 else ''} and a sigmoid output.",
            f"Precision {info.precision}{f': {precision}' if precision else ''}.",
            f"Graph {info.graph}{f': {GRAPH_TEXT[info.graph]}' if info.graph in GRAPH_TEXT else ''}."]
    how = [f"{prov['training_format']} format" if prov.get("training_format") else "",
           f"sessions split at {prov['session_gap_minutes']:g}-minute gaps"
           if _is_number(prov.get("session_gap_minutes")) else ""]
    how_text = ", ".join(h for h in how if h)
    trained = [f"in run '{prov['run_dir']}'" if prov.get("run_dir") else "",
               f"on {prov['training_data']}" if prov.get("training_data") else "",
               f"({how_text})" if how_text else ""]
    if any(trained):
        text.append("Trained " + " ".join(t for t in trained if t) + ".")
    if _is_number(prov.get("test_roc_auc_keras")):
        text.append(f"Test ROC AUC {prov['test_roc_auc_keras']:.4f} (the float32 Keras model).")
    made = [f"by ubp-edge {prov['ubp_edge']}" if prov.get("ubp_edge") else "",
            f"with TensorFlow {prov['tensorflow']}" if prov.get("tensorflow") else "",
            f"on {prov['created_utc']}" if prov.get("created_utc") else ""]
    if any(made):
        text.append("Converted " + " ".join(m for m in made if m) + ".")
    keys = [g.keys[0] for g in graphs if g.keys]
    if keys:
        text.append(f"Signatures, to call by name: {', '.join(keys)}.")
    text.append(f"Metadata entry '{METADATA_NAME}' (JSON) holds the FeatureSpec, threshold, "
                f"calibration and provenance; '{DIGEST_METADATA_NAME}' a SHA-256 digest of the file.")
    return " ".join(text)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def own_info(model: bytes) -> ArtifactInfo:
    """The ArtifactInfo of a model's ``ubp_edge`` entry, read without checking the digest:
    between `add_metadata` and `seal` the stored digest is stale by design.

    Raises:
        ArtifactError: no ``ubp_edge`` entry, or one that is not a valid description.
    """
    entry = read_metadata(model).get(METADATA_NAME)
    if entry is None:
        raise ArtifactError(f"model has no '{METADATA_NAME}' metadata entry to describe it from; "
                            f"pass the ArtifactInfo")
    try:
        d = json.loads(entry.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(f"'{METADATA_NAME}' metadata is not valid JSON ({e})") from None
    return ArtifactInfo.from_dict(d, "model")


def standard_metadata(model: bytes, info: ArtifactInfo | None = None, *, author: str | None = None,
                      licence: str | None = None) -> dict:
    """The ModelMetadata of an artifact, as a dict in metadata_schema.fbs's field names.

    Args:
        model: the artifact's bytes: its subgraphs, signatures and tensors are read from it.
        info: its self-description; None reads it from the model's ``ubp_edge`` entry.
        author: who made the model; default the provenance's ``author``, else "ubp-edge".
        licence: the terms of use (the schema's ``license``); default a statement that the
            training data's own terms apply.

    Returns:
        ``{"name", "description", "version", "author", "license", "min_parser_version",
        "subgraph_metadata": [...]}``, one subgraph entry per subgraph in order, the JSON form
        tflite-support's MetadataDisplayer prints.

    Raises:
        ArtifactError: the model is not a readable TFLite flatbuffer, or (info None) it has
            no readable ubp-edge metadata.
    """
    if info is None:
        info = own_info(model)
    graphs = graph_signatures(model)
    chunks = sorted(int(m.group(1)) for g in graphs for k in g.keys
                    if (m := CHUNK_KEY.fullmatch(k)) is not None)
    prov = info.provenance
    version = "@".join(str(prov[k]) for k in ("run_dir", "created_utc") if prov.get(k)) or "unversioned"
    data = prov.get("training_data") or "not recorded"
    subgraphs = []
    for g in graphs:
        kind = _graph_kind(g)
        ports = {}
        for direction, items in (("input", g.inputs), ("output", g.outputs)):
            ports[direction] = [_tensor_entry(p, kind, direction, info, g) for p in items]
        subgraphs.append({"name": g.label, "description": _subgraph_text(g, kind, chunks, info.spec.max_len),
                          "input_tensor_metadata": ports["input"],
                          "output_tensor_metadata": ports["output"]})
    return {
        "name": f"ubp-edge purchase intent ({info.precision}, {info.graph})",
        "description": _model_text(info, graphs),
        "version": version,
        "subgraph_metadata": subgraphs,
        "author": author or str(prov.get("author") or "ubp-edge"),
        "license": licence or (f"No licence is stated for this model: it is derived from its "
                               f"training data ({data}), whose own terms apply; check them "
                               f"before use."),
        "min_parser_version": MIN_PARSER_VERSION,
    }


def _tensor_entry(p: Port, kind: str, direction: str, info: ArtifactInfo, g: GraphSignature) -> dict:
    entry = {"name": p.name, "description": _tensor_text(p, kind, direction, info, g)}
    dims = _dims(p, direction) if kind != "other" else None
    if dims:
        entry["dimension_names"] = list(dims)
    # Every tensor here is a feature vector (no image, box or audio): Netron labels it
    # "Feature", and codegen tools pass it as a plain tensor.
    entry["content"] = {"content_properties_type": "FeatureProperties", "content_properties": {}}
    return entry


# --- the flatbuffer ---------------------------------------------------------------------

def pack_standard_metadata(metadata: dict) -> bytes:
    """A ModelMetadata dict (`standard_metadata`'s form) as a flatbuffer with identifier M001.

    Raises:
        ValueError: a field that is not in SCHEMA or that this module does not write.
    """
    import flatbuffers

    builder = flatbuffers.Builder(4096)
    builder.Finish(_pack(builder, "ModelMetadata", metadata), file_identifier=METADATA_FILE_IDENTIFIER)
    return bytes(builder.Output())


def _pack(builder, table: str, value: dict) -> int:
    fields = SCHEMA[table]
    known = {name for name, _ in fields}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{table} has no fields {unknown}; allowed {sorted(known)}")
    # Children first: a FlatBuffers table can only refer to objects already built.
    slots: list[tuple[int, str, object]] = []
    for slot, (name, kind) in enumerate(fields):
        v = value.get(name)
        if v is None:
            continue
        if kind == "skip":
            raise ValueError(f"{table}.{name} is not written by ubp-edge")
        if kind == "string":
            slots.append((slot, "offset", builder.CreateSharedString(str(v))))
        elif kind == "strings":
            slots.append((slot, "offset", _vector(builder, [builder.CreateSharedString(str(s)) for s in v])))
        elif kind.startswith("tables:"):
            slots.append((slot, "offset", _vector(builder, [_pack(builder, kind[7:], t) for t in v])))
        elif kind.startswith("table:"):
            slots.append((slot, "offset", _pack(builder, kind[6:], v)))
        elif kind.startswith("union_type:"):
            members = UNIONS[kind[11:]]
            if v not in members:
                raise ValueError(f"{table}.{name} {v!r} not in {sorted(members)}")
            slots.append((slot, "uint8", members[v]))
        elif kind.startswith("union:"):
            slots.append((slot, "offset", _pack(builder, str(value.get(f"{name}_type")), v)))
    builder.StartObject(len(fields))
    for slot, how, v in slots:
        if how == "uint8":
            builder.PrependUint8Slot(slot, v, 0)
        else:
            builder.PrependUOffsetTRelativeSlot(slot, v, 0)
    return builder.EndObject()


def _vector(builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def unpack_standard_metadata(data: bytes) -> dict:
    """A ModelMetadata flatbuffer as a dict in the .fbs field names (the fields of SCHEMA;
    others are left out).

    Raises:
        ArtifactError: not a ModelMetadata flatbuffer (identifier M001), or a damaged one.
    """
    data = bytes(data)
    if len(data) < 8 or data[4:8] != METADATA_FILE_IDENTIFIER:
        raise ArtifactError(f"{STANDARD_METADATA_NAME}: not TFLite metadata: file identifier is "
                            f"{data[4:8]!r}, expected {METADATA_FILE_IDENTIFIER!r}")
    from flatbuffers import encode, number_types, table

    try:
        root = encode.Get(number_types.UOffsetTFlags.packer_type, data, 0)
        return _unpack(table.Table(data, root), "ModelMetadata")
    except Exception as exc:  # struct.error / IndexError / UnicodeDecodeError on damaged bytes
        raise ArtifactError(f"{STANDARD_METADATA_NAME}: damaged TFLite metadata ({exc!r})") from None


def _unpack(tab, table_name: str) -> dict:
    from flatbuffers import number_types, table

    out: dict = {}
    for slot, (name, kind) in enumerate(SCHEMA[table_name]):
        o = tab.Offset(4 + 2 * slot)
        if not o or kind == "skip":
            continue
        if kind == "string":
            out[name] = tab.String(o + tab.Pos).decode("utf-8")
        elif kind == "strings":
            start = tab.Vector(o)
            out[name] = [tab.String(start + 4 * i).decode("utf-8") for i in range(tab.VectorLen(o))]
        elif kind.startswith("tables:"):
            start = tab.Vector(o)
            out[name] = [_unpack(table.Table(tab.Bytes, tab.Indirect(start + 4 * i)), kind[7:])
                         for i in range(tab.VectorLen(o))]
        elif kind.startswith("union_type:"):
            code = tab.Get(number_types.Uint8Flags, o + tab.Pos)
            members = {v: k for k, v in UNIONS[kind[11:]].items()}
            out[name] = members.get(code, f"unknown({code})")
        elif out.get(f"{name}_type") in SCHEMA or kind.startswith("table:"):
            # A table field, or a union's value: an offset to a table of the member's type.
            child = kind[6:] if kind.startswith("table:") else out[f"{name}_type"]
            out[name] = _unpack(table.Table(tab.Bytes, tab.Indirect(o + tab.Pos)), child)
    return out


def read_standard_metadata(model: bytes) -> dict | None:
    """The ``TFLITE_METADATA`` entry of a model as a dict, or None when it has none.

    Raises:
        ArtifactError: not a TFLite model, or the entry is not readable TFLite metadata.
    """
    entry = read_metadata(model).get(STANDARD_METADATA_NAME)
    return None if entry is None else unpack_standard_metadata(entry)


def check_standard_metadata(model: bytes, source: str = "artifact") -> None:
    """Check that a model's TFLite metadata describes its graph: one SubGraphMetadata per
    subgraph, in order, each naming as many inputs and outputs as the subgraph has, under
    the names its signature gives them.

    Raises:
        ArtifactError: naming the first mismatch.
    """
    meta = read_standard_metadata(model)
    if meta is None:
        raise ArtifactError(f"{source}: no {STANDARD_METADATA_NAME} entry")
    graphs = graph_signatures(model)
    described = meta.get("subgraph_metadata", [])
    if len(described) != len(graphs):
        raise ArtifactError(f"{source}: {STANDARD_METADATA_NAME} describes {len(described)} "
                            f"subgraphs, the model has {len(graphs)}")
    for g, d in zip(graphs, described, strict=True):
        for direction, ports in (("input", g.inputs), ("output", g.outputs)):
            names = [t.get("name") for t in d.get(f"{direction}_tensor_metadata", [])]
            if names != [p.name for p in ports]:
                raise ArtifactError(f"{source}: {STANDARD_METADATA_NAME} subgraph {g.index} "
                                    f"({g.label}) {direction}s are {names}, the model's are "
                                    f"{[p.name for p in ports]}")


def add_standard_metadata(model: bytes, info: ArtifactInfo | None = None, *, author: str | None = None,
                          licence: str | None = None) -> bytes:
    """A copy of ``model`` with its TFLite metadata (``TFLITE_METADATA``) written or replaced.

    Call it after the last change to the graph or to the ``ubp_edge`` entry, and before
    `converters.metadata_writer.seal`, whose digest then covers the new entry like every
    other byte.

    Args:
        model: the artifact's bytes, every subgraph and signature in place.
        info: its self-description; None reads the model's own ``ubp_edge`` entry.
        author, licence: see `standard_metadata`.

    Returns:
        The repacked model (an earlier ``TFLITE_METADATA`` is replaced, not duplicated).

    Raises:
        ArtifactError: not a readable TFLite flatbuffer, or (info None) no ubp-edge metadata.

    Example:
        >>> model = seal(add_standard_metadata(add_metadata(model, {METADATA_NAME: info.to_bytes()})))
    """
    meta = standard_metadata(model, info, author=author, licence=licence)
    return add_metadata(model, {STANDARD_METADATA_NAME: pack_standard_metadata(meta)})


def main(argv: list[str] | None = None) -> None:
    """Print the TFLite metadata of each `.tflite` given, as JSON (a maintainer's check)."""
    import sys
    from pathlib import Path

    for path in (argv if argv is not None else sys.argv[1:]):
        print(json.dumps({"file": path, STANDARD_METADATA_NAME: read_standard_metadata(
            Path(path).read_bytes())}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()

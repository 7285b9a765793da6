"""Name an artifact's graphs as signatures of one flatbuffer: ``score`` for the fused
whole-session graph, ``step`` for the one-event live graph (conversion time only).

The converter writes each graph as its own model (the step graph is converted at the
precision's live precision, dynamic for int8, which one converter call cannot mix with an
int8 whole graph), so `with_step_signature` moves the step model's subgraph, operators and
buffers into the whole-session model and adds a SignatureDef for it: any LiteRT client
(`runSignature(inputs, outputs, "step")` on Android, `get_signature_runner("step")` in
Python, `GetSignatureRunner("step")` in C++) then finds both graphs by name in one file.

Seams: `with_step_signature(model, step)`; `signature_keys(model)`. SCORE_SIGNATURE and
STEP_SIGNATURE are edge_runtime.artifact's.
"""

from __future__ import annotations

import flatbuffers

from converters.metadata_writer import add_metadata, tflite_schema
from edge_runtime.artifact import SCORE_SIGNATURE, STEP_SIGNATURE
from edge_runtime.errors import ArtifactError
from edge_runtime.tflite_reader import FILE_IDENTIFIER

# The converter's name for the only signature of a one-function model.
DEFAULT_SIGNATURE = "serving_default"
MIN_RUNTIME_METADATA = "min_runtime_version"


def _model(data: bytes, what: str):
    schema = tflite_schema()
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise ArtifactError(f"{what} is not a TFLite flatbuffer")
    return schema.ModelT.InitFromPackedBuf(data, 0)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def signature_keys(model: bytes) -> list[str]:
    """The signature keys of a `.tflite` model, in the file's order."""
    return [_text(s.signatureKey) for s in _model(model, "model").signatureDefs or []]


def _runtime_version(m) -> str | None:
    """The ``min_runtime_version`` the converter recorded in model ``m`` (None without one)."""
    for item in m.metadata or []:
        if _text(item.name) == MIN_RUNTIME_METADATA:
            return bytes(m.buffers[item.buffer].data).rstrip(b"\0").decode("ascii")
    return None


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def with_step_signature(model: bytes, step: bytes) -> bytes:
    """``model`` with ``step``'s one subgraph added as signature ``step``, and a fused
    model's one signature renamed ``score``.

    Args:
        model: the whole-session graph: one ``serving_default`` signature (the fused graph,
            ``events -> probability``) or the unrolled graph's ``chunk_T`` signatures.
        step: the one-event graph (one subgraph, one signature ``event, h, c ->
            probability, h, c``), as converters.graphs.step_function converts it.

    Returns:
        The merged model (metadata other than ``min_runtime_version`` as ``model`` has it;
        that entry the higher of the two models' versions, so a runtime that meets it runs
        both graphs).

    Raises:
        ArtifactError: either is not a TFLite flatbuffer, ``step`` has more than one subgraph
            or signature, or ``model`` already has a ``step`` signature.
    """
    schema = tflite_schema()
    whole, one = _model(model, "the whole-session graph"), _model(step, "the step graph")
    if len(one.subgraphs or []) != 1 or len(one.signatureDefs or []) != 1:
        raise ArtifactError(f"the step graph has {len(one.subgraphs or [])} subgraphs and "
                            f"{len(one.signatureDefs or [])} signatures, expected 1 and 1")
    signatures = list(whole.signatureDefs or [])
    keys = [_text(s.signatureKey) for s in signatures]
    if STEP_SIGNATURE in keys:
        raise ArtifactError(f"the whole-session graph already has a {STEP_SIGNATURE!r} signature")
    if keys == [DEFAULT_SIGNATURE]:
        signatures[0].signatureKey = SCORE_SIGNATURE

    # Operator codes: reuse the whole model's entry for the same operator and version.
    codes = list(whole.operatorCodes or [])
    known = {(c.builtinCode, c.deprecatedBuiltinCode, c.customCode, c.version): i
             for i, c in enumerate(codes)}
    code_of = []
    for c in one.operatorCodes or []:
        key = (c.builtinCode, c.deprecatedBuiltinCode, c.customCode, c.version)
        if key not in known:
            known[key] = len(codes)
            codes.append(c)
        code_of.append(known[key])
    # Buffers: the step model's, after the whole model's; buffer 0 is the shared empty one.
    buffers = list(whole.buffers or [schema.BufferT()])
    buffer_of = {0: 0}
    for i, b in enumerate(one.buffers or []):
        if i:
            buffer_of[i] = len(buffers)
            buffers.append(b)
    subgraph = one.subgraphs[0]
    for tensor in subgraph.tensors or []:
        tensor.buffer = buffer_of[tensor.buffer]
    for op in subgraph.operators or []:
        op.opcodeIndex = code_of[op.opcodeIndex]
    subgraphs = list(whole.subgraphs or [])
    subgraphs.append(subgraph)
    signature = one.signatureDefs[0]
    signature.signatureKey, signature.subgraphIndex = STEP_SIGNATURE, len(subgraphs) - 1
    signatures.append(signature)
    whole.operatorCodes, whole.buffers, whole.subgraphs = codes, buffers, subgraphs
    whole.signatureDefs = signatures

    versions = [v for v in (_runtime_version(whole), _runtime_version(one)) if v]
    builder = flatbuffers.Builder(len(model) + len(step) + 1024)
    builder.Finish(whole.Pack(builder), file_identifier=FILE_IDENTIFIER)
    merged = bytes(builder.Output())
    # add_metadata repacks with every buffer 16-byte aligned, as the converter writes them.
    entries = {}
    if versions:
        highest = max(versions, key=_version_key)
        entries[MIN_RUNTIME_METADATA] = highest.encode("ascii").ljust(16, b"\0")
    return add_metadata(merged, entries)

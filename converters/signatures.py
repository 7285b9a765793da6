"""Name an artifact's graphs as signatures of one flatbuffer: ``score`` for the fused
whole-session graph, ``step`` for the one-event live graph (conversion time only).

The converter writes each graph as its own model (the step graph is converted at the
precision's live precision, dynamic for int8, which one converter call cannot mix with an
int8 whole graph), so `with_step_signature` moves the step model's subgraph, operators and
buffers into the whole-session model and adds a SignatureDef for it: any LiteRT client
(`runSignature(inputs, outputs, "step")` on Android, `get_signature_runner("step")` in
Python, `GetSignatureRunner("step")` in C++) then finds both graphs by name in one file.

Seam: `with_step_signature(model, step)`. SCORE_SIGNATURE and STEP_SIGNATURE are
edge_runtime.artifact's; edge_runtime.tflite_reader.signature_keys lists a model's.
"""

from __future__ import annotations

from converters.metadata_writer import add_metadata, flatbuffer_text, pack_model, read_model
from edge_runtime.artifact import SCORE_SIGNATURE, STEP_SIGNATURE
from edge_runtime.errors import ArtifactError
from edge_runtime.tflite_reader import MIN_RUNTIME_METADATA_NAME, min_runtime_version, version_tuple

# The converter's name for the only signature of a one-function model.
DEFAULT_SIGNATURE = "serving_default"


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
    whole, one = read_model(model), read_model(step)
    if len(one.subgraphs or []) != 1 or len(one.signatureDefs or []) != 1:
        raise ArtifactError(f"the step graph has {len(one.subgraphs or [])} subgraphs and "
                            f"{len(one.signatureDefs or [])} signatures, expected 1 and 1")
    signatures = list(whole.signatureDefs or [])
    keys = [flatbuffer_text(s.signatureKey) for s in signatures]
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
    buffers = whole.buffers
    buffer_of = {0: 0}
    for i, b in enumerate(one.buffers):
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

    versions = [v for v in (min_runtime_version(model), min_runtime_version(step)) if v]
    merged = pack_model(whole, len(model) + len(step))
    if not versions:
        return merged
    highest = max(versions, key=version_tuple)
    return add_metadata(merged, {MIN_RUNTIME_METADATA_NAME: highest.encode("ascii").ljust(16, b"\0")})

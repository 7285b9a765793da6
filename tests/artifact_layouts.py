"""Artifacts in the layout of version 1, built from today's, for the tests that keep it
loading: until issue 13 the live graph travelled as a complete model of its own in the
``ubp_edge_step`` metadata entry, and a fused whole graph's signature was
``serving_default``; since then it is the model's ``step`` signature
(converters.signatures.with_step_signature), and the fused one is ``score``.
"""

from __future__ import annotations

import json

from converters.metadata_writer import (
    add_metadata,
    flatbuffer_text,
    pack_model,
    read_model,
    seal,
    tflite_schema,
)
from converters.signatures import DEFAULT_SIGNATURE
from edge_runtime.artifact import METADATA_NAME, SCORE_SIGNATURE, STEP_METADATA_NAME, STEP_SIGNATURE
from edge_runtime.tflite_reader import read_metadata


def split_step(model: bytes) -> tuple[bytes, bytes]:
    """(``model`` without its ``step`` signature and subgraph, the step graph as a model of
    its own with one ``serving_default`` signature): what with_step_signature joined."""
    schema = tflite_schema()
    m = read_model(model)
    keys = [flatbuffer_text(s.signatureKey) for s in m.signatureDefs]
    signature = m.signatureDefs[keys.index(STEP_SIGNATURE)]
    index = signature.subgraphIndex
    assert index == len(m.subgraphs) - 1, "the step subgraph is the last one"
    subgraph = m.subgraphs[index]

    step = schema.ModelT()
    step.version, step.description = m.version, m.description
    step.operatorCodes = m.operatorCodes
    step.buffers = [schema.BufferT()]
    renumbered = {0: 0}
    for tensor in subgraph.tensors:
        if tensor.buffer not in renumbered:
            renumbered[tensor.buffer] = len(step.buffers)
            step.buffers.append(m.buffers[tensor.buffer])
        tensor.buffer = renumbered[tensor.buffer]
    step.subgraphs = [subgraph]
    signature.signatureKey, signature.subgraphIndex = DEFAULT_SIGNATURE, 0
    step.signatureDefs = [signature]

    whole = read_model(model)
    whole.subgraphs = whole.subgraphs[:index]
    whole.signatureDefs = [s for s in whole.signatureDefs if s.subgraphIndex != index]
    for s in whole.signatureDefs:
        if flatbuffer_text(s.signatureKey) == SCORE_SIGNATURE:
            s.signatureKey = DEFAULT_SIGNATURE
    return pack_model(whole, len(model)), pack_model(step, len(model))


def version_1(model: bytes, step: bytes | None = None) -> bytes:
    """``model`` (a sealed artifact of today) in the layout of version 1, sealed: its step
    graph (or ``step``, e.g. a damaged one) in the ``ubp_edge_step`` entry."""
    whole, own_step = split_step(model)
    info = json.loads(read_metadata(model)[METADATA_NAME])
    info["version"] = 1
    return seal(add_metadata(whole, {METADATA_NAME: json.dumps(info, sort_keys=True).encode(),
                                     STEP_METADATA_NAME: own_step if step is None else step}))

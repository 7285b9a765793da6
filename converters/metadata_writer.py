"""Write named entries into a `.tflite` file's `Model.metadata` list, and seal the file with
its integrity digest (conversion time only).

This is the writer; `edge_runtime.tflite_reader` is the reader the device uses (standard
library only), and FILE_IDENTIFIER is defined there once. Each entry is a Model.metadata item
{name, buffer} pointing at a Buffer holding the bytes -- the standard TFLite place for
metadata. The model is unpacked with the FlatBuffers object API and repacked, so every other
table (operators, subgraphs, signatures, existing metadata such as "min_runtime_version" or
"CONVERSION_METADATA") is carried over unchanged; only the layout changes (buffers re-aligned
to 16 bytes, out-of-flatbuffer data moved inline).

Seams: `add_metadata(model, entries)` and `seal(model)`, the last step of every conversion;
`tflite_schema()`, `read_model` and `pack_model` (the object-API tables in and out) and
`flatbuffer_text`. The standard TFLite metadata (``TFLITE_METADATA``, what Netron and Android
Studio show) goes in through `add_metadata` too, from converters.tflite_metadata, before `seal`.
"""

from __future__ import annotations

from edge_runtime.artifact import DIGEST_METADATA_NAME, DIGEST_PLACEHOLDER, file_digest
from edge_runtime.errors import ArtifactError
from edge_runtime.tflite_reader import FILE_IDENTIFIER, metadata_spans

# The TFLite converter aligns every buffer's data to 16 bytes (ForceVectorAlignment
# in flatbuffer_export.cc) so kernels can use tensor data in place; keep that.
_BUFFER_ALIGNMENT = 16


def tflite_schema():
    """The TFLite flatbuffer schema's generated Python classes."""
    # Prefer the LiteRT schema (newest fields); fall back to TensorFlow's copy.
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - depends on the installed packages
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def add_metadata(model: bytes, entries: dict[str, bytes]) -> bytes:
    """A copy of ``model`` with each entry added (or replaced) in Model.metadata.

    Args:
        model: a `.tflite` file's bytes.
        entries: metadata name -> payload bytes.

    Returns:
        The repacked model; an entry of the same name is overwritten in place when no other
        part of the model shares its buffer, so no stale copy stays in the file.

    Raises:
        TypeError: an entry is not str -> bytes.
        ArtifactError: ``model`` is not a readable TFLite flatbuffer.
    """
    import numpy as np

    schema = tflite_schema()
    for name, value in entries.items():
        if not isinstance(name, str) or not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"metadata entries must be str -> bytes, got {name!r}: {type(value).__name__}")

    data = bytes(model)
    m = read_model(data)
    m.metadata = list(m.metadata or [])

    by_name = {flatbuffer_text(item.name): item for item in m.metadata}
    for name, value in entries.items():
        payload = np.frombuffer(bytes(value), dtype=np.uint8)
        item = by_name.get(name)
        if item is not None and _only_user_of_buffer(m, item):
            # Overwrite in place: no stale copy of the old payload stays in the file.
            m.buffers[item.buffer] = schema.BufferT(data=payload)
            continue
        m.buffers.append(schema.BufferT(data=payload))
        if item is None:
            item = schema.MetadataT(name=name)
            m.metadata.append(item)
            by_name[name] = item
        item.buffer = len(m.buffers) - 1

    return pack_model(m, len(data) + sum(len(v) for v in entries.values()))


def read_model(model: bytes):
    """The object-API tables (``ModelT``) of a `.tflite` file, with any data stored after the
    flatbuffer (models over 2 GB) moved inline and buffer 0, the empty one, in place.

    Raises:
        ArtifactError: ``model`` is not a readable TFLite flatbuffer.
    """
    import numpy as np

    schema = tflite_schema()
    data = bytes(model)
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise ArtifactError(f"not a TFLite flatbuffer: file identifier is {data[4:8]!r}, "
                            f"expected {FILE_IDENTIFIER!r}")
    try:
        m = schema.ModelT.InitFromPackedBuf(data, 0)
    except Exception as exc:  # the generated code raises anything on corrupt input
        raise ArtifactError(f"not a readable TFLite flatbuffer: {exc}") from exc
    _inline_external_data(m, data, np)
    # Buffer 0 is by convention the empty buffer of tensors without data; keep it so.
    m.buffers = list(m.buffers or [schema.BufferT()])
    return m


def pack_model(m, size_hint: int = 0) -> bytes:
    """``ModelT`` tables as `.tflite` bytes, every buffer's data 16-byte aligned as the
    converter writes it (``size_hint``: about the bytes expected)."""
    import flatbuffers

    aligned = _aligned_buffer_type(tflite_schema())
    m.buffers = [aligned(data=b.data, offset=b.offset, size=b.size) for b in m.buffers]
    builder = flatbuffers.Builder(size_hint + 1024)
    builder.Finish(m.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def flatbuffer_text(value) -> str:
    """A flatbuffer string field (bytes from the object API) as text."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _inline_external_data(m, data: bytes, np) -> None:
    # Models over 2 GB store buffers (and large custom options) after the flatbuffer at
    # absolute offsets; repacking moves everything, so pull that data back inline --
    # the same thing tensorflow/lite/tools/flatbuffer_utils.py does.
    for buf in m.buffers or []:
        if buf.offset > 1:
            if buf.offset + buf.size > len(data):
                raise ArtifactError(f"truncated TFLite file: buffer data at bytes {buf.offset}.."
                                    f"{buf.offset + buf.size} is past the {len(data)}-byte file")
            buf.data = np.frombuffer(data[buf.offset:buf.offset + buf.size], dtype=np.uint8)
            buf.offset = buf.size = 0
    for subgraph in m.subgraphs or []:
        for op in subgraph.operators or []:
            if op.largeCustomOptionsOffset > 1:
                start, size = op.largeCustomOptionsOffset, op.largeCustomOptionsSize
                op.customOptions = np.frombuffer(data[start:start + size], dtype=np.uint8)
                op.largeCustomOptionsOffset = op.largeCustomOptionsSize = 0


def _only_user_of_buffer(m, item) -> bool:
    """True if no tensor, other metadata entry or metadata_buffer uses item's buffer."""
    index = item.buffer
    if index == 0 or index >= len(m.buffers):  # buffer 0 is the shared empty sentinel
        return False
    users = [t.buffer for sg in m.subgraphs or [] for t in sg.tensors or []]
    users += [other.buffer for other in m.metadata if other is not item]
    users += [int(b) for b in (m.metadataBuffer if m.metadataBuffer is not None else [])]
    return index not in users


def _aligned_buffer_type(schema):
    """A BufferT whose Pack() starts the data vector on a 16-byte boundary."""

    class AlignedBufferT(schema.BufferT):
        def Pack(self, builder):
            if self.data is not None and len(self.data):
                # Prep pads so that after len(data) more bytes the position is aligned;
                # the vector Pack writes next then starts exactly on the boundary.
                builder.Prep(_BUFFER_ALIGNMENT, len(self.data))
            return super().Pack(builder)

    return AlignedBufferT


def seal(model: bytes) -> bytes:
    """Write the artifact's integrity digest (edge_runtime.artifact): the last step of every
    conversion, so the digest covers the final bytes.

    Args:
        model: a `.tflite` file's bytes, with every other entry already in place.

    Returns:
        The model with its ``ubp_edge_sha256`` entry filled in.

    Raises:
        ArtifactError: ``model`` is not a readable TFLite flatbuffer.
    """
    model = add_metadata(model, {DIGEST_METADATA_NAME: DIGEST_PLACEHOLDER})
    start, end = metadata_spans(model)[DIGEST_METADATA_NAME]
    digest = file_digest(model, (start, end)).encode("ascii")
    return model[:start] + digest + model[end:]

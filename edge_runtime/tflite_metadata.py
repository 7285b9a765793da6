"""Read the `Model.metadata` entries of a `.tflite` file, standard library only.

The runtime must not depend on the flatbuffers package or TensorFlow, so this is a
minimal, bounds-checked FlatBuffers walker for the tables we need
(tensorflow/lite/schema/schema.fbs): Model -> metadata[] -> Metadata{name, buffer}
and Model -> buffers[] -> Buffer{data, offset, size}. Every offset read from the
file is checked against its length before use, so corrupted input raises
ArtifactError instead of IndexError/struct.error. There are no pointer-chasing
loops: each loop runs over a vector whose length was already checked to fit.
"""

from __future__ import annotations

import struct

from edge_runtime.errors import ArtifactError

FILE_IDENTIFIER = b"TFL3"

# Model fields (schema.fbs) that are vectors: index -> (name, element size, elements are tables).
_MODEL_VECTORS = {1: ("operator_codes", 4, True), 2: ("subgraphs", 4, True),
                  3: ("description", 1, False), 4: ("buffers", 4, True),
                  5: ("metadata_buffer", 4, False), 6: ("metadata", 4, True),
                  7: ("signature_defs", 4, True)}
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def fail(self, what: str, pos: int) -> ArtifactError:
        return ArtifactError(f"truncated or corrupted TFLite file: {what} at byte {pos} "
                             f"does not fit in the {len(self.data)}-byte file")

    def scalar(self, fmt: str, pos: int, what: str) -> int:
        # struct.unpack_from accepts negative offsets (counted from the end), so
        # the lower bound must be checked explicitly, not only the upper one.
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.data):
            raise self.fail(what, pos)
        return struct.unpack_from(fmt, self.data, pos)[0]

    def deref(self, pos: int, what: str) -> int:
        """Follow the forward uoffset stored at `pos` (to a table, vector or string)."""
        return pos + self.scalar("<I", pos, what)

    def table(self, pos: int, what: str) -> int:
        """The table referenced at `pos`, with its vtable and inline fields checked to fit."""
        table = self.deref(pos, what)
        vtable = table - self.scalar("<i", table, what)
        vtable_size = self.scalar("<H", vtable, f"{what} vtable")
        table_size = self.scalar("<H", vtable + 2, f"{what} vtable")
        if vtable_size < 4 or vtable + vtable_size > len(self.data) or table + table_size > len(self.data):
            raise self.fail(what, table)
        return table

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of a table field, or None when the field is absent."""
        vtable = table - self.scalar("<i", table, "table")
        slot = 4 + 2 * index
        if slot + 2 > self.scalar("<H", vtable, "vtable"):  # writers omit trailing fields
            return None
        rel = self.scalar("<H", vtable + slot, "vtable")
        return table + rel if rel else None

    def vector(self, pos: int, elem_size: int, what: str) -> tuple[int, int]:
        """(start of elements, count) of the vector referenced at `pos`, checked to fit."""
        vec = self.deref(pos, what)
        count = self.scalar("<I", vec, what)
        if vec + 4 + count * elem_size > len(self.data):
            raise self.fail(f"{what} of {count} elements", vec)
        return vec + 4, count

    def buffer_span(self, buffer: int, what: str) -> tuple[int, int]:
        """(start, end) of a Buffer's bytes in the file."""
        # Models over 2 GB keep buffer data after the flatbuffer: offset > 1 is then an
        # absolute file position (0 and 1 mean "inline" / placeholder in the schema).
        offset_field, size_field = self.field(buffer, _BUFFER_OFFSET), self.field(buffer, _BUFFER_SIZE)
        offset = 0 if offset_field is None else self.scalar("<Q", offset_field, what)
        if offset > 1:
            size = 0 if size_field is None else self.scalar("<Q", size_field, what)
            if offset + size > len(self.data):
                raise self.fail(f"{what} data of {size} bytes", offset)
            return offset, offset + size
        data_field = self.field(buffer, _BUFFER_DATA)
        if data_field is None:
            return 0, 0
        start, count = self.vector(data_field, 1, what)
        return start, start + count


def read_metadata(model: bytes) -> dict[str, bytes]:
    """Return every `Model.metadata` entry of a TFLite flatbuffer as name -> buffer bytes.

    Raises ArtifactError if the bytes are not a readable TFLite model.
    """
    data = bytes(model)
    return {name: data[start:end] for name, (start, end) in metadata_spans(data).items()}


def metadata_spans(model: bytes) -> dict[str, tuple[int, int]]:
    """Every `Model.metadata` entry as name -> (start, end) of its bytes in the file.

    Raises ArtifactError if the bytes are not a readable TFLite model.
    """
    data = bytes(model)
    if len(data) < 8:
        raise ArtifactError(f"not a TFLite flatbuffer: only {len(data)} bytes")
    if data[4:8] != FILE_IDENTIFIER:
        raise ArtifactError(f"not a TFLite flatbuffer: file identifier is {data[4:8]!r}, "
                            f"expected {FILE_IDENTIFIER!r}")
    r = _Reader(data)
    root = r.table(0, "Model")

    # Check every top-level vector, its tables and every buffer's data, not only the
    # metadata: FlatBuffers have no length field, and this is what makes a truncated
    # download fail here (its tail holds operator codes, subgraphs or weights) instead
    # of yielding plausible metadata for a model that cannot load.
    tables: dict[str, list[int]] = {}
    for index, (name, elem_size, of_tables) in _MODEL_VECTORS.items():
        pos = r.field(root, index)
        start, count = r.vector(pos, elem_size, f"Model.{name}") if pos is not None else (0, 0)
        if of_tables:
            tables[name] = [r.table(start + 4 * i, f"Model.{name}[{i}]") for i in range(count)]
    spans = [r.buffer_span(b, f"Model.buffers[{i}]") for i, b in enumerate(tables["buffers"])]

    entries: dict[str, tuple[int, int]] = {}
    for i, meta in enumerate(tables["metadata"]):
        name_field = r.field(meta, _METADATA_NAME)
        if name_field is None:
            raise ArtifactError(f"corrupted TFLite file: metadata entry {i} has no name")
        start, length = r.vector(name_field, 1, f"Model.metadata[{i}].name")
        try:
            name = data[start:start + length].decode("utf-8")
        except UnicodeDecodeError:
            raise ArtifactError(f"corrupted TFLite file: metadata entry {i} name is not UTF-8") from None
        if name in entries:  # two payloads for one name: refuse rather than guess which
            raise ArtifactError(f"corrupted TFLite file: metadata entry {name!r} appears twice")
        index_field = r.field(meta, _METADATA_BUFFER)
        index = 0 if index_field is None else r.scalar("<I", index_field, "Metadata.buffer")
        if index >= len(spans):
            raise ArtifactError(f"corrupted TFLite file: metadata {name!r} points at buffer "
                                f"{index}, but the model has {len(spans)} buffers")
        entries[name] = spans[index]
    return entries

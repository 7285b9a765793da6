"""Read a `.tflite` file without TensorFlow: its `Model.metadata` entries, and a check of its
graph before any interpreter sees it. Standard library only.

This is the reader; `converters.metadata_writer` is the conversion-time writer of the same
entries (it imports FILE_IDENTIFIER from here, so the two agree on it). The runtime must not
depend on the flatbuffers package or TensorFlow, so this is a minimal, bounds-checked
FlatBuffers walker for the tables we need (tensorflow/lite/schema/schema.fbs):
Model -> metadata[] -> Metadata{name, buffer} and Model -> buffers[] -> Buffer{data, offset,
size}; and, for `check_graph`, Model -> subgraphs[] -> tensors[] and operators[],
operator_codes[] and signature_defs[]. Every offset read from the file is checked against
its length before use, so corrupted input raises ArtifactError instead of
IndexError/struct.error. There are no pointer-chasing loops: each loop runs over a vector
whose length was already checked to fit.

Seams: `read_metadata` / `metadata_spans` (edge_runtime.artifact reads and verifies the
ubp-edge entries through them), `check_graph` (edge_runtime.backends runs it before building
an interpreter), `signature_keys`, `min_runtime_version` and `version_tuple` (the runtime a
model needs, which edge_runtime.backends compares with the backend's), `operator_codes` and
`tensor_types` (what a backend's known faults depend on). A file whose
structure or graph is damaged raises MalformedModelError (an ArtifactError), so a caller can
tell it from "not a TFLite file at all" without reading the message.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from edge_runtime.errors import ArtifactError, MalformedModelError

# The 4 bytes at offset 4 of every TFLite flatbuffer (schema.fbs `file_identifier`).
FILE_IDENTIFIER = b"TFL3"

# Model fields (schema.fbs) that are vectors: index -> (name, element size, elements are tables).
_MODEL_VECTORS = {1: ("operator_codes", 4, True), 2: ("subgraphs", 4, True),
                  3: ("description", 1, False), 4: ("buffers", 4, True),
                  5: ("metadata_buffer", 4, False), 6: ("metadata", 4, True),
                  7: ("signature_defs", 4, True)}
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2
_SUBGRAPH_TENSORS, _SUBGRAPH_INPUTS, _SUBGRAPH_OUTPUTS, _SUBGRAPH_OPERATORS = 0, 1, 2, 3
_TENSOR_SHAPE, _TENSOR_TYPE, _TENSOR_BUFFER, _TENSOR_NAME, _TENSOR_QUANTIZATION = 0, 1, 2, 3, 4
_TENSOR_SHAPE_SIGNATURE = 7
_QUANT_SCALE, _QUANT_ZERO_POINT, _QUANT_DIMENSION = 2, 3, 6
_OPERATOR_OPCODE, _OPERATOR_INPUTS, _OPERATOR_OUTPUTS = 0, 1, 2
_OPCODE_DEPRECATED_BUILTIN, _OPCODE_BUILTIN = 0, 3
# BuiltinOperator ADD and SUB; their 8-bit kernels (add.cc, sub.cc) rescale both inputs to
# 2 * max(input scales) << 20 and abort (TFLITE_CHECK_LT(multiplier, 1.) in
# QuantizeMultiplierSmallerThanOneExp) unless the output scale is larger than that / 2 ** 20.
_RESCALING_OPS = {0: "ADD", 41: "SUB"}
_LEFT_SHIFT = {9: 20, 3: 20}  # int8, uint8
_SIGNATURE_INPUTS, _SIGNATURE_OUTPUTS, _SIGNATURE_SUBGRAPH = 0, 1, 4
_TENSOR_MAP_INDEX = 1
# Integer TensorTypes whose kernels need a scale and zero point: type -> zero point range.
_QUANTIZED = {9: (-128, 127), 3: (0, 255), 7: (-32768, 32767), 17: (-8, 7)}
# A scale outside this is damage: below the smallest normal float32, or so large that the
# quantized tensor would span more than +-1e11. Kernels turn such scales into multipliers
# that fail a TFLITE_CHECK (an abort) or a shift out of range.
_SCALE_RANGE = (1.1754944e-38, 1e9)
# Bytes per element of each TensorType (schema.fbs); types not listed count as 8.
_TYPE_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8,
               15: 4, 16: 2, 17: 1, 18: 2}


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def fail(self, what: str, pos: int) -> MalformedModelError:
        return MalformedModelError(f"truncated or corrupted TFLite file: {what} at byte {pos} "
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
    """Every `Model.metadata` entry of a TFLite flatbuffer as name -> buffer bytes.

    Args:
        model: the whole `.tflite` file (bytes, bytearray or memoryview).

    Returns:
        name -> a copy of the entry's bytes.

    Raises:
        ArtifactError: the bytes are not a TFLite model (MalformedModelError: one whose
            flatbuffer does not hold together).
    """
    data = bytes(model)
    return {name: data[start:end] for name, (start, end) in metadata_spans(data).items()}


def metadata_spans(model: bytes) -> dict[str, tuple[int, int]]:
    """Every `Model.metadata` entry as name -> (start, end) of its bytes in the file.

    Every top-level table and buffer is checked to fit on the way, so a truncated file fails
    here rather than in an interpreter.

    Args:
        model: the whole `.tflite` file.

    Returns:
        name -> (start, end) byte offsets of the entry's buffer.

    Raises:
        ArtifactError: the bytes are not a TFLite model (MalformedModelError: one whose
            flatbuffer does not hold together).
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
            raise MalformedModelError(f"corrupted TFLite file: metadata entry {i} has no name")
        start, length = r.vector(name_field, 1, f"Model.metadata[{i}].name")
        try:
            name = data[start:start + length].decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedModelError(f"corrupted TFLite file: metadata entry {i} name is not "
                                      f"UTF-8") from None
        if name in entries:  # two payloads for one name: refuse rather than guess which
            raise MalformedModelError(f"corrupted TFLite file: metadata entry {name!r} appears twice")
        index_field = r.field(meta, _METADATA_BUFFER)
        index = 0 if index_field is None else r.scalar("<I", index_field, "Metadata.buffer")
        if index >= len(spans):
            raise MalformedModelError(f"corrupted TFLite file: metadata {name!r} points at "
                                      f"buffer {index}, but the model has {len(spans)} buffers")
        entries[name] = spans[index]
    return entries


def check_graph(model: bytes) -> tuple[int, str]:
    """Check a model's graph before any interpreter sees it; return the bytes its tensors
    take at their stored shapes, and the largest tensor.

    Each check is for damage that passes the flatbuffer verifier and that fuzzing re-sealed
    artifacts found to kill the process (SIGSEGV or abort) or to claim gigabytes:

    - tensor shapes: no negative dimension, the same rank as the shape signature and equal
      to it where that is not -1 (an int8 tensor whose shape was zeroed to [] aborted in its
      kernel); the total size is returned for the caller to bound (a flipped byte made
      [1, 16] into [10223617, 16]; the interpreter's get_tensor_details cannot be asked, as
      it skips tensors whose name is not UTF-8);
    - quantized tensors (int8, uint8, int16, int4) have one zero point per scale, per-axis
      scales match their axis, scales are normal floats up to 1e9 and zero points fit the
      type (a missing, denormal or negative scale aborted in QuantizeMultiplier), and an
      8-bit ADD or SUB has an output scale its kernel accepts (one 2**-20 of its inputs'
      aborted in QuantizeMultiplierSmallerThanOneExp);
    - the graph's inputs and outputs are tensors of it (a -1 output corrupted the heap);
    - every operator reads existing tensors and writes at least one, and writes none that
      another operator writes, that is an input of the graph or that is a constant (a
      FULLY_CONNECTED writing the graph's input segfaulted in Invoke);
    - signatures name existing subgraphs and tensors (a model whose subgraphs were gone
      segfaulted in the interpreter's constructor).

    Returns:
        (total bytes, "subgraph S tensor T 'name' [d0, d1, ...]" of the largest tensor)

    Raises:
        ArtifactError: the bytes are not a TFLite model.
        MalformedModelError: its flatbuffer does not hold together, or one of the above fails.
    """
    data = bytes(model)
    metadata_spans(data)  # the identifier and the top-level tables, checked to fit
    r = _Reader(data)
    root = r.table(0, "Model")
    spans = [r.buffer_span(b, f"Model.buffers[{i}]")
             for i, b in enumerate(_tables(r, root, 4, "Model.buffers"))]
    opcodes = [_builtin_code(r, c) for c in _tables(r, root, 1, "Model.operator_codes")]
    subgraphs = _tables(r, root, 2, "Model.subgraphs")
    if not subgraphs:
        raise MalformedModelError("corrupted TFLite file: the model has no subgraph")
    total, largest = 0, _Largest()
    n_tensors = []
    for s, subgraph in enumerate(subgraphs):
        tensors = _tables(r, subgraph, _SUBGRAPH_TENSORS, f"subgraph {s} tensors")
        n_tensors.append(len(tensors))
        graph_inputs = _check_graph_ports(r, subgraph, s, len(tensors))
        facts = _check_tensors(r, tensors, s, spans, largest)
        total += facts.total_bytes
        _check_operators(r, subgraph, s, len(tensors), graph_inputs, facts, opcodes)
    _check_signatures(r, root, n_tensors)
    return total, largest.text


@dataclass
class _Largest:
    """The largest tensor seen so far, across subgraphs: its bytes and how to name it."""

    size: int = -1
    text: str = ""


@dataclass
class _TensorFacts:
    """What the operators' check needs to know of a subgraph's tensors."""

    total_bytes: int = 0
    constants: set[int] = field(default_factory=set)  # tensors with data in a buffer
    scale_of: dict[int, tuple[int, float]] = field(default_factory=dict)  # per-tensor quantized


def _check_graph_ports(r: _Reader, subgraph: int, s: int, n_tensors: int) -> set[int]:
    """The subgraph's input tensors; MalformedModelError unless every input and output is one
    of its tensors (a -1 output made the interpreter free a bad pointer)."""
    graph_inputs = set(_ints(r, subgraph, _SUBGRAPH_INPUTS, f"subgraph {s} inputs"))
    graph_outputs = _ints(r, subgraph, _SUBGRAPH_OUTPUTS, f"subgraph {s} outputs")
    for t in (*sorted(graph_inputs), *graph_outputs):
        if not 0 <= t < n_tensors:
            raise MalformedModelError(f"corrupted TFLite file: subgraph {s} has input or output "
                                      f"tensor {t}, but {n_tensors} tensors")
    return graph_inputs


def _check_tensors(r: _Reader, tensors: list[int], s: int, spans: list[tuple[int, int]],
                   largest: _Largest) -> _TensorFacts:
    """Check each tensor's shape and quantization; add up the bytes they take at their
    stored shapes (updating ``largest``) and note the constants and per-tensor scales."""
    facts = _TensorFacts()
    for t, tensor in enumerate(tensors):
        what = f"subgraph {s} tensor {t}"
        shape = _ints(r, tensor, _TENSOR_SHAPE, f"{what} shape")
        signature = _ints(r, tensor, _TENSOR_SHAPE_SIGNATURE, f"{what} shape signature")
        if any(d < 0 for d in shape) or (signature and (len(signature) != len(shape) or any(
                d != -1 and d != n for d, n in zip(signature, shape, strict=False)))):
            raise MalformedModelError(f"corrupted TFLite file: {what} has shape {shape}"
                                      + (f" and shape signature {signature}" if signature else ""))
        pos = r.field(tensor, _TENSOR_TYPE)
        kind = r.scalar("<b", pos, what) if pos is not None else 0
        size = _TYPE_BYTES.get(kind, 8)
        for d in shape:
            size *= d  # Python ints: a corrupted shape cannot overflow
        facts.total_bytes += size
        if size > largest.size:
            largest.size, largest.text = size, f"{what} {_tensor_name(r, tensor)!r} {shape}"
        pos = r.field(tensor, _TENSOR_BUFFER)
        buffer = r.scalar("<I", pos, what) if pos is not None else 0
        if 0 < buffer < len(spans) and spans[buffer][1] > spans[buffer][0]:
            facts.constants.add(t)
        if kind in _QUANTIZED:
            scales = _check_quantization(r, tensor, shape, _QUANTIZED[kind], what)
            if len(scales) == 1:
                facts.scale_of[t] = (kind, scales[0])
    return facts


def _check_operators(r: _Reader, subgraph: int, s: int, n_tensors: int, graph_inputs: set[int],
                     facts: _TensorFacts, opcodes: list[int]) -> None:
    """MalformedModelError unless every operator reads existing tensors and writes at least
    one, none of which another operator, the graph's input or a constant holds; and unless
    each 8-bit ADD/SUB has an output scale its kernel takes."""
    written: set[int] = set()
    operators = _tables(r, subgraph, _SUBGRAPH_OPERATORS, f"subgraph {s} operators")
    for o, operator in enumerate(operators):
        what = f"subgraph {s} operator {o}"
        inputs = _ints(r, operator, _OPERATOR_INPUTS, f"{what} inputs")
        outputs = _ints(r, operator, _OPERATOR_OUTPUTS, f"{what} outputs")
        if any(not -1 <= t < n_tensors for t in inputs):  # -1: an omitted optional input
            raise MalformedModelError(f"corrupted TFLite file: {what} reads tensors {inputs}, "
                                      f"but the graph has {n_tensors}")
        if not outputs:
            raise MalformedModelError(f"corrupted TFLite file: {what} has no outputs")
        for t in outputs:
            why = ("not a tensor of the graph" if not 0 <= t < n_tensors
                   else "written by another operator" if t in written
                   else "an input of the graph" if t in graph_inputs
                   else "a constant" if t in facts.constants else None)
            if why:
                raise MalformedModelError(f"corrupted TFLite file: {what} writes tensor {t}, "
                                          f"which is {why}")
            written.add(t)
        pos = r.field(operator, _OPERATOR_OPCODE)
        opcode = r.scalar("<I", pos, what) if pos is not None else 0
        if opcode < len(opcodes) and opcodes[opcode] in _RESCALING_OPS:
            name = _RESCALING_OPS[opcodes[opcode]]
            _check_rescaling(inputs, outputs, facts.scale_of, f"{what} ({name})")


def _check_signatures(r: _Reader, root: int, n_tensors: list[int]) -> None:
    """MalformedModelError unless every signature names an existing subgraph and tensors of
    it (a zeroed vtable entry had removed Model.subgraphs, and the interpreter's constructor
    crashed on the signature that still named one)."""
    for i, signature in enumerate(_tables(r, root, 7, "Model.signature_defs")):
        pos = r.field(signature, _SIGNATURE_SUBGRAPH)
        s = r.scalar("<I", pos, "SignatureDef.subgraph_index") if pos is not None else 0
        if s >= len(n_tensors):
            raise MalformedModelError(f"corrupted TFLite file: signature {i} is of subgraph {s}, "
                                      f"but the model has {len(n_tensors)}")
        for index in (_SIGNATURE_INPUTS, _SIGNATURE_OUTPUTS):
            for tensor_map in _tables(r, signature, index, f"signature {i} tensors"):
                pos = r.field(tensor_map, _TENSOR_MAP_INDEX)
                t = r.scalar("<I", pos, "TensorMap.tensor_index") if pos is not None else 0
                if t >= n_tensors[s]:
                    raise MalformedModelError(f"corrupted TFLite file: signature {i} maps a name "
                                              f"to tensor {t}, but subgraph {s} has {n_tensors[s]}")


def _builtin_code(r: _Reader, opcode: int) -> int:
    """An OperatorCode's BuiltinOperator: the larger of its two fields, as TFLite reads it."""
    pos = r.field(opcode, _OPCODE_DEPRECATED_BUILTIN)
    deprecated = r.scalar("<b", pos, "OperatorCode") if pos is not None else 0
    pos = r.field(opcode, _OPCODE_BUILTIN)
    return max(deprecated, r.scalar("<i", pos, "OperatorCode") if pos is not None else 0)


def _check_rescaling(inputs: list[int], outputs: list[int],
                     scale_of: dict[int, tuple[int, float]], what: str) -> None:
    """MalformedModelError when a quantized ADD/SUB's output scale would make its kernel abort."""
    if len(inputs) < 2 or not outputs or not all(t in scale_of for t in (*inputs[:2], outputs[0])):
        return  # float, or per-axis: not the rescaling path
    (_, s1), (_, s2), (kind, out) = (scale_of[t] for t in (*inputs[:2], outputs[0]))
    shift = _LEFT_SHIFT.get(kind)
    if shift is not None and 2 * max(s1, s2) >= out * 2.0 ** shift:
        raise MalformedModelError(f"TFLite model with unusable quantization: {what} has output scale "
                            f"{out:g}, too small for input scales {s1:g} and {s2:g}; the "
                            f"integer kernel would abort on it")


def _check_quantization(r: _Reader, tensor: int, shape: list[int], zero_range: tuple[int, int],
                        what: str) -> list[float]:
    """The scales of a quantized tensor; MalformedModelError unless they and its zero points are
    ones the integer kernels can use.

    The message does not say "corrupted": a converter can write such a tensor too (the
    16x8 quantizer gives an all-zero int16 constant scale 0, and the kernels downstream
    abort on it).
    """
    def unusable(problem: str) -> MalformedModelError:
        return MalformedModelError(f"TFLite model with unusable quantization: {what} "
                             f"{_tensor_name(r, tensor)!r} of shape {shape} {problem}; the "
                             f"integer kernels would abort on it")

    pos = r.field(tensor, _TENSOR_QUANTIZATION)
    if pos is None:
        raise unusable("is quantized but has no scale")
    quant = r.table(pos, f"{what} quantization")
    scales = _floats(r, quant, _QUANT_SCALE, f"{what} scale")
    zero_points = _longs(r, quant, _QUANT_ZERO_POINT, f"{what} zero point")
    pos = r.field(quant, _QUANT_DIMENSION)
    axis = r.scalar("<i", pos, what) if pos is not None else 0
    per_axis = len(scales) > 1
    if (not scales or len(zero_points) != len(scales)
            or (per_axis and not (0 <= axis < len(shape) and shape[axis] == len(scales)))):
        raise unusable(f"has {len(scales)} scales and {len(zero_points)} zero points (axis {axis})")
    low, high = _SCALE_RANGE
    if not all(low <= v <= high for v in scales):  # also false for NaN
        raise unusable(f"has scale {next(v for v in scales if not low <= v <= high):g}")
    if not all(zero_range[0] <= z <= zero_range[1] for z in zero_points):
        raise unusable(f"has zero points outside {list(zero_range)}")
    return scales


def _tables(r: _Reader, table: int, index: int, what: str) -> list[int]:
    """The tables of a table's vector-of-tables field (empty when absent), checked to fit."""
    pos = r.field(table, index)
    if pos is None:
        return []
    start, count = r.vector(pos, 4, what)
    return [r.table(start + 4 * i, f"{what}[{i}]") for i in range(count)]


def _ints(r: _Reader, table: int, index: int, what: str) -> list[int]:
    """A table's [int32] field (empty when absent), checked to fit."""
    return _scalars(r, table, index, "<i", what)


def _floats(r: _Reader, table: int, index: int, what: str) -> list[float]:
    return _scalars(r, table, index, "<f", what)


def _longs(r: _Reader, table: int, index: int, what: str) -> list[int]:
    return _scalars(r, table, index, "<q", what)


def _scalars(r: _Reader, table: int, index: int, fmt: str, what: str) -> list:
    pos = r.field(table, index)
    if pos is None:
        return []
    start, count = r.vector(pos, struct.calcsize(fmt), what)  # checked to fit
    return list(struct.unpack_from(f"<{count}{fmt[1:]}", r.data, start))


def _tensor_name(r: _Reader, tensor: int) -> str:
    pos = r.field(tensor, _TENSOR_NAME)
    if pos is None:
        return ""
    start, length = r.vector(pos, 1, "tensor name")
    return r.data[start:start + length].decode("utf-8", "replace")


_SIGNATURE_KEY = 2


def signature_keys(model: bytes) -> list[str]:
    """The signature keys of a TFLite flatbuffer, in the file's order (``[]`` without any),
    e.g. to see whether an artifact carries its live graph as the ``step`` signature without
    building an interpreter.

    Raises:
        ArtifactError: the bytes are not a TFLite model (MalformedModelError: a signature
            table or key that does not fit in the file).
    """
    data = bytes(model)
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise ArtifactError("not a TFLite flatbuffer")
    r = _Reader(data)
    keys = []
    for i, signature in enumerate(_tables(r, r.table(0, "Model"), 7, "Model.signature_defs")):
        pos = r.field(signature, _SIGNATURE_KEY)
        if pos is None:
            keys.append("")
            continue
        start, length = r.vector(pos, 1, f"signature {i} key")
        keys.append(data[start:start + length].decode("utf-8", "replace"))
    return keys


# The entry TensorFlow's converter writes into every model: the oldest TFLite runtime that
# has all of its op versions (tensorflow/lite/tools/versioning/runtime_version.cc), as text
# padded with NUL bytes, e.g. b"2.3.0\0\0\0...".
MIN_RUNTIME_METADATA_NAME = "min_runtime_version"


def min_runtime_version(model: bytes) -> str | None:
    """The TFLite runtime version a model needs, from its ``min_runtime_version`` entry.

    Args:
        model: the whole `.tflite` file.

    Returns:
        e.g. ``"2.3.0"``; None when the model has no such entry (or an empty one).

    Raises:
        ArtifactError: the bytes are not a TFLite model (MalformedModelError: one whose
            flatbuffer does not hold together, or whose entry is not a version number).
    """
    data = bytes(model)
    span = metadata_spans(data).get(MIN_RUNTIME_METADATA_NAME)
    raw = None if span is None else data[span[0]:span[1]]
    text = (raw or b"").rstrip(b"\0")
    if not text:
        return None
    parts = text.split(b".")
    if len(parts) > 4 or not all(p.isdigit() and len(p) <= 4 for p in parts):
        raise MalformedModelError(f"corrupted TFLite file: {MIN_RUNTIME_METADATA_NAME} is {raw!r}, "
                                  f"not a version number")
    return text.decode("ascii")


def version_tuple(version: str) -> tuple[int, ...]:
    """``"2.22.0-dev0"`` -> ``(2, 22, 0)``: the leading digits of each dot-separated part, for
    comparing runtime versions (a part without any counts as 0)."""
    numbers = []
    for part in version.split("."):
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        numbers.append(int(digits or 0))
    while len(numbers) > 1 and numbers[-1] == 0:  # 2.3 == 2.3.0
        numbers.pop()
    return tuple(numbers)


def operator_codes(model: bytes) -> set[int]:
    """The BuiltinOperator codes a model's operators may use (schema.fbs numbers, e.g. 44
    UNIDIRECTIONAL_SEQUENCE_LSTM): what a backend's known faults depend on
    (edge_runtime.backends.DELEGATE_FAULTS), with `tensor_types`.

    Raises:
        ArtifactError: the bytes are not a TFLite model (MalformedModelError: one whose
            flatbuffer does not hold together).
    """
    r = _model_reader(model)
    return {_builtin_code(r, c) for c in _tables(r, r.table(0, "Model"), 1, "Model.operator_codes")}


def tensor_types(model: bytes) -> set[int]:
    """The TensorTypes of a model's tensors, every subgraph's (schema.fbs numbers, e.g. 1
    FLOAT16, 9 INT8).

    Raises:
        ArtifactError: as `operator_codes`.
    """
    r = _model_reader(model)
    types = set()
    for s, subgraph in enumerate(_tables(r, r.table(0, "Model"), 2, "Model.subgraphs")):
        for t, tensor in enumerate(_tables(r, subgraph, _SUBGRAPH_TENSORS, f"subgraph {s} tensors")):
            pos = r.field(tensor, _TENSOR_TYPE)
            types.add(r.scalar("<b", pos, f"subgraph {s} tensor {t}") if pos is not None else 0)
    return types


def _model_reader(model: bytes) -> _Reader:
    """A reader over a TFLite flatbuffer (its identifier checked); every read it makes is
    bounds-checked, so the whole file need not be walked first (`metadata_spans` does)."""
    data = bytes(model)
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise ArtifactError(f"not a TFLite flatbuffer: file identifier is {data[4:8]!r}, "
                            f"expected {FILE_IDENTIFIER!r}")
    return _Reader(data)

"""Whole sessions through an artifact's graph: the fused LSTM op, or chained unrolled chunks.

Two kinds of graph score a whole session (converters.graphs writes both):

- `FusedGraph`: one UNIDIRECTIONAL_SEQUENCE_LSTM op over ``[1, L, F]``, resized to each
  session's length, one session per invoke (its state variables are sized for batch 1).
- `ChunkedGraph`: the unrolled graph, signatures ``chunk_T`` of T events each with the LSTM
  state in and out. A session of L events runs through the chunks of `chunk_plan` (L = 50:
  16, 16, 16, 2), so it is scored whole, at any length, without padding; many sessions go
  through chunk by chunk, every session's 16-event chunks first, then its 8, 4, 2 and 1, each
  stage one invoke for all the sessions that have it.

Both score every event of a session, however long: the training window (FeatureSpec.max_len)
does not cut it, so a session's whole score is its live score (edge_runtime.live).
Neither locks nor calibrates: edge_runtime.scorer.Scorer does both around them.

Seams: `whole_graph(interpreter, spec, graph, source)` picks and checks one; both have
``score_one(x)`` and ``score_packed(events, lengths, batch_size)`` (many sessions, their
events end to end); `chunk_plan`, `chunk_key`, `spare_rows`; `TensorPort`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from edge_runtime.backends import INTERPRETER_ERRORS, ONE_SESSION_PER_INVOKE
from edge_runtime.errors import ArtifactError, first_line
from edge_runtime.features import FeatureSpec

# An unrolled graph's signature keys: "chunk_" and the chunk's events (converters.graphs
# names each chunk with `chunk_key`; the runtime finds them with CHUNK_KEY).
CHUNK_PREFIX = "chunk_"
CHUNK_KEY = re.compile(re.escape(CHUNK_PREFIX) + r"([1-9][0-9]{0,3})")

# Precisions whose activations, the LSTM state between chunks included, stay float: their chunk
# of 3 events computes bit for bit what the chunk of 2 then the chunk of 1 compute (measured:
# 0.0 apart on 3,000 replayed Taobao prefixes for each), so batches may split it. An integer
# graph requantises the state at each chunk's edge with that chunk's own scales (0.012 apart).
FLOAT_STATE_PRECISIONS = frozenset({"float32", "float16", "dynamic"})


def chunk_key(steps: int) -> str:
    """The signature key of the chunk of ``steps`` events (``chunk_3``)."""
    return f"{CHUNK_PREFIX}{steps}"


class TensorPort:
    """One model input or output; quantises and dequantises when the model's I/O is int8."""

    def __init__(self, details: dict) -> None:
        self.index = details["index"]
        self.dtype = details["dtype"]
        scale, zero_point = details.get("quantization", (0.0, 0))
        self.scale, self.zero_point = float(scale), int(zero_point)
        self.quantized = np.dtype(self.dtype) == np.int8

    def to_model(self, x: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return x.astype(self.dtype, copy=False)
        q = np.round(x / self.scale) + self.zero_point
        return np.clip(q, -128, 127).astype(np.int8)

    def fill(self, buffer: np.ndarray, source: np.ndarray, rows: np.ndarray | slice) -> None:
        """Write ``source[rows]`` into ``buffer`` (a view of this input's tensor), quantised
        when the model's I/O is int8; float32 rows are gathered straight into the buffer."""
        if self.quantized:
            buffer[...] = self.to_model(source[rows])
        elif isinstance(rows, slice):
            buffer[...] = source[rows]
        else:
            source.take(rows, axis=0, out=buffer)

    def from_model(self, y: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return y.astype(np.float32, copy=False)
        return ((y.astype(np.float32) - self.zero_point) * self.scale).astype(np.float32)


def check_dtypes(details: Sequence[dict], source: str) -> None:
    """ArtifactError unless every port is float32 or int8 (the two the runtime feeds)."""
    for port in details:
        if np.dtype(port["dtype"]) not in (np.float32, np.int8):
            raise ArtifactError(f"{source}: model tensor {port['name']!r} is "
                                f"{np.dtype(port['dtype']).name}, expected float32 or int8")


def chunk_plan(length: int, steps: Sequence[int]) -> list[int]:
    """The chunks that cover ``length`` events, longest first (greedy).

    Args:
        length: the session's events, >= 1.
        steps: the chunk lengths the graph has, 1 among them.

    Returns:
        Chunk lengths that add up to ``length``, e.g. ``[16, 16, 16, 2]`` for 50 events with
        steps 1, 2, 3, 4, 8, 16.
    """
    plan, left = [], length
    for t in sorted(steps, reverse=True):
        while left >= t:
            plan.append(t)
            left -= t
    return plan


class FusedGraph:
    """The fused LSTM graph: ``events [1, L, F] -> probability [1, 1]``, resized per length."""

    def __init__(self, interpreter, spec: FeatureSpec, source: str) -> None:
        """Check the graph's ports against its spec.

        Raises:
            ArtifactError: not one input of ``[1, L, F]`` and one ``[1, 1]`` output of float32
                or int8.
        """
        self.source = source
        self.interpreter = interpreter
        try:
            inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        except INTERPRETER_ERRORS as e:
            raise ArtifactError(f"{source}: corrupted model: {first_line(e)}") from None
        if len(inputs) != 1 or len(outputs) != 1:
            raise ArtifactError(f"{source}: a fused graph has 1 input and 1 output, found "
                                f"{len(inputs)} and {len(outputs)}")
        shape = [int(v) for v in inputs[0]["shape_signature"]]
        if len(shape) != 3 or shape[2] != spec.n_features:
            raise ArtifactError(f"{source}: model input {shape} does not take "
                                f"{spec.n_features} features as its spec says")
        check_dtypes((*inputs, *outputs), source)
        out_shape = [int(v) for v in outputs[0]["shape_signature"]]
        if len(out_shape) != 2 or out_shape[1] != 1:
            raise ArtifactError(f"{source}: model output {out_shape} is not one probability "
                                f"per session ([batch, 1])")
        self._events = TensorPort(inputs[0])
        self._output = TensorPort(outputs[0])
        self._shape = tuple(int(v) for v in inputs[0]["shape"])

    def input_details(self) -> list[dict]:
        return self.interpreter.get_input_details()

    def _failed(self, e: Exception) -> ArtifactError:
        return ArtifactError(f"{self.source}: the model failed to run: {first_line(e)}")

    def score_one(self, x: np.ndarray) -> float:
        """The uncalibrated probability of one encoded session (L, F)."""
        interp = self.interpreter
        try:
            shape = (1, len(x), x.shape[1])
            if shape != self._shape:  # a few microseconds, only when the length changes
                interp.resize_tensor_input(self._events.index, list(shape))
                interp.allocate_tensors()
                self._shape = shape
            # The fused LSTM keeps h and c in variable tensors across invoke(): clear them per session.
            interp.reset_all_variables()
            interp.set_tensor(self._events.index, self._events.to_model(x[None]))
            interp.invoke()
            y = interp.get_tensor(self._output.index)
        except INTERPRETER_ERRORS as e:
            raise self._failed(e) from None
        if y.size != 1:  # a damaged graph can compute an output of another size
            raise self._failed(ValueError(f"output has shape {list(y.shape)}, expected [1, 1]"))
        return float(self._output.from_model(y).reshape(-1)[0])

    def score_packed(self, events: np.ndarray, lengths: np.ndarray, batch_size: int) -> np.ndarray:
        """Many sessions, their events end to end (``events`` (sum L_i, F), ``lengths`` L_i),
        one invoke each: the fused op cannot batch (its state is sized for batch 1)."""
        sessions = np.split(events, np.cumsum(lengths)[:-1])
        return np.array([self.score_one(x) for x in sessions], np.float32)


def spare_rows(steps: int) -> int:
    """The zero rows worth computing to keep a chunk of ``steps`` events at its allocated
    batch. Measured on LSTM(128) (dynamic, AMD EPYC, one thread): re-allocating a chunk for
    another batch costs about 5 + 1.7 T us, a row of it about 0.4 T us; ``4 + 12 // T``
    rows (16 for T = 1, 4 for T = 16) is where the two meet."""
    return 4 + 12 // steps


class _Chunk:
    """One ``chunk_T`` signature: its subgraph, ports and the batch it is allocated for."""

    def __init__(self, steps: int, units: int, subgraph: int, ins: dict[str, dict],
                 outs: dict[str, dict]) -> None:
        self.steps, self.units = steps, units
        self.subgraph = subgraph
        self.events, self.h, self.c = TensorPort(ins["events"]), TensorPort(ins["h"]), TensorPort(ins["c"])
        self.p, self.h_out, self.c_out = (TensorPort(outs["probability"]), TensorPort(outs["h"]),
                                          TensorPort(outs["c"]))
        self.batch = 0  # not allocated yet: a signature's subgraph is allocated on first use
        self.buffers: tuple[np.ndarray, ...] = ()  # events, h, c tensors, valid until re-allocated


class ChunkedGraph:
    """The unrolled graph: signatures ``chunk_T`` (``events [B, T, F], h [B, U], c [B, U] ->
    probability [B, 1], h, c``), chained to cover a session.

    The chunks are driven through the interpreter's signature calls by subgraph index
    (resize, allocate, set, invoke, get), as its SignatureRunner does, without the runner's
    per-call dictionaries and resize-allocate on every call: about 2 us less per chunk,
    which is a tenth of a three-event session's time.
    """

    def __init__(self, interpreter, spec: FeatureSpec, source: str, max_rows: int | None = None,
                 split_chunks: bool = False) -> None:
        """Find and check the chunks.

        Args:
            interpreter, spec, source: as `whole_graph`.
            split_chunks: batches may run a chunk as the power-of-two chunks that add up to it
                (3 as 2 then 1), a stage less per batch, because they compute the same bits
                (FLOAT_STATE_PRECISIONS); False: batches run `chunk_plan` as `score_one` does.
            max_rows: the most sessions in one invoke, whatever ``batch_size`` says (1 for a
                backend of edge_runtime.backends.ONE_SESSION_PER_INVOKE); None: no limit.

        Raises:
            ArtifactError: no ``chunk_1``, or a chunk whose ports are not the ones above
                (names, shapes, float32 or int8), e.g. an unrolled artifact of an older
                ubp-edge (one graph padded to max_len under a mask).
        """
        self.source = source
        self.interpreter = interpreter
        self.max_rows = max_rows
        self._calls = getattr(interpreter, "_interpreter", None)  # signature calls by subgraph
        if not hasattr(self._calls, "GetSubgraphIndexFromSignature"):
            raise ArtifactError(f"{source}: this interpreter ({type(interpreter).__module__}) cannot "
                                f"run a model's signatures by subgraph; use the fused graph or "
                                f"ai-edge-litert")
        try:
            signatures = interpreter._get_full_signature_list()
        except INTERPRETER_ERRORS as e:
            raise ArtifactError(f"{source}: corrupted model: {first_line(e)}") from None
        chunks = {}
        for key in signatures:
            match = CHUNK_KEY.fullmatch(key)
            if match:
                chunks[int(match.group(1))] = self._chunk(key, int(match.group(1)), spec)
        if 1 not in chunks:
            raise ArtifactError(f"{source}: the unrolled graph has no chunk_1 signature (found "
                                f"{sorted(signatures)}); an unrolled artifact written by an older "
                                f"ubp-edge (one graph padded to max_len under a mask) is not "
                                f"readable: re-run `ubp-edge convert --graph unrolled`")
        if len({chunk.units for chunk in chunks.values()}) != 1:
            raise ArtifactError(f"{source}: the chunks of the unrolled graph disagree on the "
                                f"LSTM's units: {sorted({c.units for c in chunks.values()})}")
        self._chunks = chunks
        self.steps = tuple(sorted(chunks))
        # The chunks batches run, longest first (their stages' order, chunk_plan's).
        self.batch_steps = tuple(t for t in sorted(self.steps, reverse=True)
                                 if not split_chunks or t & (t - 1) == 0)
        self._plan_table = np.zeros((0, len(self.batch_steps), 2), np.int64)
        self._units = chunks[1].units
        self._n_features = spec.n_features

    def _chunk(self, key: str, steps: int, spec: FeatureSpec) -> _Chunk:
        runner = self.interpreter.get_signature_runner(key)
        try:
            ins, outs = runner.get_input_details(), runner.get_output_details()
            subgraph = self._calls.GetSubgraphIndexFromSignature(key)
        except INTERPRETER_ERRORS as e:
            raise ArtifactError(f"{self.source}: corrupted model: {first_line(e)}") from None
        if sorted(ins) != ["c", "events", "h"] or sorted(outs) != ["c", "h", "probability"]:
            raise ArtifactError(f"{self.source}: signature {key} has inputs {sorted(ins)} and outputs "
                                f"{sorted(outs)}, expected events, h, c and probability, h, c")
        check_dtypes((*ins.values(), *outs.values()), self.source)
        shape = {name: [int(v) for v in d["shape_signature"]] for name, d in (*ins.items(), *outs.items())}
        units = shape["h"][-1]
        want = {"events": [-1, steps, spec.n_features], "h": [-1, units], "c": [-1, units],
                "probability": [-1, 1]}
        for name, expected in want.items():
            got = shape[name]
            if len(got) != len(expected) or got[1:] != expected[1:] or units < 1:
                raise ArtifactError(f"{self.source}: signature {key} tensor {name!r} has shape "
                                    f"{got}, expected {expected} (-1: any batch)")
        return _Chunk(steps, units, subgraph, ins, outs)

    def input_details(self) -> list[dict]:
        """The inputs of chunk_1, e.g. to see that an int8-io artifact takes int8."""
        return list(self.interpreter.get_signature_runner(chunk_key(1)).get_input_details().values())

    def _failed(self, e: Exception) -> ArtifactError:
        return ArtifactError(f"{self.source}: the model failed to run: {first_line(e)}")

    def _inputs(self, chunk: _Chunk, rows: int, pad: bool) -> tuple[np.ndarray, ...]:
        """The chunk's input tensors (events, h, c) as arrays over the interpreter's buffers,
        their first ``rows`` rows, for the caller to fill before `_invoke`.

        The chunk is allocated for ``rows`` rows, unless ``pad`` and the batch it has is a
        few rows more (`spare_rows`): then the rows past ``rows`` are zeroed and computed.
        """
        calls, g = self._calls, chunk.subgraph
        batch = chunk.batch if pad and rows < chunk.batch <= rows + spare_rows(chunk.steps) else rows
        if batch != chunk.batch:
            chunk.buffers = ()  # they point into the arena that AllocateTensors replaces
            for port, shape in ((chunk.events, (batch, chunk.steps, self._n_features)),
                                (chunk.h, (batch, chunk.units)), (chunk.c, (batch, chunk.units))):
                calls.ResizeInputTensor(port.index, np.array(shape, np.int32), False, g)
            calls.AllocateTensors(g)
            chunk.batch = batch
            chunk.buffers = tuple(calls.tensor(calls, port.index, g)
                                  for port in (chunk.events, chunk.h, chunk.c))
        if batch == rows:
            return chunk.buffers
        for buffer in chunk.buffers:
            buffer[rows:] = 0
        return tuple(buffer[:rows] for buffer in chunk.buffers)

    def _invoke(self, chunk: _Chunk, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run the chunk on its filled inputs: (probability, h, c) of the first ``rows`` rows."""
        calls, g = self._calls, chunk.subgraph
        calls.Invoke(g)
        p, h, c = (chunk.p.from_model(calls.GetTensor(chunk.p.index, g)),
                   chunk.h_out.from_model(calls.GetTensor(chunk.h_out.index, g)),
                   chunk.c_out.from_model(calls.GetTensor(chunk.c_out.index, g)))
        state = (chunk.batch, chunk.units)
        if p.size != chunk.batch or h.shape != state or c.shape != state:  # a damaged graph can
            raise self._failed(ValueError(f"outputs of shapes {list(p.shape)}, {list(h.shape)}, "
                                          f"{list(c.shape)}, expected [{chunk.batch}, 1], "
                                          f"{list(state)}, {list(state)}"))
        return (p, h, c) if chunk.batch == rows else (p[:rows], h[:rows], c[:rows])

    def score_one(self, x: np.ndarray) -> float:
        """The uncalibrated probability of one encoded session (L, F)."""
        h = c = np.zeros((1, self._units), np.float32)
        start = 0
        try:
            for steps in chunk_plan(len(x), self.steps):
                chunk = self._chunks[steps]
                events_in, h_in, c_in = self._inputs(chunk, 1, pad=False)
                chunk.events.fill(events_in[0], x, slice(start, start + steps))
                chunk.h.fill(h_in, h, slice(None))
                chunk.c.fill(c_in, c, slice(None))
                p, h, c = self._invoke(chunk, 1)
                start += steps
        except INTERPRETER_ERRORS as e:
            raise self._failed(e) from None
        return float(p.reshape(-1)[0])

    def _plans(self, longest: int) -> np.ndarray:
        """Every length's `chunk_plan` over the batch steps, up to ``longest`` events, as a
        table: ``[length, kind, 0]`` the chunks of ``batch_steps[kind]`` events, ``[..., 1]``
        the event they start at. Kept and grown, so a batch looks its sessions' plans up."""
        if len(self._plan_table) <= longest:
            size = max(longest + 1, 2 * len(self._plan_table))
            table = np.zeros((size, len(self.batch_steps), 2), np.int64)
            left, start = np.arange(size), np.zeros(size, np.int64)
            for kind, steps in enumerate(self.batch_steps):
                table[:, kind, 0], table[:, kind, 1] = left // steps, start
                start += (left // steps) * steps
                left %= steps
            self._plan_table = table
        return self._plan_table

    def score_packed(self, events: np.ndarray, lengths: np.ndarray, batch_size: int) -> np.ndarray:
        """Many sessions, their events end to end (``events`` (sum L_i, F), ``lengths`` L_i >= 1),
        chunk by chunk: every session runs its `chunk_plan` over the batch steps (those of
        `score_one`, or their powers of two with ``split_chunks``: the same scores), and all
        sessions go through their 16-event chunks first, a stage per 16, then their 8, 4, 2
        and 1, each stage one invoke of up to ``batch_size`` rows. 64 replayed Taobao prefixes
        of 1-93 events take about 6 invokes, rather than one per session or per distinct
        length; a session's state waits between the stages it sits out.
        """
        n, units = len(lengths), self._units
        if n == 1:
            return np.array([self.score_one(events)], np.float32)
        batch_size = min(batch_size, self.max_rows or batch_size)
        # Row-major: the encoder's output can be column-major, and gathering rows of that
        # into a chunk's buffer took 80 us instead of 1 (measured, 16 rows of 15 features).
        events = np.ascontiguousarray(events, np.float32)
        plan = self._plans(int(lengths.max()))[lengths]  # [n, chunk kinds, (count, offset)]
        first = np.cumsum(lengths) - lengths  # each session's first event
        h = np.zeros((n, units), np.float32)
        c = np.zeros((n, units), np.float32)
        p = np.zeros(n, np.float32)
        try:
            for kind, steps in enumerate(self.batch_steps):
                count = plan[:, kind, 0]
                rows = np.flatnonzero(count)
                if not len(rows):
                    continue
                chunk, span = self._chunks[steps], np.arange(steps)
                at = (first[rows] + plan[rows, kind, 1])[:, None] + span  # rows' events, [B, T]
                for k in range(int(count[rows].max())):
                    if k:  # the rows that have a (k+1)-th chunk of these steps, further on
                        keep = count[rows] > k
                        rows, at = rows[keep], at[keep] + steps
                    # Parts of equal size (300 rows at 256: 150 and 150, not 256 and 44): a
                    # chunk is re-allocated whenever its batch changes.
                    size = -(-len(rows) // -(-len(rows) // batch_size))
                    for lo in range(0, len(rows), size):
                        part = rows[lo:lo + size]
                        events_in, h_in, c_in = self._inputs(chunk, len(part), pad=True)
                        chunk.events.fill(events_in, events, at[lo:lo + size])
                        chunk.h.fill(h_in, h, part)
                        chunk.c.fill(c_in, c, part)
                        out, h[part], c[part] = self._invoke(chunk, len(part))
                        p[part] = out.reshape(-1)  # the last chunk's is the session's
        except INTERPRETER_ERRORS as e:
            raise self._failed(e) from None
        return p


def whole_graph(interpreter, spec: FeatureSpec, graph: str, source: str, backend: str = "",
                precision: str = "") -> FusedGraph | ChunkedGraph:
    """The whole-session graph of kind ``graph`` (``fused`` or ``unrolled``) over ``interpreter``.

    Args:
        interpreter: the artifact's interpreter (edge_runtime.backends.make_interpreter).
        spec: the artifact's FeatureSpec.
        graph: ``fused`` or ``unrolled``.
        source: the artifact's name, for messages.
        backend: the interpreter's backend name (some run a chunk for one session at a time).
        precision: the artifact's precision (FLOAT_STATE_PRECISIONS may split chunks in batches).

    Raises:
        ArtifactError: its ports are not the ones that kind has (see each class).
    """
    if graph == "fused":
        return FusedGraph(interpreter, spec, source)
    return ChunkedGraph(interpreter, spec, source, max_rows=1 if backend in ONE_SESSION_PER_INVOKE else None,
                        split_chunks=precision in FLOAT_STATE_PRECISIONS)

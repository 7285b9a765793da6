"""Whole sessions through an artifact's graph: the fused LSTM op, or chained unrolled chunks.

Two kinds of graph score a whole session (converters.graphs writes both):

- `FusedGraph`: one UNIDIRECTIONAL_SEQUENCE_LSTM op over ``[1, L, F]``, resized to each
  session's length, one session per invoke (its state variables are sized for batch 1).
- `ChunkedGraph`: the unrolled graph, signatures ``chunk_T`` of T events each with the LSTM
  state in and out. A session of L events runs through the chunks of `chunk_plan` (L = 50:
  16, 16, 16, 2), so it is scored whole, at any length, without padding; many sessions go
  through in stages, each chunk of a stage for many sessions in one invoke.

Both score every event of a session, however long: the training window (FeatureSpec.max_len)
does not cut it, so a session's whole score is its live score (edge_runtime.live).
Neither locks nor calibrates: edge_runtime.scorer.Scorer does both around them.

Seams: `whole_graph(interpreter, spec, graph, source)` picks and checks one; both have
``score_one(x)`` and ``score_many(sessions, batch_size)``; `chunk_plan`, `chunk_key`;
`TensorPort`.
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

    def score_many(self, sessions: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
        """One invoke per session: the fused op cannot batch (its state is sized for batch 1)."""
        return np.array([self.score_one(x) for x in sessions], np.float32)


def _padded(x: np.ndarray, rows: int) -> np.ndarray:
    """``x`` with zero rows added up to ``rows`` (np.pad costs several microseconds more)."""
    out = np.zeros((rows, *x.shape[1:]), x.dtype)
    out[:len(x)] = x
    return out


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


class ChunkedGraph:
    """The unrolled graph: signatures ``chunk_T`` (``events [B, T, F], h [B, U], c [B, U] ->
    probability [B, 1], h, c``), chained to cover a session.

    The chunks are driven through the interpreter's signature calls by subgraph index
    (resize, allocate, set, invoke, get), as its SignatureRunner does, without the runner's
    per-call dictionaries and resize-allocate on every call: about 2 us less per chunk,
    which is a tenth of a three-event session's time.
    """

    def __init__(self, interpreter, spec: FeatureSpec, source: str, max_rows: int | None = None) -> None:
        """Find and check the chunks.

        Args:
            interpreter, spec, source: as `whole_graph`.
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
        self._units = chunks[1].units

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

    def _run(self, chunk: _Chunk, events: np.ndarray, h: np.ndarray, c: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        calls, g = self._calls, chunk.subgraph
        rows = batch = len(events)
        if rows < chunk.batch <= rows + rows // 4 + 1:
            # Re-allocating a chunk for another batch costs 8-11 us (measured), about what
            # a quarter more rows cost to compute: pad up to the batch it has instead.
            batch = chunk.batch
            events, h, c = _padded(events, batch), _padded(h, batch), _padded(c, batch)
        if batch != chunk.batch:
            for port, shape in ((chunk.events, (batch, chunk.steps, events.shape[2])),
                                (chunk.h, (batch, h.shape[1])), (chunk.c, (batch, c.shape[1]))):
                calls.ResizeInputTensor(port.index, np.array(shape, np.int32), False, g)
            calls.AllocateTensors(g)
            chunk.batch = batch
        calls.SetTensor(chunk.events.index, chunk.events.to_model(events), g)
        calls.SetTensor(chunk.h.index, chunk.h.to_model(h), g)
        calls.SetTensor(chunk.c.index, chunk.c.to_model(c), g)
        calls.Invoke(g)
        p, h, c = (chunk.p.from_model(calls.GetTensor(chunk.p.index, g)),
                   chunk.h_out.from_model(calls.GetTensor(chunk.h_out.index, g)),
                   chunk.c_out.from_model(calls.GetTensor(chunk.c_out.index, g)))
        state = (batch, chunk.units)
        if p.size != batch or h.shape != state or c.shape != state:  # a damaged graph can
            raise self._failed(ValueError(f"outputs of shapes {list(p.shape)}, {list(h.shape)}, "
                                          f"{list(c.shape)}, expected [{batch}, 1], {list(state)}, "
                                          f"{list(state)}"))
        return (p, h, c) if batch == rows else (p[:rows], h[:rows], c[:rows])

    def score_one(self, x: np.ndarray) -> float:
        """The uncalibrated probability of one encoded session (L, F)."""
        units = self._units
        h = c = np.zeros((1, units), np.float32)
        start, x = 0, x[None]
        try:
            for steps in chunk_plan(len(x[0]), self.steps):
                p, h, c = self._run(self._chunks[steps], x[:, start:start + steps], h, c)
                start += steps
        except INTERPRETER_ERRORS as e:
            raise self._failed(e) from None
        return float(p.reshape(-1)[0])

    def score_many(self, sessions: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
        """Many sessions, in stages: at stage k every session whose chunk plan has a k-th
        chunk of T events runs it in one invoke with the others of that T (``batch_size``
        rows at most), whatever their lengths; its state waits between stages. A batch of
        replayed prefixes of 1 to 100 events then takes a few invokes per stage rather than
        one per distinct length.
        """
        n, units = len(sessions), self._units
        if n == 1:
            return np.array([self.score_one(sessions[0])], np.float32)
        batch_size = min(batch_size, self.max_rows or batch_size)
        lengths = np.fromiter((len(x) for x in sessions), np.int64, count=n)
        events = np.concatenate(sessions)
        start = np.concatenate(([0], np.cumsum(lengths)[:-1]))  # each session's next event
        # Stage k of every session's chunk plan, as a table: plans[i, k] = T, 0 past its end.
        by_length = {int(length): chunk_plan(int(length), self.steps) for length in np.unique(lengths)}
        plans = np.zeros((n, max(len(plan) for plan in by_length.values())), np.int64)
        for length, plan in by_length.items():
            plans[lengths == length, :len(plan)] = plan
        h = np.zeros((n, units), np.float32)
        c = np.zeros((n, units), np.float32)
        p = np.zeros(n, np.float32)
        try:
            for stage in plans.T:
                # This stage's sessions, grouped by the chunk they take: each group's rows are
                # contiguous after one gather, so its invokes read and write slices.
                active = np.flatnonzero(stage)
                order = active[np.argsort(stage[active], kind="stable")]
                steps_of, hs, cs, at = stage[order], h[order], c[order], start[order]
                bounds = np.flatnonzero(np.diff(steps_of)) + 1
                for lo, hi in zip(np.concatenate(([0], bounds)).tolist(),
                                  np.concatenate((bounds, [len(order)])).tolist(), strict=True):
                    steps = int(steps_of[lo])
                    # Parts of equal size (300 rows at 256: 150 and 150, not 256 and 44): a
                    # chunk is re-allocated whenever its batch changes.
                    size = -(-(hi - lo) // -(-(hi - lo) // batch_size))
                    for k in range(lo, hi, size):
                        end = min(k + size, hi)
                        x = events[at[k:end, None] + np.arange(steps)]  # [B, T, F]
                        out, hs[k:end], cs[k:end] = self._run(self._chunks[steps], x, hs[k:end], cs[k:end])
                        p[order[k:end]] = out.reshape(-1)
                h[order], c[order] = hs, cs
                start[order] = at + steps_of
        except INTERPRETER_ERRORS as e:
            raise self._failed(e) from None
        return p


def whole_graph(interpreter, spec: FeatureSpec, graph: str, source: str, backend: str = ""
                ) -> FusedGraph | ChunkedGraph:
    """The whole-session graph of kind ``graph`` (``fused`` or ``unrolled``) over ``interpreter``.

    Args:
        interpreter: the artifact's interpreter (edge_runtime.backends.make_interpreter).
        spec: the artifact's FeatureSpec.
        graph: ``fused`` or ``unrolled``.
        source: the artifact's name, for messages.
        backend: the interpreter's backend name (some run a chunk for one session at a time).

    Raises:
        ArtifactError: its ports are not the ones that kind has (see each class).
    """
    if graph == "fused":
        return FusedGraph(interpreter, spec, source)
    return ChunkedGraph(interpreter, spec, source, max_rows=1 if backend in ONE_SESSION_PER_INVOKE else None)

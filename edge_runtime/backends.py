"""TFLite interpreters: ai-edge-litert first, then tflite-runtime, then TensorFlow's tf.lite.

Each is imported only when asked for, so the runtime never loads TensorFlow unless the
device has nothing else. Seams: BACKENDS (name -> module and class, in "auto" order),
`interpreter_class`, `backend_version`, `runtime_version` and `check_runtime` (the model's
``min_runtime_version`` against the backend's TFLite runtime), `delegate_fault` (models a
backend's default delegate gets wrong, DELEGATE_FAULTS), `check_model` (the graph check and
memory bound, without an interpreter), and `make_interpreter`, the one way the runtime
builds an interpreter: after `check_runtime`, `check_model` and a delegate-free trial run,
with what the native libraries print captured by edge_runtime.native_logs (kept on the error
when the model is refused, shown as written under ``--verbose``). A model that could still
crash a kernel is kept out of the process by edge_runtime.verify, which runs all of this in
a child first.
"""

from __future__ import annotations

import importlib
import os
import sys

import numpy as np

from edge_runtime.errors import ArtifactError, ConfigError, first_line
from edge_runtime.native_logs import quiet_native
from edge_runtime.tflite_reader import (
    check_graph,
    min_runtime_version,
    operator_codes,
    tensor_types,
    version_tuple,
)

# name -> (module, attribute): the interpreter class of each backend, in "auto" order.
BACKENDS: dict[str, tuple[str, str]] = {
    "ai-edge-litert": ("ai_edge_litert.interpreter", "Interpreter"),
    "tflite-runtime": ("tflite_runtime.interpreter", "Interpreter"),
    "tensorflow": ("tensorflow.lite.python.interpreter", "Interpreter"),
}


# The TFLite runtime that each ai-edge-litert release carries, for a model's
# min_runtime_version: LiteRT numbers its packages apart from TensorFlow, and its Python
# interpreter does not say which runtime it is. Read from the native library's version string
# (`strings ai_edge_litert/libpywrap_litert_common.so`: "2.22.0-dev0+selfbuilt" for 2.3.0,
# the release pyproject.toml pins). A release not listed has no known runtime version: its
# models are not checked before the interpreter sees them, which then names any op version it
# lacks. tflite-runtime and TensorFlow number their interpreter with their own version.
LITERT_RUNTIMES = {"2.3.0": "2.22.0-dev0"}


# Backends that run an unrolled graph's chunks one session at a time (edge_runtime.whole_graph):
# tflite-runtime 2.14 crashed (SIGSEGV, in invoke) re-running a chunk at a batch of 3 after
# the other chunks had been allocated for other batches (measured on the Taobao run's
# unrolled float32 artifact); at one session per invoke it scores every length, as tested.
ONE_SESSION_PER_INVOKE = frozenset({"tflite-runtime"})


# Models a backend must run on its built-in kernels, without its default XNNPACK delegate:
# backend -> [(what the model has: BuiltinOperator codes and TensorTypes, all of them), why].
# tflite-runtime 2.14.0: the fused graph with float16 weights (their DEQUANTIZE to float32
# feeds the UNIDIRECTIONAL_SEQUENCE_LSTM op, which the delegate leaves to the built-in
# kernels) scored wrong once its input was resized to another session length: off by up to
# 0.58 from ai-edge-litert on the Taobao run's test sessions, silently; right on the built-in
# kernels, and in a fresh interpreter. Measured right with the delegate: float32, both
# graphs; the unrolled float16 graph; ai-edge-litert 2.3.0 and TensorFlow 2.21 on all.
UNIDIRECTIONAL_SEQUENCE_LSTM, FLOAT16 = 44, 1
DELEGATE_FAULTS: dict[str, list[tuple[frozenset[int], frozenset[int], str]]] = {
    "tflite-runtime": [(frozenset({UNIDIRECTIONAL_SEQUENCE_LSTM}), frozenset({FLOAT16}),
                        "fused LSTM with float16 weights: wrong scores after a resize")],
}


def delegate_fault(model: bytes, name: str) -> str | None:
    """Why ``name``'s default delegate must not run ``model`` (DELEGATE_FAULTS), or None.

    Args:
        model: the `.tflite` bytes.
        name: a name of BACKENDS.
    """
    faults = DELEGATE_FAULTS.get(name)
    if not faults:
        return None
    codes = operator_codes(model)
    faults = [(kinds, why) for ops, kinds, why in faults if ops <= codes]
    types = tensor_types(model) if faults else set()  # the walk over every tensor, only if needed
    return next((why for kinds, why in faults if kinds <= types), None)


def interpreter_class(backend: str = "auto"):
    """(class, backend name) for ``backend``, or the first importable one for ``auto``.

    Args:
        backend: ``auto`` or a name of BACKENDS.

    Returns:
        (the interpreter class, the backend's name).

    Raises:
        ConfigError: an unknown backend name, or the requested backend is not installed.
    """
    if backend != "auto" and backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} not in {['auto', *BACKENDS]}")
    names = list(BACKENDS) if backend == "auto" else [backend]
    errors = []
    for name in names:
        module, attr = BACKENDS[name]
        try:
            with quiet_native():  # importing TensorFlow prints its start-up banners to fd 2
                return getattr(importlib.import_module(module), attr), name
        except ImportError as e:
            errors.append(f"{name}: {e}")
    raise ConfigError("no TFLite interpreter is importable (" + "; ".join(errors) +
                      "); install ai-edge-litert")


def backend_version(name: str) -> str:
    """What identifies an imported backend's build: its package's version and the file of its
    interpreter module (with size and modification time, which change with any reinstall).

    Read from the imported modules, not from the installed distributions' metadata, which
    costs about 25 ms (a scan of sys.path) on every load.

    Args:
        name: a name of BACKENDS, already imported (by `interpreter_class`).

    Returns:
        e.g. ``"2.3.0 /venv/.../ai_edge_litert/interpreter.py 9511 1732950000000000000"``.
    """
    module, _ = BACKENDS[name]
    package = sys.modules.get(module.split(".")[0])
    version = getattr(package, "__version__", "unknown")
    path = getattr(sys.modules.get(module), "__file__", None) or ""
    try:
        st = os.stat(path)
        return f"{version} {path} {st.st_size} {st.st_mtime_ns}"
    except OSError:
        return f"{version} {path}"


def runtime_version(name: str) -> str | None:
    """The TFLite runtime version of an imported backend, to compare with the
    ``min_runtime_version`` a model carries.

    Args:
        name: a name of BACKENDS, already imported (by `interpreter_class`).

    Returns:
        e.g. ``"2.14.0"`` for tflite-runtime 2.14.0, ``"2.22.0-dev0"`` for ai-edge-litert
        2.3.0 (LITERT_RUNTIMES); None when it is not known (an ai-edge-litert release not in
        that table).
    """
    module, _ = BACKENDS[name]
    version = getattr(sys.modules.get(module.split(".")[0]), "__version__", None)
    if name == "ai-edge-litert":
        return LITERT_RUNTIMES.get(version)
    return version


def check_runtime(model: bytes, name: str) -> None:
    """Refuse, by name, a model that needs a newer TFLite runtime than the backend's, before
    an interpreter sees it (which would say "Didn't find op for builtin opcode
    'FULLY_CONNECTED' version '12'", naming neither the runtime nor what to do).

    Args:
        model: the `.tflite` bytes (its ``min_runtime_version`` entry is what is checked: an
            artifact's step graph of spec version 1, a model of its own, is checked when it
            is loaded).
        name: a name of BACKENDS, already imported.

    Raises:
        ArtifactError: the backend's runtime is older than the model's min_runtime_version
            (MalformedModelError: the entry is not a version number).
    """
    need = min_runtime_version(model)
    have = runtime_version(name)
    if need is None or have is None or version_tuple(have) >= version_tuple(need):
        return
    raise ArtifactError(f"needs a TFLite runtime >= {need} (its min_runtime_version); "
                        f"{_runtime_name(name)} is older: use ai-edge-litert, or convert the "
                        f"model again (the README's backend table gives each precision's "
                        f"minimum runtime)")


def _runtime_name(name: str) -> str:
    """``"tflite-runtime 2.14.0"``, ``"ai-edge-litert 2.3.0 (TFLite 2.22.0-dev0)"``."""
    module, _ = BACKENDS[name]
    package = getattr(sys.modules.get(module.split(".")[0]), "__version__", "unknown")
    runtime = runtime_version(name)
    return f"{name} {package}" + ("" if runtime in (None, package) else f" (TFLite {runtime})")


# What an interpreter raises when the model it holds is damaged: it refuses to build or
# allocate it (ValueError, RuntimeError), a tensor or signature index points nowhere
# (ValueError), a tensor name is not UTF-8 (UnicodeDecodeError, a ValueError), or a
# kernel finds an input without data at invoke (RuntimeError). Our own inputs are
# checked before they reach the interpreter, so one of these is the model's fault.
INTERPRETER_ERRORS = (ValueError, RuntimeError)
# Tensor memory allowed beyond the file's own size (weights are at most the file). A
# ubp-edge graph's activations are at most a few hundred KB at batch 1 (up to 16 events of
# LSTM(128) gates in a chunk), so this is far above any of ours; a flipped byte in a tensor's
# shape, however, passes the flatbuffer verifier and makes allocate_tensors() claim gigabytes, which is
# an out-of-memory kill on a small device (seen while fuzzing: [1, 16] -> [10223617, 16]).
TENSOR_MEMORY_HEADROOM = 64 << 20


def make_interpreter(model: bytes, backend: str = "auto", num_threads: int = 1,
                     verified: bool = False):
    """A ready interpreter over ``model`` bytes and the backend's name.

    First the model's ``min_runtime_version`` is checked against the backend's runtime
    (`check_runtime`): a model that needs a newer one is refused by name. Then three gates
    stand before the interpreter that is returned, each for damage that passes the
    flatbuffer verifier (fuzzing re-sealed artifacts found every one of them):

    1. our own reader checks the graph (edge_runtime.tflite_reader.check_graph): no
       operator writes a graph input, a constant or another operator's output, and the
       tensors fit in memory;
    2. the graph is built on the built-in kernels alone, without the default XNNPACK
       delegate, allocated and run once on zeros: each kernel's Prepare checks its
       operator's inputs, outputs and options (split.cc: "NumOutputs(node) != num_splits"),
       including those of operators whose Prepare allocate_tensors() defers to the first
       invoke (after a dynamic-shaped tensor, as in the unrolled graph);
    3. only then is it built again with the delegate, which trusts all of that: SPLIT nodes
       with a flipped ``num_splits``, no options or no outputs killed the process with
       SIGSEGV inside allocate_tensors() when the delegate met them first.

    Gate 2 costs one more build and invoke of the graph at load (about 0.6 ms for the tiny
    test model, 4 ms for its unrolled graph). A model the backend's delegate is known to get
    wrong (DELEGATE_FAULTS) is returned on the built-in kernels. What the interpreter prints
    while it is built (delegate banners, kernel errors) is captured
    (edge_runtime.native_logs.quiet_native).

    ``verified`` skips the runtime check and gates 1 and 2: for bytes that edge_runtime.verify
    has seen pass them, and everything after, in a child process with this backend and
    runtime.

    Args:
        model: the `.tflite` bytes.
        backend: ``auto`` or a name of BACKENDS.
        num_threads: the interpreter's threads.
        verified: the bytes passed edge_runtime.verify (their verdict is ok).

    Returns:
        (an allocated interpreter, the backend's name).

    Raises:
        MalformedModelError: the graph check refuses the model (edge_runtime.tflite_reader).
        ArtifactError: the backend's runtime is older than the model's min_runtime_version;
            the interpreter refuses the model (corrupted or unsupported ops), or its tensors
            would need far more memory than the file could justify; the captured native
            output is on the error (edge_runtime.native_logs.native_log_of).
        ConfigError: the backend is unknown or not installed.
    """
    cls, name = interpreter_class(backend)
    if not verified:  # a verdict was reached by a child that made this check with this backend
        check_runtime(model, name)
    with quiet_native():
        try:
            if not verified:
                check_model(model)
                plain = _without_default_delegates(cls, model, num_threads)
                plain.allocate_tensors()
                for port in plain.get_input_details():
                    plain.set_tensor(port["index"], np.zeros(port["shape"], port["dtype"]))
                plain.invoke()
                _run_other_signatures(plain)
                del plain
            if delegate_fault(model, name):
                interpreter = _without_default_delegates(cls, model, num_threads)
            else:
                interpreter = cls(model_content=model, num_threads=num_threads)
            interpreter.allocate_tensors()
        except INTERPRETER_ERRORS as e:
            raise ArtifactError(f"{name} cannot load the model: {first_line(e)}"
                                f"{_runtime_hint(model, name, e)}") from None
    return interpreter, name


def _runtime_hint(model: bytes, name: str, error: Exception) -> str:
    """For an interpreter that lacks an op version (a runtime `runtime_version` does not know):
    what the model says it needs, and which runtime this is."""
    if "Didn't find op" not in str(error):
        return ""
    try:
        need = min_runtime_version(model)
    except ArtifactError:  # the interpreter's own message says enough
        return ""
    return "" if need is None else (f" (the model needs a TFLite runtime >= {need}, its "
                                    f"min_runtime_version; this is {_runtime_name(name)})")


def _run_other_signatures(interpreter) -> None:
    """Gate 2 for a model of several signatures (the unrolled graph's chunks): each one's
    subgraph built, allocated and run once on zeros, as the first one was by invoke()."""
    signatures = interpreter.get_signature_list()
    if len(signatures) < 2:
        return
    for key in signatures:
        runner = interpreter.get_signature_runner(key)
        runner(**{name: np.zeros(d["shape"], d["dtype"]) for name, d in runner.get_input_details().items()})


def _without_default_delegates(cls, model: bytes, num_threads: int):
    """An interpreter over ``model`` on the built-in kernels only (unallocated)."""
    resolver = getattr(importlib.import_module(cls.__module__), "OpResolverType", None)
    builtin = getattr(resolver, "BUILTIN_WITHOUT_DEFAULT_DELEGATES", None)
    if builtin is None:  # an interpreter too old to choose; it has no default delegate either
        return cls(model_content=model, num_threads=num_threads)
    return cls(model_content=model, num_threads=num_threads, experimental_op_resolver_type=builtin)


def check_model(model: bytes) -> None:
    """Check a model without an interpreter: its graph (edge_runtime.tflite_reader.check_graph)
    and the memory its tensors take at their stored shapes.

    Args:
        model: the `.tflite` bytes.

    Raises:
        MalformedModelError: the graph check refuses the model.
        ArtifactError: not a TFLite model, or its tensors would need far more memory than the
            file could justify (a corrupted shape).
    """
    total, largest = check_graph(model)
    limit = len(model) + TENSOR_MEMORY_HEADROOM
    if total > limit:
        raise ArtifactError(f"the model's tensors would take {total / 2**20:,.0f} MiB, over the "
                            f"{limit / 2**20:,.0f} MiB allowed for a {len(model):,}-byte file "
                            f"(corrupted shape? the largest is {largest})")

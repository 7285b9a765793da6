"""TFLite interpreters: ai-edge-litert first, then tflite-runtime, then TensorFlow's tf.lite.

Each is imported only when asked for, so the runtime never loads TensorFlow unless the
device has nothing else.
"""

from __future__ import annotations

import importlib

from edge_runtime.errors import ArtifactError, ConfigError

# name -> (module, attribute): the interpreter class of each backend, in "auto" order.
BACKENDS: dict[str, tuple[str, str]] = {
    "ai-edge-litert": ("ai_edge_litert.interpreter", "Interpreter"),
    "tflite-runtime": ("tflite_runtime.interpreter", "Interpreter"),
    "tensorflow": ("tensorflow.lite.python.interpreter", "Interpreter"),
}


def interpreter_class(backend: str = "auto"):
    """(class, backend name) for ``backend``, or the first importable one for ``auto``.

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
            return getattr(importlib.import_module(module), attr), name
        except ImportError as e:
            errors.append(f"{name}: {e}")
    raise ConfigError("no TFLite interpreter is importable (" + "; ".join(errors) +
                      "); install ai-edge-litert")


def make_interpreter(model: bytes, backend: str = "auto", num_threads: int = 1):
    """A ready interpreter over ``model`` bytes and the backend's name.

    Raises:
        ArtifactError: the interpreter refuses the model (corrupted or unsupported ops).
    """
    cls, name = interpreter_class(backend)
    try:
        interpreter = cls(model_content=model, num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"{name} cannot load the model: {first}") from None
    return interpreter, name

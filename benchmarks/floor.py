"""The physical floor of one session's work on this machine, one core: what any engine's
whole-session latency can be read against.

``python -m benchmarks.floor`` prints a short table on stderr and a JSON object on stdout
(options: ``--steps --features --units --matmul --repeat --no-tflite``). Two floors, for the
work of one session of ``steps`` events through LSTM(``units``) over ``features`` features:

(a) throughput: its multiply-adds, ``steps * (features * 4U + U * 4U)`` (3.66 M for 50 steps
    of LSTM(128) over 15 features), at this core's measured peak: the best of many float32
    matmuls in NumPy (``size**3`` multiply-adds each; 512 by default: a few milliseconds
    each, so that some run between the scheduler's preemptions on a shared machine, where
    2048 ones measured half the peak). What an engine would reach if every multiply-add ran
    at peak, which the recurrence does not allow;
(b) latency: a chain of ``steps`` dependent matrix-vector products ``h <- tanh(z0 + z1 + z2 +
    z3)`` where ``z = h @ U``, ``U`` of ``U x 4U`` (so all four gate blocks of the product
    are used, as an LSTM step uses them), each step waiting on the one before, as the
    recurrence does. Measured in NumPy float32, with NumPy's own per-call cost measured apart
    (the same chain with ``U`` 1 x 4: as many NumPy calls, no arithmetic to speak of) and
    subtracted; and, where TensorFlow is installed to build it, as one LiteRT graph (50
    FULLY_CONNECTED sharing one weight tensor, run by `CompiledModel` on XNNPACK with its
    weight cache in memory, so the weight is packed once) with float32 weights and with int8
    weights (dynamic range quantization: int8 weights, activations quantized per call).

Every figure is the best of ``repeat`` timed runs (after a warm-up): a floor is what the core
can do when nothing else runs. NumPy's BLAS is pinned to one thread (the environment before
NumPy is imported, when run as a script; threadpoolctl's limit around every measure, where
it is installed); LiteRT runs one thread.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    # Before NumPy loads its BLAS: one thread, whatever threadpoolctl can do later.
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from edge_runtime.errors import ConfigError, first_line  # noqa: E402

STEPS, FEATURES, UNITS = 50, 15, 128
MATMUL, REPEAT = 512, 200
PEAK_REPEAT, WARMUP = 50, 5
# LiteRT float32 must compute the same chain as NumPy: a check that the graph measured is
# the chain (float32 sums in another order differ by about 1e-6 here).
TFLITE_MAX_ABS_DIFF = 1e-4


def lstm_multiply_adds(steps: int, features: int, units: int) -> int:
    """The multiply-adds of ``steps`` LSTM(``units``) steps over ``features`` features: the input
    projection (``features x 4U``) and the recurrent product (``U x 4U``) of every step."""
    return steps * (features * 4 * units + units * 4 * units)


def _single_thread():
    """threadpoolctl's one-thread limit for BLAS and OpenMP, or nothing where it is missing
    (then the environment set before NumPy loaded decides)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def _best_ns(run: Callable[[], object], repeat: int, warmup: int = WARMUP) -> int:
    """The fastest of ``repeat`` timed calls of ``run``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    best = None
    clock = time.perf_counter_ns
    for _ in range(repeat):
        start = clock()
        run()
        elapsed = clock() - start
        best = elapsed if best is None else min(best, elapsed)
    return best


def fma_peak(size: int = MATMUL, repeat: int = PEAK_REPEAT) -> float:
    """This core's float32 multiply-adds per second: the best of ``repeat`` NumPy matmuls of
    two ``size x size`` matrices (``size**3`` multiply-adds each), one BLAS thread."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty((size, size), np.float32)
    with _single_thread():
        ns = _best_ns(lambda: np.matmul(a, b, out=out), repeat, warmup=2)
    return size ** 3 / (ns / 1e9)


def chain_weights(units: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A ``units x 4 units`` float32 weight scaled so that the chain neither saturates nor
    vanishes, and a starting ``h`` of ``1 x units``."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((units, 4 * units)) / np.sqrt(4 * units)).astype(np.float32)
    return w, (0.1 * rng.standard_normal((1, units))).astype(np.float32)


def numpy_chain(w: np.ndarray, h: np.ndarray, steps: int) -> np.ndarray:
    """``steps`` dependent products: ``z = h @ w``, then ``h = tanh`` of the sum of z's four
    ``U``-wide blocks."""
    u = w.shape[0]
    for _ in range(steps):
        z = h @ w
        h = np.tanh(z[:, :u] + z[:, u:2 * u] + z[:, 2 * u:3 * u] + z[:, 3 * u:])
    return h


def numpy_chain_us(units: int, steps: int, repeat: int) -> float:
    """The best time of `numpy_chain` (float32, one BLAS thread), in microseconds."""
    w, h = chain_weights(units)
    with _single_thread():
        return _best_ns(lambda: numpy_chain(w, h, steps), repeat) / 1e3


def tflite_chain(units: int, steps: int, int8_weights: bool) -> bytes:
    """The chain of `numpy_chain` as a LiteRT flatbuffer, built with TensorFlow: input ``h``
    ``[1, U]``, output the last h; ``int8_weights``: dynamic range quantization.

    Raises:
        ImportError: no TensorFlow here.
    """
    import tensorflow as tf

    w0, _ = chain_weights(units)

    @tf.function(input_signature=[tf.TensorSpec([1, units], tf.float32, name="h")])
    def chain(h):
        w = tf.constant(w0)
        for _ in range(steps):
            z = tf.matmul(h, w)
            h = tf.tanh(z[:, :units] + z[:, units:2 * units] + z[:, 2 * units:3 * units]
                        + z[:, 3 * units:])
        return {"h": h}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([chain.get_concrete_function()], chain)
    if int8_weights:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def tflite_chain_us(units: int, steps: int, repeat: int, int8_weights: bool) -> float:
    """The best time of the `tflite_chain` graph under LiteRT's `CompiledModel` (CPU, XNNPACK,
    one thread, weight cache in memory), in microseconds.

    Raises:
        ImportError: no TensorFlow or ai-edge-litert here.
        ConfigError: the graph is not fully delegated to XNNPACK, or (float32) its output is
            not the NumPy chain's.
    """
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.cpu_options import CpuOptions
    from ai_edge_litert.options import Options

    from edge_runtime.native_logs import quiet_native

    model = tflite_chain(units, steps, int8_weights)
    w, h = chain_weights(units)

    def run() -> tuple[int, np.ndarray]:
        compiled = CompiledModel.from_buffer(model, options=Options(cpu_options=CpuOptions(
            num_threads=1, xnnpack_weight_cache_path=":memory:")))
        if not compiled.is_fully_accelerated():
            raise ConfigError("the chain graph is not fully delegated to XNNPACK")
        inputs, outputs = compiled.create_input_buffers(0), compiled.create_output_buffers(0)
        inputs[0].write(h)
        ns = _best_ns(lambda: compiled.run_by_index(0, inputs, outputs), repeat)
        return ns, outputs[0].read(units, np.float32)

    # LiteRT logs the accelerators it registers, cannot load and destroys: kept off the
    # terminal, the model and its environment collected inside the block.
    with quiet_native():
        try:
            ns, got = run()
        finally:
            gc.collect()
    if not int8_weights:
        diff = float(np.max(np.abs(got - numpy_chain(w, h, steps).reshape(-1))))
        if not diff <= TFLITE_MAX_ABS_DIFF:
            raise ConfigError(f"the LiteRT chain differs from NumPy's by {diff:.3g}")
    return ns / 1e3


def measure_floor(steps: int = STEPS, features: int = FEATURES, units: int = UNITS,
                  matmul: int = MATMUL, repeat: int = REPEAT, tflite: bool = True) -> dict:
    """Both floors of one session's work on this machine.

    Args:
        steps, features, units: the session and the model (50 events, 15 features, LSTM(128)).
        matmul: the size of the square matmul that measures the FMA peak.
        repeat: timed runs of each chain (the best is kept).
        tflite: also the LiteRT chains (builds them with TensorFlow).

    Returns:
        A JSON-ready dict: ``machine``, the sizes, ``multiply_adds`` (the session's),
        ``fma_peak_multiply_adds_per_s``, ``throughput_floor_us`` (a), and for (b)
        ``chain_numpy_float32_us``, ``numpy_call_overhead_us``, ``chain_numpy_float32_net_us``,
        ``chain_tflite_float32_us`` and ``chain_tflite_int8_us`` (None with ``tflite_note``
        saying why, where LiteRT could not run them).

    Raises:
        ConfigError: a size or count below 1.
    """
    from benchmarks.suite import machine

    bad = {k: v for k, v in (("steps", steps), ("features", features), ("units", units),
                             ("matmul", matmul), ("repeat", repeat)) if v < 1}
    if bad:
        raise ConfigError("floor sizes must be positive: " + ", ".join(f"{k} {v!r}" for k, v in bad.items()))
    work = lstm_multiply_adds(steps, features, units)
    peak = fma_peak(matmul)
    chain = numpy_chain_us(units, steps, repeat)
    overhead = numpy_chain_us(1, steps, repeat)
    result = {"machine": machine(), "threads": 1, "steps": steps, "features": features, "units": units,
              "multiply_adds": work, "chain_multiply_adds": steps * units * 4 * units,
              "fma_matmul_size": matmul, "fma_peak_multiply_adds_per_s": peak,
              "throughput_floor_us": work / peak * 1e6,
              "chain_numpy_float32_us": chain, "numpy_call_overhead_us": overhead,
              "chain_numpy_float32_net_us": max(chain - overhead, 0.0),
              "chain_tflite_float32_us": None, "chain_tflite_int8_us": None, "tflite_note": None}
    if tflite:
        try:
            result["chain_tflite_float32_us"] = tflite_chain_us(units, steps, repeat, int8_weights=False)
            result["chain_tflite_int8_us"] = tflite_chain_us(units, steps, repeat, int8_weights=True)
            result["tflite_note"] = ("LiteRT CompiledModel, XNNPACK, 1 thread, weight cache in memory; "
                                     "int8: dynamic range quantization")
        except Exception as e:  # noqa: BLE001 - no TensorFlow or LiteRT here: the NumPy floors stand
            result["tflite_note"] = f"not measured: {first_line(e, with_type=True)}"
    else:
        result["tflite_note"] = "not measured (--no-tflite)"
    return result


def table(result: dict) -> str:
    """The floors as a few lines for a person."""
    def us(key: str) -> str:
        value = result[key]
        return "-" if value is None else f"{value:8.1f} us"

    u, s = result["units"], result["steps"]
    return "\n".join([
        f"Floor of one session on {result['machine']['cpu']}, one core: {s} steps of LSTM({u}) over "
        f"{result['features']} features = {result['multiply_adds'] / 1e6:.2f} M multiply-adds",
        f"  FMA peak (float32 matmul {result['fma_matmul_size']}): "
        f"{result['fma_peak_multiply_adds_per_s'] / 1e9:.1f} G multiply-adds/s",
        f"  (a) throughput floor, the multiply-adds at peak:   {us('throughput_floor_us')}",
        f"  (b) chain of {s} h <- tanh(h @ U), U {u}x{4 * u} ({result['chain_multiply_adds'] / 1e6:.2f} M):",
        f"      NumPy float32                                  {us('chain_numpy_float32_us')}",
        f"      NumPy's call overhead in it                    {us('numpy_call_overhead_us')}",
        f"      NumPy float32, overhead taken off              {us('chain_numpy_float32_net_us')}",
        f"      LiteRT float32 weights                         {us('chain_tflite_float32_us')}",
        f"      LiteRT int8 weights                            {us('chain_tflite_int8_us')}",
        f"      ({result['tflite_note']})",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS, help="events per session (50)")
    parser.add_argument("--features", type=int, default=FEATURES, help="features per event (15)")
    parser.add_argument("--units", type=int, default=UNITS, help="LSTM units (128)")
    parser.add_argument("--matmul", type=int, default=MATMUL, help="square matmul size for the FMA peak")
    parser.add_argument("--repeat", type=int, default=REPEAT, help="timed runs per chain; the best is kept")
    parser.add_argument("--no-tflite", dest="tflite", action="store_false",
                        help="skip the LiteRT chains (they need TensorFlow to build)")
    args = parser.parse_args(argv)
    try:
        result = measure_floor(args.steps, args.features, args.units, args.matmul, args.repeat, args.tflite)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(table(result), file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

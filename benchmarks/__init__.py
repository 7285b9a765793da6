"""Benchmarks of ubp-edge: the library behind `ubp-edge benchmark`, and the suites and scripts.

Library (imported by the CLI, the suites and the tests):

- `benchmarks.suite`: `BenchmarkRequest` -> `run_benchmark` -> `BenchmarkResult`; the
  stages (find the artifacts, the sessions, artifact rows, peer rows, ratios) and `machine`.
- `benchmarks.columns`: `COLUMNS`, the one description of a benchmark row's keys
  (`ROW_KEYS`), its terminal headers, report headers and cell formats.
- `benchmarks.report`: `terminal_table` (plain data the CLI renders with Rich) and
  `write_report` (Markdown, JSON and the latency CDF plot).
- `benchmarks.measure`: the figures of one engine, all timed through
  `edge_runtime.timing.time_calls`; cold start and live memory in fresh processes through
  `edge_runtime.probes` (the device side, which imports nothing but edge_runtime).
- `benchmarks.sessions`: the sessions measured: replayed scorable prefixes of a log, the
  embedded synthetic default (both through `trainer.sessions.sessionize`), fixed lengths.
- `benchmarks.engines`: the peers of ``--peers``: Keras, ONNX Runtime and NumPy on a run's
  weights, at batch 1 and in batches, each checked against the stored Keras probabilities.

Suites and scripts (run from this folder, not imported):

- ``test_bench_runtime.py`` + ``conftest.py``: pytest-benchmark suites (``make bench``).
- ``encode_throughput.py``: read / sessionize / encode throughput of a log.
- ``live_memory.py``: per-event latency and memory with many live sessions.
- ``prepare_scale.py``: `prepare` events/s and peak RSS on 1/4/16 M-event synthetic logs, both
  engines (``python -m benchmarks.prepare_scale``).
- ``floor.py``: this machine's single-core floor for one session's work, the multiply-adds
  of a 50-step LSTM(128) against the core's peak and a chain of 50 matrix-vector products
  (``python -m benchmarks.floor``).
"""

"""`ubp-edge benchmark`: size, cold start, latency, throughput and memory of every artifact,
and, with ``--peers``, of other engines running the same weights on the same sessions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

ROW_KEYS = ("engine", "precision", "graph", "status", "reason", "size_bytes", "cold_start_ms",
            "rss_mb", "rss_live_mb", "session_p50_us", "session_p95_us", "session_p99_us",
            "session1_p50_us", "session10_p50_us", "session50_p50_us", "event_p50_us",
            "event_p95_us", "event_p99_us", "sessions_per_s", "ratio_to_best")
# Lower is better for every figure compared across engines but throughput.
RATIO_KEYS = ("session_p50_us", "session50_p50_us", "sessions_per_s")
ENGINE = "ubp-edge"


def _synthetic_sessions(n_users: int = 150) -> list[list[dict]]:
    """The embedded default: seeded synthetic sessions, split at 30-minute gaps per user."""
    from trainer.synthetic import generate_events

    ev = generate_events(n_users=n_users, days=5, seed=11)
    sessions, current, last = [], [], (None, -1e18)
    for user, ts, event, item, category, price in zip(ev["user"], ev["ts"], ev["event"], ev["item"],
                                                      ev["category"], ev["price"], strict=True):
        if current and (user != last[0] or ts - last[1] > 1800):
            sessions.append(current)
            current = []
        if event == "purchase":  # score what comes before the purchase, as training did
            last = (user, float(ts))
            continue
        current.append({"ts": float(ts), "event": str(event), "item": str(item),
                        "category": str(category), "price": float(price)})
        last = (user, float(ts))
    if current:
        sessions.append(current)
    return [s for s in sessions if s]


def _replayed_sessions(data: Path, format: str | None, limit: int = 3000) -> list[list[dict]]:
    """Scorable prefixes of a real log, as the event dicts a device would send."""
    from trainer.readers import read_log
    from trainer.sessions import sessionize

    log = read_log(data, format)
    sessions = sessionize(log)
    items, cats = log.item.values(), (None if log.category is None else log.category.values())
    out = []
    for s in np.flatnonzero(sessions.scorable)[:limit]:
        out.append([{"ts": float(log.ts[e]), "event": int(log.event[e]), "item": str(items[e]),
                     "category": None if cats is None else str(cats[e]),
                     "price": None if log.price is None or np.isnan(log.price[e]) else float(log.price[e])}
                    for e in sessions.prefix_events(int(s))])
    return out


def _artifact_rows(paths: list[Path], sessions, config, progress) -> list[dict]:
    from edge_runtime.benchmark import cold_start, fresh_process, measure_scorer
    from edge_runtime.errors import UbpEdgeError
    from edge_runtime.scorer import Scorer

    rows = []
    for path in paths:
        row = dict.fromkeys(ROW_KEYS)
        row.update(engine=ENGINE, status="failed", size_bytes=path.stat().st_size, path=str(path))
        try:
            scorer = Scorer.load(path, num_threads=config.threads)
            row.update(precision=scorer.info.precision, graph=scorer.info.graph)
            progress(f"{path.name}: cold start")
            row.update({k: v for k, v in cold_start(str(path), config).items() if k != "tensorflow_loaded"})
            figures = measure_scorer(scorer, sessions, config,
                                     lambda what, name=path.name: progress(f"{name}: {what}"))
            if scorer.has_step:
                progress(f"{path.name}: {config.live_sessions:,} live sessions")
                row["rss_live_mb"] = fresh_process("live", str(path), config)["rss_live_mb"]
        except UbpEdgeError as e:
            row["reason"] = str(e)
            rows.append(row)
            continue
        row["status"] = "ok"
        _fill(row, figures)
        rows.append(row)
    return rows


def _fill(row: dict, figures: dict) -> None:
    for name, prefix in (("session", "session"), ("event", "event")):
        part = figures.get(name)
        if part:
            row[f"{prefix}_p50_us"], row[f"{prefix}_p95_us"], row[f"{prefix}_p99_us"] = (
                part["p50_us"], part["p95_us"], part["p99_us"])
    for length in (1, 10, 50):
        part = figures.get(f"session{length}")
        row[f"session{length}_p50_us"] = part["p50_us"] if part else None
    row["sessions_per_s"] = figures.get("sessions_per_s")
    row["_samples"] = (figures.get("session") or {}).get("samples_us")


def _peer_rows(run_dir: Path, sessions, encoder_scorer, config, progress) -> list[dict]:
    """Peers score the same sessions; encoding (the same FeatureEncoder) is inside their timing."""
    import time

    from converters.peers import build_peers
    from edge_runtime.benchmark import fixed_length_sessions, time_calls

    progress("peers: building (Keras, ONNX Runtime, NumPy)")
    rows = []
    for peer in build_peers(run_dir, threads=config.threads):
        row = dict.fromkeys(ROW_KEYS)
        row.update(engine=peer.engine, precision=peer.precision, graph=None, status=peer.status,
                   reason=peer.reason, size_bytes=peer.size_bytes)
        if peer.status == "ok":
            progress(f"peer {peer.engine} {peer.precision}")

            def run(session, score=peer.score):
                return score(encoder_scorer.encode_session(session))

            figures = {"session": time_calls(run, sessions, config)}
            for length in (1, 10, 50):
                figures[f"session{length}"] = time_calls(
                    run, fixed_length_sessions(sessions, length), config)
            batch = sessions[:500]
            start = time.perf_counter()
            for s in batch:
                run(s)
            figures["sessions_per_s"] = len(batch) / (time.perf_counter() - start)
            _fill(row, figures)
        rows.append(row)
    return rows


def _ratios(rows: list[dict]) -> None:
    ours = [r for r in rows if r["engine"] == ENGINE and r["status"] == "ok"]
    best = {}
    for key in RATIO_KEYS:
        values = [r[key] for r in ours if r[key] is not None]
        if values:
            best[key] = max(values) if key == "sessions_per_s" else min(values)
    for row in rows:
        row["ratio_to_best"] = {k: (row[k] / best[k] if row.get(k) is not None and best.get(k) else None)
                                for k in RATIO_KEYS} if row["status"] == "ok" else None


def _table(result: dict, config_sessions: int):
    from rich import box
    from rich.table import Table

    m = result["machine"]
    table = Table(title=f"{m['cpu']} ({m['cores']} cores), {result['threads']} thread(s); "
                        f"sessions: {result['sessions']}", box=box.SIMPLE_HEAD)
    columns = (("engine", "engine"), ("precision", "precision"), ("graph", "graph"),
               ("size_bytes", "KB"), ("cold_start_ms", "cold ms"), ("rss_mb", "RSS MB"),
               ("rss_live_mb", f"{config_sessions:,} live MB"), ("session_p50_us", "sess p50"),
               ("session_p99_us", "sess p99"), ("session50_p50_us", "50ev p50"),
               ("event_p50_us", "event p50"), ("event_p99_us", "event p99"),
               ("sessions_per_s", "sess/s"))
    for _, label in columns:
        table.add_column(label, justify="left" if label in ("engine", "precision", "graph") else "right",
                         no_wrap=True)
    for row in result["rows"]:
        cells = []
        for key, _ in columns:
            v = row.get(key)
            if v is None:
                cells.append("" if row["status"] == "ok" else ("failed" if key == "size_bytes" else ""))
            elif key == "size_bytes":
                cells.append(f"{v / 1024:.0f}")
            elif isinstance(v, float):
                cells.append(f"{v:,.0f}" if key == "sessions_per_s" else f"{v:.1f}")
            else:
                cells.append(str(v))
        table.add_row(*cells)
    return table


def benchmark(
    target: Annotated[Path, typer.Argument(help="An artifact, or a run directory (every model-*.tflite in it).")],
    data: Annotated[Path | None, typer.Option(help="Replay this log's session lengths (default: the embedded synthetic sessions).")] = None,
    format: Annotated[str | None, typer.Option("--format", "-f", help="The log's format (default: detected).")] = None,
    threads: Annotated[int, typer.Option(help="Interpreter threads.")] = 1,
    peers: Annotated[bool, typer.Option("--peers", help="Also Keras, ONNX Runtime and NumPy on the same weights (needs the run directory).")] = False,
    runs: Annotated[int, typer.Option(help="Timed calls per latency figure, at least.")] = 2000,
    live_sessions: Annotated[int, typer.Option(help="Live sessions held for the memory figure.")] = 10_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    report: Annotated[Path | None, typer.Option(help="Write a Markdown table and latency CDF plots here.")] = None,
) -> None:
    """Measure every artifact on this machine: size, cold start, latency per session and per
    event, throughput, memory; one thread unless told otherwise."""
    from ubp_edge.cli import _print_json, _quiet_tensorflow, err, out, user_errors

    with user_errors():
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from converters.compare import find_artifacts
        from edge_runtime.benchmark import BenchConfig, machine
        from edge_runtime.errors import ConfigError
        from edge_runtime.scorer import Scorer

        _quiet_tensorflow()
        config = BenchConfig(threads=threads, min_runs=runs, live_sessions=live_sessions)
        if target.is_dir():
            # compare's ordering (graph, then precision); it insists on a float32 reference,
            # which a benchmark does not need.
            paths = find_artifacts(target) if (target / "model-float32.tflite").exists() \
                else sorted(target.glob("model-*.tflite"))
            run_dir = target
        elif target.is_file():
            paths, run_dir = [target], target.parent
        else:
            raise ConfigError(f"{target}: no such artifact or run directory")
        if not paths:
            raise ConfigError(f"{target}: no model-*.tflite artifacts; run `ubp-edge convert` first")
        if peers and not (run_dir / "weights.npz").is_file():
            raise ConfigError(f"--peers needs the run directory's weights: {run_dir / 'weights.npz'} "
                              f"not found")
        sessions = _replayed_sessions(data, format) if data else _synthetic_sessions()
        source = (f"{len(sessions):,} replayed from {data}" if data
                  else f"{len(sessions):,} embedded synthetic")
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=err, transient=True) as bar:
            task = bar.add_task("starting")

            def progress(what: str) -> None:
                bar.update(task, description=what)

            rows = _artifact_rows(paths, sessions, config, progress)
            if peers:
                reference = Scorer.load(paths[0])
                rows += _peer_rows(run_dir, sessions, reference, config, progress)
        _ratios(rows)
        samples = {f"{r['engine']} {r['precision']}{'' if r['graph'] in (None, 'fused') else ' ' + r['graph']}":
                   r.pop("_samples", None) for r in rows}
        for r in rows:
            r.pop("path", None)
        result = {"machine": machine(), "threads": threads, "sessions": source,
                  "rows": [{k: r.get(k) for k in ROW_KEYS} for r in rows]}
        if report is not None:
            from ubp_edge.benchmark_report import write_report

            written = write_report(result, samples, report)
            err.print(f"report: {written}")
        if as_json:
            _print_json(result)
        else:
            from rich.console import Console

            # Many columns: print wide when writing to a file or a pipe.
            (out if out.is_terminal else Console(width=max(out.width, 170))).print(_table(result, live_sessions))

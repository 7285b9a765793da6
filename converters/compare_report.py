"""The `compare --report DIR` output: a Markdown page and six PNG plots.

The figures are drawn with trainer.figures (matplotlib imported only when a plot is drawn,
on an off-screen canvas), so importing this module for `summary_rows` costs nothing and
plotting works without a display.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from converters.compare import ECE_BINS, REFERENCE, ArtifactRow, Comparison
from trainer.figures import figure, markdown_table, png_bytes
from trainer.files import check_folder_writable, write_bytes_atomic
from trainer.metrics import METRICS, PREFIX_BUCKETS, TOP_PERCENTS, cumulative_gains

# Metric names in the page, the terminal table and the plots: the metric table's labels.
AUC, PR_AUC, ECE = METRICS["roc_auc"].label, METRICS["pr_auc"].label, METRICS["ece"].label
# The "All metrics" table of compare.md: each figure and its delta against float32.
DETAIL_METRICS = ("log_loss", "brier", "accuracy", "f1")

PLOTS = ("roc.png", "pr.png", "reliability.png", "gains.png", "auc_by_prefix.png", "scatter.png")
REPORT_MD = "compare.md"
COLUMNS = ("precision", "graph", "status", "size", "ratio", AUC, "ΔAUC", PR_AUC, ECE,
           "flip rate", "max|Δp|", "p50 µs")


# ----------------------------------------------------------------------------- table cells
def _fmt(value, spec: str, signed: bool = False) -> str:
    if value is None:
        return ""
    return format(value, ("+" if signed else "") + spec)


def summary_rows(result: dict) -> list[list[str]]:
    """One list of cells per artifact, in COLUMNS order (for the terminal and the Markdown)."""
    rows = []
    for a in result["artifacts"]:
        size = "" if a["size_bytes"] is None else f"{a['size_bytes'] / 1024:,.1f} KiB"
        rows.append([a["precision"], a["graph"], a["status"], size,
                     _fmt(a["size_ratio"], ".2f") + ("x" if a["size_ratio"] is not None else ""),
                     _fmt(a["roc_auc"], ".4f"), _fmt(a["delta_roc_auc"], ".4f", signed=True),
                     _fmt(a["pr_auc"], ".4f"), _fmt(a["ece"], ".4f"),
                     "" if a["flip_rate"] is None else f"{100 * a['flip_rate']:.2f}%",
                     _fmt(a["max_abs_diff"], ".1e") + ("*" if a["recalibrated"] else ""),
                     _fmt(a["p50_us"], ".1f")])
    return rows


def footnote(result: dict) -> str | None:
    """The sentence under the table for recalibrated rows (marked * there), or None."""
    marked = [a for a in result["artifacts"] if a["status"] == "ok" and a["recalibrated"]]
    if not marked:
        return None
    raw = ", ".join(f"{_artifact_label(a)} {a['max_abs_diff_uncalibrated']:.1e}" for a in marked)
    return (f"* recalibrated in conversion (Platt scaling, threshold moved with it): max|Δp| "
            f"includes that deliberate shift; the raw model output differs from {REFERENCE}'s "
            f"by at most {raw}")


def lift_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """(headers, one row per scored artifact): lift and capture at each top slice.

    A cell reads ``2.41x 24.1%``: the slice's lift, then its capture rate. The headers give
    each slice's size, the same for every artifact (ceil(k * N / 100) sessions).
    """
    ok = [a for a in result["artifacts"] if a["status"] == "ok"]
    sizes = ok[0]["n_sessions_at"] if ok else {}
    keys = [f"{k}%" for k in TOP_PERCENTS]
    headers = ["artifact", *[f"top {k} (n={sizes.get(k, 0):,})" for k in keys]]
    rows = []
    for a in ok:
        cells = []
        for k in keys:
            lift, capture = a["lift_at"][k], a["capture_at"][k]
            cells.append("n/a" if lift is None or capture is None else f"{lift:.2f}x {100 * capture:.1f}%")
        rows.append([_artifact_label(a), *cells])
    return headers, rows


def calibration_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """(headers, one row per probability bin that any scored artifact uses): per artifact,
    ``mean predicted / observed rate (sessions)`` in that bin."""
    ok = [a for a in result["artifacts"] if a["status"] == "ok"]
    headers = ["bin", *[_artifact_label(a) for a in ok]]
    rows = []
    for b, edges in enumerate(ok[0]["calibration_bins"] if ok else []):
        cells = [a["calibration_bins"][b] for a in ok]
        if not any(c["n_sessions"] for c in cells):
            continue
        rows.append([f"{edges['lo']:.1f}-{edges['hi']:.1f}",
                     *["" if not c["n_sessions"] else
                       f"{c['mean_predicted']:.3f} / {c['observed_rate']:.3f} ({c['n_sessions']:,})"
                       for c in cells]])
    return headers, rows


def markdown(result: dict, command: str, plots: tuple[str, ...] = PLOTS) -> str:
    """The compare.md text: data, how to reproduce, the table, buckets, failures, plots."""
    ok = [a for a in result["artifacts"] if a["status"] == "ok"]
    ref = result["artifacts"][0]
    parts = [
        f"# Artifact comparison: `{result['run_dir']}`",
        "",
        f"- data: `{result['data']}`",
        f"- sessions: {result['split']}: {result['split_reason']}; {result['n_sessions']:,} "
        f"sessions, {result['n_positive']:,} with a purchase "
        f"({result['n_excluded_empty_prefix']:,} in the log excluded: purchase first)",
        f"- reference: {REFERENCE} (`{Path(ref['path']).name}`), decision threshold "
        f"{ref['threshold']:.4f}; deltas are artifact minus {REFERENCE}; a flip is a session whose "
        f"decision at the artifact's own threshold differs from {REFERENCE}'s",
        f"- bad rows in the log: {result['bad_rows']['total']:,}",
        "",
        "Reproduce:",
        "",
        "```bash",
        command,
        "```",
        "",
        "## Summary",
        "",
        markdown_table(COLUMNS, summary_rows(result), right_from=3),
        "",
        *([footnote(result), ""] if footnote(result) else []),
        "p50 µs: median wall time of one session (encoded, batch 1, one thread) through the "
        "edge runtime, after a short warm-up, measured while scoring the sessions above.",
        "",
        "## All metrics",
        "",
        markdown_table(
            ["artifact", *[h for k in DETAIL_METRICS for h in (METRICS[k].label, "Δ")],
             "mean|Δp|", "Spearman"],
            [[_artifact_label(a),
              *[c for k in DETAIL_METRICS for c in (_fmt(a[k], ".4f"), _fmt(a[f"delta_{k}"], ".4f", True))],
              _fmt(a["mean_abs_diff"], ".1e"), _fmt(a["spearman"], ".6f")] for a in ok],
            right_from=1),
        "",
        "## Lift and capture of the top sessions",
        "",
        markdown_table(*lift_rows(result), right_from=1),
        "",
        "Each cell: lift (purchase rate in the slice / overall rate), then capture (share of all "
        "sessions with a purchase that are in the slice). The top k% is the ceil(k * N / 100) "
        "highest-scored sessions; equal scores keep the sessions' order (a stable sort).",
        "",
        f"## Calibration by bin ({ECE_BINS} equal-width bins, the bins {ECE} sums)",
        "",
        markdown_table(*calibration_rows(result), right_from=1),
        "",
        "Each cell: mean predicted probability / observed share with a purchase (sessions); "
        "empty bins are left out.",
        "",
        f"## {AUC} by prefix length (events before the outcome)",
        "",
    ]
    buckets = [name for name, _, _ in PREFIX_BUCKETS]
    counts = ref["by_prefix_length"] or {}
    headers = ["artifact", *[f"{b} (n={counts.get(b, {}).get('n_sessions', 0):,})" for b in buckets]]
    rows = []
    for a in ok:
        cells = []
        for b in buckets:
            m = a["by_prefix_length"][b]
            cell = _fmt(m["roc_auc"], ".4f") or "n/a"
            if a is not ref and m["delta_roc_auc"] is not None:
                cell += f" ({m['delta_roc_auc']:+.4f})"
            cells.append(cell)
        rows.append([_artifact_label(a), *cells])
    parts += [markdown_table(headers, rows, right_from=1), ""]
    failed = [a for a in result["artifacts"] if a["status"] != "ok"]
    if failed:
        parts += ["## Artifacts that did not compare", ""]
        parts += [f"- `{Path(a['path']).name}`: {a['reason']}" for a in failed] + [""]
    if result["warnings"]:
        parts += ["## Warnings", ""] + [f"- {w}" for w in result["warnings"]] + [""]
    captions = {
        "roc.png": "ROC curves",
        "pr.png": "Precision-recall curves",
        "reliability.png": f"Reliability diagram ({ECE_BINS} equal-width bins)",
        "gains.png": "Cumulative gains (share of purchases found in the top sessions)",
        "auc_by_prefix.png": f"{AUC} by prefix length",
        "scatter.png": f"Each artifact's probability against {REFERENCE}'s",
    }
    parts += ["## Plots", ""]
    for name in plots:
        parts += [f"### {captions[name]}", "", f"![{captions[name]}]({name})", ""]
    return "\n".join(parts)


def _artifact_label(a: dict) -> str:
    return a["precision"] if a["graph"] == "fused" else f"{a['graph']}/{a['precision']}"


# ----------------------------------------------------------------------------- plots
def _style(rows: list[ArtifactRow]) -> dict[str, dict]:
    """One colour and line style per artifact, the same in every plot."""
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
               "#bcbd22", "#17becf", "#7f7f7f"]
    styles, k = {}, 0
    for r in rows:
        if r is rows[0]:
            styles[r.name] = {"color": "black", "linestyle": "-", "linewidth": 2.2, "zorder": 3}
        else:
            styles[r.name] = {"color": palette[k % len(palette)], "linestyle": "--",
                              "linewidth": 1.6, "zorder": 4}
            k += 1
    return styles


def _subtitle(c: Comparison) -> str:
    return f"{c.split} sessions: n={len(c.label):,}, {int(c.label.sum()):,} with a purchase"


def _legend(ax, n_artifacts: int, inside: str) -> None:
    """Inside the axes for a few artifacts; beside them for many, where it would cover curves."""
    if n_artifacts <= 4:
        ax.legend(loc=inside, fontsize=9)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9)


def _width(c: Comparison) -> float:
    return 6.4 if len(c.ok_rows) <= 4 else 9.2


def plot_roc(c: Comparison) -> bytes:
    from sklearn.metrics import roc_curve

    styles = _style(c.rows)
    fig, ax = figure(_width(c), 5.6)
    ax = ax[0, 0]
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="chance")
    for r in c.ok_rows:
        if len(np.unique(c.label)) < 2:
            break
        fpr, tpr, _ = roc_curve(c.label, r.probability)
        auc = r.metrics["roc_auc"]
        ax.plot(fpr, tpr, label=f"{r.label} ({AUC} {auc:.4f})", **styles[r.name])
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
           title=f"ROC: {REFERENCE} vs each artifact\n{_subtitle(c)}")
    ax.grid(alpha=0.3)
    _legend(ax, len(c.ok_rows), "lower right")
    return png_bytes(fig)


def plot_pr(c: Comparison) -> bytes:
    from sklearn.metrics import precision_recall_curve

    styles = _style(c.rows)
    fig, ax = figure(_width(c), 5.6)
    ax = ax[0, 0]
    prevalence = float(c.label.mean()) if len(c.label) else 0.0
    ax.axhline(prevalence, color="0.6", linestyle=":", linewidth=1,
               label=f"share with a purchase ({prevalence:.3f})")
    for r in c.ok_rows:
        if len(np.unique(c.label)) < 2:
            break
        precision, recall, _ = precision_recall_curve(c.label, r.probability)
        ax.step(recall, precision, where="post", label=f"{r.label} ({PR_AUC} {r.metrics['pr_auc']:.4f})",
                **styles[r.name])
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01),
           title=f"Precision-recall: {REFERENCE} vs each artifact\n{_subtitle(c)}")
    ax.grid(alpha=0.3)
    _legend(ax, len(c.ok_rows), "upper right")
    return png_bytes(fig)


def _bins(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS):
    which = np.minimum((np.clip(p, 0, 1) * bins).astype(np.int64), bins - 1)
    n = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(which, p, bins) / n
        mean_y = np.bincount(which, y, bins) / n
    return n, mean_p, mean_y


def plot_reliability(c: Comparison) -> bytes:
    styles = _style(c.rows)
    fig, axes = figure(_width(c), 7.0, rows=2, cols=1, sharex=True,
                        gridspec_kw={"height_ratios": [3, 1]})
    top, bottom = axes[0, 0], axes[1, 0]
    top.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="perfectly calibrated")
    edges = np.linspace(0, 1, ECE_BINS + 1)
    for r in c.ok_rows:
        n, mean_p, mean_y = _bins(r.probability.astype(np.float64), c.label.astype(np.float64))
        keep = n > 0
        top.plot(mean_p[keep], mean_y[keep], marker="o", markersize=4,
                 label=f"{r.label} ({ECE} {r.metrics['ece']:.4f})", **styles[r.name])
    top.set(ylabel="share of sessions with a purchase", xlim=(0, 1), ylim=(0, 1),
            title=f"Reliability ({ECE_BINS} equal-width bins)\n{_subtitle(c)}")
    top.grid(alpha=0.3)
    _legend(top, len(c.ok_rows), "upper left")
    ref = c.reference
    n, _, _ = _bins(ref.probability.astype(np.float64), c.label.astype(np.float64))
    full = n > 0  # an empty bin has no bar (log scale)
    bottom.bar(edges[:-1][full], n[full], width=1 / ECE_BINS, align="edge", color="0.75",
               edgecolor="black", linewidth=0.5)
    bottom.set_yscale("log")
    bottom.set_ylim(bottom=0.7)
    bottom.set(xlabel="predicted probability (bin)", ylabel=f"sessions\n({REFERENCE})")
    bottom.grid(alpha=0.3, axis="y")
    return png_bytes(fig)


def _zoom_top(c: Comparison, right: float) -> float:
    """The zoomed gains panel's upper limit: a margin over the highest curve there, so the
    artifacts' differences show (the perfect line may leave the panel)."""
    highest = right
    share = float(c.label.mean()) if len(c.label) else 0.0
    if share > 0:
        for r in c.ok_rows:
            sessions, found = cumulative_gains(c.label, r.probability)
            highest = max(highest, float(found[sessions <= right + 1e-12].max()))
    return min(1.01, 1.2 * highest)


def plot_gains(c: Comparison) -> bytes:
    """Cumulative gains of every artifact, with the random and perfect lines: the whole curve,
    and beside it the top 20% of sessions where campaigns are cut."""
    styles = _style(c.rows)
    fig, axes = figure(_width(c) + 4.6, 5.6, rows=1, cols=2)
    share = float(c.label.mean()) if len(c.label) else 0.0
    zoom = max(TOP_PERCENTS) / 100
    for ax, right in ((axes[0, 0], 1.0), (axes[0, 1], zoom)):
        x = np.linspace(0, right, 201)
        ax.plot(x, x, color="0.6", linestyle=":", linewidth=1, label="random")
        if share > 0:
            ax.plot(x, np.minimum(x / share, 1.0), color="0.35", linestyle="-.", linewidth=1,
                    label=f"perfect (all purchases in the top {100 * share:.1f}%)")
        for r in c.ok_rows:
            if share == 0:
                break
            sessions, found = cumulative_gains(c.label, r.probability)
            keep = sessions <= right + 1e-12
            ten = r.metrics["capture_at"].get("10%")
            ax.plot(sessions[keep], found[keep], drawstyle="steps-post",
                    label=f"{r.label} (capture at 10%: {100 * ten:.1f}%)", **styles[r.name])
        for k in TOP_PERCENTS:
            if k / 100 <= right:
                ax.axvline(k / 100, color="0.8", linewidth=0.7, zorder=0)
        ax.set(xlim=(0, right), ylim=(0, 1.01 if right == 1.0 else _zoom_top(c, right)),
               xlabel="share of sessions, highest score first",
               ylabel="share of sessions with a purchase found")
        ax.xaxis.set_major_formatter(lambda v, _: f"{round(100 * v, 1):g}%")
        ax.yaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")
        ax.grid(alpha=0.3)
    axes[0, 0].set_title(f"Cumulative gains: {REFERENCE} vs each artifact\n{_subtitle(c)}")
    axes[0, 1].set_title(f"The top {max(TOP_PERCENTS)}% (grey lines at "
                         f"{', '.join(f'{k}%' for k in TOP_PERCENTS)})")
    if share == 0:
        axes[0, 0].text(0.5, 0.5, "no session with a purchase", transform=axes[0, 0].transAxes,
                        ha="center", va="center", color="0.4")
    _legend(axes[0, 1], len(c.ok_rows), "lower right")
    return png_bytes(fig)


def plot_auc_by_prefix(c: Comparison) -> bytes:
    styles = _style(c.rows)
    fig, axes = figure(8.6, 6.6, rows=2, cols=1, sharex=True,
                        gridspec_kw={"height_ratios": [3, 2]})
    top, bottom = axes[0, 0], axes[1, 0]
    buckets = [name for name, _, _ in PREFIX_BUCKETS]
    x = np.arange(len(buckets))
    ok = c.ok_rows
    others = [r for r in ok if r is not c.reference]
    width = 0.8 / max(len(others), 1)
    for r in ok:
        auc = [r.metrics["by_prefix_length"][b]["roc_auc"] for b in buckets]
        top.plot(x, [np.nan if a is None else a for a in auc], marker="o", markersize=5,
                 label=r.label, **styles[r.name])
    for k, r in enumerate(others):
        delta = [r.metrics["by_prefix_length"][b]["delta_roc_auc"] for b in buckets]
        bottom.bar(x - 0.4 + width * (k + 0.5), [0 if d is None else d for d in delta], width=width,
                   color=styles[r.name]["color"], label=r.label)
    bottom.axhline(0, color="black", linewidth=0.8)
    counts = c.reference.metrics["by_prefix_length"]
    bottom.set_xticks(x, [f"{b}\nn={counts[b]['n_sessions']:,}" for b in buckets])
    top.set(ylabel=AUC, title=f"{AUC} by prefix length (events before the outcome)\n"
                                    f"{_subtitle(c)}")
    top.grid(alpha=0.3)
    top.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    bottom.set(xlabel="prefix length (events)", ylabel=f"Δ{AUC} vs {REFERENCE}")
    bottom.grid(alpha=0.3, axis="y")
    bottom.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if not others:
        bottom.text(0.5, 0.5, f"only {REFERENCE} scored", transform=bottom.transAxes,
                    ha="center", va="center", color="0.4")
    return png_bytes(fig)


def plot_scatter(c: Comparison) -> bytes:
    styles = _style(c.rows)
    ref = c.reference
    others = [r for r in c.ok_rows if r is not ref] or [ref]
    cols = min(len(others), 3)
    groups = -(-len(others) // cols)
    fig, axes = figure(4.2 * cols, 7.0 * groups, rows=2 * groups, cols=cols,
                        gridspec_kw={"height_ratios": [3, 2] * groups})
    p_ref = ref.probability.astype(np.float64)
    for k in range(groups * cols):
        top, bottom = axes[2 * (k // cols), k % cols], axes[2 * (k // cols) + 1, k % cols]
        if k >= len(others):
            top.set_visible(False)
            bottom.set_visible(False)
            continue
        r = others[k]
        p = r.probability.astype(np.float64)
        color = styles[r.name]["color"]
        top.plot([0, 1], [0, 1], color="0.5", linestyle=":", linewidth=1, label="y = x")
        top.scatter(p_ref, p, s=4, alpha=0.35, color=color, rasterized=True, label="session")
        top.axvline(ref.threshold, color="black", linewidth=0.6, linestyle="--")
        top.axhline(r.threshold, color=color, linewidth=0.6, linestyle="--", label="thresholds")
        m = r.metrics
        top.set(xlabel=f"{REFERENCE} probability", ylabel=f"{r.label} probability", xlim=(0, 1),
                ylim=(0, 1), title=f"{r.label} vs {REFERENCE}\nmax|Δp| {m['max_abs_diff']:.2e}, "
                                   f"flips {100 * m['flip_rate']:.2f}%")
        top.set_aspect("equal")
        top.grid(alpha=0.3)
        top.legend(loc="upper left", fontsize=8, markerscale=3)
        # The lower panel shows the raw outputs: a recalibrated artifact's deliberate Platt
        # shift would otherwise hide what quantisation changed.
        raw = r.raw_probability.astype(np.float64) - ref.raw_probability.astype(np.float64)
        bottom.axhline(0, color="0.5", linestyle=":", linewidth=1)
        bottom.scatter(ref.raw_probability, raw, s=4, alpha=0.35, color=color, rasterized=True)
        bottom.set(xlabel=f"{REFERENCE} probability" + (" (raw)" if ref.recalibrated else ""),
                   ylabel="Δp vs " + REFERENCE, xlim=(0, 1),
                   title=(f"raw output, before recalibration: max|Δp| {np.abs(raw).max():.2e}"
                          if r.recalibrated else f"Δp: max {np.abs(raw).max():.2e}"))
        bottom.title.set_fontsize(9)
        bottom.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        bottom.grid(alpha=0.3)
    return png_bytes(fig)


PLOTTERS = {"roc.png": plot_roc, "pr.png": plot_pr, "reliability.png": plot_reliability,
            "gains.png": plot_gains, "auc_by_prefix.png": plot_auc_by_prefix, "scatter.png": plot_scatter}


def report_files(out_dir: str | os.PathLike) -> list[Path]:
    """The files `write_report` writes into ``out_dir``, compare.md last (for the output guard,
    `trainer.files.check_outputs`, before the comparison runs)."""
    out_dir = Path(out_dir)
    return [out_dir / name for name in (*PLOTS, REPORT_MD)]


def write_report(comparison: Comparison, out_dir: str | os.PathLike, command: str) -> list[Path]:
    """Write compare.md and the six PNGs into ``out_dir``, each file atomically.

    Args:
        comparison: from `converters.compare.run_comparison`.
        out_dir: created if needed; files of an earlier report there are replaced.
        command: the command line that reproduces the comparison, quoted in the page.

    Returns:
        The paths written, compare.md last.

    Raises:
        OutputError: ``out_dir`` is a file or cannot be created, or a file in it cannot be
            written (no space left, a file-size limit, permissions), naming the path.
    """
    out_dir = Path(out_dir)
    check_folder_writable(out_dir, "--report")
    written = [write_bytes_atomic(out_dir / name, PLOTTERS[name](comparison)) for name in PLOTS]
    text = markdown(comparison.to_dict(), command)
    written.append(write_bytes_atomic(out_dir / REPORT_MD, text.encode("utf-8")))
    return written

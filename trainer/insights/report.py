"""`explain --report DIR`: explain.md, one trajectory plot per explained session and the
feature-group importance chart.

Every number on the page and in the plots comes from `LogExplanation.to_dict`, the object
`explain --json` prints, so the page, the plots and the JSON agree.

Seams: `write_explain_report`, `markdown`, `plot_trajectory`, `plot_importance`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from edge_runtime.events import EVENT_TYPES
from trainer.figures import figure, markdown_table, png_bytes
from trainer.files import check_folder_writable, write_bytes_atomic
from trainer.insights.explain import LogExplanation, duration_text

REPORT_MD = "explain.md"
IMPORTANCE_PNG = "importance.png"
# One marker colour per event type (a colour-blind-safe set), in EVENT_TYPES order.
EVENT_COLOURS = dict(zip(EVENT_TYPES, ("#0072B2", "#E69F00", "#009E73", "#CC79A7"), strict=True))


def trajectory_png(n: int) -> str:
    """The file name of the ``n``-th explained session's plot (1-based): numbered, since a
    session key may hold any character."""
    return f"trajectory-{n}.png"


def plot_trajectory(session: dict, threshold: float, tiers: dict | None) -> bytes:
    """The score after every event of one session (its `--json` entry), from the
    empty-session score at event 0; markers by event type, the top events labelled, the
    tier cut-offs and the decision threshold as dotted lines."""
    from matplotlib.ticker import MaxNLocator

    scores = [session["baseline"], *session["trajectory"]]
    fig, axes = figure(7.5, 3.8)
    ax = axes[0, 0]
    steps = np.arange(len(scores))
    ax.step(steps, scores, where="post", color="#555555", linewidth=1.2, zorder=1)
    for event in session["events"]:
        ax.scatter(event["position"], session["trajectory"][event["position"] - 1], s=28,
                   color=EVENT_COLOURS[event["event"]], zorder=3)
    for event_type, colour in EVENT_COLOURS.items():
        if any(e["event"] == event_type for e in session["events"]):
            ax.scatter([], [], s=28, color=colour, label=event_type)
    # Ids and keys are the log's text: parse_math=False, or a "$" in one is read as TeX.
    for top in session["top"][:3]:
        ax.annotate(f"{top['event']} {top['item']}\n{top['delta']:+.3f}",
                    (top["position"], top["probability"]), textcoords="offset points",
                    xytext=(4, 8), fontsize=7, parse_math=False)
    lines = [("threshold", threshold, "#D55E00")]
    if tiers:
        lines += [(f"{name} from", cut, "#999999") for name, cut in zip(tiers["names"][1:], tiers["cuts"],
                                                                        strict=True)]
    right = len(scores) - 0.5
    for label, y, colour in lines:
        ax.axhline(y, linestyle=":", linewidth=1, color=colour)
        # At the right edge: the trajectory starts at the left, below most cut-offs.
        ax.annotate(f"{label} {y:.3f}", (right, y), textcoords="offset points", xytext=(-2, 2),
                    fontsize=7, color=colour, ha="right", parse_math=False)
    ax.set_xlabel("events (0: before the first)")
    ax.set_ylabel("purchase probability")
    ax.set_title(f"session {session['key']}" + (" (bought)" if session["purchased"] else ""), fontsize=9,
                 parse_math=False)
    ax.set_xlim(-0.3, right)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # events are counted, not measured
    ax.set_ylim(0, max(max(scores), threshold, *(tiers["cuts"] if tiers else ())) * 1.15)
    ax.legend(fontsize=7, loc="upper left")
    return png_bytes(fig)


def plot_importance(importance: list[dict], sessions: int) -> bytes:
    """Horizontal bars: each group's mean |change| of the final score under occlusion, with
    its standard deviation over sessions as the error bar."""
    rows = list(reversed(importance))  # the most important on top
    fig, axes = figure(7.0, 0.45 * len(rows) + 1.2)
    ax = axes[0, 0]
    y = np.arange(len(rows))
    mean = np.array([g["mean_abs_change"] for g in rows])
    std = np.array([g["std_abs_change"] for g in rows])
    # A size cannot go below 0: the bar's lower whisker stops there.
    ax.barh(y, mean, xerr=[np.minimum(std, mean), std], color="#0072B2", ecolor="#999999", capsize=3)
    ax.scatter([g["p90_abs_change"] for g in rows], y, marker="D", s=16, color="#D55E00",
               label="90th percentile", zorder=3)
    ax.set_yticks(y, [g["group"] for g in rows], fontsize=8)  # our own names: no "$" in them
    ax.set_xlabel("mean |change| of the final score (whisker: one standard deviation)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"feature groups by occlusion, {sessions:,} sessions", fontsize=9)
    return png_bytes(fig)


def markdown(d: dict) -> str:
    """explain.md from the `explain --json` object."""
    split = f" ({d['split']} split)" if d.get("split") else ""
    parts = ["# Why these sessions score what they score\n",
             f"Model {_code(Path(d['model']).name)} on {_code(d['data'])}{split}. Every session "
             f"starts at the empty-session score {d['baseline']:.4f} (the model before any "
             f"event); each event moves it, and the changes add up to the final score. Sessions: "
             f"{d['chosen_by']}. Decision threshold {d['threshold']:.4f}.\n"]
    if d["tiers"]:
        t = d["tiers"]
        edges = ", ".join(f"{name} from {cut:.4f}"
                          for name, cut in zip(t["names"][1:], t["cuts"], strict=True))
        parts.append(f"Intent tiers: {t['names'][0]} below {t['cuts'][0]:.4f}, {edges}.\n")
    for n, s in enumerate(d["sessions"], start=1):
        parts.append(f"## Session {_code(s['key'])}\n")
        parts.append(f"{len(s['trajectory'])} events" + (f", user {_code(s['user'])}" if s["user"] else "")
                     + f"; score {s['baseline']:.4f} -> {s['final']:.4f}"
                     + ("; the session went on to a purchase" if s["purchased"] else "") + ".\n")
        parts.append(f"![trajectory]({trajectory_png(n)})\n")
        parts.append("The events that moved the score most:\n")
        parts.append(markdown_table(
            ("#", "event", "item", "category", "time", "after previous", "change", "score"),
            [(str(e["position"]), e["event"], e["item"], e["category"] or "", e["time"],
              duration_text(e["seconds_since_previous"]) or "first", f"{e['delta']:+.4f}",
              f"{e['probability']:.4f}") for e in s["top"]], right_from=6) + "\n")
    parts.append("## Feature groups\n")
    parts.append(f"How much the final score moves when a group of features reads its training "
                 f"mean at every event, over {d['importance_sessions']:,} sessions"
                 + (f" (a seeded random sample of the {d['importance_sampled_from']:,} scored)"
                    if d["importance_sampled_from"] > d["importance_sessions"] else "")
                 + ": mean "
                 "|change|, its standard deviation and 90th percentile, and the mean signed "
                 "change (positive: the group raises scores on the whole).\n")
    parts.append(f"![importance]({IMPORTANCE_PNG})\n")
    parts.append(markdown_table(
        ("group", "features", "mean abs change", "std", "p90", "mean change"),
        [(g["group"], ", ".join(g["features"]), f"{g['mean_abs_change']:.4f}",
          f"{g['std_abs_change']:.4f}", f"{g['p90_abs_change']:.4f}", f"{g['mean_change']:+.4f}")
         for g in d["importance"]], right_from=2) + "\n")
    return "\n".join(parts)


def report_files(out_dir: str | os.PathLike, sessions: int) -> list[Path]:
    """The files `write_explain_report` writes for ``sessions`` explained sessions, explain.md
    last (for the output guard, `trainer.files.check_outputs`, before the log is read)."""
    out_dir = Path(out_dir)
    return [*(out_dir / trajectory_png(n) for n in range(1, sessions + 1)),
            out_dir / IMPORTANCE_PNG, out_dir / REPORT_MD]


def _code(text: str) -> str:
    """``text`` as a Markdown code span, whatever backticks it holds: fenced by one backtick
    more than its longest run of them (CommonMark), padded with spaces when it has any."""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * (longest + 1)
    return f"{fence} {text} {fence}" if longest else f"{fence}{text}{fence}"


def write_explain_report(result: LogExplanation, out_dir: str | os.PathLike) -> Path:
    """Write explain.md and its plots into ``out_dir``, each file atomically.

    Returns:
        The path of explain.md.

    Raises:
        OutputError: ``out_dir`` cannot be made or written, naming the path.
    """
    out_dir = Path(out_dir)
    check_folder_writable(out_dir, "--report")
    d = result.to_dict()
    # Every file is drawn before the first is written: a plot that fails leaves the folder
    # as it was, not a new plot beside an old page.
    files = {out_dir / trajectory_png(n): plot_trajectory(s, d["threshold"], d["tiers"])
             for n, s in enumerate(d["sessions"], start=1)}
    files[out_dir / IMPORTANCE_PNG] = plot_importance(d["importance"], d["importance_sessions"])
    files[out_dir / REPORT_MD] = markdown(d).encode("utf-8")
    for path, data in files.items():
        write_bytes_atomic(path, data)
    return out_dir / REPORT_MD

"""Plot builders: each plot_<what>() returns a plotly figure; save_figure writes self-contained HTML."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from deepprune.io import atomic_open
from deepprune.metric_names import AUROC_WITHIN_PROBLEM
from deepprune.reference import PAPER_SAME_ANSWER_SHARE

OURS, THEIRS = "#1f77b4", "#b0b0b0"


def plot_redundancy(shares: Mapping[str, float], per_problem: Mapping[str, Sequence[float]]) -> go.Figure:
    """Figure 2(a) on our corpora: share of same-answer pairs beside the paper's, and its spread over problems."""
    fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55],
                        subplot_titles=("Same-answer share of trace pairs", "Per-problem same-answer share"))
    names = [f"{c} (ours)" for c in shares] + list(PAPER_SAME_ANSWER_SHARE)
    values = list(shares.values()) + list(PAPER_SAME_ANSWER_SHARE.values())
    colors = [OURS] * len(shares) + [THEIRS] * len(PAPER_SAME_ANSWER_SHARE)
    fig.add_trace(go.Bar(x=names, y=values, marker_color=colors, text=[f"{v:.1%}" for v in values],
                         textposition="outside", showlegend=False), row=1, col=1)
    for corpus, values_ in per_problem.items():
        fig.add_trace(go.Histogram(x=list(values_), name=corpus, xbins=dict(start=0, end=1.0001, size=0.05),
                                   opacity=0.7), row=1, col=2)
    fig.update_yaxes(range=[0, 1.1], tickformat=".0%", row=1, col=1)
    fig.update_xaxes(title_text="share of the problem's pairs with the same answer", row=1, col=2)
    fig.update_yaxes(title_text="problems", row=1, col=2)
    fig.update_layout(barmode="overlay", height=420, title="Inter-trace redundancy (paper: Figure 2a)")
    return fig


def plot_score_distributions(labels: Sequence[int], scores: Mapping[str, Sequence[float]], corpus: str) -> go.Figure:
    """Held-out judge scores of same- and different-answer pairs, one panel per judge (Figure 2b-c style)."""
    names = list(scores)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names)
    labels_ = np.asarray(labels)
    for col, name in enumerate(names, start=1):
        values = np.asarray(scores[name], dtype=float)
        for label, title, color in ((1, "same answer", OURS), (0, "different answers", "#d62728")):
            fig.add_trace(go.Histogram(x=values[labels_ == label], name=title, histnorm="probability density",
                                       marker_color=color, opacity=0.6, nbinsx=30, legendgroup=title,
                                       showlegend=col == 1), row=1, col=col)
    fig.update_layout(barmode="overlay", height=360, title=f"{corpus}: judge scores on held-out problems")
    return fig


def plot_reliability(curves: Mapping[str, Mapping[str, Sequence[float]]], corpus: str) -> go.Figure:
    """Reliability diagram: per score bin, the share of same-answer pairs against the mean score (held-out
    problems); a calibrated judge lies on the diagonal, so its score can be read as a probability and tau with it."""
    fig = go.Figure()
    for i, (name, r) in enumerate(curves.items()):
        fig.add_trace(go.Scatter(x=list(r["mean_score"]), y=list(r["same_share"]), mode="lines+markers", name=name,
                                 line=dict(color=CURVE_COLORS[i % len(CURVE_COLORS)],
                                           dash="dash" if "uncalibrated" in name else "solid"),
                                 text=[f"{c:.0f} pairs" for c in r["count"]]))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="gray"), name="calibrated"))
    fig.update_layout(title=f"{corpus}: reliability of the trained judges (held-out problems)", height=420,
                      xaxis_title="mean judge score in the bin", yaxis_title="share of same-answer pairs",
                      xaxis_range=[0, 1], yaxis_range=[0, 1])
    return fig


def plot_roc(rocs: Mapping[str, tuple[Sequence[float], Sequence[float], float]], corpus: str) -> go.Figure:
    """ROC curves of every judge variant on the same held-out pairs, AUROC in the legend."""
    fig = go.Figure()
    for name, (fpr, tpr, area) in rocs.items():
        fig.add_trace(go.Scatter(x=list(fpr), y=list(tpr), mode="lines", name=f"{name} (AUROC {area:.3f})"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="gray"), name="chance"))
    fig.update_layout(title=f"{corpus}: ROC of the judges (positive = same answer)", height=420,
                      xaxis_title="false positive rate (different-answer pairs called same)",
                      yaxis_title="true positive rate")
    return fig


CURVE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def roc_svg(curves: Mapping[str, Mapping[str, Sequence]], title: str) -> str:
    """A small standalone SVG of ROC curves (roc_table's dicts, keyed by judge), AUROC in the legend: a few KB, no
    script, so MLflow's artifact view and its compare view draw it as an image."""
    from html import escape

    size, pad = 320, 40
    span = size - 2 * pad

    def xy(fpr: float, tpr: float) -> str:
        return f"{pad + fpr * span:.1f},{size - pad - tpr * span:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size + 16 * len(curves)}" '
             f'viewBox="0 0 {size} {size + 16 * len(curves)}" font-family="sans-serif" font-size="11">',
             f'<rect width="100%" height="100%" fill="white"/>',
             f'<text x="{size / 2}" y="16" text-anchor="middle" font-size="12">{escape(title)}</text>',
             f'<rect x="{pad}" y="{pad}" width="{span}" height="{span}" fill="none" stroke="#888"/>',
             f'<polyline points="{xy(0, 0)} {xy(1, 1)}" fill="none" stroke="#bbb" stroke-dasharray="4 3"/>',
             f'<text x="{size / 2}" y="{size - 10}" text-anchor="middle">false positive rate</text>',
             f'<text x="12" y="{size / 2}" text-anchor="middle" transform="rotate(-90 12 {size / 2})">'
             f'true positive rate</text>']
    for tick in (0, 0.5, 1):
        x, y = xy(tick, tick).split(",")
        parts.append(f'<text x="{x}" y="{size - pad + 13}" text-anchor="middle">{tick:g}</text>'
                     f'<text x="{pad - 4}" y="{float(y) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    for i, (name, curve) in enumerate(curves.items()):
        color = CURVE_COLORS[i % len(CURVE_COLORS)]
        points = " ".join(xy(f, t) for f, t in zip(curve["fpr"], curve["tpr"]))
        if points:
            parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        area = curve.get("auroc")
        label = f"{name} (AUROC {area:.3f})" if isinstance(area, (int, float)) else f"{name} (one class: no curve)"
        y = size + 12 + 16 * i
        parts.append(f'<line x1="{pad}" y1="{y - 4}" x2="{pad + 18}" y2="{y - 4}" stroke="{color}" stroke-width="2"/>'
                     f'<text x="{pad + 24}" y="{y}">{escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def plot_judge_comparison(table: Mapping[str, Mapping[str, tuple[float, float]]],
                          paper: Mapping[str, float | None], paper_label: str) -> go.Figure:
    """AUROC (mean and fold std) per variant and corpus, and the paper's figure for the same recipe."""
    fig = go.Figure()
    for corpus, rows in table.items():
        fig.add_trace(go.Bar(name=f"{corpus} (ours)", x=list(rows), y=[m for m, _ in rows.values()],
                             error_y=dict(type="data", array=[s for _, s in rows.values()])))
    fig.add_trace(go.Bar(name=paper_label, x=list(paper), y=list(paper.values()), marker_color=THEIRS))
    fig.update_layout(barmode="group", height=420, yaxis=dict(range=[0, 1], title="AUROC"),
                      title="Judges on held-out problems: ours (mean ± fold std) beside the paper's same recipe")
    return fig


def save_figure(fig: go.Figure, path: str | os.PathLike) -> None:
    """Write a self-contained HTML file (plotly.js inlined: opens offline). The plot's element id is the file's
    name, not plotly's default random one, so the same figure is written as the same bytes."""
    with atomic_open(path) as handle:
        handle.write(fig.to_html(include_plotlyjs=True, full_html=True, div_id=f"fig-{Path(path).stem}"))


def plot_pareto(summary: Mapping[str, Mapping[str, float | str | None]], corpus: str, n: int) -> go.Figure:
    """Accuracy against total tokens and against sequential depth (latency) for every method, side by side (mean
    and 95% interval over repetitions): a method that saves tokens by sampling in sequence shows it on the right."""
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=("tokens (cost)", "sequential depth (latency)"))
    for col, key in ((1, "tokens"), (2, "sequential_depth")):
        for name, row in summary.items():
            if "skipped" in row or key not in row:
                continue
            fig.add_trace(go.Scatter(
                x=[row[key]], y=[row["accuracy"]], mode="markers+text", name=name, text=[name],
                textposition="top center", legendgroup=name, showlegend=False,
                error_x=dict(type="data", symmetric=False, array=[row[f"{key}_hi"] - row[key]],
                             arrayminus=[row[key] - row[f"{key}_lo"]]),
                error_y=dict(type="data", symmetric=False, array=[row["accuracy_hi"] - row["accuracy"]],
                             arrayminus=[row["accuracy"] - row["accuracy_lo"]])), row=1, col=col)
    fig.update_layout(title=f"{corpus}: accuracy vs tokens and vs latency, N = {n} (mean and 95% interval over draws)",
                      height=560, showlegend=False)
    fig.update_xaxes(title_text="total tokens generated", row=1, col=1)
    fig.update_xaxes(title_text="tokens generated one after another, per problem", row=1, col=2)
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    return fig


def plot_truncation(rows: Sequence[Mapping], judge: str, corpus: str,
                    paper: Mapping[str, tuple[int, float]] | None = None) -> go.Figure:
    """Figure 4: held-out AUROC against k, one panel per truncation strategy, one line per judge variant
    (the chosen judge drawn bold), error bars = fold std, and the chosen judge's AUROC within a problem dotted; the
    paper's Table 1 point for the judge in grey."""
    strategies = ("tokens", "reasoning_words")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("first k tokens", "first k reasoning words"))
    variants = sorted({r["variant"] for r in rows}, key=lambda v: (v == judge, v))
    palette = plotly.colors.qualitative.Plotly  # one colour per variant in both panels, as the legend shows it
    colour = {variant: palette[idx % len(palette)] for idx, variant in enumerate(variants)}
    for col, strategy in enumerate(strategies, start=1):
        for variant in variants:
            pts = sorted((r for r in rows if r["strategy"] == strategy and r["variant"] == variant), key=lambda r: r["k"])
            if not pts:
                continue
            fig.add_trace(go.Scatter(
                x=[r["k"] for r in pts], y=[r["summary"].get("auroc") for r in pts], mode="lines+markers",
                name=variant, legendgroup=variant, showlegend=col == 1, marker=dict(color=colour[variant]),
                line=dict(width=4 if variant == judge else 1.5, color=colour[variant]),
                error_y=dict(type="data", array=[r["summary"].get("auroc_std") or 0 for r in pts])), row=1, col=col)
            within = [r["summary"].get(AUROC_WITHIN_PROBLEM) for r in pts]
            if variant == judge and any(v is not None for v in within):
                fig.add_trace(go.Scatter(
                    x=[r["k"] for r in pts], y=within, mode="lines+markers", name=f"{variant}, within a problem",
                    legendgroup=f"{variant}-within", showlegend=col == 1, marker=dict(color=colour[variant]),
                    line=dict(width=2, dash="dot", color=colour[variant])),
                    row=1, col=col)
        if paper and strategy in paper:
            k, value = paper[strategy]
            fig.add_trace(go.Scatter(x=[k], y=[value], mode="markers", marker=dict(color=THEIRS, size=12, symbol="diamond"),
                                     name=f"paper, {judge} recipe (Table 1)", legendgroup="paper", showlegend=col == 1),
                          row=1, col=col)
    fig.update_yaxes(title_text="AUROC (held-out problems)", range=[0, 1])
    fig.update_xaxes(title_text="k")
    fig.update_layout(height=420, title=f"{corpus}: judge AUROC against truncation length (cf. the paper's Figure 4)")
    return fig

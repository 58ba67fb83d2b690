"""Report plots (matplotlib, Agg backend): training curves per arm with a band over seeds
(log scale where a metric spans decades), and final accuracy per arm and benchmark with
CI error bars clipped to the metric's range and the starting model's score marked."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bicc_lab.report.tables import AblationTable, arm_label, metric_bounds

if TYPE_CHECKING:
    import pandas as pd

    from bicc_lab.report.data import RunSet

__all__ = ["LOG_SPAN", "MAX_PANELS", "Plot", "accuracy_plot", "curve_plots", "spans_decades"]

MAX_PANELS = 12  # rows (model × variant) drawn per figure; the rest are noted
CURVE_TITLES = {
    "reward": "Reward",
    "rcc/cov_r_delta": "Cov(r, δ)",
    "contrast/margin": "Contrastive margin",
    "bicc/logp_shift": "BICC log-prob shift",
    "bicc/logp_shift_correct": "BICC log-prob shift, correct under incorrect traces",
    "bicc/logp_shift_incorrect": "BICC log-prob shift, incorrect under correct traces",
    "transfer/grad_cosine": "Cosine of BICC and plain GRPO update directions",
    "transfer/plain_logp_gain_correct": "Plain-prompt log-prob gain from the BICC update, correct",
    "transfer/plain_logp_gain_incorrect": "Plain-prompt log-prob gain from the BICC update, incorrect",
    "diagnostics/grad_variance": "Gradient variance",
}
LOG_SPAN = 100.0  # a positive metric whose values span this factor or more is drawn on a log axis


def spans_decades(values: Any) -> bool:
    """Positive everywhere and spanning two decades or more (5th to 95th percentile)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2 or (x <= 0).any():
        return False
    low, high = np.quantile(x, [0.05, 0.95])
    return bool(high / low >= LOG_SPAN)
ARM_COLORS = {"base": "#4c72b0", "rcc": "#dd8452", "bicc": "#55a868", "bicc+rcc": "#c44e52"}


@dataclass
class Plot:
    """A rendered figure: file stem, caption, PNG and SVG bytes."""

    name: str
    caption: str
    png: bytes
    svg: bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _color(arm: str, i: int) -> str:
    return ARM_COLORS.get(arm, f"C{(i + 4) % 10}")


def _render(fig: Any, name: str, caption: str) -> Plot:
    plt = _pyplot()
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=110, bbox_inches="tight")
    fig.savefig(svg, format="svg", bbox_inches="tight")
    plt.close(fig)
    return Plot(name, caption, png.getvalue(), svg.getvalue())


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def _label(row: Sequence[str]) -> str:
    return " / ".join(str(x) for x in row)


def curve_plots(
    run_set: RunSet, curves: pd.DataFrame, arms: Sequence[str], rows: Sequence[tuple[str, ...]]
) -> tuple[list[Plot], list[str]]:
    """One figure per logged training metric: a panel per row, a line per arm (mean over
    seeds at each step) and a band of ± one standard deviation over seeds."""
    notes: list[str] = []
    if curves is None or curves.empty:
        return [], notes
    plt = _pyplot()
    keys = run_set.row_keys
    info = run_set.runs[["run_id", *keys, "arm", "seed"]].copy()
    info["row"] = [tuple(str(v) for v in r) for r in info[keys].itertuples(index=False)]
    data = curves.merge(info[["run_id", "row", "arm", "seed"]], on="run_id")
    shown = list(rows[:MAX_PANELS])
    if len(rows) > MAX_PANELS:
        notes.append(f"curves: the first {MAX_PANELS} of {len(rows)} rows are plotted")
    plots: list[Plot] = []
    metric_order = list(CURVE_TITLES) + sorted(set(data["metric"]) - set(CURVE_TITLES))
    for metric in metric_order:
        sub = data[data["metric"] == metric]
        if sub.empty:
            continue
        nr, nc = _grid(len(shown))
        log = spans_decades(sub["value"])
        fig, axes = plt.subplots(nr, nc, figsize=(4.6 * nc, 3.2 * nr), squeeze=False, sharex=False)
        for i, row in enumerate(shown):
            ax = axes[i // nc][i % nc]
            part = sub[sub["row"] == row]
            for j, arm in enumerate(arms):
                arm_part = part[part["arm"] == arm]
                if arm_part.empty:
                    continue
                # one value per (seed, step): the last logged one
                per_seed = arm_part.groupby(["seed", "step"])["value"].last().unstack("seed").sort_index()
                mean = per_seed.mean(axis=1)
                color = _color(arm, j)
                n_seeds = per_seed.shape[1]
                ax.plot(mean.index, mean.to_numpy(), color=color, lw=1.4,
                        label=f"{arm_label(arm)} (n={n_seeds})")
                if n_seeds > 1:
                    std = per_seed.std(axis=1, ddof=1)
                    lower = (mean - std).to_numpy()
                    if log:  # a band below zero has no place on a log axis: cut it at the data's floor
                        lower = np.maximum(lower, float(sub["value"][sub["value"] > 0].min()))
                    ax.fill_between(mean.index, lower, (mean + std).to_numpy(),
                                    color=color, alpha=0.18, lw=0)
            if log:
                ax.set_yscale("log")
            ax.set_title(_label(row), fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7, frameon=False)
        for k in range(len(shown), nr * nc):
            axes[k // nc][k % nc].axis("off")
        title = CURVE_TITLES.get(metric, metric)
        scale_note = ", log scale" if log else ""
        fig.suptitle(f"{title} ({metric}): mean over seeds, band ± 1 sd{scale_note}", fontsize=10)
        fig.tight_layout()
        stem = "curve_" + metric.replace("/", "_")
        plots.append(_render(fig, stem, f"{title} ({metric}) per arm: mean over seeds, band ± one standard "
                                        f"deviation{scale_note}"))
    return plots, notes


def accuracy_plot(table: AblationTable) -> tuple[Plot | None, list[str]]:
    """Grouped bars per row: benchmark (and average) on x, one bar per arm, 95% CI bars."""
    notes: list[str] = []
    if not table.rows or not table.columns:
        return None, notes
    plt = _pyplot()
    low, high = metric_bounds(table.metric)
    percent = low is not None
    scale = 100.0 if percent else 1.0
    shown = list(table.rows[:MAX_PANELS])
    if len(table.rows) > MAX_PANELS:
        notes.append(f"accuracy plot: the first {MAX_PANELS} of {len(table.rows)} rows are plotted")
    from bicc_lab.report.render import bench_label

    nr, nc = _grid(len(shown))
    width = 0.8 / max(1, len(table.arms))
    fig, axes = plt.subplots(nr, nc, figsize=(max(4.6, 1.2 * len(table.columns) + 2) * nc, 3.4 * nr),
                             squeeze=False)
    for i, row in enumerate(shown):
        ax = axes[i // nc][i % nc]
        for j, arm in enumerate(table.arms):
            xs, ys, down, up = [], [], [], []
            for b, bench in enumerate(table.columns):
                c = table.cell(row, bench, arm)
                if c is None or math.isnan(c.stat.mean):
                    continue
                xs.append(b + (j - (len(table.arms) - 1) / 2) * width)
                ys.append(c.stat.mean * scale)
                # the table's intervals are clipped to the metric's range already
                down.append(max(0.0, c.stat.mean - c.stat.low) * scale if c.stat.has_ci else math.nan)
                up.append(max(0.0, c.stat.high - c.stat.mean) * scale if c.stat.has_ci else math.nan)
            if xs:
                ax.bar(xs, ys, width=width * 0.95, yerr=[down, up], capsize=2, color=_color(arm, j),
                       label=arm_label(arm), error_kw={"lw": 0.8})
        for b, bench in enumerate(table.columns):
            start = table.start.get((row, bench))
            if start is not None:
                ax.hlines(start * scale, b - 0.45, b + 0.45, colors="black", linestyles="--", lw=1.0,
                          label="start (before training)")
        if percent:
            ax.set_ylim(low * scale, high * scale * 1.02)
        ax.set_xlim(-0.5, len(table.columns) - 0.5)
        if not ax.patches:  # a row whose every run failed keeps its panel, and says so
            failed = [arm_label(a) for a in table.arms if table.failed.get((row, a))]
            text = f"no finished run\n(failed: {', '.join(failed)})" if failed else "no finished run"
            ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#b00", fontsize=9)
        ax.set_xticks(range(len(table.columns)))
        ax.set_xticklabels([bench_label(b) for b in table.columns], fontsize=8)
        ax.set_title(_label(row), fontsize=9)
        ax.set_ylabel(f"{table.metric}{' (%)' if percent else ''}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    for k in range(len(shown), nr * nc):
        axes[k // nc][k % nc].axis("off")
    handles, labels = {}, {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
            labels[lab] = lab
    methods = table.ci_methods
    how = " and ".join(
        text for key, text in (("t", "t over 3+ seeds"), ("bootstrap", "bootstrap over problems below 3 seeds"))
        if key in methods
    ) or "none"
    start_note = "; dashed: the model before training" if table.start else ""
    fig.suptitle(f"Final {table.metric} per arm: mean over seeds, {table.confidence:.0%} CI ({how})"
                 f"{start_note}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.legend(list(handles.values()), list(labels), loc="upper right", fontsize=8, frameon=False,
               ncol=len(labels), bbox_to_anchor=(1.0, 0.97))
    clip = f", clipped to [{low * scale:g}, {high * scale:g}]" if percent else ""
    return _render(fig, "accuracy", f"Final {table.metric} per arm and benchmark, mean over seeds with "
                                    f"{table.confidence:.0%} intervals ({how}){clip}{start_note}"), notes

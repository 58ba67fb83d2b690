"""Report plots (matplotlib, Agg backend): training curves per arm with a band over seeds,
and final accuracy per arm and benchmark with CI error bars."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bicc_lab.report.tables import AblationTable, arm_label

if TYPE_CHECKING:
    import pandas as pd

    from bicc_lab.report.data import RunSet

__all__ = ["MAX_PANELS", "Plot", "accuracy_plot", "curve_plots"]

MAX_PANELS = 12  # rows (model × variant) drawn per figure; the rest are noted
CURVE_TITLES = {
    "reward": "Reward",
    "rcc/cov_r_delta": "Cov(r, δ)",
    "contrast/margin": "Contrastive margin",
    "bicc/logp_shift": "BICC log-prob shift",
    "diagnostics/grad_variance": "Gradient variance",
}
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
                    ax.fill_between(mean.index, (mean - std).to_numpy(), (mean + std).to_numpy(),
                                    color=color, alpha=0.18, lw=0)
            ax.set_title(_label(row), fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7, frameon=False)
        for k in range(len(shown), nr * nc):
            axes[k // nc][k % nc].axis("off")
        title = CURVE_TITLES.get(metric, metric)
        fig.suptitle(f"{title} ({metric}): mean over seeds, band ± 1 sd", fontsize=10)
        fig.tight_layout()
        stem = "curve_" + metric.replace("/", "_")
        plots.append(_render(fig, stem, f"{title} ({metric}) per arm: mean over seeds, band ± one standard deviation"))
    return plots, notes


def accuracy_plot(table: AblationTable) -> tuple[Plot | None, list[str]]:
    """Grouped bars per row: benchmark (and average) on x, one bar per arm, 95% CI bars."""
    notes: list[str] = []
    if not table.rows or not table.columns:
        return None, notes
    plt = _pyplot()
    percent = table.metric.replace("@", "_at_").split("_at_")[0] in ("avg", "pass", "maj")
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
            xs, ys, errs = [], [], []
            for b, bench in enumerate(table.columns):
                c = table.cell(row, bench, arm)
                if c is None or math.isnan(c.stat.mean):
                    continue
                xs.append(b + (j - (len(table.arms) - 1) / 2) * width)
                ys.append(c.stat.mean * scale)
                errs.append(c.stat.half_width * scale if c.stat.has_ci else math.nan)
            if xs:
                ax.bar(xs, ys, width=width * 0.95, yerr=errs, capsize=2, color=_color(arm, j),
                       label=arm_label(arm), error_kw={"lw": 0.8})
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
    fig.suptitle(f"Final {table.metric} per arm: mean over seeds, {table.confidence:.0%} CI "
                 "(no error bar: single seed)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.legend(list(handles.values()), list(labels), loc="upper right", fontsize=8, frameon=False,
               ncol=len(labels), bbox_to_anchor=(1.0, 0.97))
    return _render(fig, "accuracy", f"Final {table.metric} per arm and benchmark, mean over seeds with "
                                    f"{table.confidence:.0%} t-intervals"), notes

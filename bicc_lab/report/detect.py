"""What the seeds can detect: per comparison (an arm against the baseline in one row and
benchmark), the anytime-valid interval of the seed policy over the per-seed paired
differences, the smallest effect the current seeds detect at 80% power, and the seeds an
effect would need (``bicc_lab.stats.sequential``).

The interval is the one ``sweep run`` decides with (same α per comparison, same looks), so
the report and the policy never disagree about whether a row is resolved. Without a
``seeds:`` block the report applies the same procedure with α = 0.05 split over every
comparison in the table and a look at every seed count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from bicc_lab.stats.sequential import (
    POWER,
    detectable_effect,
    judge,
    running_confidence_sequence,
    seeds_needed,
)

__all__ = ["DetectionOptions", "detection_frame", "detection_markdown", "detection_rows", "open_rows"]


@dataclass(frozen=True)
class DetectionOptions:
    """The procedure's settings: the sweep's ``seeds:`` block when it has one."""

    alpha: float = 0.05  # family-wise, split evenly (Bonferroni) over the comparisons shown
    looks: tuple[int, ...] | None = None  # seed counts the policy judged at; None: every count
    half_width: float | None = None  # a comparison this precise is resolved even across 0
    benchmarks: tuple[str, ...] | None = None  # None: every benchmark of the table
    arms: tuple[str, ...] | None = None  # None: every arm but the baseline
    effect: float | None = None  # an effect of interest (metric units): seeds it would need
    n_comparisons: int | None = None  # the policy's count; None: the comparisons shown
    # mark open rows in the ablation table: with a seeds: policy, where "open" means the
    # policy would add seeds; without one an interval across 0 is no call for more seeds
    mark_open: bool = False


def detection_frame(
    frame: pd.DataFrame, row_keys: Sequence[str], *, baseline: str = "base", options: DetectionOptions | None = None
) -> pd.DataFrame:
    """One line per comparison; ``frame`` is the report's tidy frame (one row per run and
    benchmark, with ``seed`` and ``score``)."""
    options = options or DetectionOptions()
    keys = list(row_keys)
    groups = []
    if not frame.empty:
        for key, part in frame.groupby([*keys, "benchmark"], sort=False):
            row, bench = tuple(key[:-1]), key[-1]
            if options.benchmarks is not None and bench not in options.benchmarks:
                continue
            by_arm = {arm: dict(zip(p["seed"], p["score"], strict=True)) for arm, p in part.groupby("arm")}
            if baseline not in by_arm:
                continue
            for arm, scores in by_arm.items():
                if arm == baseline or (options.arms is not None and arm not in options.arms):
                    continue
                seeds = sorted(set(scores) & set(by_arm[baseline]))
                diffs = [float(scores[s]) - float(by_arm[baseline][s]) for s in seeds]
                groups.append((row, bench, arm, seeds, diffs))
    n_comparisons = options.n_comparisons or max(1, len(groups))
    alpha_each = options.alpha / n_comparisons
    records = []
    for row, bench, arm, seeds, diffs in groups:
        ci = running_confidence_sequence(diffs, alpha_each, looks=options.looks) if len(diffs) else None
        sd = ci.sd if ci is not None else math.nan
        n = len(diffs)
        records.append({
            **dict(zip(keys, row, strict=True)),
            "benchmark": bench,
            "arm": arm,
            "baseline": baseline,
            "seeds": " ".join(str(s) for s in seeds),
            "n_seeds": n,
            "diff": ci.mean if ci is not None else math.nan,
            "cs_low": ci.low if ci is not None else math.nan,
            "cs_high": ci.high if ci is not None else math.nan,
            "alpha_each": alpha_each,
            "state": judge(ci, options.half_width) if ci is not None else "open",
            "detectable_80": detectable_effect(n, sd, alpha_each) if n >= 2 else math.inf,
            "seeds_for_diff": _needed(ci.mean if ci is not None else math.nan, sd, alpha_each),
            "seeds_for_effect": _needed(options.effect, sd, alpha_each) if options.effect else None,
        })
    out = pd.DataFrame.from_records(
        records,
        columns=[*keys, "benchmark", "arm", "baseline", "seeds", "n_seeds", "diff", "cs_low", "cs_high",
                 "alpha_each", "state", "detectable_80", "seeds_for_diff", "seeds_for_effect"],
    )
    for column in ("seeds_for_diff", "seeds_for_effect"):  # counts, with a gap where there is none
        out[column] = out[column].astype("Int64")
    return out


def _needed(effect: float | None, sd: float, alpha: float) -> int | None:
    if effect is None or not math.isfinite(effect) or not math.isfinite(sd) or effect == 0:
        return None
    return seeds_needed(effect, sd, alpha, max_n=1000)


def open_rows(detection: pd.DataFrame, row_keys: Sequence[str]) -> set[tuple]:
    """Row keys with a comparison still open."""
    if detection.empty:
        return set()
    still = detection[detection["state"] == "open"]
    return {tuple(str(v) for v in r) for r in still[list(row_keys)].itertuples(index=False)}


def _points(value: float, scale: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value * scale:+.1f}".replace("-", "−")


def _count(value: object) -> str:
    """A seed count, or — (none: no effect, no spread, or more than 1,000 seeds)."""
    return "—" if value is None or pd.isna(value) else str(int(value))


def detection_rows(
    detection: pd.DataFrame, row_keys: Sequence[str], scale: float, effect: float | None
) -> tuple[list[str], list[list[str]], str]:
    """(header, rows of display strings, legend) of the section, for markdown and HTML."""
    head = [k.capitalize() if k in ("model", "variant") else k for k in row_keys]
    head += ["Benchmark", "Arm", "Seeds", "Δ (points)", "Interval", "State", f"Detectable at {POWER:.0%} power",
             "Seeds for this Δ"]
    if effect:
        head.append(f"Seeds for {effect * scale:g} points")
    rows = []
    for r in detection.itertuples(index=False):
        d = r._asdict()
        mde = d["detectable_80"]
        cells = [str(d[k]) for k in row_keys] + [
            d["benchmark"], f"+{d['arm'].upper()}", str(d["n_seeds"]), _points(d["diff"], scale),
            f"[{_points(d['cs_low'], scale)}, {_points(d['cs_high'], scale)}]", d["state"],
            "none yet" if math.isinf(mde) else f"±{abs(mde) * scale:.1f}",
            _count(d["seeds_for_diff"]),
        ]
        if effect:
            cells.append(_count(d["seeds_for_effect"]))
        rows.append(cells)
    alpha_each = float(detection["alpha_each"].iloc[0]) if not detection.empty else math.nan
    legend = (
        f"Interval: the anytime-valid (1 − {alpha_each:.2g}) confidence sequence of the mean per-seed "
        "difference (arm − baseline, seeds paired), intersected over the looks; α split evenly over "
        "the comparisons, so all hold together with probability ≥ 1 − α however many seeds are added. "
        "State: excludes 0, narrow (resolved by precision), or open. Detectable: the smallest |Δ| the "
        f"current seeds exclude 0 for with {POWER:.0%} probability, at the observed per-seed spread; "
        "seeds for this Δ: the seeds at which the observed Δ would be detected with that probability "
        "(—: more than 1,000 seeds, or no spread to judge; both estimates from few seeds: read them as "
        "orders of magnitude)."
    )
    return head, rows, legend


def detection_markdown(detection: pd.DataFrame, row_keys: Sequence[str], scale: float, effect: float | None) -> str:
    """The section of ``ablation.md``: a table and how to read it."""
    head, rows, legend = detection_rows(detection, row_keys, scale, effect)
    left = len(row_keys) + 2
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":--"] * left + ["--:"] * (len(head) - left)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join([*lines, "", legend])

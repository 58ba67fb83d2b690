"""Render the report tables: Markdown, LaTeX (booktabs), HTML and the Rich terminal view."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bicc_lab.report.tables import AVERAGE, START, AblationTable, Cell, arm_label, metric_family

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BENCH_LABELS",
    "SIGNIFICANCE_LEVEL",
    "bench_label",
    "cost_markdown",
    "fmt_p",
    "legend",
    "render_html",
    "render_latex",
    "render_markdown",
    "rich_tables",
]

BENCH_LABELS = {"math500": "MATH500", "amc23": "AMC23", "aime24": "AIME24", "aime25": "AIME25",
                AVERAGE: "Average"}
SIGNIFICANCE_LEVEL = 0.05
DASH = "—"


def bench_label(name: str) -> str:
    return BENCH_LABELS.get(name, name)


def column_label(column: str) -> str:
    """An arm's label, or "start" for the model before training."""
    return "start" if column == START else arm_label(column)


def table_columns(table: AblationTable) -> list[str]:
    """The columns under each benchmark: the starting model (when known), then the arms."""
    return ([START] if table.start else []) + list(table.arms)


def _percent(table: AblationTable) -> bool:
    """Accuracy-like metrics (avg@k, pass@k, maj@k) are shown in percent."""
    return metric_family(table.metric) in ("avg", "pass", "maj")


def _num(value: float, scale: float, digits: int = 1) -> str:
    """A number for display, with a real minus sign."""
    return f"{value * scale:.{digits}f}".replace("-", "−")


def _signed(value: float, scale: float, digits: int = 1) -> str:
    """``+1.2`` / ``−1.2`` (a real minus sign) / ``±0.0``."""
    v = value * scale
    text = f"{abs(v):.{digits}f}"
    if float(text) == 0:
        return f"±{text}"
    return f"+{text}" if v > 0 else f"−{text}"


def fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return DASH
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}"


def _significant(c: Cell) -> bool:
    return c.test is not None and c.test.p_value < SIGNIFICANCE_LEVEL


def _ci_parts(c: Cell, scale: float) -> tuple[str, str] | None:
    """(plus, minus) distances of the interval's ends from the mean as display text, None
    when there is no interval; equal texts mean a symmetric interval (shown as ±)."""
    if not c.stat.has_ci:
        return None
    up = _num(max(0.0, c.stat.high - c.stat.mean), scale)
    down = _num(max(0.0, c.stat.mean - c.stat.low), scale)
    return up, down


def _ci_text(c: Cell, scale: float) -> str:
    """``± 1.2`` (symmetric) or ``+3.4/−1.2`` (clipped or bootstrap interval); "" for none."""
    parts = _ci_parts(c, scale)
    if parts is None:
        return ""
    up, down = parts
    return f"± {up}" if up == down else f"+{up}/−{down}"


def _parts(c: Cell | None, scale: float, table: AblationTable | None = None) -> tuple[str, str, str] | None:
    """(mean, interval text or "", "(Δ)" or "") of a cell, None when missing. A mean below
    the starting model's score carries ↓."""
    if c is None or math.isnan(c.stat.mean):
        return None
    mean = _num(c.stat.mean, scale)
    if table is not None and table.below_start(c):
        mean += "↓"
    ci = _ci_text(c, scale)
    delta = ""
    if c.delta is not None:
        delta = f"({_signed(c.delta, scale)}{'†' if _significant(c) else ''})"
    return mean, ci, delta


def _start_text(table: AblationTable, row: tuple[str, ...], bench: str, scale: float) -> str:
    value = table.start.get((row, bench))
    return DASH if value is None else _num(value, scale)


def _empty_text(table: AblationTable, row: tuple[str, ...], arm: str) -> str:
    """What a cell without a finished seed shows: "failed" (its runs failed) or —."""
    return table.failed_label(row, arm) or DASH


def legend(table: AblationTable) -> str:
    scale = "in %, " if _percent(table) else ""
    methods = table.ci_methods
    how = []
    if "t" in methods:
        how.append("t-interval over seeds (3 seeds or more)")
    if "bootstrap" in methods:
        how.append(f"with fewer than 3 seeds, percentile bootstrap over problems and seeds, "
                   f"{table.n_resamples:,} resamples")
    interval = "; ".join(how) or "no interval (a single seed, no per-problem results)"
    clipped = " clipped to [0, 100];" if _percent(table) else ""
    text = (
        f"Cells: mean and {table.confidence:.0%} CI ({interval};{clipped} ± when symmetric, "
        f"+up/−down otherwise), {scale}of {table.metric}; (Δ) against {arm_label(table.baseline)} "
        f"of the same row{' in points' if _percent(table) else ''}; bold: best arm per row and benchmark; "
        f"{DASH}: no finished run; failed: every run of that cell failed (see Failed runs)."
    )
    if table.start:
        text += (" start: the model before training, same evaluation (cached per model and eval "
                 "settings); ↓: below it.")
    if table.tested:
        text += (
            f" †: paired bootstrap over problems p < {SIGNIFICANCE_LEVEL} "
            f"({table.n_resamples:,} resamples, seeds averaged per problem)."
        )
    if AVERAGE in table.columns:
        text += " Average: mean over benchmarks per seed, then over seeds"
        text += " (no paired test)." if table.tested else "."
    return text


def _header_keys(table: AblationTable) -> list[str]:
    return [k.capitalize() if k in ("model", "variant") else k for k in table.row_keys]


# --------------------------------------------------------------------------- markdown


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def render_markdown(
    table: AblationTable,
    *,
    title: str,
    meta: Sequence[str] = (),
    significance: pd.DataFrame | None = None,
) -> str:
    scale = 100.0 if _percent(table) else 1.0
    lines = [f"# {title}", ""]
    lines += [f"{m}  " for m in meta]
    if meta:
        lines.append("")
    cols = table_columns(table)
    head = _header_keys(table) + [f"{bench_label(b)} {column_label(a)}" for b in table.columns for a in cols]
    lines.append("| " + " | ".join(_md_escape(h) for h in head) + " |")
    lines.append("|" + "|".join([":--"] * len(table.row_keys) + ["--:"] * (len(head) - len(table.row_keys))) + "|")
    for row in table.rows:
        cells = [_md_escape(x) for x in row]
        if tuple(str(x) for x in row) in table.open_rows:  # more seeds could still change the answer
            cells[-1] += " (open)"
        for bench in table.columns:
            for arm in cols:
                if arm == START:
                    cells.append(_start_text(table, row, bench, scale))
                    continue
                c = table.cell(row, bench, arm)
                parts = _parts(c, scale, table)
                if parts is None:
                    cells.append(_empty_text(table, row, arm))
                    continue
                mean, ci, delta = parts
                main = f"{mean} {ci}".strip()
                if c is not None and c.best:
                    main = f"**{main}**"
                cells.append(f"{main} {delta}".strip())
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", legend(table), ""]
    if significance is not None and not significance.empty:
        lines += ["## Paired significance against the baseline", "",
                  _significance_md(table, significance, scale), ""]
    head, failed = failed_rows(table)
    if failed:
        lines += ["## Failed runs", "", "| " + " | ".join(head) + " |", "|" + "|".join([":--"] * len(head)) + "|"]
        lines += ["| " + " | ".join(_md_escape(x) for x in r) + " |" for r in failed] + [""]
    if table.notes:
        lines += ["## Notes", ""] + [f"- {_md_escape(n)}" for n in table.notes] + [""]
    return "\n".join(lines)


def seeds_cell(seeds: str) -> str:
    """The paired seeds as a count with the list beside ("1 (0)", "3 (0 1 2)"): a bare list
    read "0" as no seeds."""
    values = str(seeds).split()
    return f"{len(values)} ({' '.join(values)})" if values else "0"


def _significance_md(table: AblationTable, sig: pd.DataFrame, scale: float) -> str:
    unit = " (points)" if scale == 100.0 else ""
    head = _header_keys(table) + ["Benchmark", "Arm", "Seeds", "Problems", f"Δ{unit}", "95% CI", "p"]
    out = ["| " + " | ".join(head) + " |",
           "|" + "|".join([":--"] * (len(table.row_keys) + 3) + ["--:"] * 4) + "|"]
    for rec in sig.to_dict("records"):
        row = [_md_escape(rec[k]) for k in table.row_keys]
        bold = rec["p_value"] < SIGNIFICANCE_LEVEL
        p = fmt_p(rec["p_value"])
        out.append("| " + " | ".join(row + [
            bench_label(rec["benchmark"]), arm_label(rec["arm"]), seeds_cell(rec["seeds"]), str(rec["n_problems"]),
            _signed(rec["diff"], scale), f"[{_num(rec['ci_low'], scale)}, {_num(rec['ci_high'], scale)}]",
            f"**{p}**" if bold else p,
        ]) + " |")
    return "\n".join(out)


def _fmt_seconds(x: float) -> str:
    if x is None or math.isnan(x):
        return DASH
    if x >= 3600:
        return f"{x / 3600:.2f} h"
    if x >= 120:
        return f"{x / 60:.1f} min"
    if x >= 1:
        return f"{x:.1f} s"
    return f"{x * 1000:.0f} ms"


def _fmt_count(x: float) -> str:
    if x is None or math.isnan(x):
        return DASH
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def _fmt_ratio(x: float) -> str:
    return DASH if x is None or math.isnan(x) else f"{x:.2f}×"


def _fmt_mib(x: float) -> str:
    if x is None or math.isnan(x):
        return DASH
    return f"{x / 1024:.2f} GiB" if x >= 1024 else f"{x:.0f} MiB"


def cost_rows(cost: pd.DataFrame, row_keys: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    head = [k.capitalize() if k in ("model", "variant") else k for k in row_keys] + [
        "Arm", "Path", "Runs", "Wall time", "Step time", "Tokens", "Tokens/s", "Step-time ratio",
        "Grad tokens/step", "No-grad tokens/step", "Grad-token ratio", "Token ratio",
        "Peak memory", "Memory ratio", "Sampled tokens/step", "Sampling ratio"]
    rows = []
    for rec in cost.to_dict("records"):
        rows.append([str(rec[k]) for k in row_keys] + [
            arm_label(rec["arm"]), str(rec.get("forward_path", DASH)), str(rec["runs"]),
            _fmt_seconds(rec["wall_time_s"]),
            _fmt_seconds(rec["mean_step_time_s"]), _fmt_count(rec["tokens"]),
            _fmt_count(rec["tokens_per_s"]), _fmt_ratio(rec["step_time_ratio"]),
            _fmt_count(rec.get("grad_tokens_per_step", math.nan)),
            _fmt_count(rec.get("nograd_tokens_per_step", math.nan)),
            _fmt_ratio(rec.get("grad_token_ratio", math.nan)), _fmt_ratio(rec.get("token_ratio", math.nan)),
            _fmt_mib(rec.get("peak_memory_mib", math.nan)), _fmt_ratio(rec.get("memory_ratio", math.nan)),
            _fmt_count(rec.get("generated_tokens_per_step", math.nan)),
            _fmt_ratio(rec.get("generation_ratio", math.nan)),
        ])
    return head, rows


def cost_markdown(cost: pd.DataFrame, row_keys: Sequence[str], *, title: str, baseline: str) -> str:
    head, rows = cost_rows(cost, row_keys)
    lines = [f"# {title}", "",
             "| " + " | ".join(head) + " |",
             "|" + "|".join([":--"] * (len(row_keys) + 1) + ["--:"] * (len(head) - len(row_keys) - 1)) + "|"]
    lines += ["| " + " | ".join(_md_escape(x) for x in r) + " |" for r in rows]
    lines += ["", f"Means over the seeds of each arm. Every ratio is against {arm_label(baseline)} of the "
              f"same row on the same forward path (Path: `shared` runs each distinct prompt of a group "
              f"once, `per-sequence` recomputes it per completion, `train.shared_prefix`; "
              f"`shared (BICC only)`: a run from before every arm could share); an arm with no "
              f"{arm_label(baseline)} on its path has no ratio. "
              f"Wall time: training (`train/wall_time_s`); step time: "
              f"mean training step (`train/mean_step_time_s`); tokens: TRL's `num_tokens` at the end; "
              f"step-time ratio: the arm's overhead. "
              f"Grad / no-grad tokens per step: tokens run per optimizer step with gradient and in "
              f"no-grad policy and reference passes (`tokens/*_per_step`), a cost that does not depend "
              f"on the hardware; grad-token ratio and token ratio (grad + no-grad). Peak memory "
              f"(`perf/peak_memory_mib`): CUDA's peak allocation on a GPU, the process's peak "
              f"resident set on a CPU (Python and libraries included). Sampled tokens per step: prompt + completion "
              f"tokens of every rollout generated (`tokens/generation_per_step`, DAPO's dynamic-sampling "
              f"rounds included), with its own ratio: a sampled token costs a decode step, not a share "
              f"of a forward pass.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- LaTeX


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def tex_escape(text: Any) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def render_latex(table: AblationTable, *, caption: str, label: str) -> str:
    """A booktabs table (``\\usepackage{booktabs}``; ``graphicx`` for the resize box).

    ``caption`` is LaTeX already (escape user text with :func:`tex_escape`)."""
    scale = 100.0 if _percent(table) else 1.0
    nk = len(table.row_keys)
    cols = table_columns(table)
    na = len(cols)
    spec = "l" * nk + "c" * (na * len(table.columns))
    lines = [
        "% Generated by bicc-lab report; needs \\usepackage{booktabs} and \\usepackage{graphicx}.",
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{caption}}}",
        f"\\label{{{label}}}",
        "\\resizebox{\\linewidth}{!}{%",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
    ]
    groups = " & ".join(
        [""] * nk + [f"\\multicolumn{{{na}}}{{c}}{{{tex_escape(bench_label(b))}}}" for b in table.columns]
    )
    lines.append(groups + " \\\\")
    rules = " ".join(
        f"\\cmidrule(lr){{{nk + 1 + i * na}-{nk + (i + 1) * na}}}" for i in range(len(table.columns))
    )
    lines.append(rules)
    head = [tex_escape(h) for h in _header_keys(table)] + [
        tex_escape(column_label(a)) for _ in table.columns for a in cols
    ]
    lines.append(" & ".join(head) + " \\\\")
    lines.append("\\midrule")
    for row in table.rows:
        cells = [tex_escape(x) for x in row]
        for bench in table.columns:
            for arm in cols:
                if arm == START:
                    cells.append(_start_text(table, row, bench, scale).replace("−", "$-$").replace(DASH, "---"))
                    continue
                c = table.cell(row, bench, arm)
                parts = _parts(c, scale, table)
                if parts is None:
                    empty = _empty_text(table, row, arm)
                    cells.append("---" if empty == DASH else f"\\textit{{{empty}}}")
                    continue
                mean, _, delta = parts
                main = mean.replace("−", "$-$").replace("↓", "$\\downarrow$")
                ci_parts = _ci_parts(c, scale) if c is not None else None
                if ci_parts is not None:
                    up, down = ci_parts
                    main += f"$\\pm${up}" if up == down else f"$^{{+{up}}}_{{-{down}}}$"
                if c is not None and c.best:
                    main = f"\\textbf{{{main}}}"
                if delta:
                    d = delta.replace("−", "$-$").replace("±", "$\\pm$").replace("†", "$^\\dagger$")
                    main += f" {{\\scriptsize {d}}}"
                cells.append(main)
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}", "\\end{table}", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- HTML


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1400px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
th{background:#f4f4f4} td.key,th.key{text-align:left}
td.best{font-weight:bold;background:#eaf6ea} td.missing{color:#999;text-align:center}
td.failed{color:#b00;text-align:center;font-style:italic} td.start{color:#555;font-style:italic}
.delta{color:#555;font-size:0.85em} .sig{color:#b00}
.legend,.meta{color:#555;font-size:0.9em} figure{margin:1.5em 0} img{max-width:100%}
"""


def _h(text: Any) -> str:
    return html.escape(str(text))


def _html_ablation(table: AblationTable) -> str:
    scale = 100.0 if _percent(table) else 1.0
    out = ["<table class='ablation'>", "<thead><tr>"]
    out += [f"<th class='key' rowspan='2'>{_h(k)}</th>" for k in _header_keys(table)]
    cols = table_columns(table)
    out += [f"<th colspan='{len(cols)}'>{_h(bench_label(b))}</th>" for b in table.columns]
    out.append("</tr><tr>")
    out += [f"<th>{_h(column_label(a))}</th>" for _ in table.columns for a in cols]
    out.append("</tr></thead><tbody>")
    for row in table.rows:
        out.append("<tr>" + "".join(f"<td class='key'>{_h(x)}</td>" for x in row))
        for bench in table.columns:
            for arm in cols:
                if arm == START:
                    out.append(f"<td class='start'>{_h(_start_text(table, row, bench, scale))}</td>")
                    continue
                c = table.cell(row, bench, arm)
                parts = _parts(c, scale, table)
                if parts is None:
                    empty = _empty_text(table, row, arm)
                    cls = "failed" if empty != DASH else "missing"
                    out.append(f"<td class='{cls}'>{_h(empty)}</td>")
                    continue
                mean, ci, delta = parts
                cls = " class='best'" if c is not None and c.best else ""
                text = _h(f"{mean} {ci}".strip())
                if delta:
                    sig = c is not None and _significant(c)
                    text += f" <span class='delta{' sig' if sig else ''}'>{_h(delta)}</span>"
                title = ""
                if c is not None:
                    tip = f"seeds {' '.join(map(str, c.seeds))}"
                    if c.test is not None:
                        tip += f"; paired p = {fmt_p(c.test.p_value)}"
                    title = f" title='{_h(tip)}'"
                out.append(f"<td{cls}{title}>{text}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _html_frame(head: Sequence[str], rows: Sequence[Sequence[str]], n_keys: int) -> str:
    out = ["<table><thead><tr>"]
    out += [f"<th{' class=key' if i < n_keys else ''}>{_h(h)}</th>" for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>" + "".join(
            f"<td{' class=key' if i < n_keys else ''}>{_h(x)}</td>" for i, x in enumerate(r)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def significance_rows(table: AblationTable, sig: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    scale = 100.0 if _percent(table) else 1.0
    head = _header_keys(table) + ["Benchmark", "Arm", "Seeds", "Problems", "Δ", "95% CI", "p"]
    rows = []
    for rec in sig.to_dict("records"):
        rows.append([str(rec[k]) for k in table.row_keys] + [
            bench_label(rec["benchmark"]), arm_label(rec["arm"]), seeds_cell(rec["seeds"]), str(rec["n_problems"]),
            _signed(rec["diff"], scale), f"[{_num(rec['ci_low'], scale)}, {_num(rec['ci_high'], scale)}]",
            fmt_p(rec["p_value"]),
        ])
    return head, rows


def failed_rows(table: AblationTable) -> tuple[list[str], list[list[str]]]:
    """The failed runs table: row keys, arm, seed, status, cell, last line of the error."""
    head = _header_keys(table) + ["Arm", "Seed", "Status", "Cell", "Error"]
    frame = table.failed_runs
    if frame is None or frame.empty:
        return head, []
    order = {r: i for i, r in enumerate(table.rows)}
    arms = {a: i for i, a in enumerate(table.arms)}

    def rank(rec: dict) -> tuple:
        row = tuple(str(rec.get(k, "")) for k in table.row_keys)
        seed = rec.get("seed")
        return (order.get(row, len(order)), arms.get(rec["arm"], len(arms)),
                -1 if seed is None or (isinstance(seed, float) and math.isnan(seed)) else seed)

    rows = []
    for rec in sorted(frame.to_dict("records"), key=rank):
        seed = rec.get("seed")
        seed_text = "?" if seed is None or (isinstance(seed, float) and math.isnan(seed)) else str(int(seed))
        rows.append([str(rec.get(k, "")) for k in table.row_keys] + [
            arm_label(rec["arm"]), seed_text, str(rec["status"]).lower(), str(rec.get("cell_name") or ""),
            str(rec.get("error") or ""),
        ])
    return head, rows


def render_html(
    table: AblationTable,
    *,
    title: str,
    meta: Sequence[str],
    significance: pd.DataFrame,
    cost: pd.DataFrame,
    images: Mapping[str, tuple[str, bytes]],
    detection: tuple[list[str], list[list[str]], str] | None = None,
) -> str:
    """One self-contained page: tables, notes and every plot as an embedded PNG.

    ``images``: name -> (caption, PNG bytes); ``detection``: report.detect.detection_rows.
    """
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_h(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_h(title)}</h1>",
        "".join(f"<div class='meta'>{_h(m)}</div>" for m in meta),
        "<h2>Ablation</h2>",
        _html_ablation(table),
        f"<p class='legend'>{_h(legend(table))}</p>",
    ]
    if significance is not None and not significance.empty:
        head, rows = significance_rows(table, significance)
        parts += ["<h2>Paired significance against the baseline</h2>", _html_frame(head, rows, len(table.row_keys))]
    if cost is not None and not cost.empty:
        head, rows = cost_rows(cost, table.row_keys)
        parts += ["<h2>Cost</h2>", _html_frame(head, rows, len(table.row_keys) + 1)]
    head, failed = failed_rows(table)
    if failed:
        parts += ["<h2>Failed runs</h2>", _html_frame(head, failed, len(table.row_keys) + 2)]
    if table.notes:
        parts += ["<h2>Notes</h2><ul>"] + [f"<li>{_h(n)}</li>" for n in table.notes] + ["</ul>"]
    if detection is not None and detection[1]:
        head, rows, text = detection
        parts += ["<h2>What the seeds can detect</h2>", _html_frame(head, rows, len(table.row_keys) + 2),
                  f"<p class='legend'>{_h(text)}</p>"]
    if images:
        parts.append("<h2>Plots</h2>")
        for name, (caption, png) in images.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(
                f"<figure id='{_h(name)}'><img alt='{_h(caption)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{_h(caption)}</figcaption></figure>"
            )
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------- Rich


def rich_tables(
    table: AblationTable, significance: pd.DataFrame | None, cost: pd.DataFrame | None, *, title: str
) -> list[Any]:
    """Renderables for the terminal: the ablation table (best cells highlighted), the
    paired tests, the cost table and the notes."""
    from rich.table import Table
    from rich.text import Text

    scale = 100.0 if _percent(table) else 1.0
    out: list[Any] = []
    t = Table(title=title, caption=legend(table), caption_justify="left", show_lines=False)
    cols = table_columns(table)
    for k in _header_keys(table):
        t.add_column(k, style="cyan", no_wrap=True)
    for bench in table.columns:
        for arm in cols:
            t.add_column(f"{bench_label(bench)}\n{column_label(arm)}", justify="right")
    for row in table.rows:
        cells: list[Any] = list(row)
        for bench in table.columns:
            for arm in cols:
                if arm == START:
                    cells.append(Text(_start_text(table, row, bench, scale), style="italic"))
                    continue
                c = table.cell(row, bench, arm)
                parts = _parts(c, scale, table)
                if parts is None:
                    empty = _empty_text(table, row, arm)
                    cells.append(Text(empty, style="red" if empty != DASH else "dim"))
                    continue
                mean, ci, delta = parts
                text = Text(f"{mean} {ci}".strip(), style="bold green" if c is not None and c.best else "")
                if delta:
                    text.append(f" {delta}", style="red" if c is not None and _significant(c) else "dim")
                cells.append(text)
        t.add_row(*cells)
    out.append(t)
    if significance is not None and not significance.empty:
        head, rows = significance_rows(table, significance)
        s = Table(title="Paired bootstrap against the baseline")
        for i, h in enumerate(head):
            s.add_column(h, justify="left" if i < len(table.row_keys) + 2 else "right")
        for r in rows:
            s.add_row(*r)
        out.append(s)
    if cost is not None and not cost.empty:
        head, rows = cost_rows(cost, table.row_keys)
        c = Table(title="Cost per arm")
        for i, h in enumerate(head):
            c.add_column(h, justify="left" if i <= len(table.row_keys) else "right")
        for r in rows:
            c.add_row(*r)
        out.append(c)
    head, failed = failed_rows(table)
    if failed:
        f = Table(title="Failed runs")
        for h in head:
            f.add_column(h)
        for r in failed:
            f.add_row(*r)
        out.append(f)
    if table.notes:
        out.append(Text("Notes:\n" + "\n".join(f"- {n}" for n in table.notes), style="yellow"))
    return out

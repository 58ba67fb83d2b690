"""MLflow -> pandas -> ablation tables (md, tex, csv, html, Rich), statistics and plots.

    from bicc_lab.report import load_runs, build_report, write_report

    run_set = load_runs("quickstart", "sqlite:////abs/mlflow.db")   # finished child runs
    report = build_report(run_set, baseline="base")                  # tables, tests, plots
    write_report(report, "reports/quickstart")                       # atomic
    report.table.to_frame()                                          # mean, CI, Δ, p per cell

Heavy imports (pandas, mlflow, matplotlib) happen here, never at CLI start-up.
"""

from bicc_lab.report.build import (
    FORMATS,
    Report,
    build_report,
    display_path,
    display_uri,
    log_report,
    write_report,
)
from bicc_lab.report.data import (
    CURVE_METRICS,
    ReportDataError,
    RunSet,
    load_curves,
    load_problem_scores,
    load_runs,
    metric_selector,
)
from bicc_lab.report.stats import (
    BootstrapResult,
    MeanCI,
    bootstrap_mean_ci,
    mean_ci,
    paired_bootstrap,
)
from bicc_lab.report.tables import AVERAGE, START, AblationTable, Cell, build_ablation, build_cost

__all__ = [
    "AVERAGE",
    "CURVE_METRICS",
    "START",
    "FORMATS",
    "AblationTable",
    "BootstrapResult",
    "Cell",
    "MeanCI",
    "Report",
    "ReportDataError",
    "RunSet",
    "bootstrap_mean_ci",
    "build_ablation",
    "build_cost",
    "build_report",
    "display_path",
    "display_uri",
    "load_curves",
    "load_problem_scores",
    "load_runs",
    "log_report",
    "mean_ci",
    "metric_selector",
    "paired_bootstrap",
    "write_report",
]

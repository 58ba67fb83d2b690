"""The report's cost table carries the trainer's token counts, peak memory and their ratios to
the baseline on the same forward path."""

from __future__ import annotations

import math

import pytest

from bicc_lab.report import build_cost, load_runs
from bicc_lab.report.render import cost_markdown
from bicc_lab.report.synthetic import SyntheticCell, fill_store

EXP = "cost"

# arm -> (grad tokens/step, no-grad policy, no-grad reference) per seed 0 and 1; None: not logged.
TOKENS = {
    "base": [(600.0, None, None), (620.0, None, None)],  # mean 610, no no-grad pass
    "rcc": [(610.0, None, 300.0), (610.0, None, 320.0)],  # grad 610, no-grad 310
    "bicc": [(640.0, None, None), (660.0, None, None)],  # grad 650
    "bicc+rcc": [(650.0, 100.0, 300.0), (650.0, 100.0, 300.0)],  # grad 650, no-grad 400
}
# arm -> sampled (generation) tokens per step, seeds 0 and 1: as if dynamic sampling needed
# twice the rounds in one arm.
GENERATED = {"base": (1000.0, 1000.0), "rcc": (1000.0, 1200.0), "bicc": (1000.0, 1000.0), "bicc+rcc": (2500.0, 1500.0)}
# arm -> peak memory (MiB) per seed.
PEAK = {"base": (100.0, 120.0), "rcc": (150.0, 150.0), "bicc": (130.0, 132.0), "bicc+rcc": (2048.0, 2048.0)}
# The same grid on the shared path (train.shared_prefix: true), seed 0 only: other figures, so
# a ratio that mixed the paths would show.
SHARED = {"base": (330.0, 1.0, 90.0), "bicc": (440.0, 1.5, 99.0), "rcc": (330.0, 1.2, 99.0)}
# Recorded before train.shared_prefix: BICC's forward shared (bicc.shared_prefix), the baseline's not.
LEGACY = {"base": {"bicc.shared_prefix": "true"}, "bicc": {"bicc.shared_prefix": "true"}}


@pytest.fixture(scope="module")
def run_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("cost-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cells = []
    for arm, per_seed in TOKENS.items():
        for seed, (grad, policy, reference) in enumerate(per_seed):
            summary = {"train/wall_time_s": 100.0, "train/mean_step_time_s": 1.0, "num_tokens": 1000.0,
                       "tokens/grad_per_step": grad, "tokens/generation_per_step": GENERATED[arm][seed],
                       "perf/peak_memory_mib": PEAK[arm][seed]}
            if policy is not None:
                summary["tokens/nograd_policy_per_step"] = policy
            if reference is not None:
                summary["tokens/nograd_reference_per_step"] = reference
            cells.append(SyntheticCell("org/tiny", "grpo", arm, seed, correct={"math500": [[True, False]] * 3},
                                       summary=summary, params={"train.shared_prefix": "false"}))
    for arm, (grad, step_time, peak) in SHARED.items():
        summary = {"train/wall_time_s": 100.0, "train/mean_step_time_s": step_time, "num_tokens": 1000.0,
                   "tokens/grad_per_step": grad, "perf/peak_memory_mib": peak}
        cells.append(SyntheticCell("org/tiny", "grpo", arm, 0, correct={"math500": [[True, False]] * 3},
                                   summary=summary, params={"train.shared_prefix": "true"}))
    for arm, params in LEGACY.items():
        cells.append(SyntheticCell("org/tiny", "gspo", arm, 0, correct={"math500": [[True, False]] * 3},
                                   summary={"train/wall_time_s": 100.0, "train/mean_step_time_s": 1.0,
                                            "tokens/grad_per_step": 400.0 if arm == "bicc" else 600.0},
                                   params=params))
    cells.append(SyntheticCell("org/tiny", "dapo", "base", 0, correct={"math500": [[True, False]] * 3},
                               summary={"train/wall_time_s": 100.0, "train/mean_step_time_s": 1.0}))
    fill_store(uri, EXP, cells, sweep=EXP)
    return load_runs(EXP, uri)


def per_sequence(cost):
    return cost[cost["forward_path"] == "per-sequence"].set_index(["variant", "arm"])


def test_token_columns_and_ratios_by_hand(run_set):
    cost = per_sequence(build_cost(run_set))
    grpo = cost.loc["grpo"]
    assert grpo.loc["base", "grad_tokens_per_step"] == pytest.approx(610.0)
    assert grpo.loc["base", "nograd_tokens_per_step"] == 0.0  # no pass ran: counted as 0, not missing
    assert grpo.loc["rcc", "nograd_tokens_per_step"] == pytest.approx(310.0)
    assert grpo.loc["bicc+rcc", "nograd_tokens_per_step"] == pytest.approx(400.0)
    assert grpo.loc["bicc", "grad_token_ratio"] == pytest.approx(650 / 610)
    assert grpo.loc["rcc", "token_ratio"] == pytest.approx((610 + 310) / 610)
    assert grpo.loc["bicc+rcc", "token_ratio"] == pytest.approx((650 + 400) / 610)
    assert grpo.loc["base", "token_ratio"] == pytest.approx(1.0)
    # A run from before token counting: no figure, no ratio.
    assert math.isnan(cost.loc[("dapo", "base"), "grad_tokens_per_step"])
    assert math.isnan(cost.loc[("dapo", "base"), "token_ratio"])


def test_sampled_tokens_have_their_own_column_and_ratio(run_set):
    cost = per_sequence(build_cost(run_set))
    grpo = cost.loc["grpo"]
    assert grpo.loc["bicc+rcc", "generated_tokens_per_step"] == pytest.approx(2000.0)
    assert grpo.loc["bicc+rcc", "generation_ratio"] == pytest.approx(2.0)
    assert grpo.loc["rcc", "generation_ratio"] == pytest.approx(1.1)
    # Sampling is not folded into the forward-token ratio.
    assert grpo.loc["bicc+rcc", "token_ratio"] == pytest.approx((650 + 400) / 610)
    assert math.isnan(cost.loc[("dapo", "base"), "generation_ratio"])


def test_cost_markdown_shows_token_ratios(run_set):
    text = cost_markdown(build_cost(run_set), run_set.row_keys, title="t", baseline="base")
    assert "Grad tokens/step" in text and "Token ratio" in text and "| Path |" in text
    bicc_rcc = next(line for line in text.splitlines() if "+BICC+RCC" in line and "grpo" in line)
    assert "| per-sequence |" in bicc_rcc
    assert f"{650 / 610:.2f}×" in bicc_rcc and f"{1050 / 610:.2f}×" in bicc_rcc
    assert "| 2.00 GiB | " in bicc_rcc and f"| {2048 / 110:.2f}× |" in bicc_rcc
    assert "Sampled tokens/step" in text and bicc_rcc.rstrip(" |").endswith("2.00×")
    assert "same forward path" in text


def test_ratios_compare_arms_on_the_same_forward_path(run_set):
    cost = build_cost(run_set).set_index(["variant", "forward_path", "arm"])
    shared = cost.loc[("grpo", "shared")]
    # Against the shared baseline (330 tokens, 1.0 s, 90 MiB), not the per-sequence one (610).
    assert shared.loc["bicc", "grad_token_ratio"] == pytest.approx(440 / 330)
    assert shared.loc["bicc", "step_time_ratio"] == pytest.approx(1.5)
    assert shared.loc["rcc", "memory_ratio"] == pytest.approx(99 / 90)
    assert shared.loc["base", "grad_token_ratio"] == pytest.approx(1.0)
    assert cost.loc[("grpo", "per-sequence", "bicc"), "grad_token_ratio"] == pytest.approx(650 / 610)
    # Peak memory: the mean over seeds.
    assert cost.loc[("grpo", "per-sequence", "base"), "peak_memory_mib"] == pytest.approx(110.0)
    # A legacy BICC run shared its forward while its baseline did not: no ratio between them.
    assert cost.loc[("gspo", "shared (BICC only)", "bicc"), "grad_tokens_per_step"] == 400.0
    assert math.isnan(cost.loc[("gspo", "shared (BICC only)", "bicc"), "grad_token_ratio"])
    assert cost.loc[("gspo", "per-sequence", "base"), "grad_token_ratio"] == pytest.approx(1.0)

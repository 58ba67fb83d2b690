"""DAPO's dynamic sampling as pure functions: which generated groups fill the batch, when to stop."""

from __future__ import annotations

import pytest
import torch

from bicc_lab.algorithms.dynamic_sampling import (
    dynamic_sampling_metrics,
    needs_another_round,
    select_groups,
)


def mask(*bits):
    return torch.tensor([bool(b) for b in bits])


def test_mixed_groups_fill_the_batch_in_generation_order_and_the_surplus_is_dropped():
    # Round 0: groups 1 and 3 mixed; round 1: groups 0, 2, 3 mixed. Four slots.
    selection = select_groups([mask(0, 1, 0, 1), mask(1, 0, 1, 1)], 4)
    assert selection.round_index.tolist() == [0, 0, 1, 1]
    assert selection.group_index.tolist() == [1, 3, 0, 2]  # round 1's group 3 is surplus (verl truncates)
    assert selection.trained.tolist() == [True] * 4


def test_a_short_batch_is_topped_up_with_the_earliest_uniform_groups_left_untrained():
    selection = select_groups([mask(0, 1, 0), mask(0, 0, 0)], 3)
    assert list(zip(selection.round_index.tolist(), selection.group_index.tolist(), strict=True)) == [
        (0, 1), (0, 0), (0, 2)]
    assert selection.trained.tolist() == [True, False, False]


def test_rows_of_round_maps_group_slots_to_rows():
    selection = select_groups([mask(0, 1), mask(1, 0)], 2)
    # Slot 0 <- round 0 group 1 (rows 2, 3); slot 1 <- round 1 group 0 (rows 0, 1); G = 2.
    assert [t.tolist() for t in selection.rows_of_round(0, 2)] == [[0, 1], [2, 3]]
    assert [t.tolist() for t in selection.rows_of_round(1, 2)] == [[2, 3], [0, 1]]


@pytest.mark.parametrize(
    ("mixed", "needed", "done", "bound", "expected"),
    [
        (3, 4, 1, 10, True),    # short, rounds left
        (4, 4, 1, 10, False),   # full
        (9, 4, 1, 10, False),   # more than full: truncated, no new round
        (3, 4, 10, 10, False),  # short, but the bound is spent: train on what was kept
        (3, 4, 9, 10, True),    # the 10th round is still allowed
        (0, 4, 1, 1, False),    # a bound of 1: no refill at all
        (0, 4, 500, None, True),  # no bound (verl's max_num_gen_batches <= 0)
    ],
)
def test_another_round_only_while_short_and_within_the_bound(mixed, needed, done, bound, expected):
    assert needs_another_round(mixed, needed, done, bound) is expected


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="rounds_done"):
        needs_another_round(0, 4, 0, 10)
    with pytest.raises(ValueError, match="max_rounds"):
        needs_another_round(0, 4, 1, 0)
    with pytest.raises(ValueError, match="fewer than"):
        select_groups([mask(1, 1)], 3)


def test_metrics_by_hand():
    # 3 rounds of 8 groups, 6 mixed in all, the batch holds 8 and trains on 6.
    assert dynamic_sampling_metrics(3, 24, 6, 6, 8) == {
        "dapo/gen_rounds": 3.0,
        "dapo/frac_groups_kept": 0.25,
        "dapo/frac_batch_filled": 0.75,
        "dapo/generated_per_trained": 4.0,
    }
    # Nothing trained: no generated-per-trained ratio (it would be infinite).
    assert "dapo/generated_per_trained" not in dynamic_sampling_metrics(2, 16, 0, 0, 8)

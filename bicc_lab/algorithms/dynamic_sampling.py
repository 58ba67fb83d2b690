"""DAPO's dynamic sampling (arXiv 2503.14476, section 3.2), as pure functions of group outcomes.

A group whose task outcomes are all correct or all wrong has advantage 0 for every member: it
adds no gradient, and under a token-mean loss it still dilutes the others. DAPO drops such
groups and keeps sampling prompts until the batch holds as many informative (mixed) groups as
it trains on. verl's ``RayDAPOTrainer`` (``algorithm.filter_groups``) does it by generation
batch: it keeps the mixed groups of each batch, concatenates them across batches, and once
there are enough, truncates to the train batch size; after ``max_num_gen_batches`` batches
without enough it raises.

One rule differs here: when the round bound is spent, the step trains on the mixed groups it
has, and uniform groups fill the rest of the batch with no tokens in the loss (see
:func:`select_groups`). An error would end a long run at the first hard batch, which is
exactly when a few informative groups are still worth a step; the shortfall is logged
(``dapo/frac_batch_filled``) instead of hidden.

Inputs are per-group ``(n_groups,)`` bool masks of one process's rows, from
``bicc_lab.algorithms.diagnostics.mixed_group_mask`` over the task outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "GroupSelection",
    "dynamic_sampling_metrics",
    "needs_another_round",
    "select_groups",
]


@dataclass(frozen=True)
class GroupSelection:
    """Which generated group fills each group slot of the batch, in slot order.

    Attributes:
        round_index: ``(n_slots,)`` the generation round the slot's group comes from.
        group_index: ``(n_slots,)`` the group's position within that round.
        trained: ``(n_slots,)`` False for a uniform group that only keeps the batch shape
            (the bound on rounds was spent): it takes no part in the loss.
    """

    round_index: torch.Tensor
    group_index: torch.Tensor
    trained: torch.Tensor

    def rows_of_round(self, round_number: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(slots, rows)``: the batch rows this round fills, and which of its rows fill them."""
        slots = (self.round_index == round_number).nonzero().squeeze(1)
        offsets = torch.arange(group_size)
        batch_rows = (slots.unsqueeze(1) * group_size + offsets).reshape(-1)
        round_rows = (self.group_index[slots].unsqueeze(1) * group_size + offsets).reshape(-1)
        return batch_rows, round_rows


def needs_another_round(mixed_groups: int, groups_needed: int, rounds_done: int, max_rounds: int | None) -> bool:
    """Whether to generate one more round: the batch is short of mixed groups and the bound
    (``max_rounds`` rounds in all, verl's ``max_num_gen_batches``; None: no bound) allows it."""
    if rounds_done < 1:
        raise ValueError(f"rounds_done must be >= 1 (the first round always runs), got {rounds_done}")
    if max_rounds is not None and max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1 or None, got {max_rounds}")
    short = mixed_groups < groups_needed
    return short and (max_rounds is None or rounds_done < max_rounds)


def select_groups(mixed_per_round: Sequence[torch.Tensor], groups_needed: int) -> GroupSelection:
    """Fill ``groups_needed`` slots: mixed groups first, in generation order (round, then
    position), as verl concatenates kept groups and truncates; surplus mixed groups are
    dropped. If there are fewer mixed groups than slots, the earliest uniform groups fill the
    rest with ``trained`` False, so the batch keeps its shape (every process must hand TRL the
    same number of rows) while the loss sees only the mixed groups.
    """
    if groups_needed < 1:
        raise ValueError(f"groups_needed must be >= 1, got {groups_needed}")
    if not mixed_per_round:
        raise ValueError("select_groups needs at least one round")
    rounds = torch.cat([torch.full((m.numel(),), r, dtype=torch.long) for r, m in enumerate(mixed_per_round)])
    positions = torch.cat([torch.arange(m.numel()) for m in mixed_per_round])
    mixed = torch.cat([m.reshape(-1).bool().cpu() for m in mixed_per_round])
    if mixed.numel() < groups_needed:
        raise ValueError(f"{mixed.numel()} groups generated, fewer than the {groups_needed} slots to fill")
    # Stable order: mixed before uniform, each in generation order.
    order = torch.cat([mixed.nonzero().squeeze(1), (~mixed).nonzero().squeeze(1)])[:groups_needed]
    return GroupSelection(round_index=rounds[order], group_index=positions[order], trained=mixed[order])


def dynamic_sampling_metrics(
    rounds: int, generated_groups: int, mixed_groups: int, trained_groups: int, batch_groups: int
) -> dict[str, float]:
    """The per-step record of dynamic sampling (counts over all processes).

    - ``dapo/gen_rounds``: generation rounds this batch took (verl's ``train/num_gen_batches``).
    - ``dapo/frac_groups_kept``: mixed groups / generated groups, the filter's pass rate.
    - ``dapo/frac_batch_filled``: groups trained on / groups the batch holds (1 unless the
      bound on rounds was spent).
    - ``dapo/generated_per_trained``: generated groups / groups trained on, what one trained
      group cost in sampling (absent when nothing was trained on).
    """
    metrics = {
        "dapo/gen_rounds": float(rounds),
        "dapo/frac_groups_kept": mixed_groups / generated_groups if generated_groups else 0.0,
        "dapo/frac_batch_filled": trained_groups / batch_groups if batch_groups else 0.0,
    }
    if trained_groups:
        metrics["dapo/generated_per_trained"] = generated_groups / trained_groups
    return metrics

"""DAPO's dynamic sampling inside ``BiccGRPOTrainer``: rounds of TRL's generate-and-score
until a batch is full of mixed groups, and the merge of the selected groups' rows.

A mixin of ``BiccGRPOTrainer`` (``trainer.py``), split out by concern: it uses the trainer's
``_generate_round``, ``_outcome_rewards``, ``_local_slice`` and TRL's state; the selection
itself is ``bicc_lab.algorithms.dynamic_sampling``.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import torch

from bicc_lab.algorithms.diagnostics import mixed_group_mask
from bicc_lab.algorithms.dynamic_sampling import (
    GroupSelection,
    dynamic_sampling_metrics,
    needs_another_round,
    select_groups,
)

# TRL output keys whose rows are left-padded prompts; every other (B, L) key is completion-aligned.
_PROMPT_KEYS = ("prompt_ids", "prompt_mask")


class DynamicSamplingRounds:
    """The generation rounds of DAPO's dynamic sampling (mixed into ``BiccGRPOTrainer``)."""

    def _generate_mixed_groups(self, inputs, group_size: int):
        """DAPO's dynamic sampling: rounds of generation until this process holds as many mixed
        groups (by task outcome) as its batch has groups, or ``max_generation_rounds`` are spent.

        Returns TRL's output dict for the selected rows (same keys and row count as one round)
        and the ``(groups,)`` bool of groups the loss sees. Every process runs the same number
        of rounds (generation and scoring have collectives), until the process with the fewest
        mixed groups has enough. ``_rollout_rewards_per_func`` and ``_sampler_logps`` are
        replaced by those of the selected rows.
        """
        local_rows = len(inputs)
        groups_needed = local_rows // group_size
        rounds: list[dict[str, Any]] = []
        try:
            while True:
                self._generation_round = len(rounds)
                round_inputs = inputs if not rounds else self._refill_inputs(len(rounds), local_rows, group_size)
                output = self._generate_round(round_inputs)
                rewards_per_func = self._rollout_rewards_per_func[self._local_slice(local_rows)]
                sampler_logps, self._sampler_logps = self._sampler_logps, None
                mixed = mixed_group_mask(self._outcome_rewards(rewards_per_func), group_size,
                                         self.bicc.success_threshold).cpu()
                rounds.append({"output": output, "rewards_per_func": rewards_per_func,
                               "sampler_logps": sampler_logps, "mixed": mixed})
                mixed_here = sum(int(r["mixed"].sum()) for r in rounds)
                fewest = int(self.accelerator.gather(torch.tensor([mixed_here], device=self.accelerator.device)).min())
                if not needs_another_round(fewest, groups_needed, len(rounds), self.max_generation_rounds):
                    break
        finally:
            self._generation_round = 0
        selection = select_groups([r["mixed"] for r in rounds], groups_needed)
        output = self._merge_rounds([r["output"] for r in rounds], selection, group_size, local_rows)
        self._rollout_rewards_per_func = self.accelerator.gather(
            _select_rows([r["rewards_per_func"] for r in rounds], selection, group_size, local_rows)
        )
        logps = [r["sampler_logps"] for r in rounds]
        self._sampler_logps = None
        if all(x is not None for x in logps):
            merged_logps = _merge_completion_aligned(logps, selection, group_size, local_rows, 0.0)
            self._sampler_logps = merged_logps[:, : output["completion_ids"].size(1)]

        counts = torch.tensor(
            [sum(r["mixed"].numel() for r in rounds), sum(int(r["mixed"].sum()) for r in rounds),
             int(selection.trained.sum()), groups_needed],
            dtype=torch.float64, device=self.accelerator.device,
        )
        generated, mixed_total, trained, batch_groups = (int(x) for x in self.accelerator.reduce(counts, reduction="sum").tolist())
        for key, value in dynamic_sampling_metrics(len(rounds), generated, mixed_total, trained, batch_groups).items():
            self._metrics["train"][key].append(value)
        if trained < batch_groups:
            # One message (shown once): dapo/frac_batch_filled records every short step.
            warnings.warn(
                "dynamic sampling: train.dynamic_sampling_max_rounds generation rounds did not fill the batch "
                "with mixed groups; such steps train on the mixed groups found (dapo/frac_batch_filled)",
                stacklevel=2,
            )
        return output, selection.trained.to(self.accelerator.device)

    def _refill_inputs(self, round_number: int, local_rows: int, group_size: int) -> list[dict[str, Any]]:
        """Rows for refill round ``round_number`` (1, 2, ...): fresh prompts drawn from the
        training set, each repeated ``group_size`` times, this process's share.

        Drawn from (seed, optimizer step, round), not from a sampler with state, so a run
        resumed from a checkpoint draws what an uninterrupted one would have drawn. They do
        not advance the epoch of TRL's sampler (verl draws them from its dataloader).
        """
        prompts_here = local_rows // group_size
        n_processes = self.accelerator.num_processes
        indices = refill_prompt_indices(
            len(self.train_dataset), prompts_here * n_processes,
            seed=self.args.seed, step=self.state.global_step, round_number=round_number,
        )
        mine = indices[self.accelerator.process_index * prompts_here:(self.accelerator.process_index + 1) * prompts_here]
        return [dict(self.train_dataset[index]) for index in mine for _ in range(group_size)]

    def _merge_rounds(self, outputs, selection: GroupSelection, group_size: int, local_rows: int):
        """One TRL output dict from the selected groups of several rounds (padding realigned)."""
        keys = set(outputs[0])
        if any(set(o) != keys for o in outputs):
            raise RuntimeError("dynamic sampling: generation rounds returned different keys")
        pad = self._tokenizer.pad_token_id
        merged: dict[str, Any] = {}
        for key in outputs[0]:
            values = [o[key] for o in outputs]
            first = values[0]
            if key == "num_items_in_batch":
                merged[key] = first  # recounted over the selected rows in _mask_untrained_groups
            elif not (isinstance(first, torch.Tensor) and first.dim() in (1, 2) and first.size(0) == local_rows):
                raise ValueError(
                    f"dynamic sampling cannot merge rounds of the batch key {key!r} (multimodal inputs "
                    "are not supported); set variant_overrides: {dynamic_sampling: false}"
                )
            elif first.dim() == 1:
                merged[key] = _select_rows(values, selection, group_size, local_rows)
            elif key in _PROMPT_KEYS:
                merged[key] = _merge_prompt_aligned(values, selection, group_size, local_rows,
                                                    pad if key == "prompt_ids" else 0)
            else:
                merged[key] = _merge_completion_aligned(values, selection, group_size, local_rows,
                                                        pad if key == "completion_ids" else 0)
        # Columns that are padding in every selected row came from rounds' dropped rows.
        prompt_columns = merged["prompt_mask"].any(dim=0).nonzero()
        first_column = int(prompt_columns.min()) if prompt_columns.numel() else 0
        for key in _PROMPT_KEYS:
            merged[key] = merged[key][:, first_column:]
        completion_columns = merged["completion_mask"].any(dim=0).nonzero()
        width = int(completion_columns.max()) + 1 if completion_columns.numel() else 1
        for key, value in merged.items():
            if key not in _PROMPT_KEYS and isinstance(value, torch.Tensor) and value.dim() == 2:
                merged[key] = value[:, :width]
        return merged

    def _mask_untrained_groups(self, output, trained_groups: torch.Tensor, group_size: int) -> None:
        """Groups the loss must not see (uniform ones) leave it and its token count: their
        advantages are 0, but under a token-mean loss their tokens would dilute the others."""
        keep = trained_groups.to(output["completion_mask"].device).repeat_interleave(group_size)
        output["completion_mask"] = output["completion_mask"] * keep.to(output["completion_mask"].dtype).unsqueeze(1)
        loss_mask = output["completion_mask"] * output.get("tool_mask", 1)
        output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()


# ---------------------------------------------------------------------- dynamic sampling helpers
def refill_prompt_indices(dataset_size: int, count: int, *, seed: int, step: int, round_number: int) -> list[int]:
    """``count`` training-set indices for a refill round, a pure function of its arguments:
    a random permutation per (seed, step, round), repeated when the set is smaller than ``count``."""
    if dataset_size < 1:
        raise ValueError("dynamic sampling needs a non-empty training set to draw refill prompts from")
    digest = hashlib.sha256(f"dapo-refill:{seed}:{step}:{round_number}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    draws = [torch.randperm(dataset_size, generator=generator) for _ in range(-(-count // dataset_size))]
    return torch.cat(draws)[:count].tolist()


def _select_rows(values: list[torch.Tensor], selection: GroupSelection, group_size: int, rows: int) -> torch.Tensor:
    """Rows of equal-width per-round tensors, in slot order."""
    out = values[0].new_zeros((rows, *values[0].shape[1:]))
    for round_number, value in enumerate(values):
        batch_rows, round_rows = selection.rows_of_round(round_number, group_size)
        out[batch_rows.to(out.device)] = value[round_rows.to(value.device)]
    return out


def _merge_completion_aligned(values, selection, group_size, rows, pad_value) -> torch.Tensor:
    """Right-padded (B, L_r) tensors of several rounds -> (B, max L_r), right-padded."""
    width = max(v.size(1) for v in values)
    padded = [torch.nn.functional.pad(v, (0, width - v.size(1)), value=pad_value) for v in values]
    return _select_rows(padded, selection, group_size, rows)


def _merge_prompt_aligned(values, selection, group_size, rows, pad_value) -> torch.Tensor:
    """Left-padded (B, P_r) prompt tensors of several rounds -> (B, max P_r), left-padded."""
    width = max(v.size(1) for v in values)
    padded = [torch.nn.functional.pad(v, (width - v.size(1), 0), value=pad_value) for v in values]
    return _select_rows(padded, selection, group_size, rows)

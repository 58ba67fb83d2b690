"""`BiccGRPOTrainer`: TRL's GRPOTrainer with the variants registry, BICC and RCC.

TRL seams used (trl 1.16.0):
- ``_calculate_rewards``: stash the gathered, group-contiguous rewards.
- ``_generate_and_score_completions``: the only place where groups are intact (TRL shuffles
  and splits the batch right after it), so everything per group happens here: DAPO's
  dynamic sampling (more rounds of TRL's own generate-and-score until the batch is full of
  mixed groups), the variant's (optionally RCC-corrected) advantages, BICC's conditioned
  prompts and the extra log-probs the BICC ratio and RCC's confidence δ need.
- ``_compute_loss``: log-probs of the policy under the conditioned prompt when BICC is on,
  then the variant's loss from ``bicc_lab.algorithms``.

With BICC and RCC off, advantages and loss are the same numbers as stock GRPOTrainer with
the matching ``loss_type`` (``tests/test_trl_equivalence.py``).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

import torch
from accelerate.utils import is_peft_model
from trl import GRPOTrainer
from trl.data_utils import is_conversational
from trl.trainer.utils import (
    add_fused_lm_head,
    split_pixel_values_by_grid,
    split_tensor_dict,
    unsplit_pixel_values_by_grid,
)

from bicc_lab.algorithms import bicc as bicc_alg
from bicc_lab.algorithms.diagnostics import (
    gradient_variance,
    mixed_group_mask,
    outcome_gap_by_group,
)
from bicc_lab.algorithms.rcc import rcc_advantages, sequence_delta
from bicc_lab.algorithms.variants import (
    VariantSpec,
    aggregate_loss,
    group_advantages,
    overlong_penalty,
    policy_loss,
)
from bicc_lab.backends.trl import rollout_record
from bicc_lab.backends.trl.dynamic_sampling_rounds import (  # noqa: F401  (refill_prompt_indices: re-exported)
    DynamicSamplingRounds,
    refill_prompt_indices,
)
from bicc_lab.backends.trl.peak_memory import peak_memory_mib
from bicc_lab.backends.trl.sampler_logps import SamplerLogpCapture
from bicc_lab.backends.trl.shared_prefix import (
    group_permutation,
    permute_rows,
    shared_prefix_logps,
    unsupported_reason,
)
from bicc_lab.backends.trl.transfer import TransferProbe

# Token counters (tokens/<name>_per_step): what each kind of forward pass processed, and
# "generation": prompt + completion tokens of every rollout sampled, dynamic sampling's
# extra rounds included (a sampled token costs a decode step, so it is kept apart).
_TOKEN_COUNTERS = ("grad", "conditioned_prefix", "nograd_policy", "nograd_reference", "generation")

# Placeholder used to find where the user turn ends in a chat template.
_SENTINEL = "\u2063BICC\u2063"


class BiccGRPOTrainer(DynamicSamplingRounds, GRPOTrainer):
    """GRPOTrainer plus a GRPO variant from the registry, BICC and RCC.

    Args (besides GRPOTrainer's):
        variant: the ``VariantSpec`` that defines advantages, ratio, clipping, aggregation.
        bicc: object with ``enabled, context_fraction, max_traces, template, separator, ratio,
            success_threshold, seed`` (``bicc_lab.spec`` ``BiccConfig``).
        rcc: object with ``enabled, coef, max_shift, delta, reference`` (``RccConfig``).
        std: ``unbiased`` (TRL/verl) or ``population`` (the paper's derivation).
        max_prompt_length: prompt part of the "maximum sequence length" that BICC's token
            budget is a fraction of; None uses the longest prompt of each batch.
        grad_variance: log the variance of the gradient across micro-batches.
        transfer_every: every N optimizer steps log ``transfer/*`` (``TransferProbe``); None: off.
        outcome_reward: name of the reward function that grades the task; its value above
            ``bicc.success_threshold`` is a correct outcome (BICC's partition, DAPO's dynamic
            sampling, diagnostics). None: the only reward function.
        max_generation_rounds: dynamic sampling's bound on generation rounds per batch
            (``train.dynamic_sampling_max_rounds``); None: no bound.
        shared_prefix: every forward of the run (with gradient or not, every arm) runs each
            distinct prompt of a batch once (``train.shared_prefix``); False: per sequence.
    """

    def __init__(
        self,
        *args: Any,
        variant: VariantSpec,
        bicc: Any,
        rcc: Any,
        std: str = "unbiased",
        max_prompt_length: int | None = None,
        grad_variance: bool = False,
        transfer_every: int | None = None,
        outcome_reward: str | None = None,
        max_generation_rounds: int | None = 10,
        shared_prefix: bool = True,
        **kwargs: Any,
    ) -> None:
        self.shared_prefix = shared_prefix
        self.variant = variant
        self.outcome_reward = outcome_reward
        self.max_generation_rounds = max_generation_rounds
        self._generation_round = 0  # 0: the dataloader's prompts; 1, 2, ...: dynamic sampling's refills
        self.bicc = bicc
        self.rcc = rcc
        self.std_kind = std
        self.bicc_max_prompt_length = max_prompt_length
        self.grad_variance = grad_variance
        super().__init__(*args, **kwargs)
        self.transfer_probe = TransferProbe(self, transfer_every) if transfer_every is not None else None
        if self.transfer_probe is not None:
            self.add_callback(self.transfer_probe)
        self.bicc_template = bicc_alg.get_template(bicc.template, bicc.separator)
        self._piece_cache: dict[str, list[int]] = {}
        self._chat_suffix_ids: list[int] | None = None
        self._diag_buffer: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._group_offset = 0
        self._last_generation_time: float | None = None
        self._grad_stats: dict[str, Any] | None = None
        self._grad_variance_pending: float | None = None
        self._lagged_reference = None
        # Shared-prefix forward: decided at the first forward, when the Trainer has set
        # gradient checkpointing up (None: usable; a string: why not).
        self._shared_prefix_reason: str | None = None
        self._shared_prefix_checked = False
        self._token_totals: dict[str, float] = defaultdict(float)
        self._token_start_step: int | None = None
        self._sampler_logps: torch.Tensor | None = None  # π_old(o|q) of the last generate call
        self._train_generation_batches = 0  # numbers the batches for rollout_record
        self._last_bicc_batch = None
        if grad_variance and self.args.gradient_accumulation_steps < 2:
            import warnings

            warnings.warn(
                "diagnostics.grad_variance is measured across the micro-batches of an optimizer step; "
                "with train.gradient_accumulation_steps = 1 there is only one, so it is not logged",
                stacklevel=2,
            )
        if rcc.enabled and rcc.reference == "ref" and self.ref_model is None and not is_peft_model(self.model):
            self.ref_model = self._build_reference_model()

    # ------------------------------------------------------------------ set-up helpers
    def _build_reference_model(self):
        """A frozen copy of the initial policy for RCC's δ (TRL builds one only when beta != 0)."""
        from trl.models import prepare_deepspeed, prepare_fsdp

        reference = self._snapshot_policy()
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(reference, self.accelerator)
        if self.is_fsdp_enabled:
            return prepare_fsdp(reference, self.accelerator)
        return self.accelerator.prepare_model(reference, evaluation_mode=True)

    def _piece_ids(self, text: str) -> list[int]:
        if text not in self._piece_cache:
            self._piece_cache[text] = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._piece_cache[text]

    def _chat_suffix(self) -> list[int]:
        """Token ids that follow the user's content in a rendered chat prompt (end of turn + assistant header)."""
        if self._chat_suffix_ids is None:
            rendered = self._tokenizer.apply_chat_template(
                [{"role": "user", "content": _SENTINEL}],
                chat_template=self.chat_template,
                add_generation_prompt=True,
                tokenize=False,
                **self.chat_template_kwargs,
            )
            tail = rendered.split(_SENTINEL, 1)[1]
            self._chat_suffix_ids = self._tokenizer(tail, add_special_tokens=False)["input_ids"]
        return self._chat_suffix_ids

    def _insert_positions(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, chat: bool) -> list[int] | None:
        if self.bicc_template.placement == "append" or not chat:
            return None  # the template's own rule: end of prompt, or in front of a plain question
        suffix = self._chat_suffix()
        positions = []
        for ids, mask in zip(prompt_ids, prompt_mask, strict=True):
            row = ids[mask.bool()].tolist()
            ends_with_suffix = suffix and row[-len(suffix) :] == suffix
            positions.append(len(row) - len(suffix) if ends_with_suffix else len(row))
        return positions

    @torch.no_grad()
    def _logps(self, model, prompt_ids, prompt_mask, completion_ids, completion_mask, *,
               counter: str = "nograd_policy") -> torch.Tensor:
        """No-grad per-token log-probs of the completions; ``counter`` names the token count it adds to."""
        batch_size = self.args.per_device_train_batch_size if self.model.training else self.args.per_device_eval_batch_size
        if self._shared_prefix_usable():
            # Every prompt of a group is the same (q, or one of its two conditioned prompts): run each once.
            shared = shared_prefix_logps(
                model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                num_layers=self._num_layers, temperature=self.temperature, batch_size=batch_size,
                autocast=self.accelerator.autocast,
            )
            self._count_tokens(counter, shared.prompt_tokens + shared.completion_tokens)
            return shared.logps
        logps, _, _ = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([prompt_mask, completion_mask], dim=1),
            completion_ids.size(1),
            batch_size=batch_size,
        )
        self._count_tokens(counter, prompt_mask.sum() + completion_mask.sum())
        return logps

    def _reference_logps(self, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
        if self.ref_model is not None:
            return self._logps(self.ref_model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                               counter="nograd_reference")
        from trl.trainer.utils import use_adapter

        model = self.accelerator.unwrap_model(self.model)
        with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None):
            return self._logps(self.model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                               counter="nograd_reference")

    # ------------------------------------------------------------------ shared prefix, token accounting
    def _shared_prefix_usable(self) -> bool:
        """Whether the run's forwards take the shared-prefix path (``train.shared_prefix``):
        the loss forward of every arm (q, or BICC's conditioned prompts) and every no-grad
        pass, since every prompt appears G times in a batch.

        Checked once, at the first use: gradient checkpointing is set up by then. A model or
        setting the path is not checked on falls back to the plain forward with one warning.
        """
        if not self.shared_prefix:
            return False
        if not self._shared_prefix_checked:
            import warnings

            model = self.accelerator.unwrap_model(self.model)
            self._shared_prefix_reason = unsupported_reason(model)
            if self._shared_prefix_reason is None and self._is_vlm:
                self._shared_prefix_reason = "the model takes images"
            self._num_layers = model.config.get_text_config().num_hidden_layers
            self._shared_prefix_checked = True
            if self._shared_prefix_reason is not None:
                warnings.warn(
                    f"train.shared_prefix: {self._shared_prefix_reason}; forwards run unshared "
                    "(same numbers, each completion recomputes its prompt)",
                    stacklevel=2,
                )
        return self._shared_prefix_reason is None

    def _count_tokens(self, counter: str, count) -> None:
        """Add this process's ``count`` tokens to a training counter (summed over processes in
        ``log``: a pass may run on some processes only, so no collective here)."""
        if not self.model.training:
            return
        if self._token_start_step is None:
            self._token_start_step = self.state.global_step
        self._token_totals[counter] += float(count)

    def _generate(self, prompts):
        # π_old(o|q) from the sampler's own forward passes, when this batch will need it and
        # TRL will not compute old log-probs (on-policy, transformers' generate): see sampler_logps.
        self._sampler_logps = None
        generate_every = self.args.steps_per_generation * self.num_iterations
        trl_has_old_logps = (self.args.gradient_accumulation_steps % generate_every != 0
                             or (self.use_vllm and self.vllm_importance_sampling_correction))
        if (not self.model.training or not (self.bicc.enabled or self.rcc.enabled) or trl_has_old_logps
                or self.use_vllm or self.use_transformers_continuous_batching or self.tools
                or self.rollout_func is not None):
            return super()._generate(prompts)
        with SamplerLogpCapture(self.accelerator.unwrap_model(self.model), self.temperature) as capture:
            result = super()._generate(prompts)
        self._sampler_logps = capture.logps(result[1], self.accelerator.device)
        return result

    def _prepare_inputs(self, generation_batch):
        if not (self.model.training and self._shared_prefix_usable()):
            return super()._prepare_inputs(generation_batch)
        # GRPOTrainer._prepare_inputs with one change: the buffered generation batch is
        # shuffled by whole groups, not by sample, so a micro-batch holds complete groups
        # (when its size is a multiple of G) and each distinct prompt runs once per group.
        # The group order is drawn with the same random draw as TRL's sample order
        # (group_permutation), so the sampler's generator, and every later rollout, does not
        # depend on the path. With one optimizer step per generation batch (on-policy) the
        # step's gradient is the same sum either way; with several, the order decides which
        # groups share an optimizer step, so the two paths then train on other mixes.
        generate_every = self.args.steps_per_generation * self.num_iterations
        if self._step % generate_every == 0 or self._buffered_inputs is None:
            batch = self._generate_and_score_completions(generation_batch)
            batch = split_pixel_values_by_grid(batch)
            permutation = group_permutation(batch["bicc_group_index"])
            batch = {key: permute_rows(value, permutation) for key, value in batch.items()}
            batches = split_tensor_dict(batch, self.args.steps_per_generation)
            self._buffered_inputs = [unsplit_pixel_values_by_grid(b) for b in batches]
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    def _gather_padded(self, tensor: torch.Tensor, pad_value: int | float, pad_first: bool) -> torch.Tensor:
        """Gather a (B, L) tensor from every process; widths may differ across ranks."""
        if self.accelerator.num_processes == 1:
            return tensor
        padded = self.accelerator.pad_across_processes(tensor, dim=1, pad_index=pad_value, pad_first=pad_first)
        return self.accelerator.gather(padded)

    # ------------------------------------------------------------------ TRL seams
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rollout_rewards_per_func = rewards_per_func  # gathered across processes, group-contiguous
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        chat = is_conversational({"prompt": inputs[0]["prompt"]}) if inputs and "prompt" in inputs[0] else False
        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        device = self.accelerator.device
        trained_groups = None  # (local groups,) bool: which groups the loss sees (dynamic sampling)
        if self.variant.dynamic_sampling and mode == "train":
            output, trained_groups = self._generate_mixed_groups(inputs, group_size)
        else:
            output = self._generate_round(inputs)

        # TRL's rule: a completion that every reward function left unscored (None -> NaN) keeps a
        # NaN reward, so it is left out of its group's mean, std, RCC covariance and BICC
        # partition, and gets advantage 0 (the algorithms zero NaN advantages).
        weights = self.reward_weights.to(device).unsqueeze(0)
        per_func = self._rollout_rewards_per_func
        rewards = (per_func * weights).nansum(dim=1)
        rewards[torch.isnan(per_func).all(dim=1)] = torch.nan
        # Correct or wrong is the grader's call, not the weighted sum's: another reward function
        # (format, length) must not turn a wrong answer into a correct one.
        outcome = self._outcome_rewards(per_func)
        local_n = output["prompt_ids"].size(0)
        local = self._local_slice(local_n)
        prompt_ids, prompt_mask = output["prompt_ids"], output["prompt_mask"]
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        metrics = self._metrics[mode]

        # Outcomes (BICC's partition, dynamic sampling, diagnostics) come from the task reward;
        # DAPO's length shaping only changes what the advantages see.
        advantage_rewards = rewards
        overlong_buffer = self.variant.overlong_buffer_tokens(self.max_completion_length)
        if overlong_buffer is not None:
            lengths = self.accelerator.gather(completion_mask.sum(dim=1))
            penalty = overlong_penalty(lengths, self.max_completion_length, overlong_buffer).to(rewards.dtype)
            advantage_rewards = rewards + penalty
            metrics["dapo/overlong_penalty_mean"].append(penalty.mean().item())

        # π_old(o|q), computed at most once per generation batch and shared by RCC's δ, BICC's
        # denominator and the diagnostics. TRL has it whenever it computed old log-probs
        # (several updates per batch, vLLM's importance-sampling correction); otherwise the
        # sampler's forward passes had it (_generate). Only where neither did, RCC needs one
        # no-grad pass before the advantages exist, and BICC alone one for its conditioned
        # samples (in _add_conditioned_prompts: every other sample's loss forward runs under q
        # at π_old, so its detached log-probs are the same numbers).
        # (TRL's own passes are counted per generation round, in _generate_round.)
        rollout_logps = output.get("old_per_token_logps")
        sampler_logps, self._sampler_logps = self._sampler_logps, None
        if sampler_logps is not None and sampler_logps.shape != completion_ids.shape:
            sampler_logps = None
        if self.accelerator.num_processes > 1:
            # Every process takes the same path: a pass that ran on some processes only would
            # leave the others waiting in its collectives.
            usable = torch.tensor(float(sampler_logps is not None), device=device)
            if self.accelerator.reduce(usable, reduction="sum").item() < self.accelerator.num_processes:
                sampler_logps = None
        if rollout_logps is None and sampler_logps is not None:
            rollout_logps = sampler_logps * completion_mask  # 0 where masked, like a forward's
        if rollout_logps is None and self.rcc.enabled:
            rollout_logps = self._logps(self.model, prompt_ids, prompt_mask, completion_ids, completion_mask)

        rcc_result, delta, reference_logps = None, None, None
        if self.rcc.enabled:
            reference_logps = self._rcc_reference_logps(output, rollout_logps)
            local_delta = sequence_delta(rollout_logps, reference_logps, completion_mask, reduction=self.rcc.delta)
            delta = self.accelerator.gather(local_delta)
            result = rcc_result = rcc_advantages(
                advantage_rewards, delta, group_size,
                coef=self.rcc.coef, max_shift=self.rcc.max_shift,
                scale=self.variant.advantage_scale, std=self.std_kind,
            )
            advantages = result.advantages
            correct = outcome > self.bicc.success_threshold
            incorrect = outcome <= self.bicc.success_threshold  # NaN (unscorable): neither
            metrics["rcc/cov_r_delta"].append(result.cov.mean().item())
            metrics["rcc/baseline_shift"].append(result.baseline_shift.mean().item())
            metrics["rcc/baseline_shift_abs"].append(result.baseline_shift.abs().mean().item())
            if correct.any():
                metrics["rcc/delta_correct"].append(delta[correct].mean().item())
            if incorrect.any():
                metrics["rcc/delta_incorrect"].append(delta[incorrect].mean().item())
        else:
            advantages = group_advantages(
                advantage_rewards, group_size, scale=self.variant.advantage_scale, std=self.std_kind
            )
        output["advantages"] = advantages[local]
        if self.variant.dynamic_sampling:
            if trained_groups is None:  # eval: one round, uniform groups leave the loss
                trained_groups = mixed_group_mask(outcome[local], group_size, self.bicc.success_threshold)
            self._mask_untrained_groups(output, trained_groups, group_size)

        # Per-sample bookkeeping that survives TRL's shuffle/split, for the contrast diagnostics.
        n_groups = rewards.numel() // group_size
        group_index = torch.arange(n_groups, device=device).repeat_interleave(group_size) + self._group_offset
        self._group_offset += n_groups
        output["bicc_group_index"] = group_index[local]
        output["bicc_rewards"] = outcome[local]  # the task outcome reward, what the diagnostics split on

        if self.bicc.enabled:
            self._add_conditioned_prompts(output, outcome, group_size, chat, rollout_logps, mode)

        now = time.perf_counter()
        tokens = self.accelerator.gather(prompt_mask.sum() + completion_mask.sum()).sum().item()
        if self._last_generation_time is not None and mode == "train":
            elapsed = now - self._last_generation_time
            metrics["perf/tokens_per_s"].append(tokens / max(elapsed, 1e-9))
        self._last_generation_time = now
        if mode == "train":
            dump = rollout_record.dump_dir()
            if dump is not None:
                rcc_logps = (rollout_logps, reference_logps) if rcc_result is not None else None
                self._dump_rollout(dump, output, rewards, advantages, delta, rcc_result, rcc_logps)
            self._train_generation_batches += 1
        return output

    def _gather_sequences(self, output):
        """Prompt ids/mask (left-padded) and completion ids/mask (right-padded) of every rank."""
        pad = self._tokenizer.pad_token_id
        return (
            self._gather_padded(output["prompt_ids"], pad, pad_first=True),
            self._gather_padded(output["prompt_mask"], 0, pad_first=True),
            self._gather_padded(output["completion_ids"], pad, pad_first=False),
            self._gather_padded(output["completion_mask"], 0, pad_first=False),
        )

    def _dump_rollout(self, directory, output, rewards, advantages, delta, rcc_result, rcc_logps=None) -> None:
        """One rank's view of this training generation batch (see ``rollout_record``)."""
        prompt_ids, prompt_mask, completion_ids, completion_mask = self._gather_sequences(output)
        record = {
            "process_index": self.accelerator.process_index,
            "num_processes": self.accelerator.num_processes,
            "local_rows": output["prompt_ids"].size(0),
            "prompts": rollout_record.rows(prompt_ids, prompt_mask),
            "completions": rollout_record.rows(completion_ids, completion_mask),
            "rewards": rewards.detach().cpu(),
            "advantages": advantages.detach().cpu(),
            "local_advantages": output["advantages"].detach().cpu(),
        }
        if rcc_result is not None:
            record["rcc_delta"] = delta.detach().cpu()
            record["rcc_cov"] = rcc_result.cov.detach().cpu()
            record["rcc_baseline_shift"] = rcc_result.baseline_shift.detach().cpu()
            # δ's per-token terms, so a comparison across runs can bound δ's rounding by them
            policy_logps, reference_logps = rcc_logps
            record["rcc_policy_logps"] = self._gather_padded(policy_logps.detach(), 0.0, pad_first=False).cpu()
            record["rcc_reference_logps"] = self._gather_padded(reference_logps.detach(), 0.0, pad_first=False).cpu()
        packed = self._last_bicc_batch
        if self.bicc.enabled and packed is not None:
            record["bicc_conditioned"] = packed.conditioned.cpu()
            record["bicc_context_tokens"] = packed.context_tokens.cpu()
            record["bicc_prompts"] = rollout_record.rows(packed.prompt_ids, packed.prompt_mask)
            record["local_bicc_prompts"] = rollout_record.rows(output["bicc_prompt_ids"], output["bicc_prompt_mask"])
            record["local_bicc_conditioned"] = output["bicc_conditioned"].cpu()
        rollout_record.write_dump(directory, self._train_generation_batches, self.accelerator.process_index, record)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs):
        replay = rollout_record.replay_dir()
        if replay is not None and self.model.training and self._generation_round == 0:
            recorded = rollout_record.dump_file(replay, self._train_generation_batches, 0)
            if recorded.is_file():  # diagnostics only: completions of another run (see rollout_record)
                return rollout_record.replay_completions(recorded, prompt_ids, self.accelerator.process_index), None
        return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs)

    # ------------------------------------------------------------------ generation rounds, outcome
    def _local_slice(self, local_rows: int) -> slice:
        """This process's rows of a gathered (group-contiguous, process-ordered) tensor."""
        start = self.accelerator.process_index * local_rows
        return slice(start, start + local_rows)

    def _outcome_rewards(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """Per completion, the reward of the function that grades the task (``outcome_reward``);
        above ``bicc.success_threshold`` is correct, NaN (unscorable) is neither."""
        names = list(self.reward_func_names)
        if len(names) == 1:
            return rewards_per_func[:, 0]
        if self.outcome_reward not in names:
            raise ValueError(
                f"{len(names)} reward functions ({', '.join(names)}) and the task grader "
                f"{self.outcome_reward!r} is not one of them: name the one whose reward decides correct vs wrong"
            )
        return rewards_per_func[:, names.index(self.outcome_reward)]

    def _generate_round(self, inputs):
        """One round of TRL's generate-and-score, and the tokens it ran: the sampled rollouts,
        and TRL's own no-grad passes over them (old log-probs, reference log-probs)."""
        output = super()._generate_and_score_completions(inputs)
        tokens = output["prompt_mask"].sum() + output["completion_mask"].sum()
        self._count_tokens("generation", tokens)
        if output.get("old_per_token_logps") is not None:
            self._count_tokens("nograd_policy", tokens)
        if output.get("ref_per_token_logps") is not None:
            self._count_tokens("nograd_reference", tokens)  # beta != 0
        return output

    def _rcc_reference_logps(self, output, rollout_logps):
        if self.rcc.reference == "old":
            # π_ref = the policy that generated the previous batch: δ then measures one round of
            # drift. One persistent copy, overwritten in place after each use.
            lagged = self._lagged_reference
            if lagged is None:
                self._lagged_reference = self._snapshot_policy()
                return rollout_logps  # first batch: no drift yet, δ = 0
            logps = self._logps(lagged, output["prompt_ids"], output["prompt_mask"],
                                output["completion_ids"], output["completion_mask"], counter="nograd_reference")
            lagged.load_state_dict(self.accelerator.unwrap_model(self.model).state_dict())
            return logps
        if output.get("ref_per_token_logps") is not None:
            return output["ref_per_token_logps"]
        return self._reference_logps(output["prompt_ids"], output["prompt_mask"],
                                     output["completion_ids"], output["completion_mask"])

    def _snapshot_policy(self):
        """A frozen copy of the current policy (RCC's reference, or its lagged 'old' policy)."""
        import copy

        snapshot = copy.deepcopy(self.accelerator.unwrap_model(self.model))
        # TRL's fused LM head replaces ``forward`` on the instance with a closure over the
        # original bound forward. A deep copy rebinds the method to the copy but keeps the
        # closure, so the copy's plain forward (the one the shared-prefix path runs prompts
        # through) would still run the policy: δ then mixed policy and reference. Patch the
        # copy afresh over its own forward.
        for module in snapshot.modules():
            patched = vars(module).get("forward")
            if patched is not None and getattr(getattr(patched, "__func__", None), "__code__", None) is not None \
                    and patched.__func__.__code__.co_name == "_fused_forward":
                del module.forward
                add_fused_lm_head(module, temperature=self.temperature,
                                  cast_lm_head_to_fp32=self.args.cast_lm_head_to_fp32,
                                  outputs=("log_probs", "entropy"))
        snapshot.eval()
        snapshot.requires_grad_(False)
        return snapshot

    def _add_conditioned_prompts(self, output, rewards, group_size, chat, rollout_logps, mode) -> None:
        pad = self._tokenizer.pad_token_id
        prompt_ids, prompt_mask, completion_ids, completion_mask = self._gather_sequences(output)

        prompt_length = self.bicc_max_prompt_length or int(prompt_mask.sum(1).max().item())
        budget = bicc_alg.context_budget(self.bicc.context_fraction, prompt_length + self.max_completion_length)
        seed = (self.bicc.seed if self.bicc.seed is not None else self.args.seed) * 1_000_003 + self.state.global_step
        packed = bicc_alg.pack_conditioned_prompts(
            prompt_ids.cpu(), prompt_mask.cpu(), completion_ids.cpu(), completion_mask.cpu(), rewards.cpu(),
            group_size,
            tokenize=self._piece_ids,
            budget_tokens=budget,
            pad_token_id=pad,
            template=self.bicc_template,
            max_traces=self.bicc.max_traces,
            success_threshold=self.bicc.success_threshold,
            insert_positions=self._insert_positions(prompt_ids.cpu(), prompt_mask.cpu(), chat),
            strip_token_ids=[*self.eos_token_ids, pad],
            seed=seed,
            truncate=self.bicc.truncate,
        )
        self._last_bicc_batch = packed
        local_n = output["prompt_ids"].size(0)
        local = slice(self.accelerator.process_index * local_n, (self.accelerator.process_index + 1) * local_n)
        device = self.accelerator.device
        conditioned_ids, conditioned_mask = packed.prompt_ids[local], packed.prompt_mask[local]
        keep = conditioned_mask.any(dim=0).nonzero()
        first_column = int(keep.min()) if keep.numel() else 0  # drop columns that are padding for every local row
        conditioned_ids = conditioned_ids[:, first_column:].to(device)
        conditioned_mask = conditioned_mask[:, first_column:].to(device)
        output["bicc_prompt_ids"] = conditioned_ids
        output["bicc_prompt_mask"] = conditioned_mask
        output["bicc_conditioned"] = packed.conditioned[local].to(device)
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        off_policy = output.get("old_per_token_logps") is not None  # TRL computed old log-probs
        if rollout_logps is None:
            # On-policy BICC without RCC: π_old(o|q) only where the prompt changed; the other
            # rows take their loss forward's detached log-probs (_compute_loss).
            rows = output["bicc_conditioned"].nonzero().squeeze(1)
            if self.accelerator.num_processes > 1:
                rows = torch.arange(completion_ids.size(0), device=device)  # the same pass on every process
            rollout_logps = torch.zeros(completion_ids.shape, device=device)
            if rows.numel():
                computed = self._logps(self.model, output["prompt_ids"][rows], output["prompt_mask"][rows],
                                       completion_ids[rows], completion_mask[rows])
                rollout_logps = rollout_logps.to(computed.dtype).index_copy(0, rows, computed)
            computed_rows = torch.zeros_like(output["bicc_conditioned"], dtype=torch.bool)
            computed_rows[rows] = True
            output["bicc_rollout_rows"] = computed_rows
        output["bicc_rollout_logps"] = rollout_logps

        if self.bicc.ratio == "paper":
            # Denominator π_old(o|q), kept explicitly even on-policy: the ratio is not 1 at the first step.
            output["old_per_token_logps"] = rollout_logps
        elif off_policy:
            output["old_per_token_logps"] = self._logps(
                self.model, conditioned_ids, conditioned_mask, completion_ids, completion_mask
            )
        else:
            # On-policy, π_old(o|q ⊕ ctx) is the loss forward itself: TRL's detached fallback.
            output.pop("old_per_token_logps", None)
        if self.beta != 0.0:
            # The KL term compares policy and reference under the same conditioned context
            # (the design's choice): it measures how far training moved the policy from the
            # reference, so both score o after the same prompt, q ⊕ context (q on the rows
            # without one). The reference under q would add the context's own effect on the
            # log-probs to the "KL", non-zero from step 0 on, and penalise reading the context
            # (tests/test_trainer_wiring.py).
            output["ref_per_token_logps"] = self._reference_logps(
                conditioned_ids, conditioned_mask, completion_ids, completion_mask
            )

        groups = packed.conditioned.view(-1, group_size).any(dim=1)
        metrics = self._metrics[mode]
        metrics["bicc/frac_conditioned_groups"].append(groups.float().mean().item())
        if packed.conditioned.any():
            metrics["bicc/context_tokens_mean"].append(packed.context_tokens[packed.conditioned].float().mean().item())
        else:
            metrics["bicc/context_tokens_mean"].append(0.0)

    def _compute_loss(self, model, inputs):
        prompt_ids = inputs.get("bicc_prompt_ids", inputs["prompt_ids"])
        prompt_mask = inputs.get("bicc_prompt_mask", inputs["prompt_mask"])
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        if self._shared_prefix_usable():
            shared = shared_prefix_logps(
                model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                num_layers=self._num_layers, temperature=self.temperature, compute_entropy=True,
                autocast=self.accelerator.autocast,
            )
            logps, entropies = shared.logps, shared.entropies
            prompt_tokens, completion_tokens = shared.prompt_tokens, shared.completion_tokens
        else:
            logps, entropies, _ = self._get_per_token_logps_and_entropies(
                model,
                torch.cat([prompt_ids, completion_ids], dim=1),
                torch.cat([prompt_mask, completion_mask], dim=1),
                completion_ids.size(1),
                compute_entropy=True,
            )
            prompt_tokens, completion_tokens = prompt_mask.sum(), completion_mask.sum()
        self._count_tokens("grad", prompt_tokens + completion_tokens)
        if "bicc_prompt_ids" in inputs:
            self._count_tokens("conditioned_prefix", prompt_tokens)
        if "bicc_rollout_rows" in inputs:
            # Rows without a rollout pass (unconditioned, on-policy): π_old(o|q) is this forward.
            computed = inputs["bicc_rollout_rows"].bool().unsqueeze(1)
            rollout = torch.where(computed, inputs["bicc_rollout_logps"], logps.detach())
            inputs = {**inputs, "bicc_rollout_logps": rollout}
            if self.bicc.ratio == "paper":
                inputs["old_per_token_logps"] = rollout
        old_logps = inputs.get("old_per_token_logps")
        old_logps = logps.detach() if old_logps is None else old_logps
        advantages = inputs["advantages"]
        mode = "train" if self.model.training else "eval"
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1

        # TRL's normaliser for token-mean losses: the global active-token count of the generation
        # batch, spread over processes and the micro-steps that share it.
        total_tokens = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            total_tokens = total_tokens * accumulation / self.args.steps_per_generation

        if self.use_vllm and self.vllm_importance_sampling_correction:
            sampling_weights = inputs["importance_sampling_ratio"]
        else:
            sampling_weights = None
        loss, stats = policy_loss(
            self.variant, logps, old_logps, advantages, mask,
            max_completion_length=self.max_completion_length,
            total_active_tokens=total_tokens,
            token_weights=sampling_weights,
        )
        if self.variant.aggregation != "token_mean":
            loss = loss / accumulation

        if self.beta != 0.0:
            ref = inputs["ref_per_token_logps"]
            per_token_kl = torch.exp(ref - logps) - (ref - logps) - 1
            if self.args.use_bias_correction_kl:
                per_token_kl = per_token_kl * torch.exp(logps - old_logps)
            kl_loss = aggregate_loss(
                per_token_kl, mask, self.variant.aggregation,
                max_completion_length=self.max_completion_length, total_active_tokens=total_tokens,
            )
            if self.variant.aggregation != "token_mean":
                kl_loss = kl_loss / accumulation
            loss = loss + self.beta * kl_loss
            self._metrics[mode]["kl"].append(self._global_masked_mean(per_token_kl, mask))

        metrics = self._metrics[mode]
        metrics["entropy"].append(self._global_masked_mean(entropies, mask))
        for key, value in stats.items():
            metrics[key].append(self.accelerator.gather(torch.as_tensor(value, device=logps.device)).float().nanmean().item())

        self._buffer_diagnostics(inputs, logps.detach(), old_logps, mask)
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.transfer_probe is not None and self.transfer_probe.due():
            self.transfer_probe.accumulate(model, inputs)
        return loss

    def _global_masked_mean(self, values: torch.Tensor, mask: torch.Tensor) -> float:
        totals = self.accelerator.reduce(torch.stack([(values * mask).sum(), mask.sum().float()]), reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    # ------------------------------------------------------------------ diagnostics
    def _buffer_diagnostics(self, inputs, logps, old_logps, mask) -> None:
        if "bicc_group_index" not in inputs:
            return
        lengths = mask.sum(-1).clamp(min=1)
        seq_log_ratio = ((logps - old_logps) * mask).sum(-1) / lengths
        # Log-prob gap is measured under the original prompt: the rollout log-probs when BICC
        # replaced the prompt, the current ones otherwise.
        logps_q = inputs.get("bicc_rollout_logps", logps)
        buffer = self._diag_buffer
        buffer["group"].append(inputs["bicc_group_index"].detach())
        buffer["reward"].append(inputs["bicc_rewards"].detach())
        buffer["seq_ratio"].append(torch.exp(seq_log_ratio).detach())
        buffer["seq_logp"].append((logps_q * mask).sum(-1).detach())
        if "bicc_prompt_ids" in inputs and "bicc_rollout_logps" in inputs:
            shift = ((logps - inputs["bicc_rollout_logps"]) * mask).sum(-1)
            conditioned = inputs["bicc_conditioned"].bool()
            reward = inputs["bicc_rewards"]
            threshold = self.bicc.success_threshold
            # Per side: correct completions are shown incorrect traces, incorrect ones correct
            # traces (a model that reads the context may rightly lower the latter). Kept per
            # sequence and with each sequence's token count, so the shift is reported both per
            # sequence and per token (long completions dominate the former).
            for side, rows in (("", conditioned), ("_correct", conditioned & (reward > threshold)),
                               ("_incorrect", conditioned & (reward <= threshold))):
                buffer[f"logp_shift{side}"].append(shift[rows].detach())
                buffer[f"logp_shift_tokens{side}"].append(mask.sum(-1)[rows].detach().float())

    def _contrast_metrics(self) -> dict[str, float]:
        buffer = self._diag_buffer
        if not buffer.get("group"):
            return {}
        group = torch.cat(buffer["group"]).cpu()
        reward = torch.cat(buffer["reward"]).cpu()
        threshold = self.bicc.success_threshold
        out = {
            "contrast/margin": outcome_gap_by_group(torch.cat(buffer["seq_ratio"]).cpu(), reward, group, threshold)["value"],
            "contrast/logp_gap": outcome_gap_by_group(torch.cat(buffer["seq_logp"]).cpu(), reward, group, threshold)["value"],
        }
        if buffer.get("logp_shift"):
            for side in ("", "_correct", "_incorrect"):
                shifts = torch.cat(buffer[f"logp_shift{side}"]).cpu()
                tokens = torch.cat(buffer[f"logp_shift_tokens{side}"]).cpu()
                if shifts.numel():  # no conditioned sample on this side: nothing to log
                    out[f"bicc/logp_shift{side}"] = shifts.mean().item()
                    out[f"bicc/logp_shift_per_token{side}"] = (shifts.sum() / tokens.sum().clamp(min=1)).item()
                    out[f"bicc/logp_shift_n{side}"] = float(shifts.numel())
                elif not side:
                    out["bicc/logp_shift"] = 0.0
        buffer.clear()
        return {k: v for k, v in out.items() if v is not None and not math.isnan(v)}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        for key, value in self._contrast_metrics().items():
            self._metrics[mode][key].append(value)
        if self._grad_variance_pending is not None:
            self._metrics[mode]["diagnostics/grad_variance"].append(self._grad_variance_pending)
            self._grad_variance_pending = None
        if mode == "train" and self._token_start_step is not None:
            # Tokens per optimizer step, all processes, averaged over the steps of this process
            # so far: the last logged value is the run's mean (the report's cost figure).
            steps = self.state.global_step - self._token_start_step
            local = torch.tensor([self._token_totals.get(c, 0.0) for c in _TOKEN_COUNTERS],
                                 dtype=torch.float64, device=self.accelerator.device)
            totals = self.accelerator.reduce(local, reduction="sum").tolist()
            if steps > 0:
                for counter, total in zip(_TOKEN_COUNTERS, totals, strict=True):
                    if total > 0:  # a pass that never ran is not logged
                        self._metrics[mode][f"tokens/{counter}_per_step"].append(total / steps)
            # The busiest process's peak so far: the last logged value is the run's peak.
            peak = torch.tensor([peak_memory_mib(self.accelerator.device)], device=self.accelerator.device)
            self._metrics[mode]["perf/peak_memory_mib"].append(self.accelerator.gather(peak).max().item())
        super().log(logs, start_time)

    # ------------------------------------------------------------------ gradient variance
    def training_step(self, model, inputs, num_items_in_batch):
        # training_step only runs in training (the model may still be in eval mode at the
        # first call: Trainer switches it inside), so no mode check here.
        if not self.grad_variance:
            return super().training_step(model, inputs, num_items_in_batch)
        params = [p for p in model.parameters() if p.requires_grad]
        before = [p.grad.detach().clone() if p.grad is not None else None for p in params]
        output = super().training_step(model, inputs, num_items_in_batch)
        micro = torch.cat([
            (p.grad.detach() - (b if b is not None else 0)).flatten() if p.grad is not None else torch.zeros(p.numel(), device=p.device)
            for p, b in zip(params, before, strict=True)
        ]).float()
        stats = self._grad_stats or {"sum": torch.zeros_like(micro), "sumsq": torch.zeros_like(micro), "n": 0}
        stats["sum"] += micro
        stats["sumsq"] += micro * micro
        stats["n"] += 1
        self._grad_stats = stats
        if self._step % self.current_gradient_accumulation_steps == 0:
            self._grad_variance_pending = gradient_variance(stats["sum"], stats["sumsq"], stats["n"])
            self._grad_stats = None
        return output

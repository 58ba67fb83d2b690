"""Transfer diagnostics: does the BICC update carry over to the plain prompt?

Under BICC every mixed group is trained on ``q ⊕ context``, but the policy is sampled, and
evaluated, on ``q`` alone. On a model that does not read the context as an instruct model
does, the learning need not transfer (the first CPU quickstart measured a cosine of about
-0.05 between the two gradients). With ``diagnostics.transfer_every: N`` the trainer logs,
on every N-th optimizer step (the first included):

- ``transfer/grad_cosine``: cosine between the gradient of the loss the step trains on
  (BICC's) and the gradient of the plain-prompt loss of the same variant on the same batch:
  same completions, advantages and π_old(o|q), prompt ``q``.
- ``transfer/plain_logp_gain_correct`` / ``..._incorrect``: the first-order change of
  log π(o|q), in nats per sequence, that the step's actual parameter change Δθ (Adam's
  rescaling and gradient clipping included) makes, averaged over the correct / incorrect
  completions of the step: ``mean_o ∇θ log π(o|q) · Δθ``.

The BICC gradient is read from ``p.grad`` just before the optimizer step, so it costs
nothing. The plain side costs, per micro-batch of a probed step, one forward pass under
the plain prompt with gradients and up to three backward passes (plain loss, Σ log π of
the correct completions, Σ log π of the incorrect ones), and the step holds five flat
parameter-sized float32 vectors: a probe for small models. With BICC off the "BICC"
gradient is the plain one and the cosine is 1. With ``train.beta > 0`` the trained
gradient includes its KL term while the plain one is the policy term only.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from bicc_lab.algorithms.diagnostics import transfer_metrics
from bicc_lab.algorithms.variants import policy_loss
from bicc_lab.errors import UserError


def _flat(tensors, params) -> torch.Tensor:
    return torch.cat([
        (t if t is not None else torch.zeros_like(p)).detach().reshape(-1).float()
        for t, p in zip(tensors, params, strict=True)
    ])


class TransferProbe(TrainerCallback):
    """Accumulates the plain-prompt gradients of a probed step and logs ``transfer/*``.

    The trainer calls :meth:`accumulate` after each micro-batch's loss; the Trainer's
    callback events around the optimizer step do the rest.
    """

    def __init__(self, trainer: Any, every: int) -> None:
        if every < 1:
            raise UserError(f"diagnostics.transfer_every must be >= 1 or null, got {every}")
        if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
            raise UserError(
                "diagnostics.transfer_every needs whole gradients on every process "
                "(one process or DDP), not DeepSpeed or FSDP shards"
            )
        self.trainer = trainer
        self.every = every
        self._reset()

    def _reset(self) -> None:
        self._params: list[torch.nn.Parameter] | None = None
        self._plain: torch.Tensor | None = None
        self._correct: torch.Tensor | None = None
        self._incorrect: torch.Tensor | None = None
        self._num_correct = 0
        self._num_incorrect = 0
        self._bicc: torch.Tensor | None = None
        self._before: torch.Tensor | None = None

    def due(self) -> bool:
        """Whether the optimizer step now being accumulated is probed."""
        trainer = self.trainer
        return trainer.model.training and trainer.state.global_step % self.every == 0

    # ------------------------------------------------------------------ per micro-batch
    def accumulate(self, model, inputs: dict[str, Any]) -> None:
        trainer = self.trainer
        # The unwrapped module: gradients taken with autograd.grad must not fire DDP's hooks.
        module = trainer.accelerator.unwrap_model(model)
        params = [p for p in module.parameters() if p.requires_grad]
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]  # q: BICC never edits these
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        with torch.enable_grad():
            logps, _, _ = trainer._get_per_token_logps_and_entropies(
                module,
                torch.cat([prompt_ids, completion_ids], dim=1),
                torch.cat([prompt_mask, completion_mask], dim=1),
                completion_ids.size(1),
            )
            loss = self._plain_loss(inputs, logps, mask)
            sequence_logps = (logps * mask).sum(-1)
        rewards = inputs["bicc_rewards"]
        active = mask.sum(-1) > 0
        threshold = trainer.bicc.success_threshold
        correct = active & (rewards > threshold)
        incorrect = active & (rewards <= threshold)  # NaN reward (unscorable): neither side

        targets = [("plain", loss)]
        if correct.any():
            targets.append(("correct", sequence_logps[correct].sum()))
        if incorrect.any():
            targets.append(("incorrect", sequence_logps[incorrect].sum()))
        grads = {}
        for index, (name, value) in enumerate(targets):
            last = index == len(targets) - 1
            grads[name] = _flat(torch.autograd.grad(value, params, retain_graph=not last, allow_unused=True), params)

        if self._params is None:
            self._params = params
            zeros = torch.zeros_like(grads["plain"])
            self._plain, self._correct, self._incorrect = zeros, zeros.clone(), zeros.clone()
        self._plain += grads["plain"]
        if "correct" in grads:
            self._correct += grads["correct"]
        if "incorrect" in grads:
            self._incorrect += grads["incorrect"]
        self._num_correct += int(correct.sum())
        self._num_incorrect += int(incorrect.sum())

    def _plain_loss(self, inputs: dict[str, Any], logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The variant's loss under q with the micro-batch's own normalisation (as ``_compute_loss``)."""
        trainer = self.trainer
        current = logps.detach()
        if "bicc_rollout_logps" in inputs:
            old = inputs["bicc_rollout_logps"]  # π_old(o|q), whatever BICC's ratio uses
            if "bicc_rollout_rows" in inputs:
                # On-policy rows without a rollout pass: π_old(o|q) is this very forward.
                old = torch.where(inputs["bicc_rollout_rows"].bool().unsqueeze(1), old, current)
        else:
            old = inputs.get("old_per_token_logps")
            old = current if old is None else old
        accumulation = trainer.current_gradient_accumulation_steps
        total_tokens = inputs["num_items_in_batch"].clamp(min=1.0) / trainer.accelerator.num_processes
        total_tokens = total_tokens * accumulation / trainer.args.steps_per_generation
        weights = None
        if trainer.use_vllm and trainer.vllm_importance_sampling_correction:
            weights = inputs["importance_sampling_ratio"]
        loss, _ = policy_loss(
            trainer.variant, logps, old, inputs["advantages"], mask,
            max_completion_length=trainer.max_completion_length,
            total_active_tokens=total_tokens,
            token_weights=weights,
        )
        if trainer.variant.aggregation != "token_mean":
            loss = loss / accumulation
        return loss

    # ------------------------------------------------------------------ around the optimizer step
    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self._params is not None:
            # After clipping, which rescales the gradient but keeps its direction.
            self._bicc = _flat([p.grad for p in self._params], self._params)
            self._before = _flat(self._params, self._params)
        return control

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self._params is None or self._before is None:
            return control
        trainer = self.trainer
        update = _flat(self._params, self._params) - self._before
        reduce = trainer.accelerator.reduce
        counts = reduce(
            torch.tensor([self._num_correct, self._num_incorrect], device=update.device, dtype=torch.float64),
            reduction="sum",
        )
        metrics = transfer_metrics(
            self._bicc,
            reduce(self._plain, reduction="sum"),
            update,
            reduce(self._correct, reduction="sum"),
            int(counts[0]),
            reduce(self._incorrect, reduction="sum"),
            int(counts[1]),
        )
        for key, value in metrics.items():
            if value is not None:
                trainer._metrics["train"][key].append(value)
        self._reset()
        return control

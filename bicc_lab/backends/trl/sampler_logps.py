"""π_old(o|q) read off the sampler's own forward passes, instead of a second forward.

When transformers' ``generate`` samples a completion, each step's LM-head output holds the
distribution the token was drawn from, under the policy that generated the batch: exactly
π_old(o_t | q, o_<t) that RCC's δ and BICC's denominator need (the trainer's log-probs use
the same temperature and no other logits processing). TRL discards it and, on-policy, has
no old log-probs; this module keeps it, the way TRL keeps vLLM's sampling log-probs.

Two hooks while ``generate`` runs: the LM head's output (the last position's logits) is
turned into log-probs at the sampling temperature and held until the next step's input
embedding call shows which token was sampled from it; the final step's tokens are the last
completion tokens. The result is checked against the completions TRL returns: a completion
that is not the sampled sequence (a replayed or edited rollout) voids the capture, and the
caller computes the log-probs with a forward pass instead.

Numbers equal a fresh forward up to float rounding (cached decoding vs one full pass;
``tests/test_shared_prefix.py``).
"""

from __future__ import annotations

import torch


class SamplerLogpCapture:
    """Context manager around one ``generate`` call on ``model`` (unwrapped)."""

    def __init__(self, model: torch.nn.Module, temperature: float) -> None:
        self.model = model
        self.temperature = temperature
        self._pending: torch.Tensor | None = None  # (B, V) log-probs of the step whose token is not yet known
        self._tokens: list[torch.Tensor] = []  # per step: (B,) sampled token
        self._logps: list[torch.Tensor] = []  # per step: (B,) its log-prob
        self._void = False
        self._handles: list = []

    def __enter__(self) -> SamplerLogpCapture:
        head = self.model.get_output_embeddings()
        embed = self.model.get_input_embeddings()
        if head is None or embed is None:
            self._void = True
            return self
        self._handles = [head.register_forward_hook(self._on_logits), embed.register_forward_pre_hook(self._on_input)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _on_logits(self, module, args, output) -> None:
        logits = output[:, -1] if output.dim() == 3 else output
        self._pending = (logits.float() / self.temperature).log_softmax(dim=-1)

    def _on_input(self, module, args) -> None:
        if self._pending is None:
            return  # the prefill call: no token sampled yet
        tokens = args[0] if args else None
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.size(1) != 1 \
                or tokens.size(0) != self._pending.size(0):
            self._void = True  # not one decoding step per call: nothing here can be trusted
            return
        self._tokens.append(tokens[:, 0])
        self._logps.append(self._pending.gather(1, tokens).squeeze(1))
        self._pending = None

    def logps(self, completion_ids: list[list[int]], device: torch.device) -> torch.Tensor | None:
        """(B, T) log-probs of ``completion_ids`` (right-padded with 0 to the longest), or None
        when the capture does not describe these completions."""
        if self._void or self._pending is None or not completion_ids:
            return None
        rows = len(completion_ids)
        last = self._pending
        if last.size(0) != rows:
            return None
        steps = len(self._tokens) + 1  # the last step's token was never fed back
        lengths = torch.tensor([len(c) for c in completion_ids])
        width = int(lengths.max())
        if width > steps:
            return None
        ids = torch.zeros((rows, width), dtype=torch.long)
        for row, completion in enumerate(completion_ids):
            ids[row, : len(completion)] = torch.tensor(completion, dtype=torch.long)
        valid = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
        known = min(width, steps - 1)
        fed = torch.stack(self._tokens, dim=1)[:, :known].cpu() if known else ids[:, :0]
        if not torch.equal(fed[valid[:, :known]], ids[:, :known][valid[:, :known]]):
            return None  # not the sampled sequences
        ids = ids.to(last.device)
        columns = [torch.stack(self._logps, dim=1)[:, :known]] if known else []
        if width == steps:  # completions that used every step: their last token's log-prob
            columns.append(last.gather(1, ids[:, steps - 1 :]))
        logps = torch.cat(columns, dim=1) * valid.to(last.device)
        return logps.to(device=device, dtype=torch.float32)

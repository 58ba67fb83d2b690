"""Shared-prefix forward: score completions against prompts that many of them share.

BICC scores every completion of a group under a conditioned prompt, and a group has at most
three distinct ones (q ⊕ pack(incorrect) for the correct half, q ⊕ pack(correct) for the
incorrect half, q itself for samples left unconditioned). The plain batched forward of
``[left-padded prompt ⊕ completion]`` recomputes each prompt once per completion. Here each
distinct prompt runs once, with gradient, and its key/value cache is expanded over the
completions that share it; completion positions continue after their own prompt. For the
model families listed in ``CHECKED_FAMILIES`` this gives the same per-token log-probs and
parameter gradients as the plain forward up to float rounding (``tests/test_shared_prefix.py``).

Two calls per batch, both through the (possibly wrapped) top-level model, so wrappers'
hooks (FSDP, DeepSpeed, PEFT) see them:
- prefix call: the distinct prompts, recording each layer's keys/values, with the LM head
  on the last prompt position only (``logits_to_keep=1``): those logits score every
  completion's first token;
- completion call: the completions against a cache of the recorded keys/values indexed
  per completion row, through TRL's fused LM head (log-probs, entropy) for the tokens
  after the first.
So each real token of a batch's distinct prompts and completions runs exactly once (the
limit a forward over these groups can reach), and the outputs line up with the completion
tokens as TRL's own forward's do.

Gradient checkpointing: transformers drops the cache inside checkpointed decoder layers
unless the layer class allows it. While these calls run, the layers are allowed to keep
it, and both cache layer types give the same result when a layer is re-run during
backward (the prefix layer records by overwriting, the completion layer concatenates
without storing). That is exact with non-reentrant checkpointing only: reentrant
checkpointing does not see the cache tensors as inputs and silently drops their gradient,
so it is a reason to fall back (``unsupported_reason``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer

# Families whose decoder the equivalence tests run on (RoPE, full attention everywhere).
CHECKED_FAMILIES = ("llama", "qwen2", "qwen3")


@dataclass
class SharedPrefixOutput:
    logps: torch.Tensor  # (B, T) log-probs of the completion tokens, 0 where masked
    entropies: torch.Tensor | None  # (B, T) or None
    prompt_tokens: int  # prompt tokens run: each distinct prompt once
    completion_tokens: int  # completion tokens run (real, not padding)
    distinct_prompts: int


class _RecordLayer(DynamicLayer):
    """Prefix call: keeps the layer's keys/values by overwriting, so a checkpointed re-run
    during backward leaves the same state instead of appending a second copy."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self.values = key_states, value_states
        return key_states, value_states


class _FrozenPrefixLayer(DynamicLayer):
    """Completion call: the prefix's keys/values in front of the new ones, never stored
    (a cache that grew in place would give a re-run layer a longer prefix)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def _checkpointed_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why ``model`` (unwrapped from DDP/accelerate) cannot take the shared path; None if it can."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    family = getattr(config, "model_type", "?")
    if family not in CHECKED_FAMILIES:
        return f"model family '{family}' is not one the shared-prefix forward is checked on ({', '.join(CHECKED_FAMILIES)})"
    layer_types = getattr(config, "layer_types", None) or []
    if any(kind != "full_attention" for kind in layer_types) or (
        getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None)
    ):
        return "the model has sliding-window attention layers"
    for layer in _checkpointed_layers(model):
        keywords = getattr(layer._gradient_checkpointing_func, "keywords", {})
        if keywords.get("use_reentrant", True) is not False:
            return ("gradient checkpointing is reentrant (use_reentrant=True), which drops the gradient "
                    "through a shared prompt's cache")
    return None


@contextlib.contextmanager
def _cache_through_checkpoints(model: torch.nn.Module) -> Iterator[None]:
    """Let checkpointed decoder layers keep the cache for the calls inside the block.

    The layers read the flag when they are called, and the recompute during backward
    reuses the arguments captured then, so resetting it on exit is safe.
    """
    layers = [m for m in _checkpointed_layers(model) if not m._can_checkpoint_with_cache]
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer in layers:
            del layer._can_checkpoint_with_cache  # back to the class attribute


def distinct_rows(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct left-padded prompts of a batch, trimmed of all-padding columns.

    Returns (ids (U, P), mask (U, P), inverse (B,)): row b of the batch is prompt inverse[b].
    Two rows are the same prompt when their real tokens are the same.
    """
    keyed = torch.where(prompt_mask.bool(), prompt_ids, torch.full_like(prompt_ids, -1))
    unique, inverse = torch.unique(keyed, dim=0, return_inverse=True)
    mask = (unique != -1).to(prompt_mask.dtype)
    ids = torch.where(mask.bool(), unique, torch.zeros_like(unique))
    real_columns = mask.any(dim=0).nonzero()
    first = int(real_columns.min()) if real_columns.numel() else 0
    return ids[:, first:], mask[:, first:], inverse


def shared_prefix_logps(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    num_layers: int,
    temperature: float,
    compute_entropy: bool = False,
    batch_size: int | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> SharedPrefixOutput:
    """Per-token log-probs of ``completion_ids`` given ``prompt_ids``, each distinct prompt run once.

    Args:
        model: a causal LM with TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``),
            possibly wrapped; called twice (prefix, completions).
        prompt_ids, prompt_mask: (B, P) left-padded prompts; every row has at least one token.
        completion_ids, completion_mask: (B, T) right-padded completions.
        num_layers: decoder layers of the model (cache layers to record).
        temperature: the one the fused head divides by (the first completion token is scored
            from the prefix call's last logits, outside the fused head).
        batch_size: completion rows per completion call (None: all at once); the prefix
            call always runs once.
        autocast: context factory wrapped around both calls (the trainer's autocast).

    Same outputs as TRL's ``_get_per_token_logps_and_entropies`` on
    ``cat([prompt, completion])``: log-probs (and entropies) of the completion tokens at
    the trainer's temperature, 0 where ``completion_mask`` is 0. Every real token runs
    once: each distinct prompt in the prefix call, each completion in the completion call.
    """
    ids, mask, inverse = distinct_rows(prompt_ids, prompt_mask)
    lengths = mask.sum(dim=1)  # real tokens per distinct prompt
    positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    record = Cache(layers=[_RecordLayer() for _ in range(num_layers)])
    with _cache_through_checkpoints(model):
        with autocast():
            # Left-padded: the last column is every prompt's last real token, whose logits
            # score the first completion token (one row per distinct prompt, not per completion).
            last_logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                past_key_values=record, use_cache=False, logits_to_keep=1).logits[:, -1]
        last_log_probs = torch.log_softmax(last_logits.float() / temperature, dim=-1)

        rows, width = completion_ids.shape
        step = batch_size or rows
        all_logps, all_entropies = [], []
        for start in range(0, rows, step):
            chunk = slice(start, min(start + step, rows))
            which = inverse[chunk]
            first_mask = completion_mask[chunk, :1].bool()
            first_log_probs = last_log_probs[which]
            first_logps = first_log_probs.gather(1, completion_ids[chunk, :1]).masked_fill(~first_mask, 0.0)
            first_entropy = None
            if compute_entropy:
                first_entropy = -(first_log_probs.exp() * first_log_probs).sum(-1, keepdim=True)
                first_entropy = first_entropy.masked_fill(~first_mask, 0.0)
            if width == 1:
                all_logps.append(first_logps)
                all_entropies.append(first_entropy)
                continue
            input_ids = completion_ids[chunk]
            attention_mask = torch.cat([mask[which], completion_mask[chunk].to(mask.dtype)], dim=1)
            position_ids = lengths[which].unsqueeze(1) + torch.arange(width, device=input_ids.device)
            labels = input_ids.masked_fill(completion_mask[chunk] == 0, -100)  # the head scores labels[:, 1:]
            cache = Cache(layers=[
                _FrozenPrefixLayer(layer.keys.index_select(0, which), layer.values.index_select(0, which))
                for layer in record.layers
            ])
            with autocast():
                outputs = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                past_key_values=cache, labels=labels, fused_lm_head=True)
            all_logps.append(torch.cat([first_logps.to(outputs.log_probs.dtype), outputs.log_probs], dim=1))
            if compute_entropy:
                all_entropies.append(torch.cat([first_entropy.to(outputs.entropy.dtype), outputs.entropy], dim=1))
    return SharedPrefixOutput(
        logps=torch.cat(all_logps, dim=0),
        entropies=torch.cat(all_entropies, dim=0) if compute_entropy else None,
        prompt_tokens=int(mask.sum()),
        completion_tokens=int(completion_mask.sum()),
        distinct_prompts=int(ids.size(0)),
    )


def group_permutation(group_index: torch.Tensor) -> torch.Tensor:
    """A random order of whole groups: row indices with each group's rows adjacent, in their
    original order.

    It draws exactly what TRL's per-sample shuffle draws (``torch.randperm`` over the rows,
    torch's global generator) and orders the groups by where their first row falls in that
    sample permutation. So the global generator, and with it every later rollout, is in the
    same state whichever forward path a run takes.
    """
    sample_order = torch.randperm(group_index.numel())
    _, inverse = torch.unique(group_index.cpu(), return_inverse=True)
    groups = int(inverse.max()) + 1 if inverse.numel() else 0
    # Each group's rank: the earliest position of any of its rows in the sample permutation.
    first_seen = torch.full((groups,), group_index.numel(), dtype=torch.long)
    first_seen.scatter_reduce_(0, inverse[sample_order], torch.arange(group_index.numel()), reduce="amin")
    return torch.argsort(first_seen[inverse], stable=True).to(group_index.device)


def permute_rows(value, permutation: torch.Tensor):
    """Reorder a batch value along its first dimension (as TRL's ``shuffle_sequence_dict``)."""
    if value is None or (isinstance(value, torch.Tensor) and value.ndim == 0):
        return value
    if isinstance(value, torch.Tensor):
        return value[permutation.to(value.device)]
    return [value[i] for i in permutation.tolist()]

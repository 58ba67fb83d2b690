"""BICC packing: build each sample's conditioned prompt from its group's opposite-outcome traces.

Bilateral Context Conditioning (Li, Lan, Qi, arXiv 2603.13134) scores every sampled answer
o_i under a prompt that also shows the answers of its group with the *opposite* outcome:
correct samples see the incorrect traces, incorrect samples see the correct ones. Generation
is unchanged; only the prompt used for the policy update changes.

Assembly is done at token level: template pieces are tokenised once and spliced between
the prompt tokens and the raw completion token ids of the opposite traces, so the context
budget (counted in tokens) holds exactly and no decode/re-encode round trip can change a
trace. Everything here is pure torch over tensors: no tokenizer object, no trainer state.
The caller supplies ``tokenize`` (a ``str -> list[int]`` function) for the template text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

Placement = Literal["before_answer", "append"]
Truncate = Literal["whole", "cut"]
TRUNCATE_MODES: tuple[str, ...] = ("whole", "cut")


@dataclass(frozen=True)
class BiccTemplate:
    """How opposite-outcome traces are laid out around the original prompt.

    ``header`` may use ``{shown}`` (the outcome of the traces shown: "correct" or
    "incorrect"); ``trace_prefix`` may use ``{index}`` (1-based position of the trace).
    ``placement`` says where the block goes: ``before_answer`` puts it inside the user turn
    for chat prompts (before the end-of-turn marker) and in front of the question for plain
    prompts, so the tokens that lead into the answer stay adjacent to it; ``append`` is the
    bare ``q ⊕ traces`` concatenation of the authors' code.
    """

    name: str
    header: str
    trace_prefix: str
    trace_suffix: str
    footer: str
    placement: Placement


DEFAULT_TEMPLATE = BiccTemplate(
    name="default",
    header="\nFor reference, here are other attempts at this problem that were {shown}:\n",
    trace_prefix="Attempt {index}: ",
    trace_suffix="\n",
    footer="\n",
    placement="before_answer",
)


def separator_template(separator: str = "\n") -> BiccTemplate:
    """The bare concatenation of the authors' code: prompt, then each trace after a separator."""
    return BiccTemplate(
        name="separator",
        header="",
        trace_prefix=separator,
        trace_suffix="",
        footer=separator,
        placement="append",
    )


def compact_template(separator: str = "\n") -> BiccTemplate:
    """Each trace followed by a separator, no header, placed like ``default``: in front of a
    plain question (``84\n91\n47+38=``), so the question still leads straight into the
    answer, and at the end of a chat user turn. The tiny model warm-starts on this layout."""
    return BiccTemplate(
        name="compact",
        header="",
        trace_prefix="",
        trace_suffix=separator,
        footer="",
        placement="before_answer",
    )


TEMPLATE_NAMES = ("default", "separator", "compact")


def get_template(name: str, separator: str = "\n") -> BiccTemplate:
    if name == "default":
        return DEFAULT_TEMPLATE
    if name == "separator":
        return separator_template(separator)
    if name == "compact":
        return compact_template(separator)
    raise ValueError(f"unknown BICC template '{name}'; valid: {', '.join(TEMPLATE_NAMES)}")


def layout_block(traces: Sequence[str], template: BiccTemplate, shown: str) -> str:
    """The context block as text, laid out as ``pack_conditioned_prompts`` splices it token
    by token: header, then per trace prefix + trace + suffix, then footer. ``shown`` is the
    outcome of the traces ("correct" or "incorrect"). Traces are used as given (whole or
    already cut); an empty ``traces`` gives an empty block."""
    if not traces:
        return ""
    body = "".join(
        template.trace_prefix.format(index=k) + trace + template.trace_suffix
        for k, trace in enumerate(traces, start=1)
    )
    return template.header.format(shown=shown) + body + template.footer


def place_block(prompt: str, block: str, template: BiccTemplate) -> str:
    """A plain (non-chat) prompt with its context block where the packer puts it: in front
    of the question (``before_answer``) or after it (``append``)."""
    return prompt + block if template.placement == "append" else block + prompt


@dataclass
class BiccBatch:
    """Conditioned prompts for a batch, left-padded like TRL's ``prompt_ids``."""

    prompt_ids: torch.Tensor  # (B, P') left-padded
    prompt_mask: torch.Tensor  # (B, P') 1 on real tokens
    conditioned: torch.Tensor  # (B,) bool: this sample got a context block
    context_tokens: torch.Tensor  # (B,) long: tokens added to the prompt (0 if unconditioned)
    num_traces: torch.Tensor  # (B,) long: opposite traces shown (with truncate="cut" the last may be cut)


def outcome_labels(rewards: torch.Tensor, success_threshold: float = 0.5) -> torch.Tensor:
    """Correct (True) when the reward exceeds the threshold; the paper's binary outcome.

    A NaN reward (an unscorable answer) is False here and also not incorrect: callers that
    partition a group use :func:`scored_labels` to leave it out of both sides.
    """
    return rewards > success_threshold


def scored_labels(rewards: torch.Tensor) -> torch.Tensor:
    """True where the reward is a number; a NaN reward (unscorable answer) has no outcome."""
    return ~torch.isnan(rewards)


def context_budget(context_fraction: float, max_sequence_length: int) -> int:
    """Tokens available for the context block: ``floor(fraction × (prompt + completion) length)``."""
    if not 0.0 < context_fraction < 1.0:
        raise ValueError(f"bicc.context_fraction must be in (0, 1), got {context_fraction}")
    return int(context_fraction * max_sequence_length)


def _unpad_rows(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]


def pack_conditioned_prompts(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    *,
    tokenize: Callable[[str], list[int]],
    budget_tokens: int,
    pad_token_id: int,
    template: BiccTemplate = DEFAULT_TEMPLATE,
    max_traces: int | None = None,
    success_threshold: float = 0.5,
    insert_positions: Sequence[int] | None = None,
    strip_token_ids: Sequence[int] = (),
    seed: int = 0,
    truncate: Truncate = "whole",
) -> BiccBatch:
    """Build every sample's conditioned prompt ``q ⊕ pack(opposite outcome traces)``.

    Args:
        prompt_ids, prompt_mask: (B, P) left-padded prompts; samples of a group are contiguous.
        completion_ids, completion_mask: (B, T) right-padded completions; masked tokens are
            not part of a trace.
        rewards: (B,) rewards of the unconditioned rollouts.
        group_size: G, samples per prompt.
        tokenize: turns template text into token ids (called once per distinct piece).
        budget_tokens: hard cap on tokens added to any prompt (header + traces + footer).
        max_traces: at most this many traces per prompt (None: as many as fit).
        insert_positions: per sample, how many (unpadded) prompt tokens come before the
            context block. None: decided by ``template.placement`` (``append`` → end of
            prompt, ``before_answer`` → start of prompt, right for plain prompts; chat
            callers pass the position of their end-of-user-turn marker).
        strip_token_ids: ids removed from traces (EOS, pad), so a trace never closes a turn.
        seed: the order of the opposite traces is a seeded permutation per group, so the
            result is deterministic and every sample of a group sees the same order.
        truncate: ``whole`` never cuts a trace: one that does not fit the remaining budget
            is skipped and a later, shorter one may take its place (a cut answer can read
            as another answer: "151" cut to "15"). ``cut`` right-truncates the trace that
            reaches the budget and stops there, the authors' exact-budget packing.

    Degenerate groups (all correct or all wrong) and samples whose budget cannot hold one
    token of trace stay unconditioned: their prompt is returned unchanged. A sample whose
    reward is NaN (unscorable) is neither correct nor incorrect: it is never shown as a
    trace, does not make a group mixed, and stays unconditioned itself.
    """
    batch_size = prompt_ids.size(0)
    if batch_size % group_size != 0:
        raise ValueError(f"batch of {batch_size} samples is not a whole number of groups of {group_size}")
    if budget_tokens < 0:
        raise ValueError(f"budget_tokens must be >= 0, got {budget_tokens}")
    if max_traces is not None and max_traces < 1:
        raise ValueError(f"max_traces must be >= 1 or None, got {max_traces}")
    if truncate not in TRUNCATE_MODES:
        raise ValueError(f"truncate must be one of {', '.join(TRUNCATE_MODES)}; got {truncate!r}")

    prompts = _unpad_rows(prompt_ids, prompt_mask)
    strip = set(int(t) for t in strip_token_ids)
    traces = [[t for t in row if t not in strip] for row in _unpad_rows(completion_ids, completion_mask)]
    correct = outcome_labels(rewards, success_threshold).tolist()
    scored = scored_labels(rewards).tolist()

    if insert_positions is None:
        insert_positions = [len(p) if template.placement == "append" else 0 for p in prompts]
    elif len(insert_positions) != batch_size:
        raise ValueError("insert_positions must have one entry per sample")

    piece_cache: dict[str, list[int]] = {}

    def piece(text: str) -> list[int]:
        if text not in piece_cache:
            piece_cache[text] = list(tokenize(text)) if text else []
        return piece_cache[text]

    generator = torch.Generator().manual_seed(seed)
    packed: list[list[int]] = []
    conditioned = torch.zeros(batch_size, dtype=torch.bool)
    context_tokens = torch.zeros(batch_size, dtype=torch.long)
    num_traces = torch.zeros(batch_size, dtype=torch.long)

    for start in range(0, batch_size, group_size):
        members = list(range(start, start + group_size))
        # Drawn for every group, mixed or not, so a group's order does not depend on the
        # outcomes of the groups before it.
        order = [members[k] for k in torch.randperm(group_size, generator=generator).tolist()]
        n_correct = sum(scored[i] and correct[i] for i in members)
        n_incorrect = sum(scored[i] and not correct[i] for i in members)
        mixed = n_correct > 0 and n_incorrect > 0
        for i in members:
            block: list[int] = []
            shown = 0
            if mixed and scored[i]:
                opposite = [j for j in order if scored[j] and correct[j] != correct[i] and traces[j]]
                block, shown = _pack_block(
                    opposite, traces, correct[i], template, piece, budget_tokens, max_traces, truncate
                )
            if shown:
                pos = insert_positions[i]
                packed.append(prompts[i][:pos] + block + prompts[i][pos:])
                conditioned[i] = True
                context_tokens[i] = len(block)
                num_traces[i] = shown
            else:
                packed.append(prompts[i])

    width = max(len(p) for p in packed)
    out_ids = torch.full((batch_size, width), pad_token_id, dtype=prompt_ids.dtype)
    out_mask = torch.zeros((batch_size, width), dtype=prompt_mask.dtype)
    for row, ids in enumerate(packed):
        if ids:
            out_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=prompt_ids.dtype)
            out_mask[row, width - len(ids) :] = 1
    return BiccBatch(out_ids, out_mask, conditioned, context_tokens, num_traces)


def _pack_block(
    opposite: list[int],
    traces: list[list[int]],
    sample_is_correct: bool,
    template: BiccTemplate,
    piece: Callable[[str], list[int]],
    budget_tokens: int,
    max_traces: int | None,
    truncate: Truncate = "whole",
) -> tuple[list[int], int]:
    """Lay out opposite traces inside the budget. Returns (ids, count).

    ``whole``: traces that do not fit whole are skipped; ``cut``: the first trace that does
    not fit is cut to the remaining room and packing stops.
    """
    header = piece(template.header.format(shown="incorrect" if sample_is_correct else "correct"))
    footer = piece(template.footer)
    suffix = piece(template.trace_suffix)
    remaining = budget_tokens - len(header) - len(footer)
    body: list[int] = []
    shown = 0
    for j in opposite:
        if max_traces is not None and shown >= max_traces:
            break
        prefix = piece(template.trace_prefix.format(index=shown + 1))
        room = remaining - len(prefix) - len(suffix)
        if truncate == "whole":
            if len(traces[j]) > room:
                continue  # a later, shorter trace may still fit
        elif room < 1:
            break
        trace = traces[j][:room]
        body += prefix + trace + suffix
        remaining -= len(prefix) + len(trace) + len(suffix)
        shown += 1
        if len(trace) < len(traces[j]):
            break
    if not shown:
        return [], 0
    return header + body + footer, shown

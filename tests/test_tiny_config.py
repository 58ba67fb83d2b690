"""One tiny-model config: the ``model.tiny`` block is the class the model is built from."""

from __future__ import annotations

import pytest

from bicc_lab.models import tiny as T
from bicc_lab.spec import ExperimentConfig, SpecError, validate_experiment
from bicc_lab.spec.sections import TINY_PRESETS, TinyModelConfig


def test_the_block_is_the_class_the_model_is_built_from():
    assert T.TinyModelConfig is TinyModelConfig
    config = validate_experiment({"name": "x", "model": {"tiny": {"layers": 2, "warmup_lr": 1e-3}}})
    assert isinstance(config.model.tiny, TinyModelConfig)
    assert (config.model.tiny.layers, config.model.tiny.warmup_lr) == (2, 1e-3)
    assert T.tiny_model_dir(config.model.tiny).name == T.cache_key(config.model.tiny)


def test_a_preset_gives_the_block_its_defaults_and_written_keys_win():
    nano = validate_experiment({"name": "x", "model": {"name": "tiny:nano"}}).model.tiny
    # training on tiny:nano builds the model that `eval --model tiny:nano` builds
    assert nano == T.tiny_variant("nano") and T.cache_key(nano) == T.cache_key(T.TINY_VARIANTS["nano"])
    assert (nano.layers, nano.hidden, nano.heads, nano.kv_heads, nano.intermediate) == (2, 64, 2, 1, 192)
    wider = validate_experiment({"name": "x", "model": {"name": "tiny:nano", "tiny": {"hidden": 96}}}).model.tiny
    assert (wider.layers, wider.hidden, wider.intermediate) == (2, 96, 192)
    untrained = validate_experiment({"name": "x", "model": {"name": "tiny:untrained"}}).model.tiny
    assert untrained.target_accuracy == 0.0 and untrained == T.TINY_VARIANTS["untrained"]
    assert set(T.TINY_VARIANTS) == set(TINY_PRESETS)


def test_a_resolved_config_reloads_to_the_same_model():
    config = validate_experiment({"name": "x", "model": {"name": "tiny:nano", "tiny": {"hidden": 96}}})
    again = ExperimentConfig.model_validate(config.model_dump(mode="json"))
    assert again == config and T.cache_key(again.model.tiny) == T.cache_key(config.model.tiny)


def test_the_prompt_format_follows_data_chat():
    assert validate_experiment({"name": "x"}).model.tiny.prompt_format == "plain"
    assert validate_experiment({"name": "x", "data": {"chat": True}}).model.tiny.prompt_format == "chat"
    with pytest.raises(SpecError, match=r"model.tiny.prompt_format is 'chat' but data.chat is false"):
        validate_experiment({"name": "x", "model": {"name": "tiny:chat"}})
    assert validate_experiment({"name": "x", "model": {"name": "tiny:chat"}, "data": {"chat": True}})
    # a hub model ignores the block: no check
    assert validate_experiment({"name": "x", "model": {"name": "Org/Model", "tiny": {"prompt_format": "chat"}}})


def test_shape_errors_name_the_key():
    with pytest.raises(SpecError, match=r"model.tiny.kv_heads \(3\) must divide model.tiny.heads \(4\)"):
        validate_experiment({"name": "x", "model": {"tiny": {"kv_heads": 3}}})
    with pytest.raises(SpecError, match=r"unknown key 'model.tiny.lr'"):
        validate_experiment({"name": "x", "model": {"tiny": {"lr": 0.1}}})
    assert TinyModelConfig().replace(layers=1).layers == 1
    with pytest.raises(ValueError, match="heads"):
        TinyModelConfig().replace(heads=3)

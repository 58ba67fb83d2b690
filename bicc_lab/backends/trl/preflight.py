"""Checks of a resolved config that need no model: run before anything heavy loads."""

from __future__ import annotations

from bicc_lab.errors import UserError
from bicc_lab.spec.models import ExperimentConfig


def preflight(config: ExperimentConfig) -> None:
    """Raise a one-line user error for anything that would fail later, before loading a model."""
    from bicc_lab.algorithms.variants import resolve_variant
    from bicc_lab.models.loading import check_model_reference
    from bicc_lab.tasks.data_dir import resolve_data_dir
    from bicc_lab.tasks.math import check_task

    resolve_variant(config.variant, config.variant_overrides, clip_ratio_c=config.clip_ratio_c)
    if not config.model.name.startswith("tiny"):
        check_model_reference(config.model.name)
    check_task(config.data.train, data_dir=resolve_data_dir(config.data.data_dir))
    if config.train.use_vllm:
        _check_vllm(config)


def _check_vllm(config: ExperimentConfig) -> None:
    """vLLM generation is validated here even where it cannot run (no GPU)."""
    if config.train.vllm_mode == "server" and "vllm_server_base_url" not in config.train.extra and (
        "vllm_server_host" not in config.train.extra
    ):
        raise UserError(
            "train.vllm_mode 'server' needs train.extra.vllm_server_base_url (or vllm_server_host/port): "
            "start `trl vllm-serve --model ...` first"
        )
    if config.model.name.startswith("tiny"):
        raise UserError("train.use_vllm needs a real model (model.name), not the tiny CPU model")

"""Config schema of bicc-lab: pydantic models, YAML loading with file:line errors,
grid expansion and run identity.

Single source of truth for every config key and its default. Imports only pydantic,
PyYAML, the standard library and the torch-free variant registry, so the CLI can import
it at start-up.

    from bicc_lab.spec import load_experiment, load_sweep, expand, SpecError

    config = load_experiment("experiments/tiny.yaml", ["train.max_steps=10"])
    sweep = load_sweep("sweeps/quickstart.yaml")
    for cell in expand(sweep):
        print(cell.cell_id, cell.name, cell.config.variant)
"""

from bicc_lab.spec.errors import Loc, SpecError
from bicc_lab.spec.grid import (
    IDENTITY_EXCLUDE,
    Axis,
    Cell,
    canonical_json,
    config_hash,
    config_id,
    expand,
    identity_dict,
    model_short_name,
    train_id,
)
from bicc_lab.spec.load import (
    Override,
    Sweep,
    load_experiment,
    load_sweep,
    parse_override,
    parse_overrides,
    validate_experiment,
    with_overrides,
)
from bicc_lab.spec.models import ARMS, ExperimentConfig, SweepConfig, arm
from bicc_lab.spec.schema import iter_keys
from bicc_lab.spec.sections import (
    BiccConfig,
    DataConfig,
    DiagnosticsConfig,
    EvalConfig,
    ModelConfig,
    RccConfig,
    TinyModelConfig,
    TrackingConfig,
    TrainConfig,
)
from bicc_lab.spec.sweep_sections import SearchConfig

__all__ = [
    "ARMS",
    "IDENTITY_EXCLUDE",
    "Axis",
    "BiccConfig",
    "Cell",
    "DataConfig",
    "DiagnosticsConfig",
    "EvalConfig",
    "ExperimentConfig",
    "Loc",
    "ModelConfig",
    "Override",
    "RccConfig",
    "SearchConfig",
    "SpecError",
    "Sweep",
    "SweepConfig",
    "TinyModelConfig",
    "TrackingConfig",
    "TrainConfig",
    "arm",
    "canonical_json",
    "config_hash",
    "config_id",
    "expand",
    "identity_dict",
    "iter_keys",
    "load_experiment",
    "load_sweep",
    "model_short_name",
    "parse_override",
    "parse_overrides",
    "train_id",
    "validate_experiment",
    "with_overrides",
]

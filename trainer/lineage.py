"""A training lineage: everything that shapes the trajectory, fingerprinted, so that a job resumes only its own.

Extending a job (more maxSteps or epochs) keeps its lineage; changing the model, the method or any of its
hyperparameters, the data (its content, not only its name), the optimisation, the seed or the precision makes
another one, whose steps must never be mixed into the old one's checkpoints or MLflow run. How often to log,
evaluate and checkpoint, the ZeRO stage and the gang's size are not part of it: they do not change what a step
computes. Pure functions, apart from `content_digest`, which reads files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .api.deepspeed_config import precision
from .api.spec import PEFTJobSpec

MODEL_FIELDS = ("source", "revision", "task", "numLabels", "dtype")
TRAINING_FIELDS = ("learningRate", "weightDecay", "scheduler", "warmupSteps", "microBatchSize",
                   "gradientAccumulationSteps", "gradientClipping", "seed")
DATA_NOT_TRAJECTORY = ("train", "eval")  # the sources' names: their content digests stand for them


def lineage_fields(spec: PEFTJobSpec, digests: dict[str, str], model_source: str | None = None) -> dict[str, Any]:
    """{dotted spec path: value} of everything that shapes the trajectory. `digests` holds the content digest of
    each data split ({"train": ..., "eval": ...}); `model_source` is the source as the user wrote it, when a
    local run resolved it against the job file's folder (so moving the folder keeps the lineage)."""
    dumped = spec.model_dump(mode="json", by_alias=True)
    fields: dict[str, Any] = {f"model.{key}": dumped["model"].get(key) for key in MODEL_FIELDS}
    if model_source is not None:
        fields["model.source"] = model_source
    fields |= _flatten(dumped["method"], "method")
    fields |= _flatten({k: v for k, v in dumped["data"].items() if k not in DATA_NOT_TRAJECTORY}, "data")
    fields |= {f"data.{split}.format": (dumped["data"].get(split) or {}).get("format") for split in digests}
    fields |= {f"data.{split}.sha256": digest for split, digest in digests.items()}
    fields |= {f"training.{key}": dumped["training"][key] for key in TRAINING_FIELDS}
    fields["training.precision"] = precision(spec)
    return fields


def fingerprint(fields: dict[str, Any]) -> str:
    """A short, stable identity of a lineage."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`field: old -> new` for every field that differs, in field order."""
    return [f"{key}: {recorded.get(key)!r} -> {current.get(key)!r}"
            for key in sorted(set(recorded) | set(current)) if recorded.get(key) != current.get(key)]


def content_digest(path: Path) -> str:
    """sha256 of a data file, or of a folder's relative file names and contents (image folders)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            if item is not None:
                flat |= _flatten(item, f"{prefix}.{key}")
        return flat
    return {prefix: value}

"""Relative local paths in a job mean "relative to the YAML file", as in kubectl and compose files, so that
`peftjob run sub/job.yaml` works from any working directory. Torch-free.

The paths are joined to the YAML's folder as the user named it (`sub/data.jsonl` from where they stand, or
absolute if they gave an absolute file): messages keep naming files the way the user would.
"""

from __future__ import annotations

import os
from pathlib import Path

from .spec import PEFTJob

S3_PREFIX = "s3://"
"""What marks an object-store URI in a job (everything else that is not a hub id is a local path)."""
MODEL_SOURCE_GIVEN = "peft.dev/model-source-given"
"""Annotation holding model.source as the user wrote it, next to the resolved one in the spec."""


def resolve_local_paths(job: PEFTJob, base_dir: Path) -> PEFTJob:
    """A copy of `job` with its relative local paths joined to `base_dir` (the YAML file's folder).

    Data sources, a local output folder and deepspeed.nvmePath are always paths. model.source may be a hub id
    (`org/name`): it is taken for a path when it starts with "." or exists under `base_dir`.
    """
    resolved = job.model_copy(deep=True)
    spec = resolved.spec
    resolved.metadata.annotations[MODEL_SOURCE_GIVEN] = spec.model.source
    if spec.model.source.startswith(".") or (base_dir / spec.model.source).exists():
        spec.model.source = _join(base_dir, spec.model.source)
    spec.data.train.source = _join(base_dir, spec.data.train.source)
    if spec.data.eval is not None:
        spec.data.eval.source = _join(base_dir, spec.data.eval.source)
    spec.output.uri = _join(base_dir, spec.output.uri)
    if spec.deepspeed.nvme_path is not None:
        spec.deepspeed.nvme_path = _join(base_dir, spec.deepspeed.nvme_path)
    return resolved


def _join(base_dir: Path, value: str) -> str:
    """`value` under `base_dir` unless it is an s3:// URI or an absolute path."""
    if value.startswith(S3_PREFIX) or Path(value).is_absolute():
        return value
    return os.path.normpath(base_dir / value)  # "examples/../peftjob-output" reads as "peftjob-output"

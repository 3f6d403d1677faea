"""Checkpoints of the trainable state only, each made complete by a manifest, and the lineage they belong to
(the final adapter: publish.py).

Layout under the output URI:
  <job>/lineage.json                 the training lineage the checkpoints belong to: its id, fingerprint and
                                     fields (lineage.py), and the job that started it
  <job>/checkpoints/step-NNNNNNNN/   DeepSpeed's files (frozen parameters excluded: trainable state, optimizer,
                                     scheduler), one trainer-state file per rank (every RNG, data position), and
                                     manifest.json (lineage id, world size, sha256 and size of each file), written LAST

A directory without a manifest, or whose files do not match it, is incomplete: resume skips it, with a
warning, for the previous one. Each rank writes DeepSpeed's per-rank files itself, so resume needs the same
world size (the optimizer state is partitioned across the ranks that saved it).
"""

from __future__ import annotations

import json
import logging
import random
import re
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy
import torch

from . import distributed
from .distributed import Rank
from .errors import SpecError
from .lineage import differences, fingerprint
from .manifest import MANIFEST, describe, download_verified
from .storage import Storage, join

LINEAGE_FILE = "lineage.json"
STEP_DIR = re.compile(r"^step-(\d{8})$")
log = logging.getLogger(__name__)


def step_tag(step: int) -> str:
    return f"step-{step:08d}"


def checkpoints_prefix(job_name: str) -> str:
    return join(job_name, "checkpoints")


# ----------------------------------------------------------------------------------------------- lineage


@dataclass(frozen=True)
class Lineage:
    """The training a job's checkpoints and MLflow run belong to."""

    id: str
    fingerprint: str
    fields: dict[str, Any]
    resumable: bool
    """Whether checkpoints of it may exist (False: a new lineage, nothing to resume)."""


class LineageMismatch(SpecError):
    """The job's output holds another training's checkpoints: resuming them would mix two trainings."""


def claim_lineage(storage: Storage, job_name: str, fields: dict[str, Any], resume: str, owner: str) -> Lineage:
    """This job's lineage (rank 0 only): the recorded one when the fingerprint matches, else a new one.

    `resume: auto` refuses another training's checkpoints, naming the fields that differ. `resume: never`
    discards them and starts a new lineage, except when the record is this very job's (`owner`: the job's uid,
    or one `peftjob run`), so that a restarted gang never throws its own work away.
    """
    current = fingerprint(fields)
    raw = storage.read_bytes(join(job_name, LINEAGE_FILE))
    recorded = json.loads(raw) if raw is not None else None
    if recorded is not None and (resume == "auto" or recorded.get("owner") == owner):
        if recorded["fingerprint"] == current:
            return Lineage(recorded["id"], current, fields, resumable=True)
        raise LineageMismatch(
            f"{storage.uri}: the checkpoints of job {job_name!r} belong to another training: "
            + "; ".join(differences(recorded["fields"], fields))
            + ". Give the job a new metadata.name to keep both, or set spec.training.resume: never to discard them "
            "and start over"
        )
    if recorded is None and resume == "auto" and _tags(storage, job_name):
        raise LineageMismatch(
            f"{storage.uri}: job {job_name!r} has checkpoints without a lineage record (written by an older peftjob), "
            "so nothing says they are this training's. Give the job a new metadata.name, or set "
            "spec.training.resume: never to discard them and start over"
        )
    if _tags(storage, job_name):
        log.info("resume: never: discarding the checkpoints of job %s and starting over", job_name)
        storage.delete(checkpoints_prefix(job_name))
    lineage = Lineage(uuid.uuid4().hex, current, fields, resumable=False)
    record = {"id": lineage.id, "fingerprint": current, "fields": fields, "owner": owner,
              "created": datetime.now(timezone.utc).isoformat()}
    storage.write_bytes(join(job_name, LINEAGE_FILE), json.dumps(record, indent=1, sort_keys=True).encode())
    return lineage


# --------------------------------------------------------------------------------------- save and restore


def rng_state() -> dict[str, Any]:
    """Every generator training draws from (dropout, the methods' inits): Python's, NumPy's, torch's CPU and CUDA."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": numpy.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    if "numpy" in state:
        numpy.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rank_state_file(rank: int) -> str:
    return f"trainer-state-rank{rank:05d}.pt"


def save(engine: Any, storage: Storage, job_name: str, lineage: Lineage, step: int, position: int, rank: Rank,
         kept: int) -> None:
    """Save and upload a checkpoint from every rank; rank 0 writes the manifest last, then prunes old ones."""
    tag = step_tag(step)
    prefix = join(checkpoints_prefix(job_name), tag)
    rng = rng_state()  # before DeepSpeed's save, which must not move what the next step draws
    with tempfile.TemporaryDirectory(prefix="peftjob-ckpt-") as scratch:
        engine.save_checkpoint(scratch, tag=tag, save_latest=False, exclude_frozen_parameters=True)
        folder = Path(scratch, tag)
        folder.mkdir(exist_ok=True)
        torch.save({"step": step, "position": position, "rng": rng}, folder / _rank_state_file(rank.rank))
        files = describe(folder)
        for name in files:
            storage.put_file(folder / name, join(prefix, name))
    everything: dict[str, dict[str, Any]] = {}
    for part in distributed.gather_objects(files):
        everything.update(part)
    if rank.is_main:
        manifest = {"step": step, "worldSize": rank.world_size, "lineage": lineage.id, "files": everything}
        storage.write_bytes(join(prefix, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True).encode())
        prune(storage, job_name, kept)
    distributed.barrier()


def _tags(storage: Storage, job_name: str) -> list[str]:
    """Checkpoint tags, newest first (complete or not)."""
    prefix = checkpoints_prefix(job_name) + "/"
    tags = {key[len(prefix) :].split("/")[0] for key in storage.list(checkpoints_prefix(job_name))}
    return sorted((tag for tag in tags if STEP_DIR.match(tag)), reverse=True)


def prune(storage: Storage, job_name: str, kept: int) -> None:
    """Delete all but the newest `kept` complete checkpoints. Housekeeping: a failure only warns (the next
    checkpoint prunes again), because the checkpoint just written is complete and training must go on."""
    try:
        complete = [
            tag for tag in _tags(storage, job_name)
            if storage.read_bytes(join(checkpoints_prefix(job_name), tag, MANIFEST)) is not None
        ]
        for tag in complete[kept:]:
            storage.delete(join(checkpoints_prefix(job_name), tag))
    except Exception as error:  # noqa: BLE001 (housekeeping never fails a job)
        log.warning("could not prune old checkpoints of %s (%s: %s); will try again at the next checkpoint",
                    job_name, type(error).__name__, error)


def fetch_latest(storage: Storage, job_name: str, lineage: Lineage, local: Path,
                 world_size: int) -> tuple[str, dict[str, Any]] | None:
    """Download the lineage's newest complete checkpoint into `local/<tag>`; skip (with a warning) incomplete
    ones. A checkpoint of another gang size is a user error (ZeRO partitions the optimizer state by rank)."""
    if not lineage.resumable:
        return None
    for tag in _tags(storage, job_name):
        prefix = join(checkpoints_prefix(job_name), tag)
        raw = storage.read_bytes(join(prefix, MANIFEST))
        if raw is None:
            log.warning("checkpoint %s has no manifest (incomplete): skipped", tag)
            continue
        manifest = json.loads(raw)
        if manifest.get("lineage") != lineage.id:
            log.warning("checkpoint %s belongs to another training (lineage %s): skipped", tag, manifest.get("lineage"))
            continue
        if manifest["worldSize"] != world_size:
            raise SpecError(
                f"checkpoint {tag} was written by {manifest['worldSize']} ranks but this run has {world_size}: "
                "resume with the same workers x processesPerWorker (ZeRO partitions the optimizer state by rank)"
            )
        bad = download_verified(storage, prefix, manifest["files"], local / tag)
        if bad:
            log.warning("checkpoint %s does not match its manifest (%s): skipped", tag, bad)
            continue
        return tag, manifest
    return None


def restore(engine: Any, local: Path, tag: str, rank: Rank) -> dict[str, Any]:
    """Load a fetched checkpoint into the engine and this rank's RNG; returns {step, position}."""
    engine.load_checkpoint(
        str(local), tag=tag, load_module_strict=False, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    state = torch.load(local / tag / _rank_state_file(rank.rank), weights_only=False)
    set_rng_state(state["rng"])
    return {"step": state["step"], "position": state["position"]}

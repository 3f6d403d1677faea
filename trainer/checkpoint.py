"""Checkpoints of the trainable state only, each made complete by a manifest (the final adapter: publish.py).

Layout under the output URI:
  <job>/checkpoints/step-NNNNNNNN/   DeepSpeed's files (frozen parameters excluded: trainable state, optimizer,
                                     scheduler), one trainer-state file per rank (RNG, data position), and
                                     manifest.json (sha256 and size of each file), written LAST

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
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .distributed import Rank
from .manifest import MANIFEST, describe, download_verified
from .storage import Storage, join

STEP_DIR = re.compile(r"^step-(\d{8})$")
log = logging.getLogger(__name__)


def step_tag(step: int) -> str:
    return f"step-{step:08d}"


def checkpoints_prefix(job_name: str) -> str:
    return join(job_name, "checkpoints")


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _rank_state_file(rank: int) -> str:
    return f"trainer-state-rank{rank:05d}.pt"


def save(engine: Any, storage: Storage, job_name: str, step: int, position: int, rank: Rank, kept: int) -> None:
    """Save and upload a checkpoint from every rank; rank 0 writes the manifest last, then prunes old ones."""
    tag = step_tag(step)
    prefix = join(checkpoints_prefix(job_name), tag)
    with tempfile.TemporaryDirectory(prefix="peftjob-ckpt-") as scratch:
        engine.save_checkpoint(scratch, tag=tag, save_latest=False, exclude_frozen_parameters=True)
        folder = Path(scratch, tag)
        folder.mkdir(exist_ok=True)
        torch.save({"step": step, "position": position, "rng": rng_state()}, folder / _rank_state_file(rank.rank))
        files = describe(folder)
        for name in files:
            storage.put_file(folder / name, join(prefix, name))
    everything: dict[str, dict[str, Any]] = {}
    for part in distributed.gather_objects(files):
        everything.update(part)
    if rank.is_main:
        manifest = {"step": step, "worldSize": rank.world_size, "files": everything}
        storage.write_bytes(join(prefix, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True).encode())
        _prune(storage, job_name, kept)
    distributed.barrier()


def _tags(storage: Storage, job_name: str) -> list[str]:
    """Checkpoint tags, newest first (complete or not)."""
    prefix = checkpoints_prefix(job_name) + "/"
    tags = {key[len(prefix) :].split("/")[0] for key in storage.list(checkpoints_prefix(job_name))}
    return sorted((tag for tag in tags if STEP_DIR.match(tag)), reverse=True)


def _prune(storage: Storage, job_name: str, kept: int) -> None:
    complete = [
        tag for tag in _tags(storage, job_name)
        if storage.read_bytes(join(checkpoints_prefix(job_name), tag, MANIFEST)) is not None
    ]
    for tag in complete[kept:]:
        storage.delete(join(checkpoints_prefix(job_name), tag))


def fetch_latest(storage: Storage, job_name: str, local: Path) -> tuple[str, dict[str, Any]] | None:
    """Download the newest complete checkpoint into `local/<tag>`; skip (with a warning) incomplete ones."""
    for tag in _tags(storage, job_name):
        prefix = join(checkpoints_prefix(job_name), tag)
        raw = storage.read_bytes(join(prefix, MANIFEST))
        if raw is None:
            log.warning("checkpoint %s has no manifest (incomplete): skipped", tag)
            continue
        manifest = json.loads(raw)
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

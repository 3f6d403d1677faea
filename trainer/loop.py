"""The training recipe, top to bottom: set up (data, the gang, the frozen backbone sharded under ZeRO-3, the
PEFT method, the engine), resume the job's own lineage exactly, run the steps with evaluation and checkpoints,
publish the adapter. Whatever happens, the MLflow run is closed with the truth and the scratch folder and the
progress server go away. Distributed details live in helpers with obvious names.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import torch
from tqdm import tqdm

from . import checkpoint, distributed
from .api.contract import ENV_PROGRESS_PORT, ENV_SUBMISSION, ENV_UID, PROGRESS_PORT
from .api.deepspeed_config import deepspeed_config
from .api.paths import MODEL_SOURCE_GIVEN
from .api.result import TrainerResult
from .api.spec import PEFTJob, PEFTJobSpec
from .api.status import MlflowRun
from .batching import Sharding, check_size, collate, eval_batches, total_steps
from .checkpoint import Lineage
from .data import class_names, encode, fetcher, read_records
from .distributed import Rank
from .errors import SpecError
from .lineage import content_digest, lineage_fields
from .model_loading import load_backbone, load_preprocessor, local_source
from .preflight import preflight
from .progress_server import ProgressServer
from .publish import publish_adapter
from .schedule import lr_scheduler
from .storage import Storage, open_storage
from .tokens import IGNORE_INDEX
from .tracking import Tracker

log = logging.getLogger("peftjob")


@dataclass
class Run:
    """Everything the steps need, built once by `set_up`."""

    job: PEFTJob
    rank: Rank
    storage: Storage
    lineage: Lineage
    engine: Any
    scheduler: Any
    method: Any
    train_set: list[dict[str, Any]]
    eval_set: list[dict[str, Any]]
    pad_id: int
    sharding: Sharding
    steps: int
    trainable_params: int
    total_params: int

    @property
    def spec(self) -> PEFTJobSpec:
        return self.job.spec


def train(job: PEFTJob) -> TrainerResult | None:
    """Run the job on this rank; returns the result on rank 0 (None on the others)."""
    scratch = Path(tempfile.mkdtemp(prefix="peftjob-"))
    progress: ProgressServer | None = None
    tracker: Tracker | None = None
    trained = False
    try:
        run = set_up(job, scratch)
        progress = serve_progress(run)
        tracker = open_tracking(run, progress)
        step, position, resumed_from = resume(run, scratch / "resume")
        initial = evaluate_before_training(run, tracker) if resumed_from is None else {}
        trained = step < run.steps
        metrics = run_steps(run, tracker, progress, step, position)
        result = publish(run, tracker, scratch / "adapter", metrics, initial, resumed_from)
        tracker.finish("FINISHED", trained)
        if result is not None:
            result.mlflow_run_id = tracker.run_id  # opened in the background: known for sure only now
        distributed.barrier()
        distributed.shutdown()
        return result
    except KeyboardInterrupt:
        if tracker is not None:
            tracker.finish("KILLED", trained, interrupted=True)
        raise
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED", trained)
        raise
    finally:
        if progress is not None:
            progress.close()
        shutil.rmtree(scratch, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- set up


def set_up(job: PEFTJob, scratch: Path) -> Run:
    """Data first, before the gang meets and the backbone loads (a bad file fails in seconds); then the gang
    agrees on the lineage, loads the backbone, attaches the method and builds the engine."""
    spec, training = job.spec, job.spec.training
    endpoint = spec.output.s3_endpoint_url
    source = local_source(spec, endpoint)
    preflight(job, source)  # output writable, model files, task, maxLength, precision, GPUs
    tokenizer, processor = load_preprocessor(spec, source)
    fetch = fetcher(scratch / "data", endpoint)
    splits = {"train": spec.data.train, **({"eval": spec.data.eval} if spec.data.eval else {})}
    records = {split: read_records(data, fetch) for split, data in splits.items()}
    classes = class_names(spec, records["train"])  # the training split names the classes; every split maps by name
    encoded = {split: encode(found, spec, tokenizer, processor, records["train"]) for split, found in records.items()}
    digests = {split: content_digest(fetch(data.source)) for split, data in splits.items()}
    pad_id = tokenizer.pad_token_id if tokenizer is not None else 0

    rank = distributed.init()
    storage = open_storage(spec.output.uri, endpoint)
    fields = lineage_fields(spec, digests, job.metadata.annotations.get(MODEL_SOURCE_GIVEN))
    owner = job.metadata.uid or os.environ.get(ENV_UID) or os.environ.get(ENV_SUBMISSION, "")
    lineage = distributed.decided_by_main(
        lambda: checkpoint.claim_lineage(storage, job.metadata.name, fields, training.resume, owner)
    )

    seed_everything(training.seed)
    ds_config = deepspeed_config(spec)
    backbone = load_backbone(spec, source, ds_config, pad_id if tokenizer is not None else None)
    if classes is not None:  # carried by the config into the saved adapter's record
        backbone.model.config.id2label = dict(enumerate(classes))
        backbone.model.config.label2id = {name: index for index, name in enumerate(classes)}
    from .methods import build_method, parameter_counts

    method = build_method(spec.method, spec.model.task)
    seed_everything(training.seed)  # the method's fresh parameters are the same on every rank
    model = method.attach(backbone.model)
    trainable_params, total_params = parameter_counts(model)
    sharding = Sharding(len(encoded["train"]), training.micro_batch_size, rank.world_size, training.seed)
    check_size(sharding, spec.data.train.source)
    steps = total_steps(spec, sharding)
    import deepspeed

    try:
        engine, _, _, scheduler = deepspeed.initialize(
            model=model,
            model_parameters=[param for param in model.parameters() if param.requires_grad],
            config=ds_config,
            lr_scheduler=lambda optimizer: lr_scheduler(optimizer, training, steps),
        )
    except (ValueError, KeyError, AssertionError) as error:
        if not spec.deepspeed.config:
            raise
        raise SpecError(f"deepspeed.config: DeepSpeed refused the merged configuration: {error}") from None
    if rank.is_main:
        log.info("%s; %s of %s parameters train", describe_engine(engine, rank), f"{trainable_params:,}",
                 f"{total_params:,}")
    return Run(job, rank, storage, lineage, engine, scheduler, method, encoded["train"], encoded.get("eval", []),
               pad_id, sharding, steps, trainable_params, total_params)


def serve_progress(run: Run) -> ProgressServer:
    """Rank 0 answers the operator's progress polls; the report names the job so no other job's is believed."""
    progress = ProgressServer(run.steps, job_uid=run.job.metadata.uid or os.environ.get(ENV_UID) or None)
    if run.rank.is_main:
        progress.serve(int(os.environ.get(ENV_PROGRESS_PORT, PROGRESS_PORT) or 0))
    return progress


def open_tracking(run: Run, progress: ProgressServer) -> Tracker:
    """The lineage's MLflow run, opened in the background; its id reaches the progress report once known
    (so the operator can close the run if the job is deleted)."""
    tracker = Tracker(run.job, run.lineage.id, run.lineage.fields, enabled=run.rank.is_main,
                      on_open=lambda run_id: progress.update(mlflow=MlflowRun(run_id=run_id)))
    return tracker


def resume(run: Run, local: Path) -> tuple[int, int, int | None]:
    """(step, data position, step resumed from or None): the lineage's latest complete checkpoint, with every RNG."""
    found = checkpoint.fetch_latest(run.storage, run.job.metadata.name, run.lineage, local, run.rank.world_size)
    if not found:
        return 0, 0, None
    tag, _ = found
    state = checkpoint.restore(run.engine, local, tag, run.rank)
    log.info("resumed from checkpoint %s (step %d)", tag, state["step"])
    return state["step"], state["position"], state["step"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)


# -------------------------------------------------------------------------------------------------- steps


def evaluate_before_training(run: Run, tracker: Tracker) -> dict[str, float]:
    if not run.eval_set:
        return {}
    initial = evaluate(run)
    report(run.rank, tracker, initial, 0, f"step 0/{run.steps} (before training)")
    return initial


def run_steps(run: Run, tracker: Tracker, progress: ProgressServer, step: int, position: int) -> dict[str, float]:
    """Train from `step` to the last one; returns the metrics of the last logging window."""
    rank, engine, training = run.rank, run.engine, run.spec.training
    bar = tqdm(total=run.steps, initial=step, disable=not (rank.is_main and sys.stderr.isatty()), unit="step")
    engine.train()  # from_pretrained leaves the model in eval mode: without this, dropout would be on only after
    # an evaluation had run (so a run resumed without one trained another trajectory)
    window = new_window()
    metrics: dict[str, float] = {}
    while step < run.steps:
        for _ in range(training.gradient_accumulation_steps):
            batch = collate([run.train_set[i] for i in run.sharding.indices(position, rank.rank)], run.pad_id)
            position += 1
            batch = {key: value.to(rank.device) for key, value in batch.items()}
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()  # DeepSpeed steps the optimizer and scheduler at the accumulation boundary
            window["loss"] += loss.item()
            window["micro"] += 1
            window["samples"] += len(batch["labels"])
            window["tokens"] += float(batch["attention_mask"].sum()) if "attention_mask" in batch else 0.0
        step += 1
        bar.update(1)
        if step % training.log_interval == 0 or step == run.steps:
            metrics = step_metrics(window, engine, run.scheduler)
            report(rank, tracker, metrics, step, f"step {step}/{run.steps}", bar)
            progress.update(
                step=step, loss=metrics["loss"], throughput=metrics["samples_per_second"],
                eta_seconds=round((run.steps - step) * metrics["seconds_per_step"], 1),
            )
            window = new_window()
        if training.eval_interval and step % training.eval_interval == 0 and step < run.steps and run.eval_set:
            report(rank, tracker, evaluate(run), step, f"step {step}/{run.steps}", bar)
        if step == run.steps or (training.checkpoint_interval and step % training.checkpoint_interval == 0):
            # The last one too: a rerun after a failed publish (or of a finished job) trains nothing again.
            checkpoint.save(engine, run.storage, run.job.metadata.name, run.lineage, step, position, rank,
                            training.checkpoints_kept)
    bar.close()
    return metrics


def publish(run: Run, tracker: Tracker, adapter_dir: Path, metrics: dict[str, float], initial: dict[str, float],
            resumed_from: int | None) -> TrainerResult | None:
    """Final evaluation, the adapter saved (every rank: gathering ZeRO-3 partitions is a collective) and, on
    rank 0, published with its manifest and logged to MLflow; returns rank 0's result."""
    final = evaluate(run) if run.eval_set else {}
    report(run.rank, tracker, final, run.steps, f"step {run.steps}/{run.steps} (final)")
    frozen = distributed.gather_objects(frozen_bytes(run.engine.module))
    run.method.save(run.engine.module, adapter_dir)
    if not run.rank.is_main:
        return None
    published = publish_adapter(run.storage, run.job.metadata.name, adapter_dir)
    tracker.log_artifacts(adapter_dir, "adapter")
    tracker.log_spec()
    return TrainerResult(
        artifact_uri=published.uri,
        sha256=published.sha256,
        bytes=published.bytes,
        files=published.files,
        steps=run.steps,
        resumed_from_step=resumed_from,
        metrics={key: round(value, 6) for key, value in {**metrics, **final}.items()},
        initial_metrics={key: round(value, 6) for key, value in initial.items()},
        trainable_params=run.trainable_params,
        total_params=run.total_params,
        frozen_bytes_per_rank=frozen,
        world_size=run.rank.world_size,
    )


def describe_engine(engine: Any, rank: Rank) -> str:
    """What DeepSpeed actually set up (stage, precision, optimizer and where state lives), read back from the
    engine rather than the spec, so a config that did not take effect shows in the log."""
    precision = "bf16" if engine.bfloat16_enabled() else "fp16" if engine.fp16_enabled() else "fp32"
    parts = [f"DeepSpeed ZeRO-{engine.zero_optimization_stage()} on {rank.world_size} rank(s), {precision}",
             f"optimizer {type(engine.basic_optimizer).__name__}"]
    offloads = {"optimizer state": engine.zero_offload_optimizer(), "parameters": engine.zero_offload_param()}
    for what, offload in offloads.items():
        device = getattr(offload, "device", None)
        device = getattr(device, "value", device)  # a str or an enum, depending on the DeepSpeed version
        if device and device != "none":
            parts.append(f"{what} offloaded to {device}")
    return ", ".join(parts)


def new_window() -> dict[str, float]:
    """Sums since the last log line, for its loss and throughput."""
    return {"time": time.perf_counter(), "samples": 0.0, "tokens": 0.0, "loss": 0.0, "micro": 0}


def step_metrics(window: dict[str, float], engine: Any, scheduler: Any) -> dict[str, float]:
    """Loss (mean over ranks), lr, grad norm and throughput over the window since the last log line."""
    elapsed = max(time.perf_counter() - window["time"], 1e-9)
    loss, samples, tokens, micro = distributed.all_sum([window["loss"], window["samples"], window["tokens"], window["micro"]])
    steps_in_window = window["micro"] / engine.gradient_accumulation_steps()
    metrics = {
        "loss": loss / micro,
        "lr": scheduler.get_last_lr()[0],
        "samples_per_second": samples / elapsed,
        "seconds_per_step": elapsed / max(steps_in_window, 1),
    }
    if tokens:
        metrics["tokens_per_second"] = tokens / elapsed
    norm = engine.get_global_grad_norm()
    if norm is not None:
        metrics["grad_norm"] = float(norm)
    return metrics


@torch.no_grad()
def evaluate(run: Run) -> dict[str, float]:
    """Eval loss over the whole eval set (sharded across ranks), with accuracy or perplexity."""
    engine, rank, spec = run.engine, run.rank, run.spec
    engine.eval()
    classification = spec.model.task != "causal-lm"
    loss_sum = count = correct = 0.0
    for indices in eval_batches(len(run.eval_set), spec.training.micro_batch_size, rank.world_size, rank.rank):
        batch = collate([run.eval_set[i] for i in indices or [0]], run.pad_id)
        batch = {key: value.to(rank.device) for key, value in batch.items()}
        output = engine(**batch)
        if not indices:  # a short shard's padding pass: every rank joins every forward under ZeRO-3
            continue
        if classification:
            loss_sum += output.loss.item() * len(indices)
            count += len(indices)
            correct += float((output.logits.argmax(-1) == batch["labels"]).sum())
        else:
            tokens = float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            loss_sum += output.loss.item() * tokens
            count += tokens
    loss_sum, count, correct = distributed.all_sum([loss_sum, count, correct])
    engine.train()
    metrics = {"eval_loss": loss_sum / count}
    if classification:
        metrics["eval_accuracy"] = correct / count
    else:
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
    return metrics


def frozen_bytes(model: torch.nn.Module) -> int:
    """Bytes of frozen parameters this rank actually holds: its ZeRO-3 partition plus anything materialised."""
    held = 0
    for param in model.parameters():
        if param.requires_grad:
            continue
        partition = getattr(param, "ds_tensor", None)
        if partition is not None:
            held += partition.numel() * partition.element_size()
        held += param.data.numel() * param.data.element_size()
    return held


def report(rank: Rank, tracker: Tracker, metrics: dict[str, float], step: int, where: str, bar: Any = None) -> None:
    """Rank 0 queues metrics for MLflow and prints them as one readable line (through the progress bar on a terminal)."""
    if not rank.is_main or not metrics:
        return
    tracker.log_metrics(metrics, step)
    line = f"{where}: " + " ".join(f"{key}={value:.4g}" for key, value in metrics.items())
    if bar is not None and not bar.disable:
        bar.write(line)
    else:
        log.info(line)

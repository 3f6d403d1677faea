"""The training loop, top to bottom: join the gang, load the frozen backbone (sharded under ZeRO-3), attach
the PEFT method, resume from the latest complete checkpoint, train with evaluation and checkpoints, publish
the adapter. Distributed details live in helpers with obvious names.
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
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import checkpoint, distributed
from .api.result import TrainerResult
from .api.spec import PEFTJob, PEFTJobSpec
from .api.status import MlflowRun
from .api.contract import ENV_PROGRESS_PORT, PROGRESS_PORT
from .batching import Sharding, check_size, collate, eval_batches, total_steps
from .data import encode, fetcher, read_records
from .api.deepspeed_config import deepspeed_config
from .distributed import Rank
from .errors import UserError
from .model_loading import load_backbone, load_preprocessor, local_source
from .progress_server import ProgressServer
from .publish import publish_adapter
from .schedule import lr_scheduler
from .storage import open_storage
from .tokens import IGNORE_INDEX
from .tracking import Tracker

log = logging.getLogger("peftjob")


def train(job: PEFTJob) -> TrainerResult | None:
    """Run the job on this rank; returns the result on rank 0 (None on the others)."""
    spec, name = job.spec, job.metadata.name
    training = spec.training
    endpoint = spec.output.s3_endpoint_url
    scratch = Path(tempfile.mkdtemp(prefix="peftjob-"))

    # Data first, before the gang meets and the backbone loads: a bad file fails in seconds.
    source = local_source(spec, endpoint)
    tokenizer, processor = load_preprocessor(spec, source)
    fetch = fetcher(scratch / "data", endpoint)
    train_set = encode(read_records(spec.data.train, fetch), spec, tokenizer, processor)
    eval_set = encode(read_records(spec.data.eval, fetch), spec, tokenizer, processor) if spec.data.eval else []
    pad_id = tokenizer.pad_token_id if tokenizer is not None else 0

    rank = distributed.init()
    seed_everything(training.seed)
    ds_config = deepspeed_config(spec)
    storage = open_storage(spec.output.uri, endpoint)
    backbone = load_backbone(spec, source, ds_config, pad_id if tokenizer is not None else None)

    from .methods import build_method, parameter_counts

    method = build_method(spec.method, spec.model.task)
    seed_everything(training.seed)  # the method's fresh parameters are the same on every rank
    model = method.attach(backbone.model)
    trainable_params, total_params = parameter_counts(model)

    sharding = Sharding(len(train_set), training.micro_batch_size, rank.world_size, training.seed)
    check_size(sharding, spec.data.train.source)
    steps = total_steps(spec, sharding)
    import deepspeed

    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        model_parameters=[param for param in model.parameters() if param.requires_grad],
        config=ds_config,
        lr_scheduler=lambda optimizer: lr_scheduler(optimizer, training, steps),
    )

    if rank.is_main:
        log.info("%s; %s of %s parameters train", describe_engine(engine, rank), f"{trainable_params:,}",
                 f"{total_params:,}")
    tracker = Tracker(job, enabled=rank.is_main)
    progress = ProgressServer(steps)
    if rank.is_main:
        progress.update(mlflow=MlflowRun(run_id=tracker.run_id))  # lets the operator close the run if the job is deleted
        progress.serve(int(os.environ.get(ENV_PROGRESS_PORT, PROGRESS_PORT) or 0))

    step = position = 0
    resumed_from = None
    found = checkpoint.fetch_latest(storage, name, scratch / "resume")
    if found:
        tag, manifest = found
        if manifest["worldSize"] != rank.world_size:
            raise UserError(
                f"checkpoint {tag} was written by {manifest['worldSize']} ranks but this run has {rank.world_size}: "
                "resume with the same workers x processesPerWorker (ZeRO partitions the optimizer state by rank)"
            )
        state = checkpoint.restore(engine, scratch / "resume", tag, rank)
        step, position, resumed_from = state["step"], state["position"], state["step"]
        log.info("resumed from checkpoint %s (step %d)", tag, step)
    initial: dict[str, float] = {}
    if not found and eval_set:
        initial = evaluate(engine, eval_set, spec, rank, pad_id)
        report(rank, tracker, initial, 0, f"step 0/{steps} (before training)")

    bar = tqdm(total=steps, initial=step, disable=not (rank.is_main and sys.stderr.isatty()), unit="step")
    window = new_window()
    metrics: dict[str, float] = {}
    while step < steps:
        for _ in range(training.gradient_accumulation_steps):
            batch = collate([train_set[i] for i in sharding.indices(position, rank.rank)], pad_id)
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
        if step % training.log_interval == 0 or step == steps:
            metrics = step_metrics(window, engine, scheduler)
            report(rank, tracker, metrics, step, f"step {step}/{steps}", bar)
            progress.update(
                step=step, loss=metrics["loss"], throughput=metrics["samples_per_second"],
                eta_seconds=round((steps - step) * metrics["seconds_per_step"], 1),
            )
            window = new_window()
        if training.eval_interval and step % training.eval_interval == 0 and step < steps and eval_set:
            report(rank, tracker, evaluate(engine, eval_set, spec, rank, pad_id), step, f"step {step}/{steps}", bar)
        if step == steps or (training.checkpoint_interval and step % training.checkpoint_interval == 0):
            # The last one too: a rerun after a failed publish (or of a finished job) trains nothing again.
            checkpoint.save(engine, storage, name, step, position, rank, training.checkpoints_kept)
    bar.close()

    final = evaluate(engine, eval_set, spec, rank, pad_id) if eval_set else {}
    report(rank, tracker, final, steps, f"step {steps}/{steps} (final)")
    frozen = distributed.gather_objects(frozen_bytes(engine.module))
    adapter_dir = scratch / "adapter"
    method.save(engine.module, adapter_dir)  # every rank: gathering ZeRO-3 partitions is a collective
    result: TrainerResult | None = None
    if rank.is_main:
        published = publish_adapter(storage, name, adapter_dir)
        tracker.log_artifacts(adapter_dir, "adapter")
        tracker.log_spec()
        tracker.finish()
        result = TrainerResult(
            artifact_uri=published.uri,
            sha256=published.sha256,
            bytes=published.bytes,
            files=published.files,
            steps=steps,
            resumed_from_step=resumed_from,
            metrics={key: round(value, 6) for key, value in {**metrics, **final}.items()},
            initial_metrics={key: round(value, 6) for key, value in initial.items()},
            trainable_params=trainable_params,
            total_params=total_params,
            frozen_bytes_per_rank=frozen,
            world_size=rank.world_size,
            mlflow_run_id=tracker.run_id,
        )
    distributed.barrier()
    progress.close()
    distributed.shutdown()
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


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
def evaluate(engine: Any, eval_set: list[dict[str, Any]], spec: PEFTJobSpec, rank: Rank, pad_id: int) -> dict[str, float]:
    """Eval loss over the whole eval set (sharded across ranks), with accuracy or perplexity."""
    engine.eval()
    classification = spec.model.task != "causal-lm"
    loss_sum = count = correct = 0.0
    for indices in eval_batches(len(eval_set), spec.training.micro_batch_size, rank.world_size, rank.rank):
        batch = collate([eval_set[i] for i in indices or [0]], pad_id)
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
    """Rank 0 logs metrics to MLflow and as one readable line (through the progress bar on a terminal)."""
    if not rank.is_main or not metrics:
        return
    tracker.log_metrics(metrics, step)
    line = f"{where}: " + " ".join(f"{key}={value:.4g}" for key, value in metrics.items())
    if bar is not None and not bar.disable:
        bar.write(line)
    else:
        log.info(line)

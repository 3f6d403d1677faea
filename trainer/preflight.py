"""Preflight: the user's mistakes that would otherwise surface minutes into training, or at its first
checkpoint, found in seconds before the gang meets and the backbone loads (the model's config is read, never
its weights). Each check raises the UserError for who must act, naming the field and the reason:

- output.uri can be written (a probe object is written and deleted, local folder or S3)    OutputError (5)
- model.source is a folder holding config, weights and what the task needs (tokenizer files for text,
  an image processor for images), or a hub id whose config loads                           ModelError (4)
- model.task fits the model (no causal LM on an encoder, no text task on a vision model)   ModelError (4)
- data.maxLength (plus the method's virtual tokens) fits the model's positions              SpecError (2)
- the precision DeepSpeed would run is supported by this machine's accelerator              SpecError (2)
- GPUs asked for are present: a warning in `peftjob run`, an error in a pod, whose node promised them

`peftjob validate` runs what needs neither the trainer's libraries nor the network (`offline_check`) through
the same functions. Importing this module needs no torch; the device checks import it when they run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

from .api.paths import MODEL_SOURCE_GIVEN, S3_PREFIX, resolve_local_paths
from .api.spec import PEFTJob, PEFTJobSpec
from .errors import ModelError, OutputError, SpecError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
"""A Hugging Face repo id (name or namespace/name); anything else that is not s3:// is a local path."""
CONFIG_FILE = "config.json"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
    "sentencepiece.bpe.model",
)
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
ENCODER_ONLY_TYPES = frozenset({
    "bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "camembert",
    "mpnet", "modernbert", "vit", "deit", "beit", "swin", "convnext", "dinov2",
})
"""Model types with no decoder: transformers still builds a causal-LM class for some (BERT's LM head), whose
head is then random and whose attention is bidirectional, so the job "trains" nothing useful."""
PADDED_POSITION_TYPES = frozenset({"roberta", "xlm-roberta", "camembert"})
"""Model types whose position ids start after the padding index, so pad_token_id + 1 positions are unusable."""
POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")
PREPENDING_METHODS = ("promptTuning", "prefixTuning", "pTuning")
IN_POD_ENV = "KUBERNETES_SERVICE_HOST"
PROBE_PREFIX = ".peftjob-preflight-"
log = logging.getLogger("peftjob")


def preflight(job: PEFTJob, source: str) -> None:
    """Every check, on this rank, before the backbone loads; `source` is model.source as a local folder
    (an s3:// model already downloaded) or a hub id. Raises the UserError for the first problem found."""
    spec = job.spec
    check_output(spec, job.metadata.name)
    config = model_config(spec, source, given_source(job))
    check_model_fits(spec, config)
    check_precision(spec)
    warning = gpu_problem(spec, _visible_gpus(), in_pod=IN_POD_ENV in os.environ)
    if warning:
        log.warning("%s", warning)


def offline_check(job: PEFTJob, base_dir: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) that this machine can tell without the trainer's libraries or the network, for
    `peftjob validate`: on the files `peftjob run` would use (relative paths are `base_dir`'s, the YAML
    file's folder). A model folder missing here, or an absolute output folder not writable here, is only a
    warning: it may exist where the job runs (a volume in the pod)."""
    given = job.spec
    resolved = resolve_local_paths(job, base_dir)
    spec = resolved.spec
    errors: list[str] = []
    warnings = relative_path_warnings(given)
    folder = local_model_path(spec.model.source, given_source(resolved))
    if folder is not None and folder.exists():
        try:
            check_model_fits(spec, check_model_folder(folder, spec.model.task, spec.model.source))
        except (ModelError, SpecError) as error:
            errors.append(str(error))
    elif folder is not None:
        warnings.append(f"model.source: {spec.model.source}: no such folder on this machine (fine if it exists "
                        "where the job runs)")
    if not spec.output.uri.startswith(S3_PREFIX):
        try:
            check_output_folder(Path(spec.output.uri))
        except OutputError as error:
            (warnings if Path(given.output.uri).is_absolute() else errors).append(str(error))
    return errors, warnings


def relative_path_warnings(spec: PEFTJobSpec) -> list[str]:
    """Local relative paths work for `peftjob run` only: a cluster pod has none of them."""
    paths = {"model.source": spec.model.source if local_model_path(spec.model.source) else None,
             "data.train.source": spec.data.train.source,
             "data.eval.source": spec.data.eval.source if spec.data.eval else None,
             "output.uri": spec.output.uri}
    return [
        f"{field}: {value!r} is a relative local path: fine for `peftjob run`, absent in a cluster pod "
        "(use s3:// or a path on a volume the pod mounts)"
        for field, value in paths.items()
        if value and not value.startswith(S3_PREFIX) and not Path(value).expanduser().is_absolute()
    ]


# ----------------------------------------------------------------------------------------------- output


def check_output(spec: PEFTJobSpec, name: str) -> None:
    """output.uri takes a write: a probe object under the job's prefix is written and deleted again. A list
    first, so an unreachable store fails after the short read budget rather than the long write one."""
    from .storage import open_storage

    uri = spec.output.uri
    if not uri.startswith(S3_PREFIX):
        check_output_folder(Path(uri))
    probe = f"{name}/{PROBE_PREFIX}{uuid.uuid4().hex}"
    try:
        storage = open_storage(uri, spec.output.s3_endpoint_url)
        storage.list(probe)
        storage.write_bytes(f"{probe}/probe", b"")
        storage.delete(probe)
    except OutputError as error:
        raise OutputError(f"output.uri: {error}") from None


def check_output_folder(path: Path) -> None:
    """A local output folder can be created and written: its nearest existing ancestor is a folder that takes
    a file (a temporary one, removed at once: nothing is left behind, so `validate` may call this too)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"output.uri: {path}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=PROBE_PREFIX):
            pass
    except OSError as error:
        raise OutputError(f"output.uri: {path}: cannot write in {existing}: {error.strerror}") from None


# ------------------------------------------------------------------------------------------------ model


def given_source(job: PEFTJob) -> str:
    """model.source as the user wrote it (`./model`), before a local run joined it to the YAML's folder."""
    return job.metadata.annotations.get(MODEL_SOURCE_GIVEN, job.spec.model.source)


def local_model_path(source: str, given: str | None = None) -> Path | None:
    """model.source as a local path, or None for an s3:// prefix or a hub id (a name that is no path here).
    `given` is the source as written, whose form (`./x`, `/x`, `a/b/c`) says "path" when `source` is missing."""
    if source.startswith(S3_PREFIX):
        return None
    path = Path(source).expanduser()
    if path.exists() or not HUB_ID.match(given or source):
        return path
    return None


def model_config(spec: PEFTJobSpec, source: str, given: str | None = None) -> dict[str, Any]:
    """The backbone's config as a dict, after checking a local folder's files; a hub id's through
    transformers (config.json only: from the hub cache or the hub)."""
    folder = local_model_path(source, given)
    if folder is not None:
        return check_model_folder(folder, spec.model.task, spec.model.source)
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(
            source, revision=spec.model.revision, trust_remote_code=spec.model.trust_remote_code
        )
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(
            f"model.source: {source!r} is neither a local folder nor a model on the hub (or in its cache): {first}"
        ) from None
    return config.to_dict()


def check_model_folder(folder: Path, task: str, shown: str) -> dict[str, Any]:
    """A saved model: config.json, weights, and the tokenizer (text) or image processor (images) the task
    needs. Returns the config. `shown` is model.source as the user wrote it."""
    where = f"model.source: {shown}"
    if not folder.exists():
        raise ModelError(f"{where}: no such folder")
    if not folder.is_dir():
        raise ModelError(f"{where}: is a file; expected a folder holding a saved model (config.json and weights)")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{where}: no {CONFIG_FILE}: not a saved Hugging Face model") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{where}: {CONFIG_FILE} is not readable JSON: {error}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{where}: {CONFIG_FILE} is not a JSON object")
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise ModelError(f"{where}: no weights (model.safetensors or pytorch_model.bin)")
    needed = IMAGE_PROCESSOR_FILES if task == "image-classification" else TOKENIZER_FILES
    if not any((folder / name).is_file() for name in needed):
        what = "image processor" if task == "image-classification" else "tokenizer"
        raise ModelError(
            f"{where}: no {what} files (none of {', '.join(needed)}): save the {what} with the model "
            f"({'image_processor' if what == 'image processor' else 'tokenizer'}.save_pretrained(folder))"
        )
    return config


def check_model_fits(spec: PEFTJobSpec, config: dict[str, Any]) -> None:
    """model.task fits the model type, and data.maxLength fits its positions."""
    task, shown = spec.model.task, spec.model.source
    model_type = str(config.get("model_type", ""))
    vision = "image_size" in config
    if task == "causal-lm" and model_type in ENCODER_ONLY_TYPES:
        raise ModelError(
            f"model.task: causal-lm needs a decoder, but {shown} is a {model_type} encoder (model_type "
            f"{model_type!r}): use a decoder (gpt2, llama, qwen2, ...) or task sequence-classification"
        )
    if task == "image-classification" and not vision:
        raise ModelError(f"model.task: image-classification needs a vision model, but {shown} is a text model "
                         f"(model_type {model_type!r})")
    if task != "image-classification" and vision:
        raise ModelError(f"model.task: {task} needs a text model, but {shown} is a vision model "
                         f"(model_type {model_type!r}): use task image-classification")
    if task == "image-classification":
        return
    limit = position_limit(config)
    needed, virtual = positions_needed(spec)
    if limit is not None and needed > limit:
        extra = f" plus {virtual} virtual tokens of method.{spec.method.name}" if virtual else ""
        default = "" if "max_length" in spec.data.model_fields_set else " (the default)"
        raise SpecError(
            f"data.maxLength: {spec.data.max_length} tokens{default}{extra} exceed the {limit} positions of {shown} "
            f"({model_type or 'its config'}): set maxLength to at most {limit - virtual}"
        )


def position_limit(config: dict[str, Any]) -> int | None:
    """How many token positions the model has (its position embeddings' size), if its config says."""
    limit = next((config[key] for key in POSITION_KEYS if isinstance(config.get(key), int)), None)
    if limit is not None and config.get("model_type") in PADDED_POSITION_TYPES:
        limit -= int(config.get("pad_token_id") or 0) + 1
    return limit


def positions_needed(spec: PEFTJobSpec) -> tuple[int, int]:
    """(positions, of which virtual): maxLength plus the tokens a prompt method puts before the input.
    Prefix-Tuning's prefixes occupy positions too (the input's are shifted past them); a P-Tuning template
    holds its pseudo tokens inside maxLength."""
    method = spec.method
    virtual = 0
    if method.name in PREPENDING_METHODS and not (method.name == "pTuning" and method.p_tuning.template):
        virtual = method.config.num_virtual_tokens
    return spec.data.max_length + virtual, virtual


# ----------------------------------------------------------------------------------------------- device


def check_precision(spec: PEFTJobSpec) -> None:
    """The mixed precision DeepSpeed would run (spec, `auto`, or the raw config) is one this machine's
    DeepSpeed accelerator supports: the same test DeepSpeed applies when it builds the engine, asked first.
    (On CPUs, bf16 works; fp16 only where oneDNN supports it, e.g. with AMX-FP16.)"""
    from .api.deepspeed_config import deepspeed_config, precision

    config = deepspeed_config(spec)
    wanted = next((kind for kind in ("fp16", "bf16") if config.get(kind, {}).get("enabled")), None)
    if wanted is None:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # what distributed.init chooses, before DeepSpeed's import
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.is_fp16_supported() if wanted == "fp16" else accelerator.is_bf16_supported():
        return
    if spec.training.precision == wanted:
        field = "training.precision"
    elif precision(spec) == wanted:
        field = "training.precision (auto, with workers.gpusPerWorker > 0)"
    else:
        field = f"deepspeed.config.{wanted}"
    raise SpecError(
        f"{field}: {wanted} is not supported on this machine's {accelerator.device_name()} accelerator: "
        f"use {'bf16 or ' if wanted == 'fp16' and accelerator.is_bf16_supported() else ''}fp32"
    )


def gpu_problem(spec: PEFTJobSpec, visible: int, in_pod: bool) -> str | None:
    """GPUs asked for against GPUs visible. None when they fit; a warning for `peftjob run` (training goes on,
    on the CPU); a SpecError in a pod, whose node was asked for them and should have given them."""
    workers = spec.workers
    if workers.gpus_per_worker == 0:
        return None
    if visible == 0:
        message = (f"workers.gpusPerWorker: {workers.gpus_per_worker} GPU(s) per worker asked for, but "
                   "torch sees none here")
        if in_pod:
            raise SpecError(f"{message}: is workers.image a CUDA build of the trainer, and does the node run "
                            "the NVIDIA device plugin?")
        return f"{message}: training runs on the CPU"
    if workers.processes_per_worker > visible:
        raise SpecError(f"workers.processesPerWorker: {workers.processes_per_worker} ranks per worker, but only "
                        f"{visible} GPU(s) visible: one rank per GPU")
    return None


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()

"""The frozen backbone: from the hub, an s3:// prefix (downloaded once per node) or a local path.

Under ZeRO-3 the weights are partitioned while they load (`HfDeepSpeedConfig` is alive before
`from_pretrained`, so transformers builds the model inside `deepspeed.zero.Init`): no rank ever holds the
whole backbone. Everything is frozen here; the PEFT method decides what trains.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from .api.spec import PEFTJobSpec
from .api.deepspeed_config import precision
from .errors import ModelError
from .storage import S3_PREFIX, open_storage

CACHE_ENV = "PEFTJOB_CACHE_DIR"
COMPLETE_MARKER = ".peftjob-complete"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Backbone:
    """The loaded model and the ZeRO-3 config object that must stay alive with it."""

    model: Any
    zero3_config: Any


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "peftjob")


def local_source(spec: PEFTJobSpec, endpoint_url: str | None) -> str:
    """A local path (s3:// prefixes are downloaded once per node, under a file lock) or a hub id."""
    source = spec.model.source
    if not source.startswith(S3_PREFIX):
        return source
    target = cache_dir() / "models" / hashlib.sha256(source.encode()).hexdigest()[:16]
    target.parent.mkdir(parents=True, exist_ok=True)
    # The first local rank downloads; the others wait on the lock and find the completion marker.
    with FileLock(str(target) + ".lock"):
        if not (target / COMPLETE_MARKER).exists():
            storage = open_storage(source, endpoint_url)
            files = storage.list("")
            if not files:
                raise ModelError(f"model.source: {source}: no files under this prefix")
            for key in files:
                storage.get_file(key, target / key)
            (target / COMPLETE_MARKER).touch()
    return str(target)


def load_preprocessor(spec: PEFTJobSpec, source: str) -> tuple[Any, Any]:
    """(tokenizer, None) for text tasks, (None, image processor) for images: cheap, so data is checked early."""
    import transformers

    model_spec = spec.model
    try:
        if model_spec.task == "image-classification":
            return None, transformers.AutoImageProcessor.from_pretrained(source, revision=model_spec.revision)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, revision=model_spec.revision)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(f"model.source: cannot load a tokenizer or processor from {source!r}: {error}") from None
    check_vocabulary(tokenizer, model_spec.source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, None


def check_vocabulary(tokenizer: Any, shown: str) -> None:
    """A tokenizer with words in it. transformers builds one from config.json alone when the vocabulary files
    are missing (a hub repo or s3:// prefix saved without them): only special tokens, every word [UNK], and a
    job that "succeeds" at chance accuracy."""
    specials = set(tokenizer.all_special_ids)
    if len(tokenizer) <= len(specials):
        raise ModelError(
            f"model.source: {shown}: the tokenizer has no vocabulary beyond its {len(specials)} special tokens "
            "(its vocabulary files are missing): every word would become one unknown token; save the tokenizer "
            "with the model"
        )


def load_backbone(spec: PEFTJobSpec, source: str, ds_config: dict[str, Any], pad_token_id: int | None) -> Backbone:
    """Load, partition (ZeRO-3) and freeze the backbone for the spec's task."""
    import transformers
    from transformers.integrations import HfDeepSpeedConfig

    model_spec = spec.model
    zero3 = HfDeepSpeedConfig(ds_config) if ds_config["zero_optimization"]["stage"] == 3 else None
    kwargs: dict[str, Any] = {
        "revision": model_spec.revision,
        "trust_remote_code": model_spec.trust_remote_code,
        "dtype": DTYPES.get(model_spec.dtype, PRECISION_DTYPES[precision(spec)]),
    }
    if model_spec.task == "causal-lm":
        auto = transformers.AutoModelForCausalLM
    elif model_spec.task == "sequence-classification":
        auto = transformers.AutoModelForSequenceClassification
        kwargs["num_labels"] = model_spec.num_labels
    else:
        auto = transformers.AutoModelForImageClassification
        kwargs.update(num_labels=model_spec.num_labels, ignore_mismatched_sizes=True)
    try:
        model = auto.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(f"model.source: cannot load {source!r} for task {model_spec.task}: {error}") from None
    model.requires_grad_(False)
    if spec.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # With a frozen backbone no input needs a gradient; this makes the checkpointed blocks backprop anyway.
        model.enable_input_require_grads()
    if pad_token_id is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    return Backbone(model, zero3)

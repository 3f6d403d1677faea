"""Writing and reading a method's files: ours (always) and `peft`'s layout (for the methods peft knows).

A saved method is a folder with
  peftjob_method.json        method name, its hyperparameters, task, peftjob version, class names
  trainable.safetensors      the full trainable state (enough to resume training)
  adapter_config.json        }  only when the method exports to peft: the files
  adapter_model.safetensors  }  `peft.PeftModel.from_pretrained` reads
Under ZeRO-3 every rank gathers (a collective) and rank 0 writes.

Class names live in peftjob_method.json only: peft 0.21 loads an adapter_config.json with keys it does not know,
but warns that it was saved by a newer peft and should be upgraded, which would mislead every user.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .params import StateMismatch
from .zero import is_writer

METHOD_FILE = "peftjob_method.json"
STATE_FILE = "trainable.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
SAFETENSORS_METADATA = {"format": "pt"}


def peftjob_version() -> str:
    """The installed peftjob version, recorded with every saved method."""
    try:
        return version("peftjob")
    except PackageNotFoundError:
        return "unknown"


CLASSIFICATION_TASKS = ("sequence-classification", "image-classification")


def method_record(method: str, config: dict[str, Any], task: str, labels: list[str] | None = None) -> dict[str, Any]:
    """The content of peftjob_method.json (pure); `labels` are the class names in label order."""
    record = {"method": method, "config": config, "task": task, "peftjobVersion": peftjob_version()}
    return record | ({"labels": labels} if labels is not None else {})


def class_labels(model: Any, task: str) -> list[str] | None:
    """A classifier's class names in label order, from its config's id2label (None for other tasks)."""
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if task not in CLASSIFICATION_TASKS or not id2label:
        return None
    return [id2label[index] for index in sorted(id2label)]


def name_classes(model: Any, labels: list[str]) -> None:
    """Set a model's class names (config id2label/label2id), as transformers' pipelines show them."""
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: index for index, name in enumerate(labels)}


def write_method(
    directory: Path,
    record: dict[str, Any],
    state: dict[str, Any],
    export: tuple[dict[str, Any], dict[str, Any]] | None,
) -> list[Path]:
    """Write a method's files into `directory` on the writing rank; returns their paths (the same on every rank)."""
    files = [directory / METHOD_FILE, directory / STATE_FILE]
    if export is not None:
        files += [directory / PEFT_CONFIG_FILE, directory / PEFT_WEIGHTS_FILE]
    if not is_writer():
        return files
    directory.mkdir(parents=True, exist_ok=True)
    (directory / METHOD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    save_file(state, str(directory / STATE_FILE), metadata=SAFETENSORS_METADATA)
    if export is not None:
        peft_config, peft_weights = export
        (directory / PEFT_CONFIG_FILE).write_text(json.dumps(peft_config, indent=2) + "\n")
        save_file(peft_weights, str(directory / PEFT_WEIGHTS_FILE), metadata=SAFETENSORS_METADATA)
    return files


def read_record(directory: Path) -> dict[str, Any]:
    """peftjob_method.json, or a StateMismatch saying what is wrong with it."""
    path = directory / METHOD_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise StateMismatch(f"{path}: not found (not a saved peftjob method)") from None
    except json.JSONDecodeError as error:
        raise StateMismatch(f"{path}: not valid JSON ({error})") from None
    if not isinstance(record, dict) or not {"method", "config", "task"} <= set(record):
        raise StateMismatch(f"{path}: needs the keys method, config and task")
    return record


def read_state(directory: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """The trainable state in `directory`, after checking it holds the `expected` method, config and task."""
    record = read_record(directory)
    for key in ("method", "task", "config"):
        if record[key] != expected[key]:
            raise StateMismatch(
                f"{directory / METHOD_FILE}: {key} is {record[key]!r} but the attached method has {expected[key]!r}"
            )
    path = directory / STATE_FILE
    try:
        return load_file(str(path))
    except (FileNotFoundError, SafetensorError) as error:
        raise StateMismatch(f"{path}: cannot read trainable state ({error})") from None

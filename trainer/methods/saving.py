"""Writing and reading a method's files: ours (always) and `peft`'s layout (for the methods peft knows).

A saved method is a folder with
  peftjob_method.json        method name, its hyperparameters, task, peftjob version
  trainable.safetensors      the full trainable state (enough to resume training)
  adapter_config.json        }  only when the method exports to peft: the files
  adapter_model.safetensors  }  `peft.PeftModel.from_pretrained` reads
Under ZeRO-3 every rank gathers (a collective) and rank 0 writes.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .params import StateMismatch
from .zero import is_writer

if TYPE_CHECKING:
    from .base import PeftMethod

METHOD_FILE = "peftjob_method.json"
STATE_FILE = "trainable.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
SAFETENSORS_METADATA = {"format": "pt"}
PEFT_TASK_TYPES = {"causal-lm": "CAUSAL_LM", "sequence-classification": "SEQ_CLS"}
"""Our task -> peft's task_type (peft has none for image classification: the head goes in modules_to_save)."""


def peftjob_version() -> str:
    """The installed peftjob version, recorded with every saved method."""
    try:
        return version("peftjob")
    except PackageNotFoundError:
        return "unknown"


def method_record(method: PeftMethod) -> dict[str, Any]:
    """The content of peftjob_method.json (pure)."""
    return {
        "method": method.spec_name,
        "config": method.config.model_dump(mode="json", by_alias=True),
        "task": method.task,
        "peftjobVersion": peftjob_version(),
    }


def save_method(method: PeftMethod, model: Any, directory: Path) -> list[Path]:
    """Write the method's files into `directory`; returns their paths (the same on every rank)."""
    state = method.trainable_state(model)
    export = method.peft_export(model)
    files = [directory / METHOD_FILE, directory / STATE_FILE]
    if export is not None:
        files += [directory / PEFT_CONFIG_FILE, directory / PEFT_WEIGHTS_FILE]
    if not is_writer():
        return files
    directory.mkdir(parents=True, exist_ok=True)
    (directory / METHOD_FILE).write_text(json.dumps(method_record(method), indent=2) + "\n")
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


def load_method(method: PeftMethod, model: Any, directory: Path) -> None:
    """Check that `directory` holds this method with the same config and task, then load its state."""
    record = read_record(directory)
    expected = method_record(method)
    for key in ("method", "task", "config"):
        if record[key] != expected[key]:
            raise StateMismatch(
                f"{directory / METHOD_FILE}: {key} is {record[key]!r} but the attached method has {expected[key]!r}"
            )
    path = directory / STATE_FILE
    try:
        state = load_file(str(path))
    except (FileNotFoundError, SafetensorError) as error:
        raise StateMismatch(f"{path}: cannot read trainable state ({error})") from None
    method.load_trainable_state(model, state)

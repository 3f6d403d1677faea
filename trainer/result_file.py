"""Writes the trainer's result (peftjob_trainer.api.result.TrainerResult) where the operator reads it: the pod's
termination message (and the file `peftjob run` prints)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .api.result import TrainerResult
from .api.contract import ENV_RESULT_FILE, RESULT_PATH

TERMINATION_MESSAGE_LIMIT = 4096
log = logging.getLogger(__name__)


def result_path() -> Path:
    """Where to write: PEFTJOB_RESULT_FILE, else the pod's termination log."""
    return Path(os.environ.get(ENV_RESULT_FILE) or RESULT_PATH)


def write_result(result: TrainerResult) -> None:
    """Write `result` as compact JSON within Kubernetes' 4 KiB termination-message limit (never raises).

    Only an error message can be long; it is cut, keeping its start, so the JSON stays whole and parseable."""
    text = result.to_json()
    if len(text) > TERMINATION_MESSAGE_LIMIT and result.error:
        keep = TERMINATION_MESSAGE_LIMIT - len(text) + len(result.error) - 20
        text = result.model_copy(update={"error": result.error[: max(keep, 0)] + " ..."}).to_json()
    path = result_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        log.warning("cannot write the result to %s: %s", path, error)


def error_result(message: str, exit_code: int) -> TrainerResult:
    """The result of a run that failed with a message the user can act on."""
    return TrainerResult(error=message, exit_code=exit_code)

"""The small result the operator reads from the pod's termination message (and `peftjob run` prints)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .contract import ENV_RESULT_FILE, RESULT_PATH

TERMINATION_MESSAGE_LIMIT = 4096
log = logging.getLogger(__name__)


def result_path() -> Path:
    """Where to write: PEFTJOB_RESULT_FILE, else the pod's termination log."""
    return Path(os.environ.get(ENV_RESULT_FILE) or RESULT_PATH)


def write_result(result: dict[str, Any]) -> None:
    """Write `result` as compact JSON within Kubernetes' 4 KiB termination-message limit (never raises)."""
    text = json.dumps(result, separators=(",", ":"), sort_keys=True)
    if len(text) > TERMINATION_MESSAGE_LIMIT and "error" in result:
        keep = TERMINATION_MESSAGE_LIMIT - len(text) + len(result["error"]) - 20
        text = json.dumps({**result, "error": result["error"][: max(keep, 0)] + " ..."}, separators=(",", ":"))
    path = result_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        log.warning("cannot write the result to %s: %s", path, error)


def error_result(message: str, exit_code: int) -> dict[str, Any]:
    """The result of a run that failed with a message the user can act on."""
    return {"error": message, "exitCode": exit_code}

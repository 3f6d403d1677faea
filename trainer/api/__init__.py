"""The PEFTJob API: pure pydantic, importable without torch (the operator depends on this and nothing else)."""

from .load import InvalidSpec, load_file, load_object, load_text
from .result import ProgressReport, TrainerResult
from .spec import (
    API_GROUP,
    API_VERSION,
    KIND,
    METHOD_NAMES,
    METHOD_TASKS,
    PLURAL,
    PEFTJob,
    PEFTJobSpec,
    worker_pod_name,
)
from .status import Condition, PEFTJobStatus

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "KIND",
    "METHOD_NAMES",
    "METHOD_TASKS",
    "PLURAL",
    "Condition",
    "InvalidSpec",
    "PEFTJob",
    "PEFTJobSpec",
    "PEFTJobStatus",
    "ProgressReport",
    "TrainerResult",
    "load_file",
    "load_object",
    "load_text",
    "worker_pod_name",
]

"""A PEFTJob run the way a user runs one locally: `peftjob run FILE` in a subprocess, in a work folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.trainer import tiny

RUN = "import sys; from peftjob_trainer.local_run import main; sys.exit(main(sys.argv[1]))"
LAUNCH_TIMEOUT = 600


def launch(workdir: Path, name: str, spec: dict[str, Any], env: dict[str, str]) -> subprocess.Popen[str]:
    """Start job `name` in `workdir`. `env` is added to this process's environment, less any MLflow URI set
    there, so that a job whose test names no tracking gets the embedded store in `workdir`."""
    path = tiny.job(name, spec, workdir / f"{name}.yaml")
    inherited = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen(
        [sys.executable, "-c", RUN, str(path)], cwd=workdir, env={**inherited, **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    """The job's exit code and everything its ranks printed."""
    output, _ = process.communicate(timeout=LAUNCH_TIMEOUT)
    return process.returncode, output

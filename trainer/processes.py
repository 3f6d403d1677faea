"""Start a gang of processes and stop it as one: the first failure stops the rest (DeepSpeed cannot lose a rank).

Torch-free: `peftjob run` and the pod entry point's launcher both use it before any rank imports torch.
Each process gets its own process group so a stop reaches its children too (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence

from .api.contract import EXIT_OK, is_retryable

STOP_GRACE_SECONDS = 10.0
POLL_SECONDS = 0.2


def start(command: Sequence[str], env: dict[str, str], cwd: str | None = None) -> subprocess.Popen[bytes]:
    """Start `command` in a new session (its own process group)."""
    return subprocess.Popen(list(command), env=env, cwd=cwd, start_new_session=True)


def exit_code(returncode: int) -> int:
    """A Popen return code as a shell would report it: death by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def gang_exit_code(codes: Sequence[int]) -> int:
    """One exit code for the gang: a user error wins (retrying will not fix it), then the first failure."""
    failures = [code for code in codes if code != EXIT_OK]
    user = [code for code in failures if not is_retryable(code)]
    return (user or failures or [EXIT_OK])[0]


def stop(processes: Sequence[subprocess.Popen[bytes]], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM every process group still running, then SIGKILL what is left after `grace` seconds."""
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


def supervise(processes: Sequence[subprocess.Popen[bytes]]) -> int:
    """Wait for the gang: all succeed -> 0; one fails -> stop the others and return the gang's exit code.

    Ctrl-C (KeyboardInterrupt) stops every process group and is re-raised for the caller to report.
    """
    try:
        while [process.poll() for process in processes].count(None):  # poll every one: any() would stop early
            failed = [exit_code(p.returncode) for p in processes if p.returncode not in (None, EXIT_OK)]
            if failed:
                stop(processes)
                # Failures seen before the stop come first; the ranks we stopped report SIGTERM after them.
                after = [exit_code(p.returncode) for p in processes]
                return gang_exit_code(failed + after)
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        stop(processes)
        raise
    return gang_exit_code([exit_code(process.returncode) for process in processes])


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass

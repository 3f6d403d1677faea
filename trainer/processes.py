"""Start a gang of processes and stop it as one: the first failure stops the rest (DeepSpeed cannot lose a rank).

Torch-free: `peftjob run` and the pod entry point's launcher both use it before any rank imports torch.
A supervisor outlives its gang: SIGTERM and SIGINT are recorded (`stop_requests`) and passed on to the gang,
which is awaited, so a supervisor never leaves processes running behind it. A stop asks first (the signal
reaches the process, a launcher passes it on to its ranks) and kills later: SIGKILL goes to the whole process
group of a process started in a session of its own, its ranks included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from .api.contract import EXIT_OK, is_retryable

STOP_GRACE_SECONDS = 10.0
POLL_SECONDS = 0.2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def start(
    command: Sequence[str], env: dict[str, str], cwd: str | None = None, new_session: bool = True
) -> subprocess.Popen[bytes]:
    """Start `command`, by default in a new session (its own process group, out of reach of the terminal's
    Ctrl-C, which goes to the supervisor); `new_session=False` keeps it in the caller's group (a launcher's ranks,
    so that a SIGKILL of the launcher's group takes them too)."""
    return subprocess.Popen(list(command), env=env, cwd=cwd, start_new_session=new_session)


def exit_code(returncode: int) -> int:
    """A Popen return code as a shell would report it: death by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def gang_exit_code(codes: Sequence[int]) -> int:
    """One exit code for the gang: a user error wins (retrying will not fix it), then the first failure."""
    failures = [code for code in codes if code != EXIT_OK]
    user = [code for code in failures if not is_retryable(code)]
    return (user or failures or [EXIT_OK])[0]


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Within: SIGTERM and SIGINT are appended to the yielded list instead of ending this process; give the list
    to `supervise`. The previous handlers come back on exit."""
    received: list[int] = []
    previous = {signum: signal.signal(signum, lambda got, _frame: received.append(got)) for signum in STOP_SIGNALS}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop(
    processes: Sequence[subprocess.Popen[bytes]], signum: int = signal.SIGTERM, grace: float | None = STOP_GRACE_SECONDS
) -> None:
    """Send `signum` to every process still running, then SIGKILL what is left after `grace` seconds (None: wait
    as long as they take, for a pod, whose kubelet kills at the end of its own grace period)."""
    for process in processes:
        _signal(process, signum)
    deadline = None if grace is None else time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill(process)
            process.wait()


def supervise(
    processes: Sequence[subprocess.Popen[bytes]], requests: Sequence[int] = (), grace: float | None = STOP_GRACE_SECONDS
) -> int:
    """Wait for the gang: all succeed -> 0; one fails -> stop the others and return the gang's exit code.

    A signal in `requests` (from `stop_requests`) is passed on to the whole gang, which is then given `grace`
    seconds (see `stop`); the gang's exit code follows (130 or 143 from ranks that stopped cleanly).
    """
    while [process.poll() for process in processes].count(None):  # poll every one: any() would stop early
        if requests:
            stop(processes, requests[0], grace)
            break
        failed = [exit_code(p.returncode) for p in processes if p.returncode not in (None, EXIT_OK)]
        if failed:
            stop(processes)
            # Failures seen before the stop come first; the ranks we stopped report SIGTERM after them.
            after = [exit_code(p.returncode) for p in processes]
            return gang_exit_code(failed + after)
        time.sleep(POLL_SECONDS)
    return gang_exit_code([exit_code(process.returncode) for process in processes])


def _signal(process: subprocess.Popen[bytes], signum: int) -> None:
    if process.poll() is None:
        try:
            process.send_signal(signum)
        except ProcessLookupError:
            pass


def _kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process's group when it leads one (a launcher and its ranks), else the process alone."""
    try:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    except ProcessLookupError:
        pass

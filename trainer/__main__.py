"""The pod entry point: `python -m peftjob_trainer --config /etc/peftjob/config.json`.

Under torchrun (RANK set) this process is one rank. Otherwise it is the pod's launcher: with
NPROC_PER_NODE > 1 it starts that many ranks itself (RANK = NODE_RANK * NPROC_PER_NODE + LOCAL_RANK) and
exits with the gang's code; with one it becomes rank NODE_RANK. Exit codes follow `contract`: 0 done,
1-127 the user's to fix (the message goes to the result file too), 128+ retryable.

SIGTERM and SIGINT stop the job cleanly: the launcher passes them on to its ranks and waits for them (the
pod's termination grace period is the kubelet's to enforce); a rank unwinds and exits 128 + the signal.
An infrastructure failure is one line in the log; its traceback goes to a debug file (PEFTJOB_DEBUG_LOG, else
beside the result file), and PEFTJOB_DEBUG=1 logs everything at DEBUG level.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .api.contract import (
    CONFIG_PATH,
    ENV_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_INVALID_SPEC,
    EXIT_OK,
    EXIT_RETRYABLE,
    EXIT_TERMINATED,
    MASTER_PORT,
    RESULT_PATH,
)
from .errors import UserError
from .result_file import error_result, result_path, write_result

ENV_DEBUG = "PEFTJOB_DEBUG"
ENV_DEBUG_LOG = "PEFTJOB_DEBUG_LOG"
STOP_EXIT_CODES = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}
log = logging.getLogger("peftjob")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftjob_trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.environ.get(ENV_CONFIG) or CONFIG_PATH, help="PEFTJob JSON/YAML")
    args = parser.parse_args(argv)
    level = logging.DEBUG if os.environ.get(ENV_DEBUG) == "1" else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s [rank %(rank)s] %(message)s")
    logging.getLogger().handlers[0].addFilter(_RankFilter())
    # DeepSpeed calls torch.distributed functions torch has deprecated, once per collective: keep logs readable.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\..*` is deprecated", category=FutureWarning)
    if "RANK" in os.environ:
        return run_rank(args.config)
    nproc = int(os.environ.get("NPROC_PER_NODE", "1"))
    node_rank = int(os.environ.get("NODE_RANK", "0"))
    world_size = os.environ.get("WORLD_SIZE") or str(nproc * int(os.environ.get("NNODES", "1")))
    if nproc == 1:
        os.environ.update(RANK=str(node_rank), LOCAL_RANK="0", WORLD_SIZE=world_size)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(MASTER_PORT))
        return run_rank(args.config)
    from . import processes

    with processes.stop_requests() as requests:
        ranks = [
            processes.start(
                [sys.executable, "-P", "-m", "peftjob_trainer", "--config", args.config],
                {**os.environ, "RANK": str(node_rank * nproc + local), "LOCAL_RANK": str(local), "WORLD_SIZE": world_size},
                new_session=False,  # in the launcher's process group: a SIGKILL of the group takes them along
            )
            for local in range(nproc)
        ]
        return processes.supervise(ranks, requests, grace=None)


def run_rank(config: str) -> int:
    """Train as this rank; turn every failure into the contract's exit code and a message."""
    from .api import InvalidSpec, load_file

    with _signals_interrupt() as stopped_by:
        try:
            job = load_file(config)
            from .loop import train

            result = train(job)
        except InvalidSpec as invalid:
            message = f"invalid PEFTJob {config}: " + "; ".join(invalid.problems)
            log.error(message)
            write_result(error_result(message, EXIT_INVALID_SPEC))
            return EXIT_INVALID_SPEC
        except KeyboardInterrupt:
            return _stopped(stopped_by[0] if stopped_by else signal.SIGINT)
        except UserError as error:
            log.error("%s", error)
            write_result(error_result(str(error), error.exit_code))
            return error.exit_code
        except Exception as error:  # noqa: BLE001 (anything else is infrastructure: the gang is retried)
            if stopped_by:  # a peer that stopped first broke a collective before this rank's signal was handled
                return _stopped(stopped_by[0])
            return _infrastructure_failure(error)
    if result is not None:
        write_result(result)
    return EXIT_OK


@contextmanager
def _signals_interrupt() -> Iterator[list[int]]:
    """Within: SIGTERM, like SIGINT, raises KeyboardInterrupt in the main thread, so training unwinds (and closes
    what it opened) instead of dying mid-step; the yielded list records which signal it was. A repeat while
    unwinding is ignored: the supervisor's SIGKILL after its grace period is the backstop."""
    received: list[int] = []

    def interrupt(signum: int, _frame: object) -> None:
        if not received:
            received.append(signum)
            raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in STOP_EXIT_CODES}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stopped(signum: int) -> int:
    """A clean stop: retryable (a disruption, not a failure of the job), 128 + the signal as a shell reports it."""
    code = STOP_EXIT_CODES[signum]
    message = f"stopped by {signal.Signals(signum).name}: a rerun resumes from the last checkpoint"
    log.warning(message)
    write_result(error_result(message, code))
    return code


def _infrastructure_failure(error: Exception) -> int:
    """One line for the user (the error's outermost message: a chain of botocore and urllib3 errors says nothing
    more to them), the traceback in the debug log."""
    summary = error_summary(error)
    log.error("training failed (retryable, exit %d): %s (%s)", EXIT_RETRYABLE, summary, _save_traceback(error))
    log.debug("traceback", exc_info=error)
    write_result(error_result(summary, EXIT_RETRYABLE))
    return EXIT_RETRYABLE


def error_summary(error: BaseException) -> str:
    """`Type: first line of the message`, of the outermost exception only."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def debug_log_path() -> Path:
    """PEFTJOB_DEBUG_LOG, else beside the result file, one per rank (a pod's result file is its termination log
    under /dev: then the temporary folder)."""
    if os.environ.get(ENV_DEBUG_LOG):
        return Path(os.environ[ENV_DEBUG_LOG])
    result = result_path()
    folder = Path(tempfile.gettempdir()) if str(result) == RESULT_PATH else result.parent
    return folder / f"{result.name}.rank{os.environ.get('RANK', '0')}.traceback"


def _save_traceback(error: BaseException) -> str:
    """Append the traceback of `error` to the debug log; says where it went (or why it could not)."""
    path = debug_log_path()
    header = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} rank {os.environ.get('RANK', '0')}\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as debug_log:
            debug_log.write(header + "".join(traceback.format_exception(error)))
    except OSError as problem:
        return f"traceback not saved to {path}: {problem}; {ENV_DEBUG}=1 logs it"
    return f"traceback in {path}"


class _RankFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = os.environ.get("RANK", "-")
        return True


if __name__ == "__main__":
    sys.exit(main())

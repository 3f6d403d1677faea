"""The pod entry point: `python -m peftjob_trainer --config /etc/peftjob/config.json`.

Under torchrun (RANK set) this process is one rank. Otherwise it is the pod's launcher: with
NPROC_PER_NODE > 1 it starts that many ranks itself (RANK = NODE_RANK * NPROC_PER_NODE + LOCAL_RANK) and
exits with the gang's code; with one it becomes rank NODE_RANK. Exit codes follow `contract`: 0 done,
1-127 the user's to fix (the message goes to the result file too), 128+ retryable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Sequence

from .api.contract import CONFIG_PATH, ENV_CONFIG, EXIT_INVALID_SPEC, EXIT_OK, EXIT_RETRYABLE, MASTER_PORT
from .errors import UserError
from .result_file import error_result, write_result

log = logging.getLogger("peftjob")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftjob_trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.environ.get(ENV_CONFIG) or CONFIG_PATH, help="PEFTJob JSON/YAML")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [rank %(rank)s] %(message)s")
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

    ranks = [
        processes.start(
            [sys.executable, "-P", "-m", "peftjob_trainer", "--config", args.config],
            {**os.environ, "RANK": str(node_rank * nproc + local), "LOCAL_RANK": str(local), "WORLD_SIZE": world_size},
        )
        for local in range(nproc)
    ]
    try:
        return processes.supervise(ranks)
    except KeyboardInterrupt:
        return 130


def run_rank(config: str) -> int:
    """Train as this rank; turn every failure into the contract's exit code and a message."""
    from .api import InvalidSpec, load_file

    try:
        job = load_file(config)
    except InvalidSpec as invalid:
        message = f"invalid PEFTJob {config}: " + "; ".join(invalid.problems)
        log.error(message)
        write_result(error_result(message, EXIT_INVALID_SPEC))
        return EXIT_INVALID_SPEC
    try:
        from .loop import train

        result = train(job)
    except UserError as error:
        log.error("%s", error)
        write_result(error_result(str(error), error.exit_code))
        return error.exit_code
    except Exception as error:  # noqa: BLE001 (anything else is infrastructure: the gang is retried)
        log.error("training failed: %s\n%s", error, traceback.format_exc())
        write_result(error_result(f"{type(error).__name__}: {error}", EXIT_RETRYABLE))
        return EXIT_RETRYABLE
    if result is not None:
        write_result(result)
    return EXIT_OK


class _RankFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = os.environ.get("RANK", "-")
        return True


if __name__ == "__main__":
    sys.exit(main())

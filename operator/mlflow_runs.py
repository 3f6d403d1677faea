"""The operator's MLflow calls: closing a job's run with the truth when the trainer could not.

A trainer closes its own run; the operator closes it when no trainer will (the job was deleted mid-training,
or the gang failed for good). Plain REST through aiohttp, so the operator image needs no MLflow client; every
call is best effort and bounded by a timeout, so a down MLflow never blocks a reconcile or a deletion.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

TIMEOUT_SECONDS = 10.0
logger = logging.getLogger(__name__)


def closable(tracking_uri: str | None, run_id: str | None) -> bool:
    """Only a run on an MLflow server can be closed from here (a local sqlite store is the trainer's)."""
    return bool(run_id and tracking_uri and tracking_uri.startswith("http"))


async def close_run(tracking_uri: str, run_id: str, status: str) -> bool:
    """Set a RUNNING run to `status` (KILLED, FAILED); True when this call closed it, False otherwise."""
    api = tracking_uri.rstrip("/") + "/api/2.0/mlflow/runs"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)) as session:
            async with session.get(f"{api}/get", params={"run_id": run_id}) as response:
                run = await response.json(content_type=None)
            if (run.get("run") or {}).get("info", {}).get("status") != "RUNNING":
                return False
            update = {"run_id": run_id, "status": status, "end_time": int(time.time() * 1000)}
            async with session.post(f"{api}/update", json=update) as response:
                response.raise_for_status()
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
        logger.warning("could not mark MLflow run %s %s: %s", run_id, status, error)
        return False
    return True

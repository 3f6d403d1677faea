"""Prometheus metrics: jobs by phase, gang restarts, reconcile latency (served on /metrics).

The phase gauge is derived from what the reconciles observed; it is for dashboards only and never read back
as state (state lives in each PEFTJob's status).
"""

from __future__ import annotations

from collections import Counter as Tally
from wsgiref.simple_server import WSGIServer

from peftjob_trainer.api.status import PHASES
from prometheus_client import Counter, Gauge, Histogram, start_http_server

JOBS = Gauge("peftjob_jobs", "PEFTJobs seen by this operator, by phase.", ["phase"])
RESTARTS = Counter("peftjob_gang_restarts_total", "Gang restarts after retryable worker failures.")
RECONCILE_SECONDS = Histogram(
    "peftjob_reconcile_seconds",
    "Time to reconcile one PEFTJob (read, decide, act).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


class PhaseBook:
    """The last phase of each job (by uid), mirrored into the JOBS gauge."""

    def __init__(self) -> None:
        self._phases: dict[str, str] = {}

    def record(self, uid: str, phase: str | None) -> None:
        if phase is None:
            self._phases.pop(uid, None)
        else:
            self._phases[uid] = phase
        tally = Tally(self._phases.values())
        for name in PHASES:
            JOBS.labels(phase=name).set(tally.get(name, 0))


def serve(port: int, addr: str = "0.0.0.0") -> WSGIServer:
    """Expose /metrics (a daemon thread of prometheus_client); the server is returned so tests can stop it."""
    server, _ = start_http_server(port, addr)
    return server

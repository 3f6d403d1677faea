"""`python -m peftjob_operator`: run the operator with settings from the environment.

Watches all namespaces, or those in PEFTJOB_NAMESPACES. Several replicas are safe: kopf peering keeps exactly
one active (the others wait), so the chart can run two for availability.
"""

from __future__ import annotations

import asyncio
import logging

import kopf

from . import metrics
from .handlers import Memo, build_registry
from .settings import OperatorSettings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = OperatorSettings.from_env()
    metrics.serve(settings.metrics_port)
    asyncio.run(
        kopf.operator(
            registry=build_registry(settings),
            memo=Memo(settings),
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            peering_name=settings.peering_name,
            liveness_endpoint=f"http://0.0.0.0:{settings.liveness_port}/healthz",
        )
    )


if __name__ == "__main__":
    main()

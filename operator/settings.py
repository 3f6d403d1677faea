"""The operator's configuration, read once from its environment (the Helm chart sets these variables).

Everything a cluster admin decides (which image trains, which namespaces are watched, where MLflow and S3 live
by default) is here, so handlers and rendering take it as an argument instead of reading the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "PEFTJOB_"


class OperatorSettings(BaseModel):
    """Cluster-wide defaults; a PEFTJob's own fields win over them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trainer_image: str = Field("ghcr.io/peftjob/trainer:0.1.0", min_length=1)
    namespaces: tuple[str, ...] = Field((), description="Namespaces to watch; empty: all namespaces.")
    mlflow_tracking_uri: str | None = Field(None, description="Used when a job names no MLflow server.")
    s3_endpoint_url: str | None = Field(None, description="Used when a job names no S3 endpoint.")
    s3_credentials_secret: str | None = Field(
        None, description="Secret (in the job's namespace) with the S3 key pair, when a job names none."
    )
    progress_interval: float = Field(10.0, gt=0, description="Seconds between progress polls and time checks.")
    metrics_port: int = Field(9090, ge=1, le=65535, description="Prometheus /metrics.")
    liveness_port: int = Field(8080, ge=1, le=65535, description="kopf's liveness endpoint /healthz.")
    peering_name: str = Field("peftjob-operator", min_length=1, description="kopf peering: one active replica.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        """Read PEFTJOB_<FIELD> variables (e.g. PEFTJOB_TRAINER_IMAGE, PEFTJOB_NAMESPACES=a,b)."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is None or raw == "":
                continue
            if name == "namespaces":
                values[name] = tuple(part.strip() for part in raw.split(",") if part.strip())
            else:
                values[name] = raw
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(map(str, item['loc'])).upper()}: {item['msg']}" for item in error.errors()
            )
            raise ValueError(f"invalid operator settings: {problems}") from None

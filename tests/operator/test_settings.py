"""OperatorSettings.from_env: what the Helm chart's environment variables turn into, and clear errors."""

from __future__ import annotations

import pytest

from peftjob_operator.settings import OperatorSettings


def test_defaults_without_any_variable() -> None:
    settings = OperatorSettings.from_env({})
    assert settings == OperatorSettings()
    assert settings.namespaces == () and settings.metrics_port == 9090


def test_every_variable_is_read_and_typed() -> None:
    settings = OperatorSettings.from_env({
        "PEFTJOB_TRAINER_IMAGE": "registry.local/trainer:1.2",
        "PEFTJOB_NAMESPACES": " team-a, team-b ,,",
        "PEFTJOB_MLFLOW_TRACKING_URI": "http://mlflow.ml:5000",
        "PEFTJOB_S3_ENDPOINT_URL": "http://minio.ml:9000",
        "PEFTJOB_S3_CREDENTIALS_SECRET": "s3-creds",
        "PEFTJOB_PROGRESS_INTERVAL": "2.5",
        "PEFTJOB_METRICS_PORT": "9191",
        "PEFTJOB_LIVENESS_PORT": "8181",
        "PEFTJOB_PEERING_NAME": "peft-peering",
        "PEFTJOB_EMPTY_IS_IGNORED": "",
        "UNRELATED": "x",
    })
    assert settings.trainer_image == "registry.local/trainer:1.2"
    assert settings.namespaces == ("team-a", "team-b")
    assert settings.mlflow_tracking_uri == "http://mlflow.ml:5000"
    assert settings.s3_endpoint_url == "http://minio.ml:9000" and settings.s3_credentials_secret == "s3-creds"
    assert settings.progress_interval == 2.5 and settings.metrics_port == 9191 and settings.liveness_port == 8181
    assert settings.peering_name == "peft-peering"


def test_an_empty_variable_keeps_the_default() -> None:
    assert OperatorSettings.from_env({"PEFTJOB_TRAINER_IMAGE": ""}).trainer_image == OperatorSettings().trainer_image


@pytest.mark.parametrize(("variable", "value"), [
    ("PEFTJOB_PROGRESS_INTERVAL", "0"),
    ("PEFTJOB_PROGRESS_INTERVAL", "soon"),
    ("PEFTJOB_METRICS_PORT", "70000"),
])
def test_a_bad_value_is_a_clear_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ValueError) as error:
        OperatorSettings.from_env({variable: value})
    assert variable in str(error.value) and "invalid operator settings" in str(error.value)

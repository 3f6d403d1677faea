"""The checked-in CRD is the one generated from the API model, and Kubernetes accepts it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from peftjob_trainer.api.crd import crd, crd_yaml

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "crds" / "peftjob.yaml"


def test_checked_in_crd_matches_the_api_model() -> None:
    assert CHECKED_IN.read_text() == crd_yaml(), "crds/peftjob.yaml is stale: run `make crd`"


def test_crd_validates_as_apiextensions_v1_for_kubernetes_1_35() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "-k", "1.35.0", "--strict", str(CHECKED_IN)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout + result.stderr


def _walk(node: dict[str, Any], path: str = ""):  # noqa: ANN202 - yields (path, schema node)
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural() -> None:
    """Every node is typed (or int-or-string) and no JSON-Schema-only construct survived the conversion."""
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        for forbidden in ("$ref", "anyOf", "oneOf", "const", "title"):
            assert forbidden not in node, f"{path} still has {forbidden}"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_crd_names_printer_columns_and_status() -> None:
    spec = crd()["spec"]
    assert spec["names"]["shortNames"] == ["pj"] and spec["names"]["plural"] == "peftjobs"
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Method", "Model", "Progress", "Loss", "Age"]


def test_cel_rule_enforces_exactly_one_method() -> None:
    method = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["method"]
    rule = method["x-kubernetes-validations"][0]["rule"]
    for name in method["properties"]:
        assert f"has(self.{name})" in rule
    assert rule.endswith(".filter(x, x).size() == 1")


def test_crd_yaml_round_trips() -> None:
    assert yaml.safe_load(CHECKED_IN.read_text()) == crd()

"""Generate the PEFTJob CustomResourceDefinition from the pydantic models.

pydantic emits JSON Schema 2020-12; Kubernetes wants a structural OpenAPI v3.0 schema. The conversion inlines
references, turns `X | None` into X, `str | int` into int-or-string, numeric exclusive bounds into the v3.0
boolean form, and free-form objects into `x-kubernetes-preserve-unknown-fields`.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from .spec import API_GROUP, API_VERSION, KIND, PLURAL, PEFTJobSpec
from .status import PEFTJobStatus

DROP = {"title", "$defs"}


def openapi_schema(model: type) -> dict[str, Any]:
    """The structural OpenAPI v3.0 schema of a pydantic model, as Kubernetes accepts it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(raw, raw.get("$defs", {}))


def _convert(node: Any, defs: dict[str, Any]) -> Any:
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        target.update(node)  # field-level description/default win over the model's
        return _convert(target, defs)
    for key in ("anyOf", "oneOf"):
        if key in node:
            options = [option for option in node.pop(key) if option.get("type") != "null"]
            types_ = {option.get("type") for option in options}
            if len(options) == 1:
                merged = _convert(options[0], defs)
                merged.update({k: v for k, v in node.items() if k not in DROP})
                return _convert(merged, defs)
            if types_ <= {"string", "integer"}:
                node["x-kubernetes-int-or-string"] = True
            else:
                node["x-kubernetes-preserve-unknown-fields"] = True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if bound in node and not isinstance(node[bound], bool):
            node["minimum" if bound == "exclusiveMinimum" else "maximum"] = node[bound]
            node[bound] = True
    extra = node.get("additionalProperties")
    if extra is True or extra == {}:
        node.pop("additionalProperties")
        node["x-kubernetes-preserve-unknown-fields"] = True
    elif node.get("type") == "object" and "properties" not in node and extra is None:
        node["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("additionalProperties") is False:
        node.pop("additionalProperties")
    if node.get("x-kubernetes-preserve-unknown-fields") and "type" not in node:
        node["type"] = "object"
    if node.get("x-kubernetes-int-or-string"):
        node.pop("type", None)
    if node.get("default") is None:
        node.pop("default", None)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROP:
            continue
        if key == "properties":
            out[key] = {name: _convert(schema, defs) for name, schema in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _convert(value, defs)
        else:
            out[key] = value
    return out


def crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
    status = openapi_schema(PEFTJobStatus)
    status["x-kubernetes-preserve-unknown-fields"] = True  # kopf keeps its handler progress under status
    schema = {
        "type": "object",
        "description": "A parameter-efficient fine-tuning job run by a gang of DeepSpeed workers.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": openapi_schema(PEFTJobSpec),
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{API_GROUP}",
            "labels": {"app.kubernetes.io/name": "peftjob", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["pj"],
                "categories": ["all", "ml", "peft"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Method", "type": "string", "jsonPath": ".status.method"},
                        {"name": "Model", "type": "string", "jsonPath": ".spec.model.source"},
                        {"name": "Progress", "type": "string", "jsonPath": ".status.progress.percent"},
                        {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as checked in at crds/peftjob.yaml (and in the Helm chart)."""
    header = "# Generated from the pydantic API model by `peftjob crd`. Do not edit by hand.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)

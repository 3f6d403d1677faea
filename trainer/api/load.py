"""Turn user input into a PEFTJob, or into a list of problems that each name a field and a reason.

Whatever the input (malformed YAML, several documents, a list, wrong kind, unknown fields, wrong types), the
result is a `PEFTJob` or an `InvalidSpec` with `path.to.field: reason` lines: never a traceback.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .spec import API_GROUP, API_VERSION, KIND, PEFTJob


class InvalidSpec(ValueError):
    """A PEFTJob that cannot be accepted; `problems` holds one `field: reason` line per problem."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        super().__init__("; ".join(problems))


def load_file(path: str | Path) -> PEFTJob:
    """Read and validate one PEFTJob file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidSpec([f"{path}: cannot read: {error.__class__.__name__}: {error}"], str(path)) from None
    try:
        return load_text(text)
    except InvalidSpec as invalid:
        raise InvalidSpec(invalid.problems, str(path)) from None


def load_text(text: str) -> PEFTJob:
    """Parse YAML (or JSON) holding exactly one PEFTJob and validate it."""
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise InvalidSpec([f"(document): malformed YAML: {where}{problem}"]) from None
    if not documents:
        raise InvalidSpec(["(document): empty: expected one PEFTJob"])
    if len(documents) > 1:
        raise InvalidSpec([f"(document): {len(documents)} YAML documents found: expected exactly one PEFTJob"])
    return load_object(documents[0])


def load_object(data: Any) -> PEFTJob:
    """Validate an already-parsed object (from YAML, or a Kubernetes API body)."""
    if not isinstance(data, dict):
        raise InvalidSpec([f"(document): expected a mapping, got {_type_name(data)}"])
    header = _header_problems(data)
    if header:
        raise InvalidSpec(header)
    try:
        return PEFTJob.model_validate(data)
    except ValidationError as error:
        raise InvalidSpec(format_errors(error, PEFTJob)) from None
    except (TypeError, ValueError, RecursionError) as error:
        raise InvalidSpec([f"(document): {error}"]) from None


def _header_problems(data: dict[str, Any]) -> list[str]:
    """Wrong kind or apiVersion make every other message noise, so they are reported alone."""
    problems = []
    expected = f"{API_GROUP}/{API_VERSION}"
    if data.get("apiVersion") != expected:
        problems.append(f"apiVersion: expected {expected}, got {data.get('apiVersion')!r}")
    if data.get("kind") != KIND:
        problems.append(f"kind: expected {KIND}, got {data.get('kind')!r}")
    return problems


def format_errors(error: ValidationError, root: type[BaseModel]) -> list[str]:
    """pydantic errors as `path.to.field: reason`, with a suggestion for misspelt field names."""
    lines = []
    for item in error.errors(include_url=False):
        loc = tuple(part for part in item["loc"] if not _is_union_tag(part))
        path = _dotted(loc)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field" + _suggestion(root, loc)
        elif item["type"] == "missing":
            message = "required field is missing"
        lines.append(f"{path}: {message}" if path else message)
    return sorted(_merge_union_alternatives(dict.fromkeys(lines)))


def _merge_union_alternatives(lines: Iterable[str]) -> list[str]:
    """`x: Input should be a valid integer` + `x: ... valid string` -> `x: Input should be a valid integer or string`."""
    merged: dict[str, list[str]] = {}
    out = []
    prefix = "Input should be a valid "
    for line in lines:
        path, _, message = line.partition(": ")
        if message.startswith(prefix) and "," not in message:
            if path not in merged:
                merged[path] = []
                out.append(path)
            merged[path].append(message.removeprefix(prefix))
        else:
            out.append(line)
    return [f"{item}: {prefix}{' or '.join(merged[item])}" if item in merged else item for item in out]


def _dotted(loc: Iterable[Any]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _is_union_tag(part: Any) -> bool:
    """pydantic adds type names (e.g. 'str', 'function-after[...]') to locations inside unions."""
    return isinstance(part, str) and (
        part in {"str", "int", "float", "bool", "list", "dict"} or "[" in part
    )


def _suggestion(root: type[BaseModel], loc: tuple[Any, ...]) -> str:
    model = _model_at(root, loc[:-1])
    if model is None:
        return ""
    known = [field.alias or name for name, field in model.model_fields.items()]
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (known: {', '.join(sorted(known))})"


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """Follow a location through the model's field annotations to the model that owns its last part."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            args = typing.get_args(current)
            current = args[0] if args else None
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = next(
            (f for name, f in current.model_fields.items() if part in (name, f.alias)),
            None,
        )
        if field is None:
            return None
        current = field.annotation
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """`X | None` -> X."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        rest = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def _type_name(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )

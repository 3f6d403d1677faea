"""Training and evaluation data: read (jsonl, csv, parquet, image folders; local or s3://), check and encode.
Which examples each rank reads, and how they are batched, is batching.py's.

Every problem in the data is a DataError naming the file and the line (or row, or image) and what is wrong,
so the user fixes it instead of reading a traceback; its exit code is in the contract's user range.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api.spec import DataSource, DataSpec, PEFTJobSpec
from .errors import DataError
from .templates import template_input_ids
from .tokens import IGNORE_INDEX

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
Fetch = Callable[[str], Path]
"""Turns a source (local path or s3:// URI) into a local path, downloading when needed."""


@dataclass(frozen=True)
class Record:
    """One raw example and where it came from ("train.jsonl:12"), for error messages."""

    values: dict[str, Any]
    where: str


def fetcher(scratch: Path, endpoint_url: str | None) -> Fetch:
    """A Fetch that downloads s3:// files (or image-folder prefixes) into `scratch` and passes paths through."""
    from .storage import S3_PREFIX, open_storage

    def fetch(source: str) -> Path:
        if not source.startswith(S3_PREFIX):
            return Path(source)
        parent, _, name = source.rstrip("/").rpartition("/")
        storage = open_storage(parent, endpoint_url)
        target = scratch / name
        keys = storage.list(name)
        for key in keys or [name]:
            storage.get_file(key, scratch / key)
        return target

    return fetch


def data_format(source: DataSource, local: Path) -> str:
    """The explicit format, else from the extension; a folder is an image folder."""
    if source.format:
        return source.format
    if local.is_dir():
        return "imagefolder"
    suffix = local.suffix.lower()
    formats = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
    if suffix not in formats:
        raise DataError(f"{source.source}: cannot tell the format from {suffix or 'no extension'!r}: set format")
    return formats[suffix]


def read_records(source: DataSource, fetch: Fetch) -> list[Record]:
    """All records of a data source, each with its file and line; an empty source is an error."""
    local = fetch(source.source)
    if not local.exists():
        raise DataError(f"{source.source}: no such file or folder")
    kind = data_format(source, local)
    name = source.source
    if kind == "jsonl":
        records = list(_jsonl(local, name))
    elif kind == "csv":
        with local.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            records = [Record(dict(row), f"{name}:{reader.line_num}") for row in reader]
    elif kind == "parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(local).to_pylist()
        except Exception as error:  # noqa: BLE001 (pyarrow raises many kinds for a bad file)
            raise DataError(f"{name}: not a readable parquet file: {error}") from None
        records = [Record(row, f"{name}: row {index + 1}") for index, row in enumerate(rows)]
    else:
        records = _image_folder(local, name)
    if not records:
        raise DataError(f"{name}: empty: no examples found")
    return records


def _jsonl(path: Path, name: str) -> Iterator[Record]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{name}:{number}: not valid JSON: {error.msg}") from None
            if not isinstance(value, dict):
                raise DataError(f"{name}:{number}: expected a JSON object, got {type(value).__name__}")
            yield Record(value, f"{name}:{number}")


def _image_folder(root: Path, name: str) -> list[Record]:
    """root/<class>/<image>: classes are the sorted sub-folder names."""
    classes = sorted(child.name for child in root.iterdir() if child.is_dir())
    return [
        Record({"image": str(path), "label": label}, f"{name}/{cls}/{path.name}")
        for label, cls in enumerate(classes)
        for path in sorted((root / cls).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]


# ------------------------------------------------------------------------------------------------ encoding


def encode(records: list[Record], spec: PEFTJobSpec, tokenizer: Any, processor: Any) -> list[dict[str, Any]]:
    """Model inputs for every record: token ids (and loss masks) for text, pixel values for images."""
    task, data = spec.model.task, spec.data
    if task == "image-classification":
        return [_image_example(record, data, spec.model.num_labels or 0, processor) for record in records]
    template = spec.method.p_tuning.template if spec.method.p_tuning else None
    if task == "sequence-classification":
        return [
            _classification_example(record, data, spec.model.num_labels or 0, tokenizer, template)
            for record in records
        ]
    return [_causal_example(record, data, tokenizer, template) for record in records]


def _templated(text: str, template: str, tokenizer: Any, max_length: int) -> list[int]:
    """A P-Tuning template around the input: pseudo-token markers and discrete prompt text in place."""
    try:
        return template_input_ids(tokenizer, template, text, max_length)
    except ValueError as error:
        raise DataError(str(error)) from None


def _field(record: Record, field: str, kind: type = str) -> Any:
    if field not in record.values or record.values[field] is None:
        raise DataError(f"{record.where}: missing field {field!r}")
    value = record.values[field]
    if kind is str and not isinstance(value, str):
        raise DataError(f"{record.where}: field {field!r} must be text, got {type(value).__name__}")
    return value


def _label(record: Record, field: str, num_labels: int) -> int:
    value = _field(record, field, int)
    try:
        label = int(value)
    except (TypeError, ValueError):
        raise DataError(f"{record.where}: field {field!r} must be an integer class, got {value!r}") from None
    if isinstance(value, bool) or label != float(value) or not 0 <= label < num_labels:
        raise DataError(
            f"{record.where}: label {value!r} out of range: model.numLabels is {num_labels} (labels 0-{num_labels - 1})"
        )
    return label


def _classification_example(
    record: Record, data: DataSpec, num_labels: int, tokenizer: Any, template: str | None
) -> dict[str, Any]:
    text = _field(record, data.text_field)
    pair = _field(record, data.text_pair_field) if data.text_pair_field else None
    if template is not None:
        ids = _templated(text if pair is None else f"{text} {pair}", template, tokenizer, data.max_length)
    else:
        ids = tokenizer(text, pair, truncation=True, max_length=data.max_length)["input_ids"]
    return {"input_ids": ids, "labels": _label(record, data.label_field, num_labels)}


def _causal_example(record: Record, data: DataSpec, tokenizer: Any, template: str | None) -> dict[str, Any]:
    if data.prompt_field and data.completion_field:
        prompt_text = _field(record, data.prompt_field)
        if template is not None:
            prompt = _templated(prompt_text, template, tokenizer, data.max_length)
        else:
            prompt = tokenizer(prompt_text)["input_ids"]
        completion = tokenizer(_field(record, data.completion_field), add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            completion = completion + [tokenizer.eos_token_id]
        ids = (prompt + completion)[: data.max_length]
        shown = [IGNORE_INDEX if token < 0 else token for token in prompt]  # pseudo-token markers never count
        masked = [IGNORE_INDEX] * len(prompt) + completion if data.mask_prompt else shown + completion
        labels = masked[: data.max_length]
    elif template is not None:
        ids = _templated(_field(record, data.text_field), template, tokenizer, data.max_length)
        labels = [IGNORE_INDEX if token < 0 else token for token in ids]
    else:
        ids = tokenizer(_field(record, data.text_field), truncation=True, max_length=data.max_length)["input_ids"]
        labels = list(ids)
    if all(label == IGNORE_INDEX for label in labels[1:]):
        raise DataError(f"{record.where}: nothing to learn: the completion is empty or truncated by maxLength")
    return {"input_ids": ids, "labels": labels}


def _image_example(record: Record, data: DataSpec, num_labels: int, processor: Any) -> dict[str, Any]:
    from PIL import Image, UnidentifiedImageError

    path = _field(record, data.image_field if data.image_field in record.values else "image")
    try:
        with Image.open(path) as image:
            pixels = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(f"{record.where}: unreadable image {path}: {error}") from None
    return {"pixel_values": pixels, "labels": _label(record, data.label_field, num_labels)}

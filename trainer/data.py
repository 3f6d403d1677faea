"""Training and evaluation data: read (jsonl, csv, parquet, image folders; local or s3://), check and encode.
Which examples each rank reads, and how they are batched, is batching.py's.

Every problem in the data is a DataError naming the file and the line (or row, or image) and what is wrong,
so the user fixes it instead of reading a traceback; its exit code is in the contract's user range.

Classes are named once, by the training split (`class_names`), and every split's labels are mapped by name to
that one list: an eval split that lacks a class must not shift the others' indices.
"""

from __future__ import annotations

import csv
import functools
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
    class_folder: str | None = None
    """The image folder's class sub-folder the example lies in (None for tabular data): its label, by name."""


def fetcher(scratch: Path, endpoint_url: str | None) -> Fetch:
    """A Fetch that downloads s3:// files (or image-folder prefixes) into `scratch` and passes paths through."""
    from .storage import S3_PREFIX, open_storage

    @functools.cache  # a source is read, then digested for the lineage: downloaded once
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
    """root/<class>/<image>: the label is the class folder's name (its index is the training split's to fix)."""
    classes = sorted(child.name for child in root.iterdir() if child.is_dir())
    return [
        Record({"image": str(path), "label": cls}, f"{name}/{cls}/{path.name}", class_folder=cls)
        for cls in classes
        for path in sorted((root / cls).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]


# ------------------------------------------------------------------------------------------------ classes


def class_names(spec: PEFTJobSpec, train: list[Record]) -> list[str] | None:
    """The classes' names in label order, fixed by the training split: data.labelNames, else the training image
    folder's class folders, sorted; None where nothing names them (integer labels, causal LM)."""
    data, num_labels = spec.data, spec.model.num_labels
    folders = sorted({record.class_folder for record in train if record.class_folder is not None})
    if data.label_names is not None:
        for folder in folders:
            if folder not in data.label_names:
                raise DataError(
                    f"{data.train.source}/{folder}: class folder {folder!r} is not in data.labelNames "
                    f"({', '.join(data.label_names)})"
                )
        return list(data.label_names)
    if not folders:
        return None
    if len(folders) != num_labels:
        hint = ": name every class, in label order, in data.labelNames" if len(folders) < (num_labels or 0) else ""
        raise DataError(
            f"{data.train.source}: {len(folders)} class folders ({', '.join(folders)}) but model.numLabels is "
            f"{num_labels}{hint}"
        )
    return folders


def _unknown_class(spec: PEFTJobSpec) -> str:
    """What a label outside the known classes is, for error messages ("not in data.labelNames")."""
    if spec.data.label_names is not None:
        return "not in data.labelNames"
    return f"not a class of the training split {spec.data.train.source}"


# ------------------------------------------------------------------------------------------------ encoding


def encode(
    records: list[Record], spec: PEFTJobSpec, tokenizer: Any, processor: Any, train: list[Record] | None = None
) -> list[dict[str, Any]]:
    """Model inputs for every record: token ids (and loss masks) for text, pixel values for images.

    Labels are mapped to the classes `train` (the training split's records) names; by default `records` are
    the training split."""
    task, data = spec.model.task, spec.data
    if task == "causal-lm":
        template = spec.method.p_tuning.template if spec.method.p_tuning else None
        return [_causal_example(record, data, tokenizer, template) for record in records]
    classes = class_names(spec, records if train is None else train)
    labels = Labels(data.label_field, spec.model.num_labels or 0, classes, _unknown_class(spec))
    if task == "image-classification":
        return [_image_example(record, data, labels, processor) for record in records]
    template = spec.method.p_tuning.template if spec.method.p_tuning else None
    return [_classification_example(record, data, labels, tokenizer, template) for record in records]


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


@dataclass(frozen=True)
class Labels:
    """How a record's label becomes a class index: by name where the classes are named, else as an integer."""

    field: str
    num_labels: int
    names: list[str] | None
    unknown: str
    """What a name outside `names` is, for messages ("not in data.labelNames")."""

    def index(self, record: Record) -> int:
        """The record's class index, or a DataError naming the record, the value and the known classes."""
        if record.class_folder is not None:
            return self._folder_index(record)
        value = _field(record, self.field, int)
        if self.names is not None and isinstance(value, str) and value in self.names:
            return self.names.index(value)
        try:
            label = int(value)
        except (TypeError, ValueError):
            raise DataError(self._not_a_class(record, value)) from None
        if isinstance(value, bool) or label != float(value) or not 0 <= label < self.num_labels:
            raise DataError(
                f"{record.where}: label {value!r} out of range: model.numLabels is {self.num_labels} "
                f"(labels 0-{self.num_labels - 1})"
            )
        return label

    def _folder_index(self, record: Record) -> int:
        folder = record.where.rsplit("/", 1)[0]
        if self.names is None:
            raise DataError(f"{folder}: class folder {record.class_folder!r} cannot be mapped to a class index: "
                            "the training split names no classes; name them in label order in data.labelNames")
        if record.class_folder not in self.names:
            raise DataError(
                f"{folder}: class folder {record.class_folder!r} is {self.unknown} ({', '.join(self.names)})"
            )
        return self.names.index(record.class_folder)

    def _not_a_class(self, record: Record, value: Any) -> str:
        if self.names is not None and isinstance(value, str):
            return f"{record.where}: label {value!r} is {self.unknown} ({', '.join(self.names)})"
        hint = ": to use text labels, name the classes in label order in data.labelNames"
        return f"{record.where}: field {self.field!r} must be an integer class, got {value!r}" + (
            hint if isinstance(value, str) else "")


def _classification_example(
    record: Record, data: DataSpec, labels: Labels, tokenizer: Any, template: str | None
) -> dict[str, Any]:
    text = _field(record, data.text_field)
    pair = _field(record, data.text_pair_field) if data.text_pair_field else None
    if template is not None:
        ids = _templated(text if pair is None else f"{text} {pair}", template, tokenizer, data.max_length)
    else:
        ids = tokenizer(text, pair, truncation=True, max_length=data.max_length)["input_ids"]
    return {"input_ids": ids, "labels": labels.index(record)}


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


def _image_example(record: Record, data: DataSpec, labels: Labels, processor: Any) -> dict[str, Any]:
    from PIL import Image, UnidentifiedImageError

    label = labels.index(record)  # an unknown class folder fails before its images are read
    path = _field(record, data.image_field if data.image_field in record.values else "image")
    try:
        with Image.open(path) as image:
            pixels = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(f"{record.where}: unreadable image {path}: {error}") from None
    return {"pixel_values": pixels, "labels": label}

"""Where checkpoints and adapters go: a local folder or an s3:// prefix (any S3-compatible endpoint).

Keys are relative to the root URI. Credentials come from the environment (the operator injects them from the
output's Secret). botocore retries transient errors with backoff (adaptive mode); checksums are only sent when
a request requires them, which MinIO and other S3-compatible stores accept.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from .errors import UserError

S3_PREFIX = "s3://"
S3_USER_ERRORS = {"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


class Storage(Protocol):
    """The few operations the trainer needs, on keys relative to `uri`."""

    uri: str

    def put_file(self, local: Path, key: str) -> None: ...
    def get_file(self, key: str, local: Path) -> None: ...
    def read_bytes(self, key: str) -> bytes | None: ...
    def write_bytes(self, key: str, data: bytes) -> None: ...
    def list(self, prefix: str) -> dict[str, int]: ...
    def delete(self, prefix: str) -> None: ...


def open_storage(uri: str, endpoint_url: str | None = None) -> Storage:
    """A storage for `uri`: s3://bucket/prefix or a local folder."""
    if uri.startswith(S3_PREFIX):
        return S3Storage(uri, endpoint_url)
    return LocalStorage(uri)


def join(*parts: str) -> str:
    """Join key parts with single slashes."""
    return "/".join(part.strip("/") for part in parts if part.strip("/"))


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class LocalStorage:
    """A folder; writes go through a temporary name and a rename so a reader never sees half a file."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.root = Path(uri)

    def _path(self, key: str) -> Path:
        return self.root / key

    def put_file(self, local: Path, key: str) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(local, partial)
        os.replace(partial, target)

    def get_file(self, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(key), local)

    def read_bytes(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.is_file() else None

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, target)

    def list(self, prefix: str) -> dict[str, int]:
        base = self._path(prefix)
        if not base.is_dir():
            return {}
        return {
            path.relative_to(self.root).as_posix(): path.stat().st_size
            for path in base.rglob("*")
            if path.is_file() and not path.name.endswith(".partial")
        }

    def delete(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)


class S3Storage:
    """An s3://bucket/prefix through boto3."""

    def __init__(self, uri: str, endpoint_url: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.uri = uri
        bucket, _, prefix = uri[len(S3_PREFIX) :].partition("/")
        if not bucket:
            raise UserError(f"output.uri: {uri!r} names no bucket (expected s3://bucket/prefix)")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or None,
            region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            config=Config(
                retries={"mode": "adaptive", "max_attempts": 8},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def _key(self, key: str) -> str:
        return join(self.prefix, key)

    def put_file(self, local: Path, key: str) -> None:
        with _s3_errors(self.uri):
            self.client.upload_file(str(local), self.bucket, self._key(key))

    def get_file(self, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        with _s3_errors(self.uri):
            self.client.download_file(self.bucket, self._key(key), str(local))

    def read_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            with _s3_errors(self.uri):
                return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    def write_bytes(self, key: str, data: bytes) -> None:
        with _s3_errors(self.uri):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def list(self, prefix: str) -> dict[str, int]:
        found: dict[str, int] = {}
        root = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        with _s3_errors(self.uri):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=root + "/" if root else ""
            ):
                for item in page.get("Contents", []):
                    found[item["Key"][strip:]] = item["Size"]
        return found

    def delete(self, prefix: str) -> None:
        keys = [{"Key": self._key(key)} for key in self.list(prefix)]
        with _s3_errors(self.uri):
            for start in range(0, len(keys), 1000):
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[start : start + 1000]})


@contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """Turn S3 errors the user must fix (no bucket, bad credentials) into a UserError naming the URI."""
    from botocore.exceptions import ClientError, NoCredentialsError

    try:
        yield
    except NoCredentialsError:
        raise UserError(f"{uri}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)") from None
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in S3_USER_ERRORS:
            raise UserError(f"{uri}: {code}: {error}") from None
        raise

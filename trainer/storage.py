"""Where checkpoints and adapters go: a local folder or an s3:// prefix (any S3-compatible endpoint).

Keys are relative to the root URI. Credentials come from the environment (the operator injects them from the
output's Secret). Checksums are only sent when a request requires them, which MinIO and other S3-compatible
stores accept.

Who must act decides what an error becomes:
- the user's (no bucket, access denied, no credentials, a folder that cannot be written): an OutputError
  naming the URI and the reason, at once, never retried; also when boto3's transfer manager wraps it
  (S3UploadFailedError carries the ClientError's code in its message);
- the store's (unreachable endpoint, timeouts, 5xx, throttling): retried, first by botocore (BOTO_ATTEMPTS
  per call, adaptive mode), then around the whole operation by tenacity with jittered exponential backoff for
  a budget of WRITE_RETRY_SECONDS (300 s) for writes (checkpoint and adapter files, manifests: an outage of
  a few minutes costs no training) and READ_RETRY_SECONDS (60 s) for reads, lists and deletes. Past the budget
  it is a StorageUnavailable (infrastructure: the gang is restarted) saying which endpoint, how many attempts
  and how long. PEFTJOB_S3_RETRY_SECONDS overrides the write budget (and caps the read one), for tests.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_before_delay, wait_random_exponential

from .api.paths import S3_PREFIX
from .errors import OutputError

S3_USER_ERRORS = {
    "NoSuchBucket", "AccessDenied", "AllAccessDisabled", "AccountProblem", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidBucketName", "AuthorizationHeaderMalformed",
    "PermanentRedirect", "403",  # a HEAD request's AccessDenied has no body, only the status
}
S3_TRANSIENT_ERRORS = {
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling", "ThrottlingException",
    "RequestLimitExceeded", "500", "502", "503", "504",
}
LOCAL_USER_ERRNOS = {
    errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.EROFS,
    errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG,
}
WRITE_RETRY_SECONDS = 300.0
READ_RETRY_SECONDS = 60.0
RETRY_SECONDS_ENV = "PEFTJOB_S3_RETRY_SECONDS"
BOTO_ATTEMPTS = 3
RETRY_WAIT_MAX_SECONDS = 15.0
T = TypeVar("T")
log = logging.getLogger(__name__)


class StorageUnavailable(ConnectionError):
    """The store did not answer within the retry budget: infrastructure, so the gang is restarted."""


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


def retry_budgets() -> tuple[float, float]:
    """(write, read) retry budgets in seconds: the module's, or the environment's override."""
    override = os.environ.get(RETRY_SECONDS_ENV)
    write = float(override) if override else WRITE_RETRY_SECONDS
    return write, min(READ_RETRY_SECONDS, write)


class LocalStorage:
    """A folder; writes go through a temporary name and a rename so a reader never sees half a file."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.root = Path(uri)

    def _path(self, key: str) -> Path:
        return self.root / key

    def put_file(self, local: Path, key: str) -> None:
        with _local_errors(self.root, key):
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
        with _local_errors(self.root, key):
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


@contextmanager
def _local_errors(root: Path, key: str) -> Iterator[None]:
    """A folder the user pointed at that cannot be written (under a file, read-only, no permission, full).
    Only errors on the output's own path count: a missing source file is the trainer's bug, not the user's."""
    try:
        yield
    except OSError as error:
        on_output = error.filename is not None and _within(Path(error.filename), root)
        if error.errno not in LOCAL_USER_ERRNOS or not on_output:
            raise
        raise OutputError(f"{root}: cannot write {key}: {error.strerror} ({error.filename})") from None


def _within(path: Path, root: Path) -> bool:
    """`path` is `root`, inside it, or one of the folders above it (which mkdir creates too)."""
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    return path == root or root in path.parents or path in root.parents


class S3Storage:
    """An s3://bucket/prefix through boto3."""

    def __init__(self, uri: str, endpoint_url: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.uri = uri
        bucket, _, prefix = uri[len(S3_PREFIX) :].partition("/")
        if not bucket:
            raise OutputError(f"{uri}: names no bucket (expected s3://bucket/prefix)")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.write_budget, self.read_budget = retry_budgets()
        # A session of its own: boto3's default one caches the credentials it found first, for the process.
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or None,
            region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            config=Config(
                retries={"mode": "adaptive", "max_attempts": BOTO_ATTEMPTS},
                connect_timeout=10,
                read_timeout=60,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self.requests_sent = 0  # counted by botocore's before-send event, retries included, for the messages
        self.client.meta.events.register("before-send", self._count_request)

    def _count_request(self, **_: Any) -> None:
        self.requests_sent += 1

    def _key(self, key: str) -> str:
        return join(self.prefix, key)

    def put_file(self, local: Path, key: str) -> None:
        self._retried(self.write_budget, lambda: self.client.upload_file(str(local), self.bucket, self._key(key)))

    def get_file(self, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        self._retried(self.read_budget, lambda: self.client.download_file(self.bucket, self._key(key), str(local)))

    def read_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self._retried(
                self.read_budget,
                lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read(),
            )
        except ClientError as error:
            if _code(error) in ("NoSuchKey", "404"):
                return None
            raise

    def write_bytes(self, key: str, data: bytes) -> None:
        self._retried(
            self.write_budget, lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        )

    def list(self, prefix: str) -> dict[str, int]:
        root = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0

        def listing() -> dict[str, int]:
            found: dict[str, int] = {}
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=root + "/" if root else ""
            ):
                for item in page.get("Contents", []):
                    found[item["Key"][strip:]] = item["Size"]
            return found

        return self._retried(self.read_budget, listing)

    def delete(self, prefix: str) -> None:
        keys = [{"Key": self._key(key)} for key in self.list(prefix)]
        for start in range(0, len(keys), 1000):
            batch = {"Objects": keys[start : start + 1000]}
            self._retried(self.read_budget, lambda: self.client.delete_objects(Bucket=self.bucket, Delete=batch))

    def _retried(self, budget: float, operation: Callable[[], T]) -> T:
        """`operation`, retried on the store's trouble for `budget` seconds; the user's errors at once."""
        retrying = Retrying(
            stop=stop_before_delay(budget),  # no new attempt would start past the budget
            wait=wait_random_exponential(multiplier=0.5, max=RETRY_WAIT_MAX_SECONDS),
            retry=retry_if_exception(_transient),
            before_sleep=self._log_retry,
            reraise=True,
        )
        started, sent = time.monotonic(), self.requests_sent
        try:
            with _s3_errors(self.uri):
                return retrying(operation)
        except Exception as error:
            if not _transient(error):
                raise
            attempts = self.requests_sent - sent
            state = "unreachable" if _is_connection_error(error) else f"failing ({_code(error)})"
            raise StorageUnavailable(
                f"{self.uri}: endpoint {self.client.meta.endpoint_url} {state} after {attempts} attempts over "
                f"{time.monotonic() - started:.0f} s ({type(error).__name__})"
            ) from None

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s: %s (attempt %d, %.0f s so far): retrying", self.uri, _describe(error), state.attempt_number,
            state.seconds_since_start or 0.0,
        )


def _code(error: BaseException) -> str:
    """The S3 error code of a ClientError, or of the ClientError boto3's transfer manager wrapped."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError

    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    if isinstance(error, S3UploadFailedError):
        if isinstance(error.__context__, ClientError):
            return _code(error.__context__)
        found = re.search(r"An error occurred \(([^)]+)\)", str(error))
        return found.group(1) if found else ""
    return ""


def _is_connection_error(error: BaseException) -> bool:
    from boto3.exceptions import RetriesExceededError
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    return isinstance(error, (BotoConnectionError, HTTPClientError, RetriesExceededError))


def _transient(error: BaseException) -> bool:
    """The store's trouble, worth waiting for: no connection, timeouts, 5xx, throttling."""
    return _is_connection_error(error) or _code(error) in S3_TRANSIENT_ERRORS


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "failed"
    code = _code(error)
    return f"{type(error).__name__} ({code})" if code else type(error).__name__


@contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """Turn S3 errors the user must fix (no bucket, bad credentials) into an OutputError naming the URI."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, NoCredentialsError, ParamValidationError, PartialCredentialsError

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise OutputError(f"{uri}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)") from None
    except ParamValidationError as error:
        raise OutputError(f"{uri}: {error}") from None
    except (ClientError, S3UploadFailedError) as error:
        code = _code(error)
        if code in S3_USER_ERRORS:
            raise OutputError(f"{uri}: {code}: {_reason(error)}") from None
        raise


def _reason(error: Any) -> str:
    """The store's own words: 'The specified bucket does not exist (PutObject)'."""
    from botocore.exceptions import ClientError

    client_error = error if isinstance(error, ClientError) else error.__context__
    if isinstance(client_error, ClientError):
        message = client_error.response.get("Error", {}).get("Message") or "refused"
        return f"{message} ({client_error.operation_name})"
    return str(error)

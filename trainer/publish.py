"""Publishing the final adapter: upload it, then its manifest, then download and verify it.

Layout under the output URI: <job>/adapter/ holds the method's saved files and manifest.json. The manifest's
sha256 is the artifact's identity in the job's status and result.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .manifest import MANIFEST, describe, download_verified
from .storage import Storage, join


def adapter_prefix(job_name: str) -> str:
    return join(job_name, "adapter")


@dataclass(frozen=True)
class PublishedAdapter:
    """Where the adapter went and what it is: the artifact part of the trainer's result."""

    uri: str
    sha256: str  # of manifest.json, which holds every file's own sha256
    bytes: int
    files: list[str]


def publish_adapter(storage: Storage, job_name: str, directory: Path) -> PublishedAdapter:
    """Upload the adapter, then its manifest, then download and verify it; returns where and what it is."""
    prefix = adapter_prefix(job_name)
    storage.delete(prefix)
    files = describe(directory)
    for name in files:
        storage.put_file(directory / name, join(prefix, name))
    manifest = json.dumps({"files": files}, indent=1, sort_keys=True).encode()
    storage.write_bytes(join(prefix, MANIFEST), manifest)
    with tempfile.TemporaryDirectory(prefix="peftjob-verify-") as scratch:
        problem = download_verified(storage, prefix, files, Path(scratch))
    if problem:
        raise OSError(f"adapter upload to {storage.uri} failed verification: {problem}")
    return PublishedAdapter(
        uri=storage.uri.rstrip("/") + "/" + prefix + "/",
        sha256=hashlib.sha256(manifest).hexdigest(),
        bytes=sum(entry["size"] for entry in files.values()),
        files=sorted(files),
    )

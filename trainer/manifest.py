"""A manifest makes a folder in storage complete: {file: sha256, size}, written after every file it lists.

Checkpoints and the published adapter both use it: a reader trusts a folder only when its manifest exists
and every file matches it, so a writer that died half-way leaves nothing anyone would load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .storage import Storage, join, sha256_file

MANIFEST = "manifest.json"


def describe(directory: Path) -> dict[str, dict[str, Any]]:
    """{relative file name: {sha256, size}} for every file under `directory`."""
    return {
        path.relative_to(directory).as_posix(): {"sha256": sha256_file(path), "size": path.stat().st_size}
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def download_verified(storage: Storage, prefix: str, files: dict[str, dict[str, Any]], target: Path) -> str | None:
    """Download `files` and check each against its sha256 and size; returns what is wrong, or None."""
    present = storage.list(prefix)
    for name, expected in files.items():
        if present.get(join(prefix, name)) != expected["size"]:
            return f"{name}: size {present.get(join(prefix, name))} != {expected['size']}"
        storage.get_file(join(prefix, name), target / name)
        if sha256_file(target / name) != expected["sha256"]:
            return f"{name}: sha256 mismatch"
    return None

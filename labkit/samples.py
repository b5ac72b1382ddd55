"""Where the embedded world lives (`data_samples/`) and how to find a file in it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import LabkitError

REPO_ROOT = Path(__file__).resolve().parent.parent


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (MANIFEST.json and the capstone's
    stage markers record files by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_dir() -> Path:
    """$LABKIT_DATA if set, else the repository's `data_samples/`."""
    env = os.environ.get("LABKIT_DATA")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "data_samples"


def labs_dir() -> Path:
    return REPO_ROOT / "labs"


def manifest() -> dict:
    path = data_dir() / "MANIFEST.json"
    if not path.exists():
        raise LabkitError(f"no MANIFEST.json in {data_dir()}; regenerate with `labkit build-samples`")
    return json.loads(path.read_text())


def sample_path(name: str) -> Path:
    """The path of one artifact in data_samples/, or one clear error listing what exists."""
    path = data_dir() / name
    if path.exists():
        return path
    root = data_dir()
    have = sorted(p.relative_to(root).as_posix() for p in root.glob("*")) if root.exists() else []
    shown = ", ".join(have[:20]) + (" ..." if len(have) > 20 else "")
    raise LabkitError(
        f"data_samples file {name!r} not found in {root}; available: {shown or 'nothing'} "
        "(regenerate with `labkit build-samples`)"
    )

"""A content-addressed cache of deterministic artifacts, under the user's cache directory.

A lab that rebuilds the same thing every run (lab 01's pipeline output, a tokenised corpus) can
keep it here: the file name carries a hash of *everything the result depends on* (input files'
bytes, settings, the source code of the functions that compute it, library versions), so a
changed input or a changed function computes a new entry and a stale one is never read. Nothing
is ever written into the repository, and a cache that cannot be written (a read-only home, a
full disk) only costs the recomputation.

Location: $LABKIT_CACHE_DIR, else $XDG_CACHE_HOME/labkit, else ~/.cache/labkit. Set
LABKIT_CACHE_DIR to an empty temporary directory to time a cold run.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import LabkitError

CACHE_ENV = "LABKIT_CACHE_DIR"
FORMAT = 1  # bump when what a cache entry holds changes shape


def cache_dir() -> Path:
    """$LABKIT_CACHE_DIR, else $XDG_CACHE_HOME/labkit, else ~/.cache/labkit."""
    explicit = os.environ.get(CACHE_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "labkit"


def content_key(*parts) -> str:
    """sha256 over the parts, in order: bytes as they are, a Path as its file's bytes, str as
    UTF-8, anything else as its repr (settings dicts, version strings, numbers)."""
    h = hashlib.sha256(f"labkit-cache-{FORMAT}".encode())
    for part in parts:
        if isinstance(part, Path):
            try:
                data = part.read_bytes()
            except OSError as exc:
                raise LabkitError(f"cannot hash {part} for the cache key: {exc}") from exc
        elif isinstance(part, (bytes, bytearray)):
            data = bytes(part)
        elif isinstance(part, str):
            data = part.encode("utf-8")
        else:
            data = repr(part).encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))  # framed: ("ab", "c") != ("a", "bc")
        h.update(data)
    return h.hexdigest()


def source_of(*paths: Path) -> str:
    """The source text of Python files (every .py file of a directory, sorted): a cache entry
    computed by that code changes key whenever the code changes. Paths, not modules, so that
    a cache hit does not pay for importing what only a miss runs."""
    texts = []
    for path in map(Path, paths):
        files = sorted(path.glob("*.py")) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise LabkitError(f"no Python source at {path} to hash for the cache key")
        texts += [f.read_text(encoding="utf-8") for f in files]
    return "\n".join(texts)


def _entry(name: str, key: str, suffix: str) -> Path:
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise LabkitError(f"cache entry name {name!r}; valid: letters, digits, '-' and '_'")
    return cache_dir() / f"{name}-{key[:24]}{suffix}"


def _write_atomically(path: Path, data: bytes) -> bool:
    """Write-then-rename, so a reader never sees half a file; False when it cannot write."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return True
    except OSError:
        return False


def cached_json(name: str, key: str, compute: Callable[[], object]):
    """The JSON-serialisable result of `compute()`, from the cache when an entry for `key`
    exists (gzip'd JSON), else computed and stored. An unreadable entry is recomputed."""
    path = _entry(name, key, ".json.gz")
    try:
        return json.loads(gzip.decompress(path.read_bytes()).decode("utf-8"))
    except (OSError, ValueError, EOFError):
        pass
    value = compute()
    _write_atomically(path, gzip.compress(json.dumps(value).encode("utf-8"), compresslevel=6))
    return value


def cached_array(name: str, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Like cached_json for one numpy array (stored as .npy, loaded without pickle)."""
    path = _entry(name, key, ".npy")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        pass
    value = np.asarray(compute())
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False)
    _write_atomically(path, buffer.getvalue())
    return value

"""Atomic file and folder writes: a killed process never leaves a half-written file in place."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    fd, tmp = _begin(path, lambda: tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # fsync so that the rename cannot expose an empty file after a power cut
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _begin(path: Path, make_temporary: Any) -> Any:
    """The temporary file or folder beside ``path``; a place that cannot be written is an error that
    names ``path`` (the user's word), not the temporary name."""
    from chaiderm.errors import DataError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return make_temporary()
    except OSError as e:
        raise DataError(path, f"cannot be written here ({e.strerror or e})", code="unwritable") from None


def file_digest(path: str | Path, length: int = 24) -> str:
    """A prefix of the file's SHA-256: the same bytes, the same digest, wherever the file lives."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name, then swap it in place of ``path``.

    The old folder (if any) is only removed once the new one is complete.
    """
    path = Path(path).absolute()
    tmp = Path(_begin(path, lambda: tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

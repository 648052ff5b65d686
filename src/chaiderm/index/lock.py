"""One writer at a time per index folder, whoever writes: the server (``POST``/``DELETE /api/archive``),
``chaiderm archive add/remove``, or a second server on the same folder.

A writer takes an exclusive ``flock`` on ``<index>.lock`` beside the folder (never inside it: the folder is
replaced whole on every save), loads the index as it is on disk *now*, changes it, saves it, and only then
lets go. Two writers therefore never both start from the same old index, and the second never overwrites
the first's change with its own stale copy.

Why ``flock``: the kernel releases it when its holder exits, however it exits (kill -9 included), so a crashed
writer never leaves a lock to clear by hand; it belongs to one open file, so two threads of one server that
each open the lock file exclude each other just as two processes do. On NFS, Linux emulates ``flock`` with
byte-range locks (NFSv4, or NFSv3 with lockd); where the filesystem cannot lock at all, the writer refuses
rather than write unguarded.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from chaiderm.errors import ArtifactError
from chaiderm.index.archive import ArchiveIndex

POLL_S = 0.05


class IndexBusyError(ArtifactError):
    """Another writer held the index for longer than this one would wait: nothing was changed."""


def lock_path(index_dir: str | Path) -> Path:
    index_dir = Path(index_dir).absolute()
    return index_dir.parent / f"{index_dir.name}.lock"


@contextlib.contextmanager
def writer_lock(index_dir: str | Path, wait_s: float) -> Iterator[None]:
    """Hold the index's writer lock for the block; :class:`IndexBusyError` after ``wait_s`` seconds of waiting."""
    path = lock_path(index_dir)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError:  # created by another account (the server's, say): locking needs no write access
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ArtifactError(f"{path}: cannot open the index's lock file ({e.strerror})") from None
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise IndexBusyError(
                        f"{Path(index_dir)}: another writer (a `chaiderm archive` command or a server) has been "
                        f"changing this index for over {wait_s:g} s; nothing was changed, try again"
                    ) from None
                time.sleep(POLL_S)
            except OSError as e:
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise ArtifactError(
                        f"{path}: this filesystem cannot lock files ({e.strerror}); the index is not changed "
                        "without a lock"
                    ) from None
                raise
        yield
    finally:
        os.close(fd)  # closing the last descriptor of the open file releases the lock


@contextlib.contextmanager
def open_for_writing(index_dir: str | Path, wait_s: float) -> Iterator[ArchiveIndex]:
    """The index as it is on disk now, under its writer lock: change it, save it over ``index_dir``, all
    inside the block. The one way every writer (server, CLI) changes an index."""
    with writer_lock(index_dir, wait_s):
        yield ArchiveIndex.load(index_dir)

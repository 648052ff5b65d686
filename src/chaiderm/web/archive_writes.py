"""Changing the archive from the server: one case added or removed, under the index's writer lock
(``index.lock``), saved over the index folder with its audit row, then served from the next request on."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from fastapi import HTTPException, Request

from chaiderm.data.diagnoses import NAMES, VOCABULARY, canonical
from chaiderm.data.records import ImageTable
from chaiderm.errors import ArtifactError, ChaidermError, DataError
from chaiderm.index.archive import ArchiveIndex, cases_dir, discard_added_images
from chaiderm.index.lock import IndexBusyError, open_for_writing
from chaiderm.pipeline import add_to_index, to_png_bytes
from chaiderm.web.audit import who
from chaiderm.web.dependencies import ViewerState

# an archive change waits this long for another writer of the index (`chaiderm archive`, another server), then
# answers 503 with Retry-After (``web.errors``): a request thread is not held for a CLI add that may run for minutes
WRITER_WAIT_S = 10.0
log = logging.getLogger("chaiderm.serve")


def _cases_dir(state: ViewerState) -> Path:
    """Where cases added through the server keep their images (``index.archive.cases_dir``)."""
    if state.index_dir is None:
        raise HTTPException(409, detail="this server was not started on an index folder it can change")
    return cases_dir(state.index_dir)


@contextlib.contextmanager
def _writing(state: ViewerState) -> Iterator[ArchiveIndex]:
    """The index as it is on disk now, held under its writer lock for the block: changed from there, not
    from this server's copy, which a `chaiderm archive` command may have overtaken."""
    with contextlib.ExitStack() as stack:
        try:
            index = stack.enter_context(open_for_writing(state.index_dir, WRITER_WAIT_S))
        except IndexBusyError:
            raise
        except ChaidermError as e:
            raise ArtifactError(f"the archive on disk cannot be read: {e}") from None
        yield index


def _save(
    state: ViewerState, request: Request, new: ArchiveIndex, action: str, target: str, status: int, detail: str | None
) -> None:
    """Save ``new`` over the index folder and record the outcome with it: the database is reserved first, so
    one that cannot record refuses the change before it is made (503), and the row follows the save."""
    saved = False
    try:
        with request.app.state.access.audit.change() as record:
            new.save(state.index_dir)
            saved = True
            record(action, **who(request), target=target, status=status, detail=detail)
    except DataError as e:
        if not saved:
            raise
        # the commit after a save failed (disk error): the change stands, the server's log says so
        log.error("%s '%s' was saved but its audit row could not be written: %s", action, target, e)
    except OSError as e:
        raise ArtifactError(f"the archive could not be saved ({e.strerror}); nothing was changed") from None


def _diagnosis(index: ArchiveIndex, raw: str) -> str:
    """A diagnosis the archive already has or the vocabulary knows (canonical name); free text would
    silently become a class of its own in every vote."""
    accepted = sorted(set(index.diagnoses) | set(NAMES))
    try:
        name = canonical(raw)
    except DataError:
        name = ""
    if name not in accepted:
        raise HTTPException(
            422,
            detail=f"diagnosis: {raw!r} is neither a diagnosis of this archive nor one of the vocabulary "
            f"({VOCABULARY}); give one of: {', '.join(accepted)}",
        )
    return name


def _embed_and_save(
    state: ViewerState, request: Request, index: ArchiveIndex, table: ImageTable, image_id: str, diagnosis: str
) -> ArchiveIndex:
    try:
        with state.slot():
            predictor = state.snapshot().predictor
            new, messages = add_to_index(index, predictor.model, predictor.cfg, table)
    except ChaidermError as e:
        raise DataError(None, str(e), code="rejected") from None
    if new is index:
        raise DataError(None, "; ".join(messages) or "nothing was added", code="conflict")
    _save(state, request, new, "archive_add", image_id, 201, diagnosis)
    return new


def add_case(state: ViewerState, request: Request, decoded: np.ndarray, image_id: str, diagnosis: str) -> dict:
    """Add one decoded image as a case; a refused or failed add leaves no image behind."""
    folder = _cases_dir(state)
    path = folder / f"{image_id}.png"
    with state.reload_lock, _writing(state) as index:
        if index.row_of(image_id) is not None:
            raise HTTPException(409, detail=f"the archive already holds a case '{image_id}'")
        diagnosis = _diagnosis(index, diagnosis)
        folder.mkdir(parents=True, exist_ok=True)
        path.write_bytes(to_png_bytes(decoded))  # re-encoded: no metadata of the upload is kept
        table = ImageTable([image_id], [str(path)], [diagnosis], source="added through chaiderm serve")
        try:
            new = _embed_and_save(state, request, index, table, image_id, diagnosis)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        state.adopt(new)
    return {"image_id": image_id, "diagnosis": diagnosis, "archive_size": len(new)}


def remove_case(state: ViewerState, request: Request, image_id: str) -> dict:
    """Remove one case; an image the server stored for it is deleted once the smaller index is saved."""
    _cases_dir(state)
    with state.reload_lock, _writing(state) as index:
        row = index.row_of(image_id)
        if row is None:
            raise HTTPException(404, detail=f"no archive image '{image_id}'")
        if len(index) == 1:
            raise HTTPException(409, detail="the archive's last case cannot be removed")
        try:
            new = index.remove([image_id])
            state.check(new)  # refused if it would leave no case of the positive class
        except ChaidermError as e:
            raise DataError(None, str(e), code="conflict") from None
        _save(state, request, new, "archive_remove", image_id, 200, None)
        state.adopt(new)
        discard_added_images(state.index_dir, [index.paths[row]])
    return {"removed": image_id, "archive_size": len(new)}

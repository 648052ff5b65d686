"""Writes tests/data/server-db-v0.sqlite3: a server database as chaiderm wrote it before the schema had a
version (commit 19834c9, `PRAGMA user_version` 0), so that tests/test_storage.py can check that every row
of such a file is still read after the upgrade in place. The committed file was written by that commit's
code; run with today's code this writes a current database instead (useful to compare, not to replace it).
Only synthetic data: a 4x4 PNG drawn here and made-up names.

    PYTHONPATH=src python tests/data/make_server_db_v0.py tests/data/server-db-v0.sqlite3
"""

from __future__ import annotations

import gc
import io
import sys
from pathlib import Path

from PIL import Image

from chaiderm.data.audit import AuditLog
from chaiderm.data.feedback import FeedbackStore
from chaiderm.web.auth import Sessions, User


def png(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (shade, 255 - shade, 128)).save(buf, format="PNG")
    return buf.getvalue()


def main(out: Path) -> None:
    if out.exists():
        raise SystemExit(f"{out} exists; remove it first")
    store = FeedbackStore(out)
    audit = AuditLog(store)
    sessions = Sessions(store)
    vera = User("vera", "expert", "a-0000000000000000000000000000vera", "c-vera")
    ann = User("ann", "viewer", "a-00000000000000000000000000000ann", "c-ann")

    purged = store.add_query(png(10), owner=vera.account, user=vera.name)
    store.add_feedback(purged, "SYN_train_00001", True, user="vera", role="expert")
    store.add_feedback(purged, "SYN_train_00002", False, user="vera", role="expert")
    assert store.purge(0) == 1  # every image kept so far: only this one
    kept = store.add_query(png(20), owner=vera.account, user=vera.name)
    store.add_query(png(20), owner=ann.account, user=ann.name)  # the same image: one query, two owners
    store.add_feedback(kept, "SYN_train_00003", True, user="vera", role="expert")
    store.add_feedback(kept, "SYN_train_00004", False, user="ann", role="viewer")
    store.add_feedback(kept, "SYN_train_00004", False, user="local", role="local")
    not_kept = store.add_query(png(30), keep_image=False, owner=ann.account, user=ann.name)
    case = store.add_query(png(40), archive_id="SYN_train_00005")  # an archive case queried as itself

    audit.record("sign_in", user="vera", role="expert", address="127.0.0.1", status=200)
    audit.record("query", user="vera", role="expert", address="127.0.0.1", target=kept, status=200)
    audit.record("feedback", user="ann", role="viewer", address="10.0.0.2", target=kept, status=403)
    audit.record("query", user="ann", role="viewer", target=not_kept, status=200, detail="not kept")
    with audit.change() as record:
        record("archive_add", user="cli:test", target="SYN_new_00001", status=201)
    audit.record("purge", user="chaiderm purge", detail="1 query image(s) over 0 days")
    audit.record("view_query", user="admin", role="admin", target=case, status=200)

    sessions.create(vera, "cookie", 12)
    sessions.create(ann, "token", 24)

    # one self-contained file (still in WAL mode, as the server leaves it): closing the last connection
    # checkpoints the log into the file and removes the -wal and -shm files
    del store, audit, sessions, record
    gc.collect()
    assert not out.with_name(out.name + "-wal").exists()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

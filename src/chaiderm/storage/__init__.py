"""The server's database (one SQLite file): stored queries and feedback, the audit log and sign-in
sessions, with a schema version and numbered migrations applied when the file is opened.

    db = Database("chaiderm.db")          # created or upgraded in place
    FeedbackStore(db), AuditLog(db), Sessions(db)   # share its connections
"""

from chaiderm.storage.audit import ACTIONS, AuditLog, Entry, parse_time, to_csv
from chaiderm.storage.database import BUSY_TIMEOUT_S, Database
from chaiderm.storage.feedback import (
    TRAINING_ROLES,
    FeedbackStore,
    FeedbackTriplets,
    content_id,
    read_feedback_triplets,
)
from chaiderm.storage.migrations import MIGRATIONS, SCHEMA_VERSION
from chaiderm.storage.sessions import Session, Sessions

__all__ = [
    "ACTIONS",
    "BUSY_TIMEOUT_S",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TRAINING_ROLES",
    "AuditLog",
    "Database",
    "Entry",
    "FeedbackStore",
    "FeedbackTriplets",
    "Session",
    "Sessions",
    "content_id",
    "parse_time",
    "read_feedback_triplets",
    "to_csv",
]

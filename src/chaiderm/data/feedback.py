"""Moved to chaiderm.storage.feedback (the server's database has one package); importable from here too."""

from chaiderm.storage.database import BUSY_TIMEOUT_S
from chaiderm.storage.feedback import (
    DAY_S,
    TRAINING_ROLES,
    FeedbackStore,
    FeedbackTriplets,
    content_id,
    read_feedback_triplets,
)

__all__ = [
    "BUSY_TIMEOUT_S",
    "DAY_S",
    "TRAINING_ROLES",
    "FeedbackStore",
    "FeedbackTriplets",
    "content_id",
    "read_feedback_triplets",
]

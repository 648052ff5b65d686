"""Errors a user can act on. Every message names the file (or field) at fault."""

from __future__ import annotations

from pathlib import Path


class ChaidermError(Exception):
    """Base class: the CLI prints these without a traceback."""


class DataError(ChaidermError, ValueError):
    """Bad input data: the message starts with the offending path."""

    def __init__(self, path: str | Path | None, problem: str, *, code: str = "invalid"):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.code = code  # machine-readable kind: invalid, missing, empty, not_image, corrupt, too_large
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ArtifactError(ChaidermError):
    """A model run or index on disk is missing, incomplete or inconsistent."""

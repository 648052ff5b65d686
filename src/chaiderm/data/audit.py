"""Moved to chaiderm.storage.audit (the server's database has one package); importable from here too."""

from chaiderm.storage.audit import ACTIONS, COLUMNS, AuditLog, Entry, parse_time, to_csv

__all__ = ["ACTIONS", "COLUMNS", "AuditLog", "Entry", "parse_time", "to_csv"]

"""Filters on archive cases: ``sex = female and age >= 50 and site = 'lower extremity'``.

A filter is clauses joined by ``and``; each clause is ``field op value`` with ``op`` one of
``= != < <= > >=``; fields are ``diagnosis`` and the metadata the archive carries (``age`` compares as a
number, the others as text, case-insensitively); values with spaces go in quotes. Every error names what
was wrong and lists what is valid, since a filter that silently matches nothing looks like an empty archive.
"""

from __future__ import annotations

import operator
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from chaiderm.data.diagnoses import canonical
from chaiderm.errors import DataError
from chaiderm.interfaces import IDENTIFYING

OPS: dict[str, Callable] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
NUMERIC = {"age"}
MAX_LENGTH = 500
SYNTAX = "field op value [and field op value ...], op one of = != < <= > >=, e.g. sex = female and age >= 50"


@dataclass(frozen=True)
class Clause:
    field: str
    op: str
    value: str | float


@dataclass(frozen=True)
class Filter:
    text: str
    clauses: tuple[Clause, ...]

    def mask(self, diagnoses: list[str], metadata: list[dict[str, str]]) -> np.ndarray:
        """``(n,)`` bool: the cases that pass every clause (a case lacking a field fails its clause)."""
        keep = np.ones(len(diagnoses), dtype=bool)
        for c in self.clauses:
            compare = OPS[c.op]
            for i, (d, m) in enumerate(zip(diagnoses, metadata, strict=True)):
                if keep[i]:
                    keep[i] = _passes(d if c.field == "diagnosis" else m.get(c.field), c, compare)
        return keep


def _passes(raw: str | None, c: Clause, compare: Callable) -> bool:
    if raw is None:
        return False
    if c.field in NUMERIC:
        try:
            return bool(compare(float(raw), c.value))
        except ValueError:
            return False
    return bool(compare(raw.strip().lower(), c.value))


def _bad(problem: str) -> DataError:
    return DataError(None, f"--where: {problem}", code="bad_filter")


_CLAUSE = re.compile(r"^\s*([A-Za-z_]+)\s*(!=|<=|>=|=|<|>)\s*(.+?)\s*$", re.S)


def parse_where(text: str, diagnoses: list[str], metadata: list[dict[str, str]]) -> Filter:
    """Parse ``text`` against an archive, whose fields and values make the error messages."""
    if len(text) > MAX_LENGTH:
        raise _bad(f"longer than {MAX_LENGTH} characters")
    fields = {"diagnosis"} | {f for m in metadata for f in m if f not in IDENTIFYING}
    parts = re.split(r"\s+and\s+", text.strip(), flags=re.I)
    return Filter(text, tuple(_clause(part, fields, diagnoses, metadata) for part in parts))


def _clause(part: str, fields: set[str], diagnoses: list[str], metadata: list[dict[str, str]]) -> Clause:
    m = _CLAUSE.match(part)
    if not part.strip() or m is None:
        raise _bad(f"cannot read '{part.strip()}'; write {SYNTAX}")
    field, op, value = m.group(1).lower(), m.group(2), m.group(3)
    if field in IDENTIFYING:
        raise _bad(f"'{field}' identifies a person or lesion and cannot be filtered on")
    if field not in fields:
        raise _bad(f"unknown field '{field}'; this archive has {', '.join(sorted(fields))}")
    word = _one_value(value)
    if field in NUMERIC:
        try:
            return Clause(field, op, float(word))
        except ValueError:
            raise _bad(f"{field} compares as a number, not '{word}'") from None
    return _text_clause(field, op, word, diagnoses, metadata)


def _one_value(value: str) -> str:
    """The clause's value as one word (quotes removed); several words must have been quoted."""
    try:
        words = shlex.split(value)
    except ValueError:
        raise _bad(f"unbalanced quotes in '{value}'") from None
    if len(words) != 1:
        raise _bad(f"'{value}' holds several values; quote a value with spaces")
    return words[0]


def _text_clause(field: str, op: str, word: str, diagnoses: list[str], metadata: list[dict[str, str]]) -> Clause:
    """A text comparison, refused unless some case has the value (a typo would silently match nothing)."""
    if op not in ("=", "!="):
        raise _bad(f"{field} is text; compare it with = or !=, not {op}")
    have = sorted(set(diagnoses) if field == "diagnosis" else {md[field] for md in metadata if field in md})
    value = canonical(word) if field == "diagnosis" else word.lower()
    if value not in {h.lower() for h in have}:
        raise _bad(f"no case has {field} = '{word}'; values: {', '.join(have[:30])}")
    return Clause(field, op, value)

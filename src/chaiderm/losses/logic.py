"""Triplet selection logics (paper sections 2.2-2.3), defined once.

A logic is a list of *criteria*; each criterion says which pairs are similar and which are
dissimilar. A triplet (a, b, c) is valid when, for at least one criterion, a and b are similar
(a != b), and c is dissimilar to both a and b (Eq. 1 uses both D(a, c) and D(b, c)).

- disease:         similar = same disease;                 dissimilar = other disease
- hierarchical:    similar = siblings (same group, which sits under one disease);
                   dissimilar = other disease (cousins, same disease other group, are excluded)
- nonhierarchical: similar = siblings;                     dissimilar = any other group, cousins included
- joint:           the union of the disease criterion and a group criterion over disease-blind
                   groups (similar = same group, dissimilar = other group)

Images without a group (code -1) take part only through the disease relation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Relation = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _same_disease(d1, g1, d2, g2):
    return d1 == d2


def _other_disease(d1, g1, d2, g2):
    return d1 != d2


def _same_group(d1, g1, d2, g2):
    return (g1 == g2) & (g1 >= 0)


def _siblings(d1, g1, d2, g2):
    return (g1 == g2) & (g1 >= 0) & (d1 == d2)


def _other_group(d1, g1, d2, g2):
    return (g1 != g2) & (g1 >= 0) & (g2 >= 0)


@dataclass(frozen=True)
class TripletRule:
    name: str
    criteria: tuple[tuple[Relation, Relation], ...]
    needs_groups: bool
    needs_nested_groups: bool

    def masks(self, disease: np.ndarray, group: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per criterion, ``(similar, dissimilar)`` boolean ``(n, n)`` matrices (diagonal never similar)."""
        d = np.asarray(disease)
        g = np.asarray(group)
        out = []
        for sim, dis in self.criteria:
            s = sim(d[:, None], g[:, None], d[None, :], g[None, :])
            np.fill_diagonal(s, False)
            out.append((s, dis(d[:, None], g[:, None], d[None, :], g[None, :])))
        return out

    def is_valid(self, disease, group, a: int, b: int, c: int) -> bool:
        """Direct check of one triplet: the reference the miners are tested against."""
        d, g = np.asarray(disease), np.asarray(group)
        if a == b:
            return False
        return any(
            bool(sim(d[a], g[a], d[b], g[b]))
            and bool(dis(d[a], g[a], d[c], g[c]))
            and bool(dis(d[b], g[b], d[c], g[c]))
            for sim, dis in self.criteria
        )


LOGIC_RULES: dict[str, TripletRule] = {
    "disease": TripletRule("disease", ((_same_disease, _other_disease),), False, False),
    "hierarchical": TripletRule("hierarchical", ((_siblings, _other_disease),), True, True),
    "nonhierarchical": TripletRule("nonhierarchical", ((_siblings, _other_group),), True, True),
    "joint": TripletRule("joint", ((_same_disease, _other_disease), (_same_group, _other_group)), True, False),
}


def get_rule(name: str) -> TripletRule:
    if name not in LOGIC_RULES:
        raise ValueError(f"unknown triplet logic '{name}'; use one of {sorted(LOGIC_RULES)}")
    return LOGIC_RULES[name]


def encode_labels(values: list[str | None]) -> tuple[np.ndarray, list[str]]:
    """Strings -> int codes (sorted order); None -> -1."""
    names = sorted({v for v in values if v is not None})
    lut = {v: i for i, v in enumerate(names)}
    return np.array([lut[v] if v is not None else -1 for v in values], dtype=np.int64), names

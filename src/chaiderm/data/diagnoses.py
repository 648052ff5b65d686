"""One diagnosis vocabulary: the codings of ISIC 2017, HAM10000 and ISIC 2018-2020 mapped to canonical names.

Labels arrive as ``melanoma``, ``MEL``, ``mel``, ``Melanoma`` or ``malignant melanoma`` depending on the
archive they come from. A model trained on one coding and asked about another would compare strings that
never match and vote 0.000 for every query, silently. Every reader therefore passes diagnoses through
:func:`canonical`, and models and indexes record :data:`VOCABULARY` so a result can be traced to it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from chaiderm.errors import DataError

VOCABULARY = "chaiderm-diagnoses-1"

# canonical name -> the spellings seen in public dermoscopy archives (compared after _key())
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "melanoma": (
        "mel",
        "malignant melanoma",
        "melanoma in situ",
        "melanoma invasive",
        "melanoma, nos",
        "melanoma metastasis",
    ),
    "nevus": ("nv", "naevus", "nevi", "melanocytic nevus", "melanocytic naevus", "nevus melanocytic"),
    "seborrheic_keratosis": ("sk", "seb k", "seborrhoeic keratosis", "seborrheic keratoses"),
    "benign_keratosis": ("bkl", "benign keratosis like lesion", "benign keratosis like lesions", "pbkl"),
    "basal_cell_carcinoma": ("bcc", "basal cell carcinoma"),
    "actinic_keratosis": (
        "ak",
        "akiec",
        "actinic keratoses",
        "actinic keratosis intraepithelial carcinoma",
        "solar or actinic keratosis",
    ),
    "squamous_cell_carcinoma": ("scc", "squamous cell carcinoma"),
    "dermatofibroma": ("df",),
    "vascular_lesion": ("vasc", "vascular lesions", "vascular"),
    "solar_lentigo": ("sl", "lentigo", "solar lentigines"),
    "lichenoid_keratosis": ("lk", "lichenoid keratosis", "lplk"),
    "unknown": ("unk", "other", "none"),
}


# the canonical names: what a diagnosis typed in by hand (``POST /api/archive``) may be, besides the archive's own
NAMES: tuple[str, ...] = tuple(_SYNONYMS)


def _key(raw: str) -> str:
    """Case, spaces, hyphens, underscores and slashes folded, so 'Basal-Cell_Carcinoma' meets 'bcc'."""
    return re.sub(r"[\s_\-/]+", " ", raw.strip().lower()).strip()


_LOOKUP: dict[str, str] = {}
for _name, _spellings in _SYNONYMS.items():
    for _s in (_name, *_spellings):
        _LOOKUP[_key(_s)] = _name


def canonical(raw: str) -> str:
    """The canonical name of a diagnosis; an unlisted one keeps its words, lower case, joined by ``_``.

    >>> canonical("MEL"), canonical("Basal cell carcinoma"), canonical("Blue Nevus")
    ('melanoma', 'basal_cell_carcinoma', 'blue_nevus')
    """
    key = _key(raw)
    if not key:
        raise DataError(None, "empty diagnosis")
    return _LOOKUP.get(key, key.replace(" ", "_"))


def canonical_all(raws: Iterable[str]) -> list[str]:
    return [canonical(r) for r in raws]


def describe(diagnoses: Iterable[str]) -> str:
    """'melanoma (374), nevus (1372)': the diagnoses found, for messages that refuse a class."""
    counts = Counter(diagnoses)
    return ", ".join(f"{d} ({n})" for d, n in sorted(counts.items(), key=lambda x: (-x[1], x[0])))


def require_class(positive_class: str, diagnoses: list[str], where: str) -> str:
    """The canonical positive class, or a :class:`DataError` naming ``where`` and what it has instead.

    A vote for a class the archive lacks is always 0: refusing it is the only honest answer."""
    pos = canonical(positive_class)
    if pos not in set(diagnoses):
        raise DataError(
            where,
            f"positive class '{positive_class}' (read as '{pos}') is not among its diagnoses: "
            f"{describe(diagnoses)}; pick one of them with --positive-class",
            code="invalid",
        )
    return pos

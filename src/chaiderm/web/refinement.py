"""How a query is refined in the viewer: boxes drawn on it, and archive cases marked similar / not similar."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from fastapi import HTTPException

from chaiderm.index.refine import Region, parse_regions


@dataclass(frozen=True)
class Refine:
    """Part of every URL derived from a result (maps included), so a map always explains the ranking shown."""

    regions: tuple[Region, ...] = ()
    similar: tuple[str, ...] = ()
    not_similar: tuple[str, ...] = ()

    @classmethod
    def parse(cls, region: str | None, similar: str | None, not_similar: str | None, side: int) -> Refine:
        """Raises the DataError 'bad_region' of ``index.refine`` for a box that does not fit."""
        regions = tuple(parse_regions(region, side))
        sim, dis = _id_list(similar), _id_list(not_similar)
        if set(sim) & set(dis):
            raise HTTPException(422, detail="a case cannot be marked both similar and not similar")
        return cls(regions, sim, dis)

    def __bool__(self) -> bool:
        return bool(self.regions or self.similar or self.not_similar)

    def params(self) -> dict[str, str]:
        out = {}
        if self.regions:
            out["region"] = ";".join(map(str, self.regions))
        if self.similar:
            out["similar"] = ",".join(self.similar)
        if self.not_similar:
            out["not_similar"] = ",".join(self.not_similar)
        return out

    def key(self, query_id: str) -> str:
        return query_id + ("?" + urlencode(self.params()) if self else "")


NO_REFINE = Refine()


def _id_list(value: str | None) -> tuple[str, ...]:
    """``"a,b,a"`` -> ``("a", "b")``: comma-separated archive ids, first occurrence kept."""
    return tuple(dict.fromkeys(i for i in (value or "").split(",") if i))

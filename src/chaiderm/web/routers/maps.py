"""Evidence maps: the QAM and RAM of a query and one archive case, drawn as PNG."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response

from chaiderm.evidence.render import MAP_STYLES
from chaiderm.pipeline import QueryResult, render_heatmap, to_png_bytes
from chaiderm.web.access import Viewer
from chaiderm.web.audit import audit
from chaiderm.web.dependencies import Search, Snapshot, State, ViewerState
from chaiderm.web.refinement import Refine
from chaiderm.web.schemas import ERRORS
from chaiderm.web.search import FAST_PNG, own, result

router = APIRouter(responses=ERRORS)
# declared in the OpenAPI schema, so that a client knows every value the server takes
MapStyle = Literal[MAP_STYLES]  # type: ignore[valid-type]
MAP_SIDE = 320  # the page shows maps at 320 px


def _pair(state: ViewerState, snap: Snapshot, res: QueryResult, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A listed neighbour's pair was computed with the query (no inference slot needed); any other case of
    the snapshot's archive: its stored maps, or a forward pass without them. A DataError (maps not stored and
    the archive image gone) is answered by its code."""
    listed = snap.predictor.listed_maps(res, image_id)
    if listed is not None:
        return listed
    try:
        with state.slot():
            return snap.predictor.pair_maps(res, image_id)
    except KeyError:
        raise HTTPException(404, detail=f"no archive image '{image_id}'") from None


@router.get("/api/maps/{query_id}/{image_id}/{kind}.png")
def evidence_map(
    query_id: str,
    image_id: str,
    kind: Literal["qam", "ram"],
    state: State,
    snap: Search,
    request: Request,
    user: Viewer,
    style: Annotated[MapStyle, Query()] = "contour",
    region: Annotated[str | None, Query(max_length=400)] = None,
    similar: Annotated[str | None, Query(max_length=4000)] = None,
    not_similar: Annotated[str | None, Query(max_length=4000)] = None,
) -> Response:
    own(state, user, query_id)
    res = result(state, snap, query_id, Refine.parse(region, similar, not_similar, snap.predictor.cfg.model.load_size))
    qam, ram = _pair(state, snap, res, image_id)
    side = max(res.image.shape[0], MAP_SIDE)  # outlines drawn at the size shown, not scaled up jagged
    png = to_png_bytes(render_heatmap(qam if kind == "qam" else ram, (side, side), style=style), FAST_PNG)
    audit(request, "view_map", f"{query_id}/{image_id}", kind)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

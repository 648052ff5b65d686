"""``create_app``: the evidence viewer. The model, index and database load before the server starts,
so a bad path or a locked database is one readable error, not a traceback after the URL was announced."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from chaiderm.pipeline import FeedbackStore, Predictor
from chaiderm.web.dependencies import ViewerState
from chaiderm.web.routers import viewer
from chaiderm.web.security import secure

MAX_UPLOAD = 20_000_000
MULTIPART_SLACK = 64_000  # form boundaries and headers around the file


def describe(predictor: Predictor, model_dir: str | Path, index_dir: str | Path) -> dict[str, Any]:
    """What the page says is loaded: model, archive and whether the archive is synthetic."""
    idx, cfg = predictor.index, predictor.cfg
    return {
        "model": Path(model_dir).resolve().name,
        "logic": cfg.train.logic,
        "backbone": cfg.model.backbone,
        "archive": Path(index_dir).resolve().name,
        "archive_size": len(idx),
        "diagnoses": {d: predictor.counts[d] for d in predictor.classes},  # most frequent first
        "positive_class": predictor.positive_class,
        "synthetic": bool(idx.info.get("synthetic", False)),
    }


def create_app(
    model_dir: str | Path, index_dir: str | Path, db_path: str | Path, *, max_upload: int = MAX_UPLOAD
) -> FastAPI:
    predictor = Predictor.load(model_dir, index_dir)
    state = ViewerState(
        predictor,
        FeedbackStore(db_path),
        max_upload,
        describe(predictor, model_dir, index_dir),
        index_dir=Path(index_dir),
        describe=lambda p: describe(p, model_dir, index_dir),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.viewer = state
        yield

    app = FastAPI(title="chaiderm", lifespan=lifespan)
    app.state.viewer = state
    app.include_router(viewer.router)
    return secure(app, max_upload + MULTIPART_SLACK)

"""``create_app``: the evidence viewer. Heavy objects load once, in the lifespan."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from chaiderm.pipeline import FeedbackStore, Predictor
from chaiderm.web.dependencies import ViewerState
from chaiderm.web.routers import viewer

MAX_UPLOAD = 20_000_000


def create_app(
    model_dir: str | Path, index_dir: str | Path, db_path: str | Path, *, max_upload: int = MAX_UPLOAD
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.viewer = ViewerState(Predictor.load(model_dir, index_dir), FeedbackStore(db_path), max_upload)
        yield

    app = FastAPI(title="chaiderm", lifespan=lifespan)
    app.include_router(viewer.router)
    return app

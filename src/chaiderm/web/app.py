"""``create_app``: the evidence viewer. Heavy objects load once, in the lifespan."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from chaiderm.pipeline import FeedbackStore, Predictor
from chaiderm.web.dependencies import ViewerState
from chaiderm.web.routers import viewer

MAX_UPLOAD = 20_000_000
MULTIPART_SLACK = 64_000  # form boundaries and headers around the file


def create_app(
    model_dir: str | Path, index_dir: str | Path, db_path: str | Path, *, max_upload: int = MAX_UPLOAD
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.viewer = ViewerState(Predictor.load(model_dir, index_dir), FeedbackStore(db_path), max_upload)
        yield

    app = FastAPI(title="chaiderm", lifespan=lifespan)

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):
        # refuse by the declared size before the multipart body is read and spooled at all
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload + MULTIPART_SLACK:
            return JSONResponse({"detail": f"upload over the {max_upload // 1_000_000} MB limit"}, status_code=413)
        return await call_next(request)

    app.include_router(viewer.router)
    return app

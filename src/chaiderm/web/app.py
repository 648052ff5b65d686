"""``create_app``: the evidence viewer. The model, index and database load before the server starts,
so a bad path or a locked database is one readable error, not a traceback after the URL was announced."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import faiss
import torch
from fastapi import FastAPI

from chaiderm.errors import DataError
from chaiderm.pacs.client import Pacs
from chaiderm.pipeline import Predictor
from chaiderm.storage import AuditLog, Database, FeedbackStore, Sessions
from chaiderm.web import errors
from chaiderm.web.access import Access, Forwarded, SignedIn
from chaiderm.web.auth import Users
from chaiderm.web.dependencies import ViewerState, inference_workers
from chaiderm.web.observe import Metrics, Observe
from chaiderm.web.routers import admin, archive, feedback, maps, pacs, pages, query, session
from chaiderm.web.security import allowed_methods, secure

MAX_UPLOAD = 20_000_000
MULTIPART_SLACK = 64_000  # form boundaries and headers around the file
PURGE_EVERY_S = 3600.0
log = logging.getLogger("chaiderm.serve")


def describe(predictor: Predictor, model_dir: str | Path, index_dir: str | Path) -> dict[str, Any]:
    """What the page says is loaded: model, archive and whether the archive is synthetic."""
    idx, cfg = predictor.index, predictor.cfg
    logic, backbone = cfg.train.logic, cfg.model.backbone
    if cfg.model.members:  # an ensemble: "(recipe recommended, 8 x efficientnet_lite0)", not "(none, ensemble)"
        logic = f"recipe {cfg.train.recipe}" if cfg.train.recipe else "ensemble"
        kinds = sorted({str(m.get("backbone", "?")) for m in cfg.model.members})
        backbone = f"{len(cfg.model.members)} x {' + '.join(kinds)}"
    return {
        "model": Path(model_dir).resolve().name,
        "logic": logic,
        "backbone": backbone,
        "archive": Path(index_dir).resolve().name,
        "archive_size": len(idx),
        "diagnoses": {d: predictor.counts[d] for d in predictor.classes},  # most frequent first
        "positive_class": predictor.positive_class,
        "synthetic": bool(idx.info.get("synthetic", False)),
    }


def _purger(store: FeedbackStore, access: Access, keep_queries_days: float | None) -> Callable[[], None]:
    """Erase query images older than the retention policy and audit how many went (no-op when unset)."""

    def purge() -> None:
        if keep_queries_days:
            try:
                n = store.purge(keep_queries_days)
            except DataError as e:
                log.warning("retention: purge failed (%s); retried in an hour", e)
                return
            if n:
                access.audit.record(
                    "purge", user="server", detail=f"{n} query image(s) over {keep_queries_days:g} days"
                )

    return purge


def _lifespan(state: ViewerState, purge: Callable[[], None], keep_queries_days: float | None):
    """The app's lifespan: publishes the state and, under a retention policy, purges every hour."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.viewer = state
        task = None
        if keep_queries_days:

            async def every_hour() -> None:
                while True:
                    await asyncio.to_thread(purge)
                    await asyncio.sleep(PURGE_EVERY_S)

            task = asyncio.create_task(every_hour())
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return lifespan


def create_app(
    model_dir: str | Path,
    index_dir: str | Path,
    db_path: str | Path,
    *,
    max_upload: int = MAX_UPLOAD,
    users: str | Path | None = None,
    keep_queries_days: float | None = None,
    workers: int | None = None,
    secure_cookies: bool = False,
    behind_proxy: bool = False,
    dicomweb: str | None = None,
) -> FastAPI:
    """The viewer app. ``users`` (a users file) turns sign-in on; without it the server has one local
    user and must stay on loopback (the CLI refuses anything else). ``keep_queries_days``: query images
    older than this are erased (0: never stored). ``workers``: inferences at once (default: the cores).
    ``behind_proxy``: requests from loopback carry the client's address in X-Forwarded-For (see Forwarded).
    ``dicomweb``: a PACS's DICOMweb root, whose studies users open and query (``routers.pacs``)."""
    if keep_queries_days is not None and not keep_queries_days >= 0:  # NaN too
        raise DataError(None, "--keep-queries must be 0 (keep no query images) or more days")
    workers = inference_workers(workers or os.cpu_count())
    if workers > 1:
        # each inference on one thread, several at once: more throughput than one on all cores
        torch.set_num_threads(1)
        faiss.omp_set_num_threads(1)
    predictor = Predictor.load(model_dir, index_dir)
    predictor.index.warm_cache()
    query_ms = predictor.warm_up()  # on this thread's torch threads: what a request gets
    database = Database(db_path)  # brought to the current schema before the server starts
    store = FeedbackStore(database)
    user_file = Users(users) if users is not None else None
    access = Access(user_file, Sessions(database), AuditLog(database), secure_cookies=secure_cookies)
    if user_file is not None:
        # the users file may have changed while the server was down: sessions of changed accounts end now
        access.sessions.retain(user_file.keys())
    state = ViewerState(
        predictor,
        store,
        max_upload,
        describe(predictor, model_dir, index_dir),
        index_dir=Path(index_dir),
        describe=lambda p: describe(p, model_dir, index_dir),
        workers=workers,
        keep_queries_days=keep_queries_days,
    )
    metrics = Metrics(lambda: state.waiting, lambda: state.running)
    state.on_inference = metrics.inference.observe

    purge = _purger(store, access, keep_queries_days)
    lifespan = _lifespan(state, purge, keep_queries_days)

    purge()  # before the first request: nothing older than the policy is ever served
    app = FastAPI(title="chaiderm", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.viewer = state
    app.state.access = access
    app.state.query_ms = query_ms
    app.state.metrics = metrics
    app.state.pacs = pacs.PacsLink(Pacs(dicomweb)) if dicomweb else None
    for module in (session, pages, query, maps, archive, feedback, admin, pacs):
        app.include_router(module.router)
    errors.register(app)  # every project error a route raises: one status and one readable line
    allowed_methods(app)  # inside sign-in: an anonymous caller learns nothing of which methods a path takes
    app.add_middleware(SignedIn, access=access)
    secure(app, max_upload + MULTIPART_SLACK)
    app.add_middleware(Observe, metrics=metrics)
    if behind_proxy:
        app.add_middleware(Forwarded)  # outermost: the access log and the audit see the same address
    return app

"""Shared state of the evidence viewer: loaded once in the app's lifespan, injected into routes."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, Request

from chaiderm.errors import ChaidermError
from chaiderm.index.archive import ArchiveIndex
from chaiderm.pipeline import Predictor, QueryResult
from chaiderm.storage import FeedbackStore

# decodes at once, on their own threads: a 49-megapixel PNG takes ~200 MB while it is decoded, and
# every thread that ever decoded one keeps that much in its malloc arena afterwards. Two threads keep
# both cores busy and the server's memory bounded whatever the number of clients (bench/server_memory.py)
MAX_DECODES = 2
HOLD_S = 3600.0  # how long a server that stores no query images holds one in memory for its page


def inference_workers(cores: int | None) -> int:
    """Inferences run at once, each on one torch thread: on 2 cores two single-threaded forward passes
    gave 60 queries/s against 33 for one pass on two threads (measured; torch's intra-op threads
    mostly wait for each other on a batch of one)."""
    return max(1, min(4, cores or 1))


@dataclass(frozen=True)
class Snapshot:
    """The search state one request answers from, taken once at its start: the predictor (model + index),
    what the page says is loaded, and the generation they belong to. An archive changed meanwhile replaces
    the state's predictor with a new object; this request never mixes the two."""

    predictor: Predictor
    info: dict[str, Any]
    generation: int

    @property
    def index(self) -> ArchiveIndex:
        return self.predictor.index


@dataclass
class ViewerState:
    predictor: Predictor
    store: FeedbackStore
    max_upload: int
    info: dict[str, Any] = field(default_factory=dict)
    # guards the result cache only; inferences take one of ``workers`` slots instead of a global lock
    lock: threading.Lock = field(default_factory=threading.Lock)
    workers: int = 1
    decoder: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(MAX_DECODES, thread_name_prefix="chaiderm-decode")
    )
    cache: OrderedDict[str, tuple[int, QueryResult]] = field(default_factory=OrderedDict)
    held: OrderedDict[str, tuple[float, np.ndarray]] = field(default_factory=OrderedDict)
    cache_size: int = 64
    index_dir: Path | None = None  # watched: an index changed on disk (`chaiderm archive`) is reloaded
    describe: Callable[[Predictor], dict[str, Any]] | None = None
    stamp: int = 0
    generation: int = 0  # counts the predictors served: a cached result is used only by its own generation
    reload_lock: threading.Lock = field(default_factory=threading.Lock)

    keep_queries_days: float | None = None  # None: forever; 0: query images are never stored
    waiting: int = 0  # requests queued for an inference slot (exported as a metric)
    running: int = 0
    on_inference: Callable[[float], None] | None = None

    def __post_init__(self) -> None:
        self.stamp = self._stamp() or 0
        self.slots = threading.BoundedSemaphore(self.workers)
        self.count_lock = threading.Lock()

    def snapshot(self) -> Snapshot:
        with self.lock:
            return Snapshot(self.predictor, self.info, self.generation)

    @contextlib.contextmanager
    def inference(self) -> Iterator[Predictor]:
        """One inference slot and the current predictor (requests use :meth:`slot` with their snapshot's)."""
        with self.slot():
            yield self.predictor

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """One of ``workers`` inference slots for the block (waiting and running counted for the metrics)."""
        with self.count_lock:
            self.waiting += 1
        try:
            self.slots.acquire()
        finally:
            with self.count_lock:
                self.waiting -= 1
        with self.count_lock:
            self.running += 1
        t = time.perf_counter()
        try:
            yield
        finally:
            with self.count_lock:
                self.running -= 1
            self.slots.release()
            if self.on_inference is not None:
                self.on_inference(time.perf_counter() - t)

    def _stamp(self) -> int | None:
        if self.index_dir is None:
            return None
        try:
            return (self.index_dir / "info.json").stat().st_mtime_ns
        except OSError:
            return None  # the folder is being swapped right now: keep answering from the loaded index

    def refresh(self) -> None:
        """Pick up an index that `chaiderm archive add/remove` rewrote, between requests, without a restart.
        The rewrite is an atomic folder swap, so a load sees the old index or the new one, never a mix."""
        stamp = self._stamp()
        if stamp is None or stamp == self.stamp:
            return
        with self.reload_lock:
            if stamp == self.stamp:
                return
            try:
                index = ArchiveIndex.load(self.index_dir)
                index.warm_cache()
                self.replace_index(index)
            except ChaidermError:
                # caught mid-swap, or an index this model cannot serve: keep answering from the loaded one,
                # the next request tries again
                return
            self.stamp = stamp

    def replace_index(self, index: ArchiveIndex) -> None:
        """Answer from ``index`` from now on; requests under way finish on the predictor they started with."""
        self._swap(self._predictor_for(index))

    def adopt(self, index: ArchiveIndex) -> None:
        """An archive this server has just saved over the index folder (under ``reload_lock`` and the index's
        writer lock, ``index.lock``), served from now on; the watcher does not reload it again."""
        self._swap(self._predictor_for(index))
        self.stamp = self._stamp() or self.stamp

    def check(self, index: ArchiveIndex) -> None:
        """Raise the Predictor's own error if ``index`` could not be served (its positive class gone)."""
        self._predictor_for(index)

    def _predictor_for(self, index: ArchiveIndex) -> Predictor:
        old = self.predictor
        return type(old)(old.model, old.cfg, index)

    def _swap(self, fresh: Predictor) -> None:
        with self.lock:
            self.predictor = fresh
            self.generation += 1
            self.cache.clear()
            if self.describe is not None:
                self.info = self.describe(fresh)

    def hold(self, query_id: str, image: np.ndarray) -> None:
        """A query image of a server that stores none (``keep_queries_days == 0``), kept in memory only, so
        that its page can still change k or refine; gone after :data:`HOLD_S` or when newer ones push it out."""
        with self.lock:
            self.held[query_id] = (time.monotonic() + HOLD_S, image)
            self.held.move_to_end(query_id)
            while len(self.held) > self.cache_size:
                self.held.popitem(last=False)

    def holding(self, query_id: str) -> np.ndarray | None:
        with self.lock:
            hit = self.held.get(query_id)
            if hit is not None and hit[0] < time.monotonic():
                del self.held[query_id]
                hit = None
        return None if hit is None else hit[1]

    def forget(self, query_id: str) -> None:
        """Drop everything held in memory for a query (its image was purged): results, refinements, image."""
        with self.lock:
            self.held.pop(query_id, None)
            for key in [k for k in self.cache if k == query_id or k.startswith(query_id + "?")]:
                del self.cache[key]

    def remember(self, key: str, result: QueryResult, generation: int) -> None:
        with self.lock:
            self.cache[key] = (generation, result)
            self.cache.move_to_end(key)
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)

    def recall(self, key: str, generation: int) -> QueryResult | None:
        """The cached result, if it was computed by the predictor of ``generation`` (a result computed on an
        archive since replaced would name rows of another index)."""
        with self.lock:
            hit = self.cache.get(key)
        return hit[1] if hit is not None and hit[0] == generation else None


def get_state(request: Request) -> ViewerState:
    state = request.app.state.viewer
    state.refresh()
    return state


State = Annotated[ViewerState, Depends(get_state)]


def get_snapshot(state: State) -> Snapshot:
    """The request's one view of the search state (FastAPI resolves ``get_state`` once per request)."""
    return state.snapshot()


Search = Annotated[Snapshot, Depends(get_snapshot)]

"""Shared state of the evidence viewer: loaded once in the app's lifespan, injected into routes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request

from chaiderm.errors import ChaidermError
from chaiderm.index.archive import ArchiveIndex
from chaiderm.pipeline import FeedbackStore, Predictor, QueryResult

# decodes at once, on their own threads: a 49-megapixel PNG takes ~200 MB while it is decoded, and
# every thread that ever decoded one keeps that much in its malloc arena afterwards. Two threads keep
# both cores busy and the server's memory bounded whatever the number of clients (bench/server_memory.py)
MAX_DECODES = 2


@dataclass
class ViewerState:
    predictor: Predictor
    store: FeedbackStore
    max_upload: int
    info: dict[str, Any] = field(default_factory=dict)
    # one inference at a time: torch already uses both cores, and queued requests keep latency predictable
    lock: threading.Lock = field(default_factory=threading.Lock)
    decoder: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(MAX_DECODES, thread_name_prefix="chaiderm-decode")
    )
    cache: OrderedDict[str, QueryResult] = field(default_factory=OrderedDict)
    cache_size: int = 64
    index_dir: Path | None = None  # watched: an index changed on disk (`chaiderm archive`) is reloaded
    describe: Callable[[Predictor], dict[str, Any]] | None = None
    stamp: int = 0
    reload_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.stamp = self._stamp() or 0

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
            except ChaidermError:
                return  # caught mid-swap: the next request tries again
            with self.lock:
                self.predictor.set_index(index)
                self.cache.clear()
                if self.describe is not None:
                    self.info = self.describe(self.predictor)
            self.stamp = stamp

    def remember(self, key: str, result: QueryResult) -> None:
        with self.lock:
            self.cache[key] = result
            self.cache.move_to_end(key)
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)

    def recall(self, key: str) -> QueryResult | None:
        with self.lock:
            return self.cache.get(key)


def get_state(request: Request) -> ViewerState:
    state = request.app.state.viewer
    state.refresh()
    return state

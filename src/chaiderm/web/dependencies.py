"""Shared state of the evidence viewer: loaded once in the app's lifespan, injected into routes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

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
    return request.app.state.viewer

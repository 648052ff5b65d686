"""Shared state of the evidence viewer: loaded once in the app's lifespan, injected into routes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from fastapi import Request

from chaiderm.pipeline import FeedbackStore, Predictor, QueryResult


@dataclass
class ViewerState:
    predictor: Predictor
    store: FeedbackStore
    max_upload: int
    # one inference at a time: torch already uses both cores, and queued requests keep latency predictable
    lock: threading.Lock = field(default_factory=threading.Lock)
    cache: OrderedDict[str, QueryResult] = field(default_factory=OrderedDict)
    cache_size: int = 64

    def remember(self, query_id: str, result: QueryResult) -> None:
        with self.lock:
            self.cache[query_id] = result
            self.cache.move_to_end(query_id)
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)

    def recall(self, query_id: str) -> QueryResult | None:
        with self.lock:
            return self.cache.get(query_id)


def get_state(request: Request) -> ViewerState:
    return request.app.state.viewer

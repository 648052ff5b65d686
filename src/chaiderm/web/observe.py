"""What an operator sees of a running server: Prometheus metrics (``/metrics``) and one JSON line per
request in the access log (logger ``chaiderm.access``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chaiderm.web.access import client_address

ACCESS = logging.getLogger("chaiderm.access")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The server's metrics, in a registry of its own (two apps in one process never collide)."""

    def __init__(self, queue: Callable[[], int], running: Callable[[], int]):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "chaiderm_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "chaiderm_request_seconds", "time to answer a request", ["route"], buckets=BUCKETS, registry=self.registry
        )
        self.inference = Histogram(
            "chaiderm_inference_seconds",
            "time an inference slot was held (embedding, search, evidence maps)",
            buckets=BUCKETS,
            registry=self.registry,
        )
        g = Gauge("chaiderm_inference_queue", "requests waiting for an inference slot", registry=self.registry)
        g.set_function(queue)
        r = Gauge("chaiderm_inference_running", "inferences under way", registry=self.registry)
        r.set_function(running)


class Observe:
    """Times every request, counts it by route template (``/api/maps/{query_id}/...``, never the raw
    path: ids would make a metric per query) and writes the access-log line."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t = time.perf_counter()
        status = [500]
        size = [0]

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body":
                size[0] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            seconds = time.perf_counter() - t
            route = getattr(scope.get("route"), "path", None) or (
                "/static" if scope["path"].startswith("/static/") else "unmatched"
            )
            self.metrics.requests.labels(scope["method"], route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(seconds)
            if ACCESS.isEnabledFor(logging.INFO):
                user = scope.get("state", {}).get("user")
                ACCESS.info(
                    json.dumps(
                        {
                            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "address": client_address(scope) if scope.get("client") else None,
                            "user": getattr(user, "name", None),
                            "method": scope["method"],
                            "route": route,
                            "status": status[0],
                            "ms": round(seconds * 1000, 1),
                            "bytes": size[0],
                        }
                    )
                )

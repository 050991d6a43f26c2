"""Prometheus metrics of the service (`GET /metrics`, text exposition format 0.0.4).

Source: Prometheus exposition formats and metric naming conventions (prometheus.io/docs/instrumenting/
exposition_formats, prometheus.io/docs/practices/naming), written by the official `prometheus_client`.
Request counts and latency are recorded by an ASGI middleware (every route, 404s included); the model, swap,
batching and log figures are read from their owners at scrape time, so the request path pays nothing for them.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Latency buckets in seconds: sub-millisecond model calls up to slow multi-row requests.
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, service):
        disable_created_metrics()  # no `_created` series: they double the output and no dashboard reads them
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("kd_serve_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("kd_serve_request_seconds", "HTTP request latency (seconds) by endpoint", ["endpoint"],
                                 buckets=BUCKETS, registry=self.registry)
        self.rows = Counter("kd_serve_predictions", "rows predicted, by model version", ["version"], registry=self.registry)
        self.feedback = Counter("kd_serve_feedback", "feedback labels accepted", registry=self.registry)
        self.registry.register(_State(service))
        self._counters: dict = {}
        self._histograms: dict = {}

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        counter = self._counters.get((endpoint, status))
        if counter is None:  # label lookups cost more than the increment: keep the children
            counter = self._counters[endpoint, status] = self.requests.labels(endpoint, str(status))
        counter.inc()
        histogram = self._histograms.get(endpoint)
        if histogram is None:
            histogram = self._histograms[endpoint] = self.latency.labels(endpoint)
        histogram.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _State:
    """Figures owned by the champion holder, the batcher and the log writer, read at scrape time."""

    def __init__(self, service):
        self.service = service

    def describe(self):
        return []

    def collect(self):
        s = self.service
        cur = s.champion.current
        info = GaugeMetricFamily("kd_serve_model_info", "the model answering requests (value 1)", labels=["name", "version", "backend"])
        if cur is not None:
            info.add_metric([cur.name, cur.version, cur.predictor.backend], 1)
        yield info
        version = GaugeMetricFamily("kd_serve_model_version", "registry version of the model answering requests")
        if cur is not None and cur.version.isdigit():
            version.add_metric([], int(cur.version))
        yield version
        yield GaugeMetricFamily("kd_serve_uptime_seconds", "seconds since the service started", value=time.monotonic() - s.started)
        st = s.champion.stats
        yield CounterMetricFamily("kd_serve_swaps", "models swapped in after @champion moved", value=st["swaps"])
        yield CounterMetricFamily("kd_serve_swap_failures", "versions that failed to load or warm up (not swapped in)", value=st["swap_failures"])
        yield CounterMetricFamily("kd_serve_registry_errors", "failed reads of @champion", value=st["registry_errors"])
        yield CounterMetricFamily("kd_serve_batch_calls", "model calls (one per request, or per micro-batch)", value=s.batcher.calls)
        yield CounterMetricFamily("kd_serve_batch_rows", "rows sent to the model", value=s.batcher.rows)
        w = s.writer
        if w is None:
            return
        ws = w.stats
        yield GaugeMetricFamily("kd_serve_log_buffered_rows", "log rows waiting in memory", value=w.buffered)
        yield GaugeMetricFamily("kd_serve_log_spill_pending_rows", "log rows waiting in spill files", value=ws["spill_pending"])
        yield GaugeMetricFamily("kd_serve_log_database_up", "1 if the last write to the log database succeeded", value=ws["db_up"])
        yield CounterMetricFamily("kd_serve_log_accepted_rows", "log rows queued by requests", value=ws["accepted"])
        written = CounterMetricFamily("kd_serve_log_written_rows", "log rows written to the database", labels=["table"])
        written.add_metric(["predictions"], ws["written_predictions"])
        written.add_metric(["feedback"], ws["written_feedback"])
        yield written
        yield CounterMetricFamily("kd_serve_log_spilled_rows", "log rows spilled to disk", value=ws["spilled"])
        yield CounterMetricFamily("kd_serve_log_replayed_rows", "spilled log rows written after all", value=ws["replayed"])
        yield CounterMetricFamily("kd_serve_log_errors", "failed log writes (each retried)", value=ws["errors"])


class RequestMetrics:
    """ASGI middleware: count and time every HTTP request by its route template (unmatched paths as one label)."""

    def __init__(self, app, metrics: Metrics, routes: list):
        self.app = app
        self.metrics = metrics
        self.routes = routes  # the application's routes: plain Starlette ones leave no "route" in the scope
        self._paths: dict | None = None

    def _endpoint(self, scope) -> str:
        route = scope.get("route")
        if route is not None:
            return route.path
        if self._paths is None:
            self._paths = {r.endpoint: r.path for r in self.routes if hasattr(r, "endpoint")}
        return self._paths.get(scope.get("endpoint"), "unmatched")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe(self._endpoint(scope), status, time.perf_counter() - start)

"""The HTTP service: kd's own endpoints, the Open Inference Protocol ones, errors and the lifespan.

    POST /predict                         {"rows": [...]} -> label, probabilities and request_id per row
    POST /feedback                        labels that arrive later, by request_id
    GET  /health, /metadata, /metrics     liveness with the model version; schema and lineage; Prometheus
    GET  /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}[/versions/{v}][/ready]
    POST /v2/models/{name}[/versions/{v}]/infer

Every answer names the model version that produced it, and every logged row carries it. A refused request
gets a 4xx with `{"error": message}` naming the problem; a 5xx means a bug in kd, never bad input.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import logging
import sys
import time
import uuid
from pathlib import Path

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from kd.config import ServeParams
from kd.predictor import InputError
from kd.registry import Registry
from kd.serve import oip
from kd.serve.batcher import Batcher
from kd.serve.champion import Champion, Loaded
from kd.serve.chunks import Predictions, Rows
from kd.serve.metrics import CONTENT_TYPE, Metrics, RequestMetrics
from kd.serve.schemas import Batch, RequestError, check_scalars, feedback_items, parse_json, request_ids, rows_batch
from kd.serve.writer import LogWriter

log = logging.getLogger("kd.serve")
SERVER_NAME = "kd"


class Service:
    """The champion holder, the batcher, the log writer and the metrics of one serving process."""

    def __init__(self, params: ServeParams, root: Path, reg: Registry):
        self.params = params
        workdir = (Path(root) / params.cache_dir).resolve() if params.cache_dir else None
        self.champion = Champion(reg, params, workdir)
        self.batcher = Batcher(params.batch_wait_ms, params.batch_max_rows)
        self.log_uri = params.log_url(root) if params.log else None
        self.writer = (LogWriter(self.log_uri, params.spill_path(root), params.log_flush_seconds, params.log_batch_rows,
                                 params.log_buffer_rows, params.log_timeout_seconds, params.log_retry_seconds) if params.log else None)
        self.metrics = Metrics(self)
        self.started = time.monotonic()
        self._watcher: asyncio.Task | None = None

    def load(self) -> Loaded:
        """Load @champion before serving (blocking); `LoadError` says what is missing."""
        return self.champion.start()

    async def startup(self) -> None:
        # Everything loaded so far (mlflow, torch, pandas, the model: ~400k objects) lives as long as the process; a
        # full collection scanning it takes ~250 ms here, a pause every so often in the latency tail. gc.freeze moves
        # it out of the collector's sight (Python docs, gc.freeze); requests' own garbage is collected as before.
        gc.collect()
        gc.freeze()
        if self.writer is not None:
            self.writer.start()
        self._watcher = asyncio.create_task(self.champion.watch())

    async def shutdown(self) -> dict:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        stats = await asyncio.to_thread(self.writer.close) if self.writer is not None else {}
        self.champion.close()
        return stats

    async def predict(self, loaded: Loaded, batch: Batch):
        """Labels and probabilities of a batch of rows (InputError names a bad value). Values the predictor had to
        convert (a number sent as a string, say) are replaced in `batch` by what the model read, so the log holds them."""
        x = loaded.inputs.matrix(batch.columns, batch.n)
        if x is None:  # not plain: the predictor's own check decides, and names any problem
            checked = loaded.inputs.checked_frame(batch.columns, batch.present)
            probs = loaded.predictor.predict_proba(checked, checked=True)
            batch.columns.update({c: [v.item() if hasattr(v, "item") else v for v in checked[c].tolist()] for c in checked.columns})
        else:
            probs = await self.batcher.proba(loaded.predictor, x)
        classes = loaded.classes
        return [classes[i] for i in probs.argmax(1)], probs

    def record(self, endpoint: str, loaded: Loaded, batch: Batch, labels: list[str], probs) -> list[str]:
        """Request ids for the rows, and their log rows queued (the request never waits on the database)."""
        ids = request_ids(batch.n)
        self.metrics.rows.labels(loaded.version).inc(batch.n)
        if self.writer is not None:
            cols = batch.columns
            self.writer.add(Predictions(
                dt.datetime.now(dt.UTC), endpoint, loaded.name, loaded.version, {c: cols[c] for c in loaded.predictor.columns},
                {c: cols[c] for c in loaded.predictor.sensitive if c in batch.present}, ids, labels, probs, loaded.classes))
        return ids


def _json(doc, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise RequestError(400, f"invalid Content-Length {length!r}")
        if int(length) > limit:
            raise RequestError(413, f"body of {int(length)} bytes exceeds the limit of {limit} bytes (serve.max_body_bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"body exceeds the limit of {limit} bytes (serve.max_body_bytes)")
    return bytes(body)


def _columns(loaded: Loaded) -> list[str]:
    cols = loaded.predictor.columns
    return cols + [s for s in loaded.predictor.sensitive if s not in cols]


def create_app(service: Service) -> FastAPI:
    p = service.params

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await service.startup()
        cur = service.champion.current
        print(f"kd serve: http://{p.host}:{p.port} serving {cur.name} version {cur.version} ({cur.predictor.backend}); "
              f"log: {_safe(service.log_uri) if service.log_uri else 'off'}", file=sys.stderr, flush=True)
        yield
        stats = await service.shutdown()
        if stats:
            print(f"kd serve: stopped; log rows accepted {stats['accepted']}, written {stats['written_predictions']} predictions "
                  f"+ {stats['written_feedback']} feedback, spilled {stats['spilled']}, waiting in spill files {stats['spill_pending']}",
                  file=sys.stderr, flush=True)

    app = FastAPI(title="kd serve", summary="The @champion student as an HTTP service", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(RequestError)
    async def _request_error(_req, err: RequestError):
        return _error(err.status, err.message)

    @app.exception_handler(InputError)
    async def _input_error(_req, err: InputError):
        return _error(422, str(err))

    @app.exception_handler(HTTPException)
    async def _http_error(_req, err: HTTPException):
        return _error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def _bug(_req, err: Exception):
        log.exception("internal error")
        return _error(500, f"internal error ({type(err).__name__}); this is a bug in kd serve, see its log")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req, err: RequestValidationError):
        return _error(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()))

    # The POST endpoints are plain Starlette routes (app.add_route): they parse their own bodies, so FastAPI's
    # per-request dependency solving would be pure overhead on the hot path.
    async def predict(request: Request):
        doc = parse_json(await _body(request, p.max_body_bytes))
        loaded = service.champion.current  # this request's model, to its end (a swap does not touch it)
        batch = rows_batch(doc, _columns(loaded), p.max_rows)
        check_scalars(batch, loaded.predictor.sensitive)
        labels, probs = await service.predict(loaded, batch)
        ids = service.record("predict", loaded, batch, labels, probs)
        classes = loaded.classes
        return _json({"model_name": loaded.name, "model_version": loaded.version, "predictions": [
            {"request_id": rid, "label": label, "probabilities": dict(zip(classes, row))}
            for rid, label, row in zip(ids, labels, probs.tolist())]})

    async def feedback(request: Request):
        doc = parse_json(await _body(request, p.max_body_bytes))
        loaded = service.champion.current
        items = feedback_items(doc, loaded.classes, p.max_rows)
        if service.writer is None:
            return _error(503, "the prediction log is off (serve.log: false): feedback has nowhere to go")
        now = dt.datetime.now(dt.UTC)  # items of one request are 1 µs apart: the later one is the latest label
        service.writer.add(Rows("feedback", [{"feedback_id": fid, "request_id": f.request_id, "time": now + dt.timedelta(microseconds=i),
                                              "label": f.label} for i, (f, fid) in enumerate(zip(items, request_ids(len(items))))]))
        service.metrics.feedback.inc(len(items))
        return _json({"accepted": len(items)}, 202)

    app.add_route("/predict", predict, methods=["POST"])
    app.add_route("/feedback", feedback, methods=["POST"])

    @app.get("/health")
    async def health():
        cur = service.champion.current
        out = {"status": "ok", "model_name": cur.name, "model_version": cur.version, "uptime_seconds": round(time.monotonic() - service.started, 1)}
        if service.writer is not None:
            ws = service.writer.stats
            out["log"] = {"database_up": bool(ws["db_up"]), "buffered_rows": service.writer.buffered, "spill_pending_rows": ws["spill_pending"],
                          "written_predictions": ws["written_predictions"], "last_error": ws["last_error"]}
        return _json(out)

    @app.get("/metadata")
    async def metadata():
        cur = service.champion.current
        pr = cur.predictor
        return _json({"name": cur.name, "version": cur.version, "backend": pr.backend, "loaded_at": cur.loaded_at, "run_id": cur.run_id,
                      "tags": cur.tags, "label_column": pr.meta.get("label_column"), "classes": pr.classes,
                      "inputs": [{"name": f.name, "type": f.kind, **({"categories": f.categories} if f.kind == "category" else {})}
                                 for f in pr.features],
                      "sensitive": pr.sensitive, "limits": {"max_rows": p.max_rows, "max_body_bytes": p.max_body_bytes}})

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    _oip_routes(app, service)
    app.add_middleware(RequestMetrics, metrics=service.metrics, routes=app.routes)
    return app


def _oip_routes(app: FastAPI, service: Service) -> None:
    """Open Inference Protocol v2 REST (github.com/kserve/open-inference-protocol, specification/protocol/inference_rest.md)."""
    p = service.params

    def model(name: str, version: str | None) -> Loaded:
        cur = service.champion.current
        if name != cur.name:
            raise RequestError(404, f"unknown model {name!r}; this server serves {cur.name!r}")
        if version is not None and version != cur.version:
            raise RequestError(404, f"version {version} of {name!r} is not loaded; this server serves @champion, now version {cur.version}")
        return cur

    @app.get("/v2")
    async def server_metadata():
        return _json({"name": SERVER_NAME, "version": _version(), "extensions": []})

    @app.get("/v2/health/live")
    async def live():
        return _json({"live": True})

    @app.get("/v2/health/ready")
    async def ready():
        ok = service.champion.current is not None
        return _json({"ready": ok}, 200 if ok else 503)

    async def model_metadata(name: str, version: str | None = None):
        cur = model(name, version)
        pr = cur.predictor
        platform = {"torch": "pytorch_torchscript"}.get(pr.backend, "onnxruntime_onnx")
        return _json(oip.model_metadata(cur.name, cur.version, platform, pr.features, [s for s in pr.sensitive if s not in pr.columns], pr.classes))

    async def model_ready(name: str, version: str | None = None):
        return _json({"name": model(name, version).name, "ready": True})

    async def infer(request: Request):
        loaded = model(request.path_params["name"], request.path_params.get("version"))
        doc = parse_json(await _body(request, p.max_body_bytes))
        pr = loaded.predictor
        kinds = {f.name: f.kind for f in pr.features} | {s: "any" for s in pr.sensitive if s not in pr.columns}
        batch, rid, wanted = oip.request_batch(doc, kinds, p.max_rows)
        check_scalars(batch, pr.sensitive)
        try:
            labels, probs = await service.predict(loaded, batch)
        except InputError as err:  # the protocol's error status is 400
            raise RequestError(400, str(err)) from None
        ids = service.record("infer", loaded, batch, labels, probs)
        return _json(oip.response(loaded.name, loaded.version, rid or str(uuid.uuid4()), labels, probs, ids, loaded.classes, wanted))

    for suffix in ("", "/versions/{version}"):
        base = "/v2/models/{name}" + suffix
        app.add_api_route(base, model_metadata, methods=["GET"])
        app.add_api_route(base + "/ready", model_ready, methods=["GET"])
        app.add_route(base + "/infer", _distinct(infer), methods=["POST"])  # one endpoint per route: metrics name the route


def _distinct(endpoint):
    async def route(request: Request):
        return await endpoint(request)
    return route


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kd")
    except PackageNotFoundError:
        return "0"


def _safe(uri: str) -> str:
    """A database URL without its password."""
    import sqlalchemy as sa

    return sa.engine.make_url(uri).render_as_string(hide_password=True)


def run(root: Path, p, reg: Registry | None = None) -> None:
    """Load @champion of `p.registry.model_name`, then serve until SIGTERM/SIGINT (graceful: requests in flight
    finish, the log is flushed). Raises `LoadError` before listening if there is nothing to serve."""
    import uvicorn

    service = Service(p.serve, root, reg or Registry(p.registry, root))
    service.load()
    uvicorn.run(create_app(service), host=p.serve.host, port=p.serve.port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools", lifespan="on", timeout_graceful_shutdown=30)

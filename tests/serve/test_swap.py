"""Hot swap under load and shutdown under load, against a real `kd serve` process and a real registry:
@champion moved while requests flow → no request fails, answers switch to the new version in the same
process, each answer comes whole from one model; SIGTERM while requests flow → every answered row is logged."""

import signal
import threading
import time

import httpx
import numpy as np
import pytest
from harness import Server, new_project, registry, wait_for

from kd import aliases
from kd.predictor import Predictor
from kd.serve.log import counts, read_window

pytestmark = pytest.mark.serve
THREADS = 8


class Load:
    """THREADS clients posting 1–5 rows each, back to back, recording every outcome in order."""

    def __init__(self, url: str, frame, oip_every: int = 5):
        self.url, self.frame, self.oip_every = url, frame, oip_every
        self.stop = threading.Event()
        self.results: list[list[dict]] = [[] for _ in range(THREADS)]
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(THREADS)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _run(self, k: int) -> None:
        rng = np.random.default_rng(k)
        with httpx.Client(timeout=30) as client:
            i = 0
            while not self.stop.is_set():
                idx = rng.choice(len(self.frame), rng.integers(1, 6), replace=False)
                rows = self.frame.iloc[idx]
                try:
                    if i % self.oip_every == self.oip_every - 1:
                        r = client.post(f"{self.url}/v2/models/kd-student/infer", json={"inputs": [
                            {"name": "x", "shape": [len(rows)], "datatype": "FP64", "data": rows.x.tolist()},
                            {"name": "colour", "shape": [len(rows)], "datatype": "BYTES", "data": rows.colour.tolist()}]})
                        out = r.json() if r.status_code == 200 else {}
                        tensors = {t["name"]: t["data"] for t in out.get("outputs", [])}
                        ids, probs = tensors.get("request_id", []), np.reshape(tensors.get("probabilities", []), (-1, 2))
                    else:
                        r = client.post(f"{self.url}/predict", json={"rows": rows[["x", "colour", "group"]].to_dict("records")})
                        out = r.json() if r.status_code == 200 else {}
                        preds = out.get("predictions", [])
                        ids = [p["request_id"] for p in preds]
                        probs = np.array([[p["probabilities"]["no"], p["probabilities"]["yes"]] for p in preds]).reshape(-1, 2)
                    self.results[k].append({"status": r.status_code, "version": out.get("model_version"), "ids": ids,
                                            "probs": probs, "idx": idx, "text": r.text[:300]})
                except httpx.TransportError as err:  # only expected once the server is told to stop
                    self.results[k].append({"status": None, "error": repr(err)})
                i += 1

    def all(self) -> list[dict]:
        return [r for per in self.results for r in per]


@pytest.fixture(scope="module")
def swapping(tmp_path_factory, bundles):
    """A project with versions 1 and 2 (@champion = 1) and one `kd serve` polling @champion every 0.2 s. Its writer
    flushes every 2 s, so rows are certainly still buffered when SIGTERM arrives. `served`: request id -> version
    of every row it answered, for the log check at the end."""
    root = new_project(tmp_path_factory.mktemp("swap"), bundles)
    server = Server(root, "--poll-seconds", "0.2", "-s", "serve.log_flush_seconds=2.0")
    yield root, server, {}
    server.stop(signal.SIGKILL)


def test_alias_moved_under_load_swaps_without_a_failed_request(swapping, bundles):
    root, server, served = swapping
    pid_before = server.proc.pid
    frame = bundles[0][1]
    with Load(server.url, frame) as load:
        time.sleep(1.5)
        assert aliases.promote(registry(root), "2", reason="swap under load", by="test")["champion"] == "2"
        wait_for(lambda: any(r.get("version") == "2" for r in load.all()) or None, 60, what="answers from version 2")
        time.sleep(1.5)
    results = load.all()
    served.update({rid: r["version"] for r in results if r["status"] == 200 for rid in r["ids"]})
    assert len(results) > 50, "the load ran"
    failed = [r for r in results if r["status"] != 200]
    assert failed == [], f"{len(failed)} failed requests during the swap, e.g. {failed[:2]}"
    for per in load.results:  # the swap is one-way: once a client got version 2 it never gets 1 again
        versions = [r["version"] for r in per]
        assert versions == sorted(versions), versions
    assert {r["version"] for r in results} == {"1", "2"}
    assert server.proc.poll() is None and server.proc.pid == pid_before, "no restart"
    assert server.metric("kd_serve_swaps_total") == 1 and server.metric("kd_serve_model_version") == 2
    assert httpx.get(f"{server.url}/metadata").json()["version"] == "2"

    # each answer came whole from the model that it names
    models = {"1": Predictor(bundles[0][0]), "2": Predictor(bundles[1][0])}
    for r in results:
        expected = models[r["version"]].predict_proba(frame.iloc[r["idx"]][["x", "colour"]])
        assert np.allclose(r["probs"], expected, atol=1e-5), f"an answer labelled version {r['version']} is not that model's"


def test_sigterm_under_load_answers_what_is_in_flight_and_logs_every_row_served(swapping, bundles):
    root, server, served = swapping
    with Load(server.url, bundles[0][1]) as load:
        wait_for(lambda: sum(r["status"] == 200 for r in load.all()) >= 100 or None, 60, what="100 answered requests")
        wait_for(lambda: server.metric("kd_serve_log_buffered_rows") > 0 or None, 30, what="rows waiting in the buffer")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == -signal.SIGTERM, "a graceful stop (uvicorn re-raises SIGTERM)"
    results = load.all()
    odd = [r for r in results if r["status"] not in (200, None)]
    assert odd == [], f"requests in flight at SIGTERM are answered, never failed: {odd[:3]}"
    served.update({rid: r["version"] for r in results if r["status"] == 200 for rid in r["ids"]})
    log = f"sqlite:///{root / 'inference.db'}"
    logged = dict(zip(*read_window(log)[["request_id", "model_version"]].to_dict("list").values()))
    missing, extra = set(served) - set(logged), set(logged) - set(served)
    assert not missing and not extra, f"{len(missing)} rows served but not logged, {len(extra)} logged but not served:\n{server.stderr()[-2000:]}"
    assert logged == served and counts(log)["predictions"] == len(served), "every row served is logged once, with the version that answered"
    assert f"written {len(served)} predictions" in server.stderr(), server.stderr()[-2000:]

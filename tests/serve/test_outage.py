"""The prediction log on PostgreSQL through a real `kd serve`, with a real outage: the database refuses new
connections and its open ones are terminated. The service keeps answering, rows spill to disk, and all of
them reach the database once it is back — while running, and across a shutdown during the outage."""

import signal

import pytest
from harness import Server, cut_off, pg_database, predict, restore, wait_for

from kd.serve.log import counts, read_window
from kd.serve.spill import Spill

pytestmark = pytest.mark.serve
ARGS = ("-s", "serve.log_buffer_rows=30", "-s", "serve.log_flush_seconds=0.1", "-s", "serve.log_retry_seconds=0.3",
        "-s", "serve.log_timeout_seconds=2")


def _send(server: Server, frame, n: int, served: set) -> None:
    rows = frame[["x", "colour", "group"]].head(3).to_dict("records")
    for _ in range(n):
        r = predict(server.url, rows)
        assert r.status_code == 200, f"the service stops answering when its log database is away: {r.text}"
        served.update(p["request_id"] for p in r.json()["predictions"])


def test_postgres_outage_rows_spill_and_all_reach_the_database(shared, tmp_path, bundles):
    root, spill = shared[0], tmp_path / "spill"  # the shared project's registry (read only); its own log and spill
    args = ("-s", f"serve.log_spill_dir={spill}", *ARGS)
    frame = bundles[0][1]
    with pg_database() as (uri, name, admin):
        server = Server(root, "--log-uri", uri, *args, name="outage")
        served: set[str] = set()
        _send(server, frame, 10, served)
        wait_for(lambda: counts(uri)["predictions"] == 30 or None, 30, what="the first 30 rows in PostgreSQL")

        cut_off(admin, name)  # outage while running
        _send(server, frame, 40, served)
        wait_for(lambda: (server.metric("kd_serve_log_spilled_rows_total") > 0 and server.metric("kd_serve_log_database_up") == 0) or None,
                 30, what="rows spilled during the outage")
        assert list(spill.glob("spill-*.jsonl"))
        assert server.metric("kd_serve_log_buffered_rows") <= 30 + 3 * 40
        restore(admin, name)
        wait_for(lambda: counts(uri)["predictions"] == len(served) or None, 60, what="every row written after the outage")
        wait_for(lambda: server.metric("kd_serve_log_spill_pending_rows") == 0 or None, 30, what="the spill drained")

        cut_off(admin, name)  # outage across a shutdown: the buffer goes to disk at SIGTERM ...
        _send(server, frame, 5, served)
        assert server.stop() == -signal.SIGTERM
        spilled = sum(Spill.rows_in(f) for f in spill.glob("spill-*.jsonl"))
        assert spilled == 15 and "waiting in spill files 15" in server.stderr()
        restore(admin, name)
        again = Server(root, "--log-uri", uri, *args, name="outage-again")  # ... and the next process replays it at start-up
        wait_for(lambda: counts(uri)["predictions"] == len(served) or None, 60, what="spilled rows replayed by the next process")
        again.stop()
        logged = read_window(uri)
        assert len(logged) == len(served) and set(logged.request_id) == served, "no row lost, none twice"
        assert not list(spill.glob("spill-*.jsonl"))


"""The prediction log writer and reader against real databases (SQLite and PostgreSQL), with real faults: a
SQLite database locked by another process, a crash that tears the last spill line, a row PostgreSQL refuses."""

import datetime as dt
import json
import subprocess
import sys
import uuid

import numpy as np
import pytest
from harness import pg_database, wait_for

from kd.serve.chunks import Predictions, Rows
from kd.serve.log import counts, read_window
from kd.serve.writer import LogWriter

pytestmark = pytest.mark.serve
NOW = dt.datetime.now(dt.UTC)


def chunk(n: int, version: str = "1", at: dt.datetime = NOW, group="a", x0: float = 0.0) -> Predictions:
    probs = np.tile([[0.25, 0.75]], (n, 1))
    return Predictions(at, "predict", "kd-student", version, {"x": [x0 + i for i in range(n)], "colour": ["red"] * n},
                       {"group": [group] * n}, [str(uuid.uuid4()) for _ in range(n)], ["yes"] * n, probs, ["no", "yes"])


@pytest.fixture(params=["sqlite", "postgresql"])
def log_uri(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'log.db'}"
        return
    with pg_database() as (uri, _name, _admin):
        yield uri


def test_reader_gives_a_window_of_rows_with_features_sensitive_columns_and_feedback(log_uri, tmp_path):
    w = LogWriter(log_uri, tmp_path / "spill", flush_seconds=0.05).start()
    old, new = chunk(3, "1", NOW - dt.timedelta(hours=1), group="a", x0=10.0), chunk(2, "2", NOW, group="b", x0=20.0)
    w.add(old)
    w.add(new)
    w.add(Rows("feedback", [{"feedback_id": str(uuid.uuid4()), "request_id": new.ids[0], "time": NOW + dt.timedelta(seconds=5),
                             "label": "no"}]))
    stats = w.close()
    assert stats["written_predictions"] == 5 and stats["written_feedback"] == 1 and stats["spilled"] == 0
    assert counts(log_uri) == {"predictions": 5, "feedback": 1}

    frame = read_window(log_uri)
    assert list(frame.columns) == ["request_id", "time", "endpoint", "model_name", "model_version", "x", "colour", "group",
                                   "label", "probabilities", "feedback", "feedback_time"]
    assert list(frame.request_id) == old.ids + new.ids, "oldest first"
    assert list(frame.x) == [10.0, 11.0, 12.0, 20.0, 21.0] and list(frame.group) == ["a"] * 3 + ["b"] * 2
    assert frame.probabilities.iloc[0] == {"no": 0.25, "yes": 0.75}
    assert str(frame.time.dt.tz) == "UTC" and frame.time.iloc[-1] == NOW
    fb = frame.set_index("request_id").feedback
    assert fb[new.ids[0]] == "no" and fb.drop(new.ids[0]).isna().all()

    assert list(read_window(log_uri, since=NOW - dt.timedelta(minutes=30)).request_id) == new.ids
    assert list(read_window(log_uri, until=(NOW - dt.timedelta(minutes=30)).isoformat()).request_id) == old.ids
    assert list(read_window(log_uri, limit=2).request_id) == new.ids, "the latest `limit` rows"
    assert list(read_window(log_uri, model_version="1").request_id) == old.ids


def test_reader_on_a_missing_or_empty_log(tmp_path):
    with pytest.raises(FileNotFoundError, match="no prediction log here"):
        read_window(f"sqlite:///{tmp_path / 'nowhere.db'}")
    import sqlite3

    sqlite3.connect(tmp_path / "empty.db").close()
    assert read_window(f"sqlite:///{tmp_path / 'empty.db'}").empty


def _lock(path):
    """Another process holding a write transaction on the SQLite file until told to let go."""
    code = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); c.execute('BEGIN EXCLUSIVE'); "
            "print('locked', flush=True); sys.stdin.readline()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _release(proc):
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(10)


def test_sqlite_locked_by_another_process_rows_spill_then_all_are_written(tmp_path):
    db, spill = tmp_path / "log.db", tmp_path / "spill"
    uri = f"sqlite:///{db}"
    w = LogWriter(uri, spill, flush_seconds=0.05, buffer_rows=20, timeout_seconds=0.3, retry_seconds=0.2).start()
    w.add(chunk(5))
    wait_for(lambda: w.stats["written_predictions"] == 5 or None, 20, what="the first rows written")
    locker = _lock(db)
    try:
        ids = []
        for _ in range(20):
            c = chunk(5)
            ids += c.ids
            w.add(c)
        wait_for(lambda: (w.stats["spilled"] > 0 and w.stats["db_up"] == 0) or None, 20, what="rows spilled, the database seen locked")
        assert "locked" in w.stats["last_error"]
        assert list(spill.glob("spill-*.jsonl")), "rows are on disk"
        assert w.buffered <= 20 + 5 * 20, "the buffer stays bounded"
    finally:
        _release(locker)
    wait_for(lambda: (w.stats["written_predictions"] == 105 and w.stats["spill_pending"] == 0) or None, 30, what="every row written")
    stats = w.close()
    assert stats["spilled"] > 0 and stats["replayed"] == stats["spilled"] and stats["db_up"] == 1
    assert counts(uri)["predictions"] == 105 and set(ids) <= set(read_window(uri).request_id)
    assert not list(spill.glob("spill-*.jsonl")), "replayed spill files are removed"


def test_rows_spilled_at_shutdown_are_replayed_at_start_and_a_torn_line_is_skipped(tmp_path):
    db, spill = tmp_path / "log.db", tmp_path / "spill"
    uri = f"sqlite:///{db}"
    w = LogWriter(uri, spill, flush_seconds=0.05, timeout_seconds=0.3, retry_seconds=0.2).start()
    locker = _lock(db)
    try:
        c = chunk(7)
        w.add(c)
        stats = w.close()  # the database is locked: the buffer goes to disk
    finally:
        _release(locker)
    assert stats["spilled"] == 7 and stats["written_predictions"] == 0
    files = list(spill.glob("spill-*.jsonl"))
    assert len(files) == 1 and len(files[0].read_text().splitlines()) == 1, "one line per request, as it came"
    with open(files[0], "a") as f:  # a crash in the middle of an append
        f.write(json.dumps({"table": "predictions", "row": {"request_id": "x"}})[:25])

    w2 = LogWriter(uri, spill, flush_seconds=0.05)
    assert w2.stats["spill_pending"] == 8
    w2.start()
    stats = w2.close()
    assert stats["replayed"] == 7 and stats["torn"] == 1 and stats["spill_pending"] == 0
    assert sorted(read_window(uri).request_id) == sorted(c.ids) and not list(spill.glob("spill-*.jsonl"))


def test_a_row_the_database_refuses_is_set_aside_and_the_others_written(tmp_path):
    with pg_database() as (uri, _name, _admin):
        good, bad = chunk(4), chunk(1)
        bad.labels = ["y" * 300]  # longer than the label column's varchar(200): PostgreSQL refuses the row
        w = LogWriter(uri, tmp_path / "spill", flush_seconds=0.05).start()
        w.add(good)
        w.add(bad)
        stats = w.close()
        assert stats["rejected"] == 1 and stats["written_predictions"] == 4
        assert sorted(read_window(uri).request_id) == sorted(good.ids)
        rejected = [json.loads(line) for line in (tmp_path / "spill").glob("rejected-*.jsonl").__next__().read_text().splitlines()]
        assert [r["row"]["request_id"] for r in rejected] == bad.ids and "too long" in rejected[0]["error"]


def test_a_chunk_kd_cannot_serialise_is_set_aside_and_the_writer_goes_on(tmp_path):
    uri = f"sqlite:///{tmp_path / 'log.db'}"
    good, bad, after = chunk(3), chunk(2), chunk(4)
    bad.sensitive = {"group": [{1, 2}, {3}]}  # a set: no JSON for it (the API never lets one in)
    w = LogWriter(uri, tmp_path / "spill", flush_seconds=0.05).start()
    for c in (good, bad, after):
        w.add(c)
    stats = w.close()
    assert stats["written_predictions"] == 7 and stats["rejected"] == 1
    assert sorted(read_window(uri).request_id) == sorted(good.ids + after.ids)
    rejected = (tmp_path / "spill").glob("rejected-*.jsonl").__next__().read_text()
    assert bad.ids[0] in rejected and "Type" in rejected


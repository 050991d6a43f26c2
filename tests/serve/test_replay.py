"""`kd replay` as a real process against a real `kd serve`: drift injected into the rows shows in the
prediction log, the true labels arrive later as feedback, and the summary counts what happened."""

import datetime as dt
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from harness import env, wait_for

from kd.serve.log import read_window

pytestmark = pytest.mark.serve


def replay(root, *args):
    return subprocess.run([sys.executable, "-m", "kd.cli", "replay", "--root", str(root), *args], env=env(), capture_output=True,
                          text=True, timeout=300)


def test_replay_with_drift_shifts_the_logged_values_and_sends_feedback(shared):
    root, server = shared
    source = pd.read_parquet(root / "data" / "prepared" / "raw" / "test.parquet")
    since = dt.datetime.now(dt.UTC)
    out = replay(root, "--url", server.url, "--count", "200", "--batch", "2", "--concurrency", "4", "--scale", "x=2", "--shift", "x=+5",
                 "--group-share", "group=b:0.9", "--feedback", "0.5", "--feedback-delay", "0.2", "--seed", "3", "--json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert (s["requests"], s["rows"], s["ok"], s["4xx"], s["5xx"], s["errors"]) == (100, 200, 100, 0, 0, 0)
    assert s["versions"] == {"1": 200} and s["latency_ms"]["p50"] > 0 and s["rows_per_second"] > 0
    assert 60 <= s["feedback"]["sent"] <= 140 and s["feedback"]["ok"] == s["feedback"]["sent"]

    def logged():
        frame = read_window(f"sqlite:///{root / 'inference.db'}", since=since)
        return frame if len(frame) == 200 and frame.feedback.notna().sum() == s["feedback"]["sent"] else None
    frame = wait_for(logged, 30, what="200 replayed rows and their feedback in the log")
    expected = {2 * v + 5 for v in source.x}  # --scale then --shift, row by row
    assert set(frame.x) <= expected and abs(frame.x.mean() - (2 * source.x.mean() + 5)) < 0.5
    assert (frame.group == "b").mean() == pytest.approx(0.9), "the group's share as asked"
    assert (source.group == "b").mean() < 0.7
    given = frame[frame.feedback.notna()]
    assert set(given.feedback) <= {"no", "yes"} and (given.feedback_time > given.time).all()


def test_replay_of_a_file_without_drift_and_its_errors(shared, tmp_path):
    root, server = shared
    src = tmp_path / "rows.csv"
    pd.DataFrame({"x": np.linspace(-1, 1, 10), "colour": ["red", "blue"] * 5, "label": ["no"] * 10}).to_csv(src, index=False)
    out = replay(root, str(src), "--url", server.url, "--count", "10", "--rate", "200")
    assert out.returncode == 0, out.stderr
    assert "| 10 | 10 | 10 | 0 | 0 | 0 |" in out.stdout, out.stdout

    bad = replay(root, "--shift", "nope=1", "--url", server.url, "--count", "5")  # the drift rules themselves: tests/code
    assert bad.returncode == 2 and "column 'nope' is not in the source" in bad.stderr

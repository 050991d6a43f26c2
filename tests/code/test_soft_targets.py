"""The soft-target cache: exact round trips, top-k mass, corruption detection and regeneration, stale keys."""

import json

import numpy as np
import pytest

from kd import augment
from kd.config import AugmentParams, SoftTargetParams
from kd.soft_targets import CacheError, SoftTargets, build, cache_key, expand_top_k


def _teacher(n_classes=7, n_features=5, seed=0):
    w = np.random.default_rng(seed).normal(size=(n_features, n_classes)).astype(np.float32)
    calls = []

    def fn(x):
        calls.append(len(x))
        z = x @ w
        return z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)

    return fn, calls


@pytest.fixture
def x():
    return np.random.default_rng(1).normal(size=(50, 5)).astype(np.float32)


def test_fp32_round_trip_is_exact(tmp_path, x):
    fn, _ = _teacher()
    sp = SoftTargetParams(dtype="float32", shard_size=16, batch_size=8)
    build(tmp_path, "k1", x, fn, 7, sp, seed=0)
    st = SoftTargets(tmp_path, expected_key="k1")
    idx = np.array([49, 0, 17, 16, 3])
    np.testing.assert_array_equal(st.logp(idx), fn(x[idx]))
    assert st.manifest["n_shards"] == 4


def test_fp16_is_close_and_half_the_bytes(tmp_path, x):
    fn, _ = _teacher()
    build(tmp_path / "a", "k", x, fn, 7, SoftTargetParams(dtype="float32"), 0)
    build(tmp_path / "b", "k", x, fn, 7, SoftTargetParams(dtype="float16"), 0)
    a, b = SoftTargets(tmp_path / "a"), SoftTargets(tmp_path / "b")
    np.testing.assert_allclose(np.exp(b.logp(np.arange(50))), np.exp(a.logp(np.arange(50))), atol=2e-3)
    size = lambda st: sum(st.manifest["sizes"][f] for f in st.manifest["files"] if "logp" in f)
    assert size(b) < 0.6 * size(a)


def test_top_k_keeps_kept_probabilities_exact_and_rows_normalised(tmp_path, x):
    fn, _ = _teacher()
    build(tmp_path, "k", x, fn, 7, SoftTargetParams(dtype="float32", top_k=3), 0)
    st = SoftTargets(tmp_path)
    full = fn(x)
    got = st.logp(np.arange(50))
    top = np.argsort(-full, 1)[:, :3]
    np.testing.assert_array_equal(np.take_along_axis(got, top, 1), np.take_along_axis(full, top, 1))
    np.testing.assert_allclose(np.exp(got).sum(1), 1.0, rtol=1e-5)
    # the dropped classes share the residual mass evenly
    residual = 1 - np.exp(np.take_along_axis(full, top, 1)).sum(1)
    mask = np.ones_like(full, bool)
    np.put_along_axis(mask, top, False, 1)
    np.testing.assert_allclose(np.exp(got[mask]).reshape(50, 4), np.repeat(residual[:, None] / 4, 4, 1), rtol=1e-4)


def test_expand_top_k_by_hand():
    out = expand_top_k(np.log(np.array([[0.5, 0.3]], np.float32)), np.array([[2, 0]]), 4)
    np.testing.assert_allclose(np.exp(out), [[0.3, 0.1, 0.5, 0.1]], rtol=1e-6)


def test_corrupted_shard_is_detected_and_only_it_regenerated(tmp_path, x):
    fn, calls = _teacher()
    sp = SoftTargetParams(dtype="float32", shard_size=20, batch_size=100)
    build(tmp_path, "k", x, fn, 7, sp, 0)
    shard = tmp_path / "shard-00001.logp.npy"
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="shard-00001.logp.npy"):
        SoftTargets(tmp_path)
    calls.clear()
    result = build(tmp_path, "k", x, fn, 7, sp, 0)
    assert result["rebuilt_shards"] == [1] and calls == [20]
    np.testing.assert_array_equal(SoftTargets(tmp_path).logp(np.arange(50)), fn(x))


def test_missing_shard_and_uncommitted_cache_are_never_used(tmp_path, x):
    fn, _ = _teacher()
    sp = SoftTargetParams(shard_size=20)
    build(tmp_path, "k", x, fn, 7, sp, 0)
    (tmp_path / "shard-00002.logp.npy").unlink()
    with pytest.raises(CacheError, match="missing or corrupt"):
        SoftTargets(tmp_path)
    assert build(tmp_path, "k", x, fn, 7, sp, 0)["rebuilt_shards"] == [2]
    (tmp_path / "manifest.json").unlink()  # a build killed before its commit point
    with pytest.raises(CacheError, match="never committed"):
        SoftTargets(tmp_path)


def test_unchanged_cache_is_reused_and_stale_key_rejected_then_rebuilt(tmp_path, x):
    fn, calls = _teacher()
    sp = SoftTargetParams()
    key = cache_key("teacherA", "dataA", sp, 0)
    build(tmp_path, key, x, fn, 7, sp, 0)
    calls.clear()
    assert build(tmp_path, key, x, fn, 7, sp, 0)["reused"] and calls == []
    new_key = cache_key("teacherB", "dataA", sp, 0)
    assert len({key, new_key, cache_key("teacherA", "dataB", sp, 0), cache_key("teacherA", "dataA", SoftTargetParams(top_k=2), 0)}) == 4
    with pytest.raises(CacheError, match=f"built for key {key}, expected {new_key}"):
        SoftTargets(tmp_path, expected_key=new_key)
    fn2, _ = _teacher(seed=5)
    assert build(tmp_path, new_key, x, fn2, 7, sp, 0)["rebuilt_shards"] == [0]
    assert json.loads((tmp_path / "manifest.json").read_text())["key"] == new_key


def test_views_store_what_the_teacher_saw(tmp_path, x):
    fn, _ = _teacher()
    sp = SoftTargetParams(dtype="float32", views=3, augment=AugmentParams(noise_std=0.3, mixup_alpha=0.4))
    build(tmp_path, "k", x, fn, 7, sp, seed=3)
    st = SoftTargets(tmp_path)
    idx, view = np.array([4, 9, 30]), np.array([0, 1, 2])
    x_view = augment.apply(x, idx, view, st.view_params, 0.3)
    np.testing.assert_array_equal(st.logp(idx, view), fn(x_view))
    np.testing.assert_array_equal(x_view[0], x[4])  # view 0 is the clean sample
    assert not np.allclose(x_view[1], x[9])


def test_top_k_must_leave_classes_out(tmp_path, x):
    fn, _ = _teacher()
    with pytest.raises(CacheError, match="top_k=7"):
        build(tmp_path, "k", x, fn, 7, SoftTargetParams(top_k=7), 0)

"""Block-ordered training reads (kd.blocks): the epoch order, and the block reader of the soft-target cache."""

import numpy as np
import pytest

from kd import blocks
from kd.config import AugmentParams, SoftTargetParams
from kd.soft_targets import SoftTargets, build


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 16 rows, windows of 4 blocks (64 rows), so a test needs only hundreds of rows."""
    monkeypatch.setattr(blocks, "BLOCK_ROWS", 16)
    monkeypatch.setattr(blocks, "WINDOW_BLOCKS", 4)
    monkeypatch.setattr(blocks, "WINDOW_ROWS", 64)


def test_small_data_keeps_the_uniform_permutation():
    """Up to one window the order is exactly the seeded permutation training always used."""
    for n in (1, 1000, blocks.WINDOW_ROWS):
        np.testing.assert_array_equal(blocks.epoch_order(n, 7, 3), np.random.default_rng([7, 3]).permutation(n))


def test_block_shuffle_visits_every_row_once_in_windows_of_whole_blocks(small_blocks):
    n = 1024  # 64 blocks, 16 windows
    order = blocks.epoch_order(n, 0, 0)
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
    for w in range(16):
        rows = order[64 * w : 64 * (w + 1)]
        touched = np.unique(rows // 16)
        assert len(touched) == 4  # a window is 4 whole blocks...
        np.testing.assert_array_equal(np.sort(rows), np.concatenate([np.arange(b * 16, b * 16 + 16) for b in touched]))
    first = order[:64] // 16
    assert not np.all(first[:-1] <= first[1:])  # ...shuffled within the window, not block after block
    np.testing.assert_array_equal(order, blocks.epoch_order(n, 0, 0))  # reproducible
    assert not np.array_equal(order, blocks.epoch_order(n, 0, 1)) and not np.array_equal(order, blocks.epoch_order(n, 1, 0))


def test_block_shuffle_with_a_short_last_block(small_blocks):
    order = blocks.epoch_order(1000, 2, 5)  # 62 full blocks and one of 8 rows
    np.testing.assert_array_equal(np.sort(order), np.arange(1000))


def _teacher(n_classes=6, n_features=5):
    w = np.random.default_rng(0).normal(size=(n_features, n_classes)).astype(np.float32)

    def fn(x):
        z = x @ w
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    return fn


@pytest.mark.parametrize("mode, budget_blocks", [("resident", None), ("blocks", 10), ("direct", 2)])
def test_target_reader_returns_the_teachers_outputs(small_blocks, tmp_path, mode, budget_blocks):
    """In every mode (whole cache in memory; a budget of 10 blocks; too small a budget: row reads), over two
    block-shuffled epochs and shards that do not align with blocks, the reader returns exactly what the
    teacher wrote (fp32 round trip)."""
    fn, n = _teacher(), 1000
    x = np.random.default_rng(1).normal(size=(n, 5)).astype(np.float32)
    build(tmp_path, "k", x, fn, 6, SoftTargetParams(dtype="float32", shard_size=100), 0)
    row_bytes = 6 * 4
    reader = SoftTargets(tmp_path).reader(10**9 if budget_blocks is None else budget_blocks * 16 * row_bytes)
    assert reader.buffer.resident == (mode == "resident")
    for epoch in range(2):
        order = blocks.epoch_order(n, 0, epoch)
        for i in range(0, n, 32):
            idx = order[i : i + 32]
            np.testing.assert_array_equal(reader.logp(idx), fn(x[idx]))
    n_blocks = -(-n // 16)
    if mode == "blocks":  # every block read whole, about once per epoch (a window's blocks stay until it ends)
        assert n_blocks < reader.buffer.loads <= 2 * n_blocks
    if mode == "direct":
        assert reader.buffer.loads == 0


@pytest.mark.parametrize("budget_blocks", [None, 10])
def test_target_reader_top_k_and_views(small_blocks, tmp_path, budget_blocks):
    """Top-k rows are expanded as SoftTargets.logp expands them, and each row's chosen view is returned."""
    fn, n = _teacher(n_classes=8), 400
    x = np.random.default_rng(2).normal(size=(n, 5)).astype(np.float32)
    sp = SoftTargetParams(top_k=3, views=3, shard_size=70, augment=AugmentParams(noise_std=0.1))
    build(tmp_path, "k", x, fn, 8, sp, 0)
    st = SoftTargets(tmp_path)
    reader = st.reader(10**9 if budget_blocks is None else budget_blocks * 16 * 3 * 8 * 4)
    order, views = blocks.epoch_order(n, 0, 0), np.random.default_rng(3).integers(0, 3, n)
    for i in range(0, n, 32):
        idx = order[i : i + 32]
        np.testing.assert_array_equal(reader.logp(idx, views[idx]), st.logp(idx, views[idx]))

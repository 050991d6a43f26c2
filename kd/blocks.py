"""Block-ordered training reads: the order of an epoch's rows, and a bounded buffer of contiguous row blocks.

An epoch visits rows in a seeded order (`epoch_order`). Up to `WINDOW_ROWS` rows (65,536) that order is a
uniform permutation, `default_rng([seed, epoch]).permutation(n)`, as it always was. Beyond, it is a block
shuffle (as tf.data's interleave + shuffle buffer, or WebDataset's shard shuffling): the rows are cut into
blocks of `BLOCK_ROWS` consecutive rows, the blocks are permuted, and each window of `WINDOW_BLOCKS`
consecutive blocks of that permutation is shuffled within itself. Every epoch still visits every row once,
every batch mixes rows of 16 blocks drawn from anywhere in the data, and a window's rows lie in 16
contiguous runs of 4,096 rows: a reader that loads whole blocks reads the data sequentially, so a cache or
data set larger than the page cache streams from disk instead of paying one random 4 KiB read per row.

`BlockBuffer` is that reader: rows are served from whole blocks loaded on first touch (one contiguous slice
each, converted once), with at most a byte budget of blocks held; a source that fits the budget is loaded
once and stays resident.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BLOCK_ROWS = 4096  # rows per block: 80 KiB of fp16 targets over 10 classes, 1 MiB of 64 float32 features
WINDOW_BLOCKS = 16  # blocks shuffled together: a batch draws from 16 blocks spread over the data
WINDOW_ROWS = BLOCK_ROWS * WINDOW_BLOCKS
BUDGET_BYTES = 128 * 2**20  # what a BlockBuffer may hold


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The rows of one epoch in training order (int64): a uniform permutation up to WINDOW_ROWS rows, a
    block shuffle beyond (module docstring); depends only on (n, seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    if n <= WINDOW_ROWS:
        return rng.permutation(n)
    blocks = rng.permutation(-(-n // BLOCK_ROWS))
    starts = blocks * BLOCK_ROWS
    lengths = np.minimum(starts + BLOCK_ROWS, n) - starts
    rows = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(n)  # the blocks' rows, in block order
    ends = np.cumsum(lengths)[WINDOW_BLOCKS - 1 :: WINDOW_BLOCKS]
    lo = 0
    for hi in [*ends.tolist(), n]:
        if hi > lo:
            rows[lo:hi] = rows[lo:hi][rng.permutation(hi - lo)]
        lo = hi
    return rows


class BlockBuffer:
    """Rows `idx` of an n-row source, served from whole blocks of BLOCK_ROWS rows.

    `load(lo, hi)` returns rows lo..hi as an array (its first axis the rows); it is called once per block
    touched, with a contiguous range, so a memory-mapped source is read sequentially. A source of at most
    `budget` bytes (`row_bytes` per row) is loaded whole on first use and kept; a larger one keeps at most
    `4 * WINDOW_BLOCKS` blocks (within `budget`), the oldest loaded evicted first (never one the current batch needs). `locate`
    returns the array holding the rows and their positions in it, or None when a batch touches more blocks
    than the buffer holds (random access over a large source: read those rows directly).
    """

    def __init__(self, n: int, load: Callable[[int, int], np.ndarray], row_bytes: int, budget: int = BUDGET_BYTES):
        self.n, self.load = n, load
        self.resident = n * row_bytes <= budget
        # two windows of blocks and two more: enough for the block-shuffled order, small enough to stay in cache
        self.capacity = 0 if self.resident else min(4 * WINDOW_BLOCKS, max(1, budget // (BLOCK_ROWS * row_bytes)))
        self.all: np.ndarray | None = None
        self.buf: np.ndarray | None = None
        self.slot_of = np.full(-(-n // BLOCK_ROWS), -1, np.int64)
        self.block_in = np.full(self.capacity, -1, np.int64)
        self.next = 0
        self.loads = 0  # blocks loaded (a benchmark's check that reads were block-ordered)

    def locate(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        if self.resident:
            if self.all is None:
                self.all = self.load(0, self.n)
                self.loads += len(self.slot_of)
            return self.all, idx
        blk = idx // BLOCK_ROWS
        slots = self.slot_of[blk]
        if (slots < 0).any():
            needed = set(np.unique(blk).tolist())
            if len(needed) > self.capacity:
                return None
            for b in np.unique(blk[slots < 0]).tolist():
                self._fill(b, needed)
            slots = self.slot_of[blk]
        return self.buf, slots * BLOCK_ROWS + (idx - blk * BLOCK_ROWS)

    def _fill(self, b: int, needed: set[int]) -> None:
        while int(self.block_in[self.next]) in needed:
            self.next = (self.next + 1) % self.capacity  # keep the blocks this batch reads
        s = self.next
        self.next = (s + 1) % self.capacity
        if self.block_in[s] >= 0:
            self.slot_of[self.block_in[s]] = -1
        lo, hi = b * BLOCK_ROWS, min(self.n, (b + 1) * BLOCK_ROWS)
        rows = self.load(lo, hi)
        if self.buf is None:
            self.buf = np.empty((self.capacity * BLOCK_ROWS, *rows.shape[1:]), rows.dtype)
        self.buf[s * BLOCK_ROWS : s * BLOCK_ROWS + hi - lo] = rows
        self.block_in[s], self.slot_of[b] = b, s
        self.loads += 1

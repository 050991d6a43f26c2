"""Micro-batching: concurrent requests share one model call, waiting at most `wait_ms` for company and
taking at most `max_rows` rows per call — the dynamic batching of Clipper (Crankshaw et al., NSDI 2017) and
Triton's dynamic batcher. Each request's rows are validated and featurised on their own first, so one bad
request never fails another; only the model call is shared, and always with requests for the same model.

Off by default (`serve.batch_wait_ms: 0`): with a model this small the call is a few percent of a request's
cost, so waiting buys little (benchmarks/serve.py measures both ways).
"""

from __future__ import annotations

import asyncio

import numpy as np

from kd.predictor import Predictor


class Batcher:
    def __init__(self, wait_ms: float, max_rows: int):
        self.wait = wait_ms / 1000.0
        self.max_rows = max_rows
        self._queue: list[tuple[Predictor, np.ndarray, asyncio.Future]] = []
        self._rows = 0
        self._timer: asyncio.TimerHandle | None = None
        self.calls = 0
        self.rows = 0

    @property
    def enabled(self) -> bool:
        return self.wait > 0

    async def proba(self, predictor: Predictor, x: np.ndarray) -> np.ndarray:
        """Probabilities of the feature rows `x`, computed in one call with whatever else arrives within the wait."""
        if not self.enabled or len(x) >= self.max_rows:
            self.calls += 1
            self.rows += len(x)
            return predictor.proba(x)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.append((predictor, x, fut))
        self._rows += len(x)
        if self._rows >= self.max_rows:
            self._run()
        elif self._timer is None:
            self._timer = loop.call_later(self.wait, self._run)
        return await fut

    def _run(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queue, self._queue, self._rows = self._queue, [], 0
        groups: dict[int, list] = {}
        for item in queue:  # a swap may land mid-batch: each model gets only its own requests
            groups.setdefault(id(item[0]), []).append(item)
        for items in groups.values():
            try:
                probs = items[0][0].proba(np.concatenate([x for _, x, _ in items]))
            except Exception as err:
                for _, _, fut in items:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            self.calls += 1
            self.rows += len(probs)
            start = 0
            for _, x, fut in items:
                if not fut.done():  # a cancelled request (client gone) is skipped
                    fut.set_result(probs[start:start + len(x)])
                start += len(x)

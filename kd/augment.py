"""Augmented views for function matching (Beyer et al. 2022, "Knowledge distillation: A good teacher is
patient and consistent"): teacher and student must see the same view of each sample.

A view is fully described by stored parameters — a mixup partner and weight and a noise seed — so
the soft-target cache can hold the teacher's output on view v of sample i, and training from the cache
rebuilds exactly the input the teacher saw.
"""

from __future__ import annotations

import numpy as np

from kd.config import AugmentParams


def view_params(n: int, views: int, aug: AugmentParams, seed: int) -> dict[str, np.ndarray]:
    """Parameters of `views` views of each of `n` samples: partner (int64), lam (float32), noise_seed (int64).

    View 0 is always the clean sample (lam = 1, no noise), so a cache with views=1 is the plain cache.
    """
    rng = np.random.default_rng([seed, n, views])
    partner = rng.integers(0, max(n, 1), (n, views))
    lam = rng.beta(aug.mixup_alpha, aug.mixup_alpha, (n, views)) if aug.mixup_alpha > 0 else np.ones((n, views))
    lam = np.maximum(lam, 1 - lam)  # the sample itself dominates its view, so its label stays meaningful
    noise_seed = rng.integers(0, 2**62, (n, views))
    partner[:, 0], lam[:, 0], noise_seed[:, 0] = np.arange(n), 1.0, -1
    return {"partner": partner.astype(np.int64), "lam": lam.astype(np.float32), "noise_seed": noise_seed.astype(np.int64)}


def apply(x_all: np.ndarray, idx: np.ndarray, view: np.ndarray, params: dict[str, np.ndarray], noise_std: float) -> np.ndarray:
    """Build the inputs of view `view[j]` of sample `idx[j]`, as the teacher saw them."""
    lam = params["lam"][idx, view][:, None]
    partner = params["partner"][idx, view]
    x = lam * x_all[idx] + (1 - lam) * x_all[partner]
    if noise_std > 0:
        seeds = params["noise_seed"][idx, view]
        for j, s in enumerate(seeds):
            if s >= 0:
                x[j] += noise_std * np.random.default_rng(int(s)).standard_normal(x.shape[1]).astype(np.float32)
    return x.astype(np.float32, copy=False)

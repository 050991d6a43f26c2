"""Toy reviews for the text tests: the label is which of two word lists a review's sentiment words come from."""

import numpy as np
import pandas as pd

GOOD = ["great", "tasty", "lovely", "delicious", "perfect", "wonderful", "fresh", "excellent"]
BAD = ["awful", "stale", "bland", "broken", "terrible", "rancid", "soggy", "horrible"]
FILLER = ["the", "tea", "was", "coffee", "snack", "really", "box", "this", "and", "price"]


def toy_reviews(n: int, seed: int = 0, filler: int = 5) -> pd.DataFrame:
    """`n` reviews, alternately "great" and "other": `filler` neutral words and two sentiment words, shuffled
    (trivially separable)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = ["great", "other"][i % 2]
        words = list(rng.choice(FILLER, filler)) + list(rng.choice(GOOD if label == "great" else BAD, 2))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return pd.DataFrame(rows)
